"""Benchmark 4c: what Ray Train's worker health check costs in CPU at a given interval.

    python bench/health_check_cpu.py [--intervals 0.2,2] [--run-s S]

For each interval (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S; a trial sets 0.2, Ray Train's default is 2), a fresh local
Ray (2 CPUs, no dashboard) runs one TorchTrainer of one worker whose loop only sleeps S seconds, and the CPU
seconds of its controller and worker processes (`/proc/<pid>/stat`, sampled every 0.5 s) are printed: what is left
beside their start-up is the polling. Each interval runs in its own process (Ray Train reads the variable once).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time


def cpu_titled(title: str) -> float:
    """CPU seconds of the processes whose command line starts with `title`."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(title.encode()):
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def one(interval: str, run_s: float) -> None:
    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = interval
    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    def loop(config):
        time.sleep(config["run_s"])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    most = {"controller": 0.0, "worker": 0.0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            most["controller"] = max(most["controller"], cpu_titled("ray::TrainController"))
            most["worker"] = max(most["worker"], cpu_titled("ray::RayTrainWorker"))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    try:
        TorchTrainer(loop, train_loop_config={"run_s": run_s}, scaling_config=ray.train.ScalingConfig(num_workers=1),
                     run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="bench-hc-"))).fit()
    finally:
        done.set()
        sampler.join()
        ray.shutdown()
    print(f"{interval:>10}{time.perf_counter() - t0:>10.1f}{most['controller']:>18.1f}{most['worker']:>14.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--intervals", default="0.2,2")
    p.add_argument("--run-s", type=float, default=20.0)
    p.add_argument("--one", help=argparse.SUPPRESS)  # a single interval, in its own process
    a = p.parse_args()
    if a.one:
        one(a.one, a.run_s)
        return
    print(f"{'interval s':>10}{'fit s':>10}{'controller CPU-s':>18}{'worker CPU-s':>14}")
    for interval in a.intervals.split(","):
        subprocess.run([sys.executable, __file__, "--one", interval, "--run-s", str(a.run_s)], check=True,
                       env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


if __name__ == "__main__":
    main()
