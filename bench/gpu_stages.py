"""Benchmark 3 (needs a CUDA GPU): SAE training throughput and transformer-stage speed.

    python bench/gpu_stages.py

1. TopK SAE training tokens/s at d=768, expansion 8, k=64, batch 8192, bf16 autocast
   (saeception.sae.train_sae's step, timed after warm-up).
2. A GPT-2-small-shaped model (random init, 12 layers, d=768) fine-tune and extraction, sequences/s
   on SST-2-length text (generated lengths 5-60 tokens): saeception's path (dynamic padding, length-
   grouped batches, bf16 autocast) vs padding every batch to 128 tokens in fp32, side by side.
"""

from __future__ import annotations

import time

import torch


def sae_tokens_per_s(steps: int = 50) -> float:
    from saeception.config import SAEConfig
    from saeception.sae import train_sae

    x = torch.randn(200_000, 768, device="cuda")
    cfg = SAEConfig(kind="topk", expansion_factor=8, k=64, batch_size=8192, steps=10)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        train_sae(x, cfg)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_sae(x, SAEConfig(kind="topk", expansion_factor=8, k=64, batch_size=8192, steps=steps))
        torch.cuda.synchronize()
    return steps * 8192 / (time.perf_counter() - t0)


def transformer_seq_per_s(n: int = 4096) -> dict[str, float]:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from saeception.data import Split, TaskData, loader
    from saeception.models import TapModel
    from saeception.train import autocast

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 61, (n,), generator=g).tolist()
    seqs = [torch.randint(0, 50000, (L,), generator=g).tolist() for L in lengths]
    split = Split(seqs, torch.randint(0, 2, (n,), generator=g), torch.arange(n))
    out = {}
    for mode in ("saeception", "padded128_fp32"):
        torch.manual_seed(0)
        model = GPT2ForSequenceClassification(GPT2Config(n_layer=12, n_embd=768, n_head=12, num_labels=2, pad_token_id=0)).cuda()
        tap = TapModel(model, -1)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        if mode == "saeception":
            task = TaskData(split, split, split, 2, "text", pad_token_id=0)
            batches = list(loader(task, "train", 32, shuffle=True))
            ctx = lambda: autocast(torch.device("cuda"))  # noqa: E731
        else:
            padded = [s + [0] * (128 - len(s)) for s in seqs]
            mask = [[1] * len(s) + [0] * (128 - len(s)) for s in seqs]
            batches = [{"input_ids": torch.tensor(padded[i:i + 32]), "attention_mask": torch.tensor(mask[i:i + 32]),
                        "labels": split.labels[i:i + 32]} for i in range(0, n, 32)]
            import contextlib

            ctx = contextlib.nullcontext
        for phase in ("finetune", "extract"):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in batches:
                b = {k: v.cuda() for k, v in b.items()}
                if phase == "finetune":
                    with ctx():
                        logits, _ = tap(b)
                    loss = torch.nn.functional.cross_entropy(logits.float(), b["labels"])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                else:
                    with torch.no_grad(), ctx():
                        tap(b)
            torch.cuda.synchronize()
            out[f"{mode}_{phase}"] = n / (time.perf_counter() - t0)
    return out


def main() -> None:
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    print(f"device: {torch.cuda.get_device_name()}")
    print(f"SAE training: {sae_tokens_per_s() / 1e6:.2f} M tokens/s (goal >= 4.2 M on one H100)")
    r = transformer_seq_per_s()
    for phase in ("finetune", "extract"):
        a, b = r[f"saeception_{phase}"], r[f"padded128_fp32_{phase}"]
        print(f"{phase}: {a:.0f} seq/s vs padded-128 fp32 {b:.0f} seq/s: {a / b:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
