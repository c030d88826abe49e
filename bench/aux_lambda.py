"""What λ (aux.weight) does to the aux signal, with and without aux.center, on the offline default chain.

    python bench/aux_lambda.py [--set KEY=VALUE ...]

Runs the default chain (digits + MLP, cycles 0..2) for aux.weight in {0, 1} x aux.center in {false, true},
same seed, and prints, at the last cycle: aux_cosine_before/after, the centered pair, their change, and
the science metrics (sae_u, task_accuracy). Cycle 0 is shared (same seed, nothing of aux read there).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from saeception.chain import run_chain
from saeception.config import load_config

ROWS = ("aux_cosine_before", "aux_cosine", "aux_cosine_centered_before", "aux_cosine_centered", "sae_u", "task_accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    results = {}
    for center in (False, True):
        for weight in (0.0, 1.0):
            cfg = load_config(None, [*args.overrides, f"aux.weight={weight}", f"aux.center={str(center).lower()}"])
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                history = run_chain(cfg, d)
            results[(center, weight)] = history[-1]
            print(f"center={center} λ={weight}: {time.perf_counter() - t0:.0f} s", flush=True)
    last = results[(False, 0.0)]["cycle"]
    print(f"\nlast cycle ({last}), train split for aux_*, test split for sae_u / task_accuracy:\n")
    print("| aux.center | λ | " + " | ".join(ROWS) + " | Δ aux_cosine | Δ aux_cosine_centered |")
    print("|---" * (len(ROWS) + 4) + "|")
    for (center, weight), m in results.items():
        cells = [f"{m[k]:.4f}" for k in ROWS]
        d_plain = m["aux_cosine"] - m["aux_cosine_before"]
        d_center = m["aux_cosine_centered"] - m["aux_cosine_centered_before"]
        print(f"| {str(center).lower()} | {weight:g} | " + " | ".join(cells) + f" | {d_plain:+.4f} | {d_center:+.4f} |")


if __name__ == "__main__":
    main()
