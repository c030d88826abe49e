"""Benchmark 9: the torch probe's fit, whole-set standardisation vs row blocks, and against an earlier
version of saeception/eval/probe.py, side by side in one process on the same codes.

    PYTHONPATH=. python bench/probe_blocks.py [--against REV] [--repeats N] [--threads N]

Codes: TopK-like sparse codes (tests/unit/eval/test_evaluate.py::sparse_codes' construction: k active latents per
row, class-dependent) at two shapes: the default chain's (1,077 x 512, 10 classes) and a wide one
(12,000 x 6,144, 3 classes). Per variant: wall seconds of fit_torch(x, y, 500) (min and median of
--repeats after one warm-up), and the largest |weight difference| to the whole-set fit. Variants:
"whole" (the standardised x held once, what a probe narrower than STANDARDIZED_ELEMENTS gets), "blocks"
(STANDARDIZED_ELEMENTS lowered so x is standardised per block of 1,024 rows at every evaluation: what a
98,304-latent probe gets), and with --against REV the probe.py of that git revision (loaded from
`git show REV:saeception/eval/probe.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import saeception.eval.probe as probe

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_evaluate import sparse_codes  # noqa: E402

SHAPES = {"default": (1077, 512, 16, 10), "wide": (12000, 6144, 32, 3)}


def load_probe_at(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:saeception/eval/probe.py"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout
    path = Path(tempfile.mkdtemp()) / "probe_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("probe_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed(fit, x, y, repeats: int):
    fit(x, y, 500)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fit(x, y, 500)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", help="a git revision whose probe.py is timed beside this one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old = load_probe_at(args.against) if args.against else None
    print(f"torch {torch.__version__}, {args.threads} thread(s), fit_torch(x, y, max_iter=500)")
    for name, (n, d, k, classes) in SHAPES.items():
        x, y = sparse_codes(n, d, k, classes, 0.5, seed=0)
        variants = {"whole": probe.fit_torch}

        def blocked(x, y, it):
            saved = probe.STANDARDIZED_ELEMENTS
            probe.STANDARDIZED_ELEMENTS = 1024 * x.shape[1]
            try:
                return probe.fit_torch(x, y, it)
            finally:
                probe.STANDARDIZED_ELEMENTS = saved

        variants["blocks"] = blocked
        if old is not None:
            variants[f"at {args.against}"] = old.fit_torch
        results = {v: timed(fit, x, y, args.repeats) for v, fit in variants.items()}
        ref = results["whole"][2].weight
        for v, (lo, med, fitted) in results.items():
            diff = (fitted.weight - ref).abs().max().item()
            print(f"{name:8s} {n} x {d}, {classes} classes  {v:16s} {lo:7.2f} s min  {med:7.2f} s median  "
                  f"max |dW| vs whole {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
