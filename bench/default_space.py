"""Does the default space sharpen? The kept fraction of the codes' L1 mass (and the kept active latents)
at cycle 1 for configurations sampled from a search space the way the sweep samples them.

    python bench/default_space.py [--space default] [--n 12] [--seed 0]

Samples `--n` configurations with the sweep's seeded TPE sampler (its first trials are independent draws),
runs each chain for one cycle (cycle 0, then sharpening and retraining) and prints per config the sampled
values, sharpen_kept_fraction and sharpen_kept_active, then their range.
"""

from __future__ import annotations

import argparse
import tempfile

import optuna

from saeception.method.chain import run_chain
from saeception.sweep.space import load_space, resolve_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="default")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    space = load_space(resolve_space(args.space))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=args.seed), direction="maximize")
    kept, active = [], []
    print("| config | sharpen_kept_fraction | sharpen_kept_active |\n|---|---|---|")
    for _ in range(args.n):
        trial = study.ask()
        space.suggest(trial)
        sampled = dict(trial.params)
        cfg = space.config({**sampled, "chain.cycles": 1})
        with tempfile.TemporaryDirectory() as d:
            m = run_chain(cfg, d)[-1]
        study.tell(trial, m["val_sae_u"])
        kept.append(m["sharpen_kept_fraction"])
        active.append(m["sharpen_kept_active"])
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sampled.items())
        print(f"| {shown} | {kept[-1]:.3f} | {active[-1]:.2f} |", flush=True)
    print(f"\nkept fraction: min {min(kept):.3f}, median {sorted(kept)[len(kept) // 2]:.3f}, max {max(kept):.3f}; "
          f"kept active latents: {min(active):.2f}..{max(active):.2f}")


if __name__ == "__main__":
    main()
