"""The sweep's plan: everything resolved from the command line before Ray starts, as small typed
dataclasses shaped like Ray's own configs (built by saeception.sweep.cli.plan, carried out by
saeception.sweep.driver). Nothing below the CLI sees its argparse.Namespace."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeception.eval.confirm import ConfirmSettings
from saeception.store.uris import redact

from .space import SearchSpace
from .vocab import RAY_DIR, TRAIN_DIR


@dataclass(frozen=True)
class Search:
    """How the study searches (cf. ray.tune.TuneConfig)."""

    trials: int = 6  # Optuna trials (a resumed sweep may raise it)
    seed: int = 0  # the TPE sampler's seed
    scheduler: str = "none"  # "none" | "asha"
    resume: bool = False  # continue the stored sweep of this name


@dataclass(frozen=True)
class Resources:
    """What each trial takes and where it runs (cf. ray.train.ScalingConfig)."""

    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_concurrent: int | None = None  # trials at once (None: as many as the cluster fits)
    address: str | None = None  # a running Ray cluster (None: start a local one)
    num_cpus: int | None = None  # the local Ray's CPUs (None: all)
    gpu_memory_gb: float | None = None  # one GPU's memory, for the memory plan (None: no check)


@dataclass(frozen=True)
class Confirmation:
    """The confirmation after the search."""

    seeds: int = 3  # fresh seeds (0: none)
    settings: ConfirmSettings = field(default_factory=ConfirmSettings)


@dataclass
class Plan:
    """Everything resolved from the CLI before Ray starts."""

    space: SearchSpace
    name: str
    storage: str  # absolute path or URI
    local_dir: Path  # where the SQLite stores live
    mlflow_uri: str
    optuna_uri: str
    search: Search = field(default_factory=Search)
    resources: Resources = field(default_factory=Resources)
    confirm: Confirmation = field(default_factory=Confirmation)
    cache_dir: str | None = None
    cache_readonly: bool = False
    experiment: str = "saeception"
    verbose: bool = False
    lock: Any = None  # held for the driver's lifetime: a second launch of this sweep exits 2
    memory: Any = None  # sweep.memory_plan.Planner: the estimates, for the dry run
    plots: bool = True  # Optuna's views of the study on the parent run, each run's trial_metrics.png (--no-plots)
    sweep_id: str = ""  # this sweep's id (its sweep.json's, identity.sweep_id): its parent run's and study's owner tag

    @property
    def resume_command(self) -> str:
        """How the user continues this sweep (printed when it stops before its end)."""
        return (f"python -m saeception.sweep --resume --name {self.name} --storage {redact(self.storage)} "
                "(and the same flags)")

    @property
    def ray_dir(self) -> str:
        return os.path.join(self.storage, RAY_DIR)

    @property
    def sweep_dir(self) -> Path:
        """This sweep's own local files (best/, confirmation, plots, best_config.yaml): per name, so sweeps of
        different names share a storage and keep their own."""
        return self.local_dir / self.name

    @property
    def train_dir(self) -> str:
        """Ray Train's runs and checkpoints of this sweep (its trials' and its confirmation's)."""
        return os.path.join(self.storage, TRAIN_DIR, self.name)
