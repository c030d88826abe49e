"""The few torch.distributed helpers the stages share; every one is a no-op in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_single_process(device: torch.device) -> None:
    """A process group of one, for a plain process that runs train.strategy fsdp (FSDP needs a group even
    alone: its CPU offload and mixed precision are what a single GPU gains). No-op inside a group."""
    if not is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_rows(t: Tensor) -> Tensor:
    """Concatenates every rank's (n_r, ...) tensor along dim 0, in rank order (n_r may differ)."""
    if not is_distributed():
        return t
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def broadcast_(t: Tensor, src: int = 0) -> Tensor:
    if is_distributed():
        dist.broadcast(t, src)
    return t


def all_reduce_(t: Tensor) -> Tensor:
    """Sums `t` over ranks in place."""
    if is_distributed():
        dist.all_reduce(t)
    return t


def finite_everywhere(t: Tensor) -> bool:
    """Whether `t` (a scalar) is finite on every rank: one all-reduce of its copy, so every rank gets the
    same answer and stops at the same check (a NaN on one rank alone would leave the others waiting in
    their next collective until the process-group timeout)."""
    return bool(torch.isfinite(all_reduce_(t.detach().clone())))


def broadcast_object(obj):
    """Rank 0's picklable object on every rank (metrics dicts: plain numbers and strings)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
