"""What the fault tests share, Ray-free and on Ray: a tiny chain config and its cycle-0 stage keys."""

from __future__ import annotations

import torch

from saeception.config import build_config
from saeception.method.chain import cycle0_keys

# A chain small enough to build in seconds; cycle 0 only unless a test says otherwise.
FAULT_CHAIN = {"data.max_examples": 300, "model.hidden_sizes": [32, 16], "finetune.epochs": 1, "sae.steps": 40, "sae.k": 4,
               "aux.epochs": 1, "eval.probe_max_iter": 50, "chain.cycles": 0}


def stage_keys(values: dict) -> dict[str, str]:
    """The stage-cache keys of cycle 0's stages for a config's values."""
    from saeception.method.chain import _env, setup

    cfg = build_config(values)
    return cycle0_keys(cfg, _env(setup(cfg), torch.device("cpu")))
