"""What λ (aux.weight) does to the aux signal, with and without aux.center, on the offline default chain.

    python bench/aux_lambda.py [--seeds 5] [--set KEY=VALUE ...]

Runs the default chain (digits + MLP, cycles 0..2) for aux.weight in {0, 1} x aux.center in {false, true}
on seeds 1..N (cycle 0 is shared through a stage cache: nothing of aux is read there), and prints, at the
last cycle, mean and 95% t interval over seeds of: aux_cosine_before/after, the centered pair, their
change, and the science metrics (sae_u, task_accuracy).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from scipy import stats

from saeception.config import load_config
from saeception.method.chain import run_chain
from saeception.store.cache import StageCache

ROWS = ("aux_cosine_before", "aux_cosine", "aux_cosine_centered_before", "aux_cosine_centered", "sae_u", "task_accuracy")


def _ci(xs: list[float]) -> str:
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return f"{mean:.4f}"
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return f"{mean:.4f} ± {half:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    results: dict[tuple[bool, float], list[dict]] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = StageCache(Path(cache_dir))
        for seed in range(1, args.seeds + 1):
            for center in (False, True):
                for weight in (0.0, 1.0):
                    cfg = load_config(None, [*args.overrides, f"seed={seed}", f"aux.weight={weight}",
                                             f"aux.center={str(center).lower()}"])
                    t0 = time.perf_counter()
                    with tempfile.TemporaryDirectory() as d:
                        history = run_chain(cfg, d, cache=cache)
                    results.setdefault((center, weight), []).append(history[-1])
                    print(f"seed {seed} center={center} λ={weight}: {time.perf_counter() - t0:.0f} s", flush=True)
    last = results[(False, 0.0)][0]["cycle"]
    print(f"\nlast cycle ({last}), {args.seeds} seeds, mean ± 95% t half-width; train split for aux_*, test split for "
          "sae_u / task_accuracy:\n")
    print("| aux.center | λ | " + " | ".join(ROWS) + " | Δ aux_cosine | Δ aux_cosine_centered |")
    print("|---" * (len(ROWS) + 4) + "|")
    for (center, weight), ms in results.items():
        cells = [_ci([m[k] for m in ms]) for k in ROWS]
        d_plain = _ci([m["aux_cosine"] - m["aux_cosine_before"] for m in ms])
        d_center = _ci([m["aux_cosine_centered"] - m["aux_cosine_centered_before"] for m in ms])
        print(f"| {str(center).lower()} | {weight:g} | " + " | ".join(cells) + f" | {d_plain} | {d_center} |")


if __name__ == "__main__":
    main()
