"""The sweep's plan: everything resolved from the command line before Ray starts (built by
saeception.sweep.cli.plan, carried out by saeception.sweep.driver)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..confirm import ConfirmSettings, with_controls
from .space import SearchSpace


@dataclass
class Plan:
    """Everything resolved from the CLI before Ray starts."""

    space: SearchSpace
    name: str
    storage: str  # absolute path or URI
    local_dir: Path  # where the SQLite stores live
    mlflow_uri: str
    optuna_uri: str
    args: argparse.Namespace
    cache_dir: str | None = None
    experiment: str = "saeception"
    lock: Any = None  # held for the driver's lifetime: a second launch of this sweep exits 2
    memory: Any = None  # sweep.memory_plan.Planner: the estimates, for the dry run

    @property
    def ray_dir(self) -> str:
        return os.path.join(self.storage, "ray")

    @property
    def confirm(self) -> ConfirmSettings:
        """The confirmation's settings: the space's `confirm:` section, its controls overridden by
        --confirm-controls."""
        return with_controls(self.space.confirm, self.args.confirm_controls)


