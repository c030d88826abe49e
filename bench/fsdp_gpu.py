"""Benchmark 8 (for one CUDA GPU; --small runs anywhere): a chain too big for a plain fp32 fine-tune, under
train.strategy fsdp, with the memory it used against the memory `--dry-run` estimates.

    PYTHONPATH=. python bench/fsdp_gpu.py [--small] [--offload] [--no-checkpointing] [--out DIR]

The model: a random-init GPT-NeoX at Pythia-6.9B's shape (32 layers, d = 4,096, 32 heads, intermediate
16,384, vocabulary 50,432; ~6.9B parameters), built on the GPU in bf16 from GPTNeoXConfig and saved as a
local model directory with a BPE tokenizer trained in-process (tests/support/helpers.py). A plain fp32 AdamW
fine-tune needs 16 bytes per parameter (weights, gradients, two moments): ~110 GB, more than an 80 GB
H100. The chain runs it with model.dtype bfloat16 (weights, gradients and AdamW states in bf16: 8 bytes
per parameter, ~55 GB), model.gradient_checkpointing true, train.strategy fsdp on a process group of one
(--offload: train.cpu_offload true, the sharded state in host memory), on 480 generated 3-class
sentences (train 288 / val 96 / test 96 carved by the loader), data.max_length 64, batch 8, 1 epoch,
chain.cycles 1, sae.expansion_factor 4 (16,384 latents), sae.steps 300.

Measured: the wall time of each stage (the functions the chain calls, wrapped in saeception.method.chain's
namespace; the chain's code is not changed) and torch.cuda.max_memory_allocated() over each stage and
over the whole run (the allocator's peak: what the estimate models; the CUDA context is not in it), and
max_memory_reserved(). Printed beside saeception.parallel.memory's estimate for the same config; the issue's
goal is an estimate within 25% of the measured peak. --small: a 2-layer d = 64 GPT-NeoX on the CPU
(checks the script, measures nothing of interest). Results also go to DIR/fsdp_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import saeception.method.chain as chain
from saeception.config import build_config
from saeception.parallel.distributed import init_single_process
from saeception.store.artifacts import ChainPaths

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_text_csv, train_tokenizer  # noqa: E402

PYTHIA_6_9B = dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32, intermediate_size=16384,
                   vocab_size=50432, max_position_embeddings=2048, rotary_pct=0.25)
SMALL = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
             vocab_size=512, max_position_embeddings=128)
STAGES = ("finetune", "retrain", "extract", "train_sae", "evaluate")
SPLIT_SIZES = (288, 96, 96)  # 480 sentences: val and test carved at 20% each


def build_model_dir(out: Path, shape: dict, device: torch.device) -> int:
    """A random-init GPT-NeoX classifier in bf16 (built on `device`, where random init is fast). Returns
    its parameter count."""
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    tok = train_tokenizer(out)
    eos = tok.eos_token_id
    cfg = GPTNeoXConfig(**shape, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos, num_labels=3)
    with torch.device(device):
        model = GPTNeoXForSequenceClassification._from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return n


class Meter:
    """Wall time and the allocator's peak per stage (wrapping the functions saeception.method.chain calls)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.peak = device, defaultdict(float), defaultdict(int)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def wrap(self, name: str) -> None:
        fn = getattr(chain, name)

        def timed(*args, **kwargs):
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            self.seconds[name] += time.perf_counter() - t0
            if self.device.type == "cuda":
                self.peak[name] = max(self.peak[name], torch.cuda.max_memory_allocated())
            return out

        setattr(chain, name, timed)


def values(model_dir: Path, data: Path, offload: bool, checkpointing: bool) -> dict:
    return {"data.name": str(data), "data.max_length": 64, "model.name": str(model_dir), "model.layer": 16,
            "model.dtype": "bfloat16", "model.gradient_checkpointing": checkpointing,
            "train.strategy": "fsdp", "train.cpu_offload": offload,
            "finetune.epochs": 1, "finetune.batch_size": 8, "finetune.lr": 1e-5, "aux.epochs": 1, "aux.batch_size": 8,
            "aux.lr": 1e-5, "sae.expansion_factor": 4, "sae.k": 32, "sae.steps": 300, "chain.cycles": 1,
            "eval.probe_max_iter": 100}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="a 2-layer model on the CPU: checks the script")
    ap.add_argument("--offload", action="store_true", help="train.cpu_offload true")
    ap.add_argument("--no-checkpointing", action="store_true", help="model.gradient_checkpointing false")
    ap.add_argument("--out", default=".", help="where fsdp_gpu.json goes (default: .)")
    args = ap.parse_args()
    device = torch.device("cpu" if args.small or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.small:
        print("no CUDA GPU: use --small to check the script on the CPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    shape = SMALL if args.small else PYTHIA_6_9B
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        n_params = build_model_dir(tmp / "model", shape, device)
        built = time.perf_counter() - t0
        data = make_text_csv(tmp / "text.csv", n=480)
        v = values(tmp / "model", data, args.offload, not args.no_checkpointing)
        if args.small:
            v.update({"model.layer": -1, "sae.steps": 50, "eval.probe_max_iter": 20})
        cfg = build_config(v)
        estimate = estimate_for(cfg, device)
        init_single_process(device)
        meter = Meter(device)
        for stage in STAGES:
            meter.wrap(stage)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        history = chain.run_chain(cfg, ChainPaths(tmp / "run"), device=device)
        wall = time.perf_counter() - t0
        peak = max(meter.peak.values(), default=0)
        reserved = torch.cuda.max_memory_reserved() if device.type == "cuda" else 0
    gib = 2 ** 30
    result = {"device": name, "parameters": n_params, "offload": args.offload, "checkpointing": not args.no_checkpointing,
              "model_build_seconds": built, "chain_seconds": wall, "cycle_seconds": [h["cycle_seconds"] for h in history],
              "stage_seconds": dict(meter.seconds), "stage_peak_gib": {k: p / gib for k, p in meter.peak.items()},
              "peak_allocated_gib": peak / gib, "peak_reserved_gib": reserved / gib, "estimate": estimate,
              "task_accuracy": [h["task_accuracy"] for h in history]}
    print(json.dumps(result, indent=2))
    if peak and estimate.get("total_gib"):
        print(f"\nestimate {estimate['total_gib']:.1f} GiB vs measured peak {peak / gib:.1f} GiB: "
              f"{100 * (estimate['total_gib'] * gib - peak) / peak:+.0f}% (goal: within 25%)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "fsdp_gpu.json").write_text(json.dumps(result, indent=2))
    return 0


def estimate_for(cfg, device: torch.device) -> dict:
    """saeception.parallel.memory's estimate (what --dry-run prints) for this config on one worker, in GiB; the
    split sizes are the carved ones (480 rows: 288 / 96 / 96)."""
    from saeception.parallel.memory import GIB, estimate

    e = estimate(cfg, 1, sizes=SPLIT_SIZES, device=device.type, distributed=True, n_classes=3)
    parts = ("weights", "grads", "optimizer", "activations", "working", "training", "sae", "evaluation", "host")
    return {**{f"{k}_gib": (getattr(e, k) or 0) / GIB for k in parts}, "total_gib": e.total / GIB,
            "peak_stage": e.peak_stage, "summary": e.summary()}


if __name__ == "__main__":
    sys.exit(main())
