"""Device-speed switches shared by the stages: what pays on CUDA and is a no-op on the CPU."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, cache_enabled: bool = True):
    """bf16 autocast on CUDA (where it pays); a no-op on the CPU, where it does not. A region that is
    captured as a CUDA graph needs cache_enabled=False."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache_enabled)


def precision(device: torch.device) -> str:
    """What the stages compute in on `device` (part of cache keys: bf16 results are not fp32 results)."""
    return "cuda:bf16-autocast" if device.type == "cuda" else f"{device.type}:fp32"
