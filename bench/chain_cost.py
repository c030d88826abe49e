"""The offline default chain's wall time at two versions, side by side in one run (alternating), and the
cost of starting the local Ray with and without its dashboard.

    python bench/chain_cost.py --old-tree DIR [--repeats 2]

DIR is a checkout of the older version (e.g. `git worktree add /tmp/old eb1e9bf`). Each chain runs in a
fresh interpreter (`python -m saeception.run` with default settings) with the tree on PYTHONPATH, so the two
versions never share a process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def chain_seconds(tree: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "saeception.run", "--out", out], cwd=tree, env=env, check=True,
                       capture_output=True)
        return time.perf_counter() - t0


def ray_start_seconds(dashboard: bool) -> float:
    code = ("import time, ray; t0 = time.perf_counter(); "
            f"ray.init(num_cpus=2, include_dashboard={dashboard}, log_to_driver=False); "
            "print(time.perf_counter() - t0); ray.shutdown()")
    with tempfile.TemporaryDirectory(prefix="rb", dir="/tmp") as tmp:
        env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-tree", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.repeats):
        for name, tree in (("old", args.old_tree), ("new", REPO)):
            times[name].append(chain_seconds(tree))
            print(f"{name} chain: {times[name][-1]:.1f} s", flush=True)
    old, new = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"\ndefault chain (median of {args.repeats}): old {old:.1f} s, new {new:.1f} s, new/old {new / old:.2f}")
    ray = {d: statistics.median(ray_start_seconds(d) for _ in range(args.repeats)) for d in (False, True)}
    print(f"local ray.init: without dashboard {ray[False]:.1f} s, with {ray[True]:.1f} s "
          f"(+{ray[True] - ray[False]:.1f} s per sweep)")


if __name__ == "__main__":
    main()
