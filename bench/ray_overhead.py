"""Benchmark 4: Ray overhead per trial on this machine, for 1 and 2 DDP workers per trial.

    python bench/ray_overhead.py

Per trial: seconds from the trial function's start to the moment its worker starts the chain
("start overhead": trial driver, Train controller, worker group, process group), and from the worker's
last report to the TorchTrainer returning ("end overhead"). A tiny chain keeps the work itself small.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, run_sweep, trial_runs  # noqa: E402

SPACE = REPO / "tests" / "support" / "spaces" / "tiny.yaml"  # the tests' tiny space (tests/support/paths.py TINY)


def measure(workers: int, trials: int = 3) -> dict[str, float]:
    storage = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    cpus = "1" if workers == 1 else "0.5"
    wall = run_sweep(["--space", str(SPACE), "--trials", str(trials), "--num-cpus", "2", "--workers-per-trial",
                      str(workers), "--cpus-per-worker", cpus, "--confirm-seeds", "0", "--no-cache", "--name", f"oh{workers}"],
                     storage)
    client, _, runs = trial_runs(storage)
    start, end, work, parts = [], [], [], {"driver": [], "train": [], "worker": []}
    for r in runs:
        tags = r.data.tags
        t_trial, t_worker = float(tags["timing/trial_started_at"]), float(tags["timing/worker_started_at"])
        t_fit, t_entered = float(tags["timing/trainer_started_at"]), float(tags["timing/worker_entered_at"])
        parts["driver"].append(t_fit - t_trial)  # trial function: MLflow child run, params, TorchTrainer
        parts["train"].append(t_entered - t_fit)  # Train controller, worker group, process group
        parts["worker"].append(t_worker - t_entered)  # worker loop: imports, config, cache
        t_done = float(tags["timing/trainer_finished_at"])
        last_report = max(m.timestamp for m in client.get_metric_history(r.info.run_id, "cycle")) / 1000
        start.append(t_worker - t_trial)
        end.append(t_done - last_report)
        work.append(last_report - t_worker)
    return {"workers": workers, "trials": len(runs), "start_s": statistics.median(start), "end_s": statistics.median(end),
            "work_s": statistics.median(work), "sweep_wall_s": wall,
            **{f"{k}_s": statistics.median(v) for k, v in parts.items()}}


def main() -> None:
    rows = [measure(1), measure(2)]
    print("workers  trials  start overhead (median s)  end overhead (median s)  chain work (s)  sweep wall (s)")
    for r in rows:
        print(f"{r['workers']:>7}  {r['trials']:>6}  {r['start_s']:>25.1f}  {r['end_s']:>23.1f}  {r['work_s']:>14.1f}  {r['sweep_wall_s']:>14.1f}")
    print("start overhead split (medians): trial function before fit / Train start to the worker loop / worker loop set-up")
    for r in rows:
        print(f"{r['workers']} worker(s): {r['driver_s']:.1f} s / {r['train_s']:.1f} s / {r['worker_s']:.1f} s")
    for r in rows:
        total = r["start_s"] + r["end_s"]
        print(f"{r['workers']} worker(s): {total:.1f} s of Ray overhead per trial (goal: <= 10 s): {'met' if total <= 10 else 'not met'}")


if __name__ == "__main__":
    main()
