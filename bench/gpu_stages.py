"""Benchmark 3 (needs a CUDA GPU): SAE training throughput and transformer-stage speed, side by side.

    python bench/gpu_stages.py [--compile]

1. Row-wise top-64 of an (8192, 6144) bf16 activation: torch.topk sorted, unsorted, and chunked
   (saeception.method.sae.topk_rows), ms per call.
2. TopK SAE training tokens/s at d=768, expansion 8 (6144 latents), k=64, batch 8192, bf16 autocast:
   a plain PyTorch step (dense decoder product, Adam, unit-norm decoder; no AuxK) against
   saeception.method.sae.train_sae (no host syncs) eager or as a CUDA graph, dense or sparse decoding, +-AuxK.
3. A GPT-2-small-shaped model (random init, 12 layers, d=768) on SST-2-length text (lengths 5-60
   tokens): saeception.method.train.finetune / extract (dynamic padding, length-grouped batches, bf16
   autocast, pinned memory) against the same model padded to 128 tokens in fp32, sequences/s, at
   batch 32 and 256.
4. With --compile: the fine-tune again with torch.compile(dynamic=True) on the model.

Also checks, on the GPU, that the sparse decoder equals the dense product in value and gradient.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

D, EXPANSION, K, BATCH = 768, 8, 64, 8192


def _timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def plain_sae_tokens_per_s(x: torch.Tensor, steps: int) -> float:
    """The straightforward step: dense encode, dense TopK code, dense decode, MSE, Adam."""
    n_lat = D * EXPANSION
    W_enc = torch.randn(D, n_lat, device="cuda").div_(D ** 0.5).requires_grad_()
    W_dec = torch.randn(n_lat, D, device="cuda").div_(D ** 0.5).requires_grad_()
    b_enc = torch.zeros(n_lat, device="cuda", requires_grad=True)
    b_dec = torch.zeros(D, device="cuda", requires_grad=True)
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=1e-4)

    def run(n):
        for _ in range(n):
            xb = x[torch.randint(0, len(x), (BATCH,), device="cuda")]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pre = torch.relu((xb - b_dec) @ W_enc + b_enc)
                values, index = pre.topk(K, dim=-1)
                z = torch.zeros_like(pre).scatter(-1, index, values)
                x_hat = z @ W_dec + b_dec
            loss = (x_hat.float() - xb).pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                W_dec.div_(W_dec.norm(dim=-1, keepdim=True))

    run(10)
    return steps * BATCH / _timed(lambda: run(steps))


def saeception_sae_tokens_per_s(x: torch.Tensor, steps: int, auxk: bool, sparse: bool = False,
                                graphs: bool = True) -> float:
    import functools

    import saeception.method.sae as sae_mod
    from saeception.config import SAEConfig
    from saeception.method.sae import train_sae

    original = sae_mod.decode_topk
    sae_mod.decode_topk = functools.partial(original, sparse=sparse)

    def cfg(n):
        # dead_after=1: AuxK runs every step (worst case) when on.
        return SAEConfig(kind="topk", expansion_factor=EXPANSION, k=K, batch_size=BATCH, steps=n,
                         auxk_coefficient=1 / 32 if auxk else 0.0, dead_after=1, cuda_graphs=graphs)

    try:
        train_sae(x, cfg(10))  # warm-up (kernels, allocator)
        base = _timed(lambda: train_sae(x, cfg(1)))  # set-up cost (init, geometric median): not a step
        return steps * BATCH / max(_timed(lambda: train_sae(x, cfg(steps + 1))) - base, 1e-9)
    finally:
        sae_mod.decode_topk = original


def topk_ms(reps: int = 20) -> dict[str, float]:
    """One row-wise top-64 of a (8192, 6144) bf16 activation: torch.topk sorted / unsorted / chunked
    (top-64 of each chunk, then of the candidates: exact)."""
    pre = torch.relu(torch.randn(BATCH, D * EXPANSION, device="cuda", dtype=torch.bfloat16))
    ref = pre.topk(K, dim=-1).values.float().sum()

    def chunked(c: int):
        values, index = pre.unflatten(-1, (-1, c)).topk(K, dim=-1, sorted=False)
        return values.flatten(-2).topk(K, dim=-1, sorted=False)

    out = {}
    variants = {"topk_sorted": lambda: pre.topk(K, dim=-1), "topk_unsorted": lambda: pre.topk(K, dim=-1, sorted=False)}
    for c in (256, 512, 1024, 2048):
        variants[f"chunked_{c}"] = lambda c=c: chunked(c)
    for name, fn in variants.items():
        assert torch.allclose(fn()[0].float().sum(), ref), name  # the same selected values
        fn()
        out[name] = _timed(lambda fn=fn: [fn() for _ in range(reps)]) / reps * 1e3
    return out


def check_sparse_decode() -> str:
    from saeception.method.sae import SAE, decode_topk

    sae = SAE(D, D * EXPANSION, "topk", K).cuda()
    torch.nn.init.normal_(sae.W_dec)
    pre = torch.relu(torch.randn(256, D * EXPANSION, device="cuda"))
    outs = []
    for sparse in (True, False):
        sae.zero_grad()
        values, index = pre.topk(K, dim=-1)
        values.requires_grad_(True)
        out = decode_topk(sae, values, index, sparse=sparse)
        out.pow(2).sum().backward()
        outs.append((out.detach(), sae.W_dec.grad.clone(), values.grad.clone()))
    err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(*outs))
    assert err < 1e-4, f"sparse decode disagrees with dense (max relative error {err})"
    return f"sparse decode == dense decode on CUDA (max relative error {err:.1e}, value and gradients)"


def check_graph_equivalence(steps: int = 200) -> str:
    """The captured step computes what the eager step computes (same seed, same data)."""
    from saeception.config import SAEConfig
    from saeception.method.sae import train_sae

    x = torch.randn(50_000, D, device="cuda") @ torch.randn(D, D, device="cuda").div_(D ** 0.5)
    out = {}
    for graphs in (False, True):
        sae = train_sae(x, SAEConfig(kind="topk", expansion_factor=EXPANSION, k=K, batch_size=4096, steps=steps,
                                     dead_after=4096 * 3, cuda_graphs=graphs), seed=3)
        recon = sae.decode(sae.encode(x[:8192]))
        out[graphs] = (sae.W_dec.clone(), 1 - (recon - x[:8192]).pow(2).sum() / (x[:8192] - x[:8192].mean(0)).pow(2).sum())
    drift = float((out[True][0] - out[False][0]).norm() / out[False][0].norm())
    ev_eager, ev_graph = float(out[False][1]), float(out[True][1])
    assert abs(ev_eager - ev_graph) < 0.01 and drift < 0.05, (ev_eager, ev_graph, drift)
    return f"CUDA-graph step == eager step: EV {ev_graph:.4f} vs {ev_eager:.4f}, decoder drift {drift:.1e} after {steps} steps"


def _gpt2(n_classes: int = 2):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    return GPT2ForSequenceClassification(GPT2Config(n_layer=12, n_embd=768, n_head=12, num_labels=n_classes,
                                                    pad_token_id=0)).cuda()


def _text_task(n: int):
    from saeception.data.tasks import Split, TaskData

    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 61, (n,), generator=g).tolist()
    seqs = [torch.randint(1, 50000, (L,), generator=g).tolist() for L in lengths]
    labels = torch.randint(0, 2, (n,), generator=g)
    split = Split(seqs, labels, torch.arange(n))
    return seqs, labels, TaskData(split, split, split, 2, "text", pad_token_id=0)


def transformer_seq_per_s(n: int, compile_model: bool = False, batch: int = 32) -> dict[str, float]:
    from saeception.config import FinetuneConfig
    from saeception.method.train import extract, finetune
    from saeception.models.classifiers import TapModel

    seqs, labels, task = _text_task(n)
    device = torch.device("cuda")
    out = {}

    # saeception's own stages (with torch.compile(dynamic=True) on the model when asked).
    tap = TapModel(_gpt2(), -1)
    mode = "saeception"
    if compile_model:
        tap.model = torch.compile(tap.model, dynamic=True)
        mode = "saeception_compiled"
    cfg = FinetuneConfig(epochs=1, lr=1e-5, batch_size=batch)
    finetune(tap, task, cfg, device, 0)  # warm-up epoch (kernels, allocator, compilation)
    out[f"{mode}_finetune"] = n / _timed(lambda: finetune(tap, task, cfg, device, 1))
    extract(tap, task, "train", batch, device)
    out[f"{mode}_extract"] = n / _timed(lambda: extract(tap, task, "train", batch, device))
    if compile_model:
        return out

    # The padded fp32 path: every batch padded to 128 tokens, in arrival order, no autocast.
    tap = TapModel(_gpt2(), -1)
    opt = torch.optim.AdamW(tap.parameters(), lr=1e-5)
    ids = torch.zeros(n, 128, dtype=torch.long)
    mask = torch.zeros(n, 128, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    batches = [{"input_ids": ids[i:i + batch], "attention_mask": mask[i:i + batch], "labels": labels[i:i + batch]}
               for i in range(0, n, batch)]

    def padded(train: bool):
        ctx = contextlib.nullcontext() if train else torch.no_grad()
        with ctx:
            for b in batches:
                b = {k: v.cuda() for k, v in b.items()}
                logits, _ = tap(b)
                if train:
                    loss = F.cross_entropy(logits, b["labels"])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()

    padded(True)
    out["padded128_fp32_finetune"] = n / _timed(lambda: padded(True))
    tap.eval()
    out["padded128_fp32_extract"] = n / _timed(lambda: padded(False))
    return out


def profile_sae(steps: int = 20) -> str:
    """The CUDA kernels of train_sae's step (dense decode, AuxK on), by total device time."""
    from torch.profiler import ProfilerActivity, profile

    from saeception.config import SAEConfig
    from saeception.method.sae import train_sae

    x = torch.randn(65_536, D, device="cuda")
    cfg = SAEConfig(kind="topk", expansion_factor=EXPANSION, k=K, batch_size=BATCH, steps=steps, dead_after=1,
                    cuda_graphs=False)
    train_sae(x, cfg)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_sae(x, cfg)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=50)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="timed SAE steps per variant (default 300)")
    ap.add_argument("--sequences", type=int, default=4096, help="sequences per timed epoch (default 4096)")
    ap.add_argument("--batch", type=int, action="append", help="transformer batch size(s) (default 32 and 256)")
    ap.add_argument("--compile", action="store_true", help="also time the fine-tune under torch.compile")
    ap.add_argument("--profile", action="store_true", help="print the SAE step's CUDA kernel profile")
    ap.add_argument("--sae-only", action="store_true", help="only the SAE checks and timings")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a CUDA GPU"
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print(check_sparse_decode(), flush=True)
    print(check_graph_equivalence(), flush=True)
    for name, ms in topk_ms().items():
        print(f"top-{K} of ({BATCH}, {D * EXPANSION}) bf16, {name:14s}: {ms:.3f} ms", flush=True)

    x = torch.randn(262_144, D, device="cuda")
    plain = plain_sae_tokens_per_s(x, args.steps)
    print(f"SAE plain dense step: {plain / 1e6:6.2f} M tokens/s", flush=True)
    variants = [("eager", False, False, False), ("CUDA graph", False, False, True),
                ("CUDA graph, AuxK on", True, False, True), ("CUDA graph, sparse decode", False, True, True)]
    for name, auxk, sparse, graphs in variants:
        ours = saeception_sae_tokens_per_s(x, args.steps, auxk, sparse, graphs)
        print(f"SAE train_sae {name:30s}: {ours / 1e6:6.2f} M tokens/s ({ours / plain:.2f}x the plain step)", flush=True)
    del x
    torch.cuda.empty_cache()
    if args.profile:
        print(profile_sae(), flush=True)
    if args.sae_only:
        return

    for batch in args.batch or [32, 256]:
        r = transformer_seq_per_s(args.sequences, batch=batch)
        for phase in ("finetune", "extract"):
            a, b = r[f"saeception_{phase}"], r[f"padded128_fp32_{phase}"]
            print(f"batch {batch:3d} {phase:8s}: saeception {a:7.0f} seq/s vs padded-128 fp32 {b:7.0f} seq/s: "
                  f"{a / b:.2f}x (goal >= 3x)", flush=True)
    if args.compile:  # last: a compilation failure must not hide the results above
        c = transformer_seq_per_s(args.sequences, compile_model=True)
        for phase in ("finetune", "extract"):
            a, b = c[f"saeception_compiled_{phase}"], r[f"saeception_{phase}"]
            print(f"{phase:8s}: with torch.compile {a:7.0f} seq/s: {a / b:.2f}x saeception without", flush=True)


if __name__ == "__main__":
    main()
