"""Benchmark 4: Ray overhead per trial on this machine, phase by phase, side by side with another commit.

    python bench/ray_overhead.py [--baseline REV] [--rounds N] [--workers 1,2]

Each round runs the same 3-trial sweep of the tests' tiny space (one trial at a time, no cache, no confirmation)
with this checkout's code and, with --baseline, with commit REV's (a `git worktree` under /tmp, run from its
directory so that its `saeception` and `trainables` are the ones imported), alternating, so that both see the
machine in the same state. Per trial, from the wall-clock tags each run leaves on its MLflow runs:

- actor: the previous trial's TorchTrainer returning -> this trial's function starting (Tune ending the
  trial, the searcher's next config, a new trial actor or a reused one); none for the first trial;
- before fit: the trial function -> `TorchTrainer.fit()` (MLflow child run, params, the trainer);
- Train start: `fit()` -> the worker loop's first line (controller, worker group, process group);
- worker set-up: the worker loop's first line -> the chain's start;
- Train end: the worker's last report -> `fit()` returning;
- fixed cost: their sum, what a trial costs besides its chain;
and per sweep the Optuna views (`timing/plots_*` on the parent run; absent before they were timed), its wall
time and the CPU time the whole machine spent while it ran (`/proc/stat`: the driver, Ray's daemons, every
trial, controller and helper actor process; run it on an otherwise idle machine). Medians over the trials (and
rounds) are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, run_sweep, trial_runs  # noqa: E402

SPACE = REPO / "tests" / "support" / "spaces" / "tiny.yaml"  # the tests' tiny space (tests/support/paths.py TINY)
PHASES = ("actor", "before_fit", "train_start", "worker_setup", "train_end", "fixed")
SWEEP = ("plots", "wall", "cpu")  # per sweep


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (all cores: user, nice, system, irq, softirq) since boot."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def measure(code: Path, workers: int, trials: int = 3) -> dict[str, list[float]]:
    """One sweep with the code under `code`; each phase's seconds per trial, and the sweep's wall time."""
    storage = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    cpus = "1" if workers == 1 else "0.5"
    cpu = busy_cpu_s()
    wall = run_sweep(["--space", str(SPACE), "--trials", str(trials), "--num-cpus", "2", "--max-concurrent", "1",
                      "--workers-per-trial", str(workers), "--cpus-per-worker", cpus, "--confirm-seeds", "0",
                      "--no-cache", "--name", f"oh{workers}"], storage, cwd=code)
    cpu = busy_cpu_s() - cpu
    client, parent, runs = trial_runs(storage)
    out: dict[str, list[float]] = {k: [] for k in (*PHASES, *SWEEP)}
    out["wall"].append(wall)
    out["cpu"].append(cpu)
    ptags = parent.data.tags
    if "timing/plots_started_at" in ptags:
        out["plots"].append(float(ptags["timing/plots_finished_at"]) - float(ptags["timing/plots_started_at"]))
    previous_end = None
    for r in sorted(runs, key=lambda r: float(r.data.tags["timing/trial_started_at"])):
        t = {k.removeprefix("timing/"): float(v) for k, v in r.data.tags.items() if k.startswith("timing/")}
        last_report = max(m.timestamp for m in client.get_metric_history(r.info.run_id, "cycle")) / 1000
        phases = {"before_fit": t["trainer_started_at"] - t["trial_started_at"],
                  "train_start": t["worker_entered_at"] - t["trainer_started_at"],
                  "worker_setup": t["worker_started_at"] - t["worker_entered_at"],
                  "train_end": t["trainer_finished_at"] - last_report}
        if previous_end is not None:
            phases["actor"] = t["trial_started_at"] - previous_end
            out["actor"].append(phases["actor"])
        previous_end = t["trainer_finished_at"]
        for k in ("before_fit", "train_start", "worker_setup", "train_end"):
            out[k].append(phases[k])
        if "actor" in phases:
            out["fixed"].append(sum(phases.values()))
    return out


def worktree(rev: str) -> Path:
    """Commit `rev` checked out under /tmp. Its top-level trainables/ and search_spaces/ install inside the
    package (pyproject's package-dir): linked there, so that its own are imported, not this checkout's."""
    path = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True, capture_output=True)
    for sub in ("trainables", "search_spaces"):
        (path / "saeception" / sub).symlink_to(path / sub, target_is_directory=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", metavar="REV", help="a commit to measure side by side (e.g. HEAD~3)")
    ap.add_argument("--rounds", type=int, default=1, help="sweeps per code and worker count (default: 1)")
    ap.add_argument("--workers", default="1,2", help="workers per trial to measure, comma-separated (default: 1,2)")
    args = ap.parse_args()
    codes = {"this checkout": REPO}
    base = worktree(args.baseline) if args.baseline else None
    if base:
        codes[f"baseline {args.baseline}"] = base
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            merged = {name: {k: [] for k in (*PHASES, *SWEEP)} for name in codes}
            for _ in range(args.rounds):
                for name, code in codes.items():  # alternating: both see the machine in the same state
                    for k, v in measure(code, workers).items():
                        merged[name][k] += v
            print(f"\n{workers} worker(s) per trial, 3 trials one at a time, {args.rounds} round(s); medians in s")
            print(f"{'code':<24}" + "".join(f"{k:>13}" for k in (*PHASES, "plots", "sweep wall", "sweep cpu")))
            for name, m in merged.items():
                print(f"{name:<24}" + "".join(f"{statistics.median(m[k]):>13.1f}" if m[k] else f"{'-':>13}"
                                              for k in (*PHASES, *SWEEP)))
    finally:
        if base:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)


if __name__ == "__main__":
    main()
