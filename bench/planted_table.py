"""Shared by the planted-dictionary SAE benchmarks (sae_schedules.py, sae_kinds.py): train one SAE per
setting and seed on a planted dictionary and print the table, mean ± sd over seeds, side by side in one run.

Data: 8192 activations in d = 32, each a sum of 4 of 128 planted unit atoms (tests/support/planted.py).
Columns: recovery of the planted atoms (each atom's best cosine with a decoder row, averaged), EV (explained
variance), L0 (active latents per example), dead (latents never firing on the training rows at the end)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
from planted import mean_max_cosine, planted  # noqa: E402

from saeception.config import SAEConfig  # noqa: E402
from saeception.method.sae import encode_all, train_sae  # noqa: E402

BASE = {"expansion_factor": 4, "k": 4}


def measure(kind: str, extra: dict, seed: int, x: torch.Tensor, atoms: torch.Tensor) -> dict[str, float]:
    sae = train_sae(x, SAEConfig(kind=kind, **{**BASE, **extra}), seed=seed)
    z = encode_all(sae, x)
    return {"recovery": mean_max_cosine(atoms, sae),
            "EV": 1 - float((sae.decode(z) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
            "L0": float((z > 0).sum(1).float().mean()), "dead": float((sae.firing_density == 0).sum())}


def main(settings: list[tuple[str, dict]], default: str, columns: tuple[str, ...]) -> None:
    """The benchmark's command line (--seeds) and table: one row per (kind, extra config) of `settings`, named
    `default` where extra is empty; `columns` of measure()'s."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    print(f"| kind | setting | {' | '.join(columns)} |  (mean ± sd over {args.seeds} seeds; data seeds = SAE seeds)")
    print("|---|---|" + "---|" * len(columns))
    for kind, extra in settings:
        rows = []
        for seed in range(args.seeds):
            x, atoms = planted(seed=seed)
            rows.append(measure(kind, extra, seed, x, atoms))
        cells = [f"{statistics.mean(c):.3f} ± {statistics.stdev(c) if len(c) > 1 else 0:.3f}"
                 for c in ([r[name] for r in rows] for name in columns)]
        name = ", ".join(f"{k}={v}" for k, v in extra.items()) or default
        print(f"| {kind} | {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")
