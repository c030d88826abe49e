"""SAE training schedules on a planted dictionary: the learning-rate warm-up and decay (sae.lr_warmup_steps,
sae.lr_decay) and the L1 warm-up (sae.l1_warmup_steps), each against the constant schedule, side by side in
one run, over seeds.

Data: 8192 activations in d = 32, each a sum of 4 of 128 planted unit atoms (tests/support/planted.py).
Reported per setting (mean ± sd over seeds): recovery of the planted atoms (each atom's best cosine with a
decoder row, averaged), explained variance, L0 (active latents per example; fixed at k for TopK).

    python bench/sae_schedules.py [--seeds 3]
"""

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
SETTINGS = {
    "topk": [{}, {"lr_warmup_steps": 150}, {"lr_warmup_steps": 150, "lr_decay": "cosine"},
             {"lr_warmup_steps": 150, "lr_decay": "linear"}],
    "l1": [{}, {"l1_warmup_steps": 150}, {"l1_warmup_steps": 750}, {"lr_warmup_steps": 150, "lr_decay": "cosine"},
           {"lr_warmup_steps": 150, "lr_decay": "cosine", "l1_warmup_steps": 750}],
}


def measure(kind: str, extra: dict, seed: int, x: torch.Tensor, atoms: torch.Tensor) -> tuple[float, float, float]:
    sae = train_sae(x, SAEConfig(kind=kind, **BASE, **extra), seed=seed)
    z = encode_all(sae, x)
    ev = 1 - float((sae.decode(z) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return mean_max_cosine(atoms, sae), ev, float((z > 0).sum(1).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    print(f"| kind | setting | recovery | EV | L0 |  (mean ± sd over {args.seeds} seeds; data seeds = SAE seeds)")
    print("|---|---|---|---|---|")
    for kind, settings in SETTINGS.items():
        for extra in settings:
            rows = []
            for seed in range(args.seeds):
                x, atoms = planted(seed=seed)
                rows.append(measure(kind, extra, seed, x, atoms))
            cells = [f"{statistics.mean(c):.3f} ± {statistics.stdev(c) if len(c) > 1 else 0:.3f}" for c in zip(*rows)]
            name = ", ".join(f"{k}={v}" for k, v in extra.items()) or "constant (default)"
            print(f"| {kind} | {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
