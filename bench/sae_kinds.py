"""The JumpReLU SAE kind and dead-latent resampling on a planted dictionary, against TopK, side by side in
one run, over seeds: how sae.l0_coefficient sets JumpReLU's L0 and how well it then recovers the planted
atoms (explained variance compared at about the same L0), and whether sae.resample_every changes anything.

Data: 8192 activations in d = 32, each a sum of 4 of 128 planted unit atoms (tests/support/planted.py).
Reported per setting (mean ± sd over seeds): recovery of the planted atoms (each atom's best cosine with a
decoder row, averaged), explained variance, L0 (active latents per example), dead latents (never firing on
the training rows at the end).

    python bench/sae_kinds.py [--seeds 3]
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
SETTINGS = [
    ("topk", {}),
    ("topk", {"lr": 3e-3}),
    ("jumprelu", {"l0_coefficient": 0.03}),
    ("jumprelu", {"l0_coefficient": 0.1}),
    ("jumprelu", {"l0_coefficient": 0.3}),
    ("jumprelu", {"l0_coefficient": 0.03, "lr": 3e-3}),
    ("jumprelu", {"l0_coefficient": 0.1, "lr": 3e-3}),
    # Dead-latent resampling where latents can die: 16x latents (512 for 128 atoms), with and without AuxK.
    ("topk", {"expansion_factor": 16, "auxk_coefficient": 0}),
    ("topk", {"expansion_factor": 16, "auxk_coefficient": 0, "resample_every": 250}),
    ("l1", {"expansion_factor": 16}),
    ("l1", {"expansion_factor": 16, "resample_every": 250}),
    ("jumprelu", {"expansion_factor": 16, "l0_coefficient": 0.1, "lr": 3e-3}),
    ("jumprelu", {"expansion_factor": 16, "l0_coefficient": 0.1, "lr": 3e-3, "resample_every": 250}),
]


def measure(kind: str, extra: dict, seed: int, x: torch.Tensor, atoms: torch.Tensor) -> tuple[float, ...]:
    sae = train_sae(x, SAEConfig(kind=kind, **{**BASE, **extra}), seed=seed)
    z = encode_all(sae, x)
    ev = 1 - float((sae.decode(z) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return mean_max_cosine(atoms, sae), ev, float((z > 0).sum(1).float().mean()), float((sae.firing_density == 0).sum())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    print(f"| kind | setting | recovery | EV | L0 | dead |  (mean ± sd over {args.seeds} seeds; data seeds = SAE seeds)")
    print("|---|---|---|---|---|---|")
    for kind, extra in SETTINGS:
        rows = []
        for seed in range(args.seeds):
            x, atoms = planted(seed=seed)
            rows.append(measure(kind, extra, seed, x, atoms))
        cells = [f"{statistics.mean(c):.3f} ± {statistics.stdev(c) if len(c) > 1 else 0:.3f}" for c in zip(*rows)]
        name = ", ".join(f"{k}={v}" for k, v in extra.items()) or "defaults"
        print(f"| {kind} | {name} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
