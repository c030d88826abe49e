"""What `confirm.sae_seeds` costs and buys, on the offline default chain, side by side in one run.

    python bench/sae_per_arm.py [--seeds 2] [--sae-seeds 0 2 4]

For each confirmation seed, runs every arm (`run_arms`, as a confirmation trial does) once per `--sae-seeds`
value and times it; from the largest value's extra SAEs, the pooled SAE-seed sd of each headline metric (within
each arm and seed), and what it means for a paired difference: its SAE-noise sd sqrt(2/K) x sd with K = 1 +
sae_seeds SAEs averaged per arm. The default space's fixed values with its searched params at their defaults.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from saeception.eval.confirm import pooled_sd, run_arms
from saeception.sweep.space import load_space, resolve_space

METRICS = ("sae_u", "sae_csi", "task_accuracy", "loss_recovered")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--sae-seeds", type=int, nargs="+", default=[0, 2, 4])
    args = ap.parse_args()
    values = load_space(resolve_space("default")).fixed
    times: dict[int, list[float]] = {k: [] for k in args.sae_seeds}
    groups: list[list[dict]] = []
    for seed in range(1, args.seeds + 1):
        for k in args.sae_seeds:
            spreads: dict[str, list[dict]] = {}
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                h = run_arms(values, seed, Path(d), sae_seeds=k, on_spread=spreads.__setitem__)
                times[k].append(time.perf_counter() - t0)
            if k == max(args.sae_seeds):
                groups += [[h[a][-1], *spreads[a]] for a in spreads]
            print(f"seed {seed}, sae_seeds {k}: {times[k][-1]:.1f} s for {len(h)} arms", flush=True)
    base = sum(times[min(args.sae_seeds)]) / args.seeds
    print("\n| sae_seeds | SAEs per arm | s per seed (all arms) | x sae_seeds " + str(min(args.sae_seeds)) + " |\n|---|---|---|---|")
    for k in args.sae_seeds:
        t = sum(times[k]) / args.seeds
        print(f"| {k} | {k + 1} | {t:.1f} | {t / base:.2f} |")
    print(f"\npooled SAE-seed sd ({len(groups)} arm runs x {max(args.sae_seeds) + 1} SAEs) and a paired difference's "
          "SAE-noise sd with K SAEs per arm:\n")
    ks = [k + 1 for k in args.sae_seeds]
    print("| metric | SAE-seed sd | " + " | ".join(f"K={k}" for k in ks) + " |\n|---|---|" + "---|" * len(ks))
    for m in METRICS:
        sd, _ = pooled_sd([[float(x[m]) for x in g if isinstance(x.get(m), (int, float))] for g in groups])
        print(f"| {m} | {sd:.4f} | " + " | ".join(f"{math.sqrt(2 / k) * sd:.4f}" for k in ks) + " |")


if __name__ == "__main__":
    main()
