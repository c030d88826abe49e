"""Sharpening: SAE codes -> sharpened codes -> one target vector per training example.

Targets are returned as an (N, d) tensor indexed by example id (row i belongs to example id i), so
retraining looks them up with `targets[batch["ids"]]`, never by loader position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import SharpenConfig
from .distributed import all_reduce_
from .sae import SAE, encode_all


def n_kept(n_latents: int, top_k_pct: float) -> int:
    """How many latents top_k_pct keeps: round(n * pct / 100), at least 1."""
    return max(1, min(n_latents, round(n_latents * top_k_pct / 100.0)))


def class_means(codes: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """(C, n_latents) mean code per class. Under torch.distributed each rank passes its own shard and
    the sums and counts are all-reduced, so every rank gets the means over all shards."""
    sums = torch.zeros(n_classes, codes.shape[1], dtype=torch.float64, device=codes.device)
    sums.index_add_(0, labels, codes.double())
    counts = torch.bincount(labels, minlength=n_classes).double().to(codes.device)
    all_reduce_(sums)
    all_reduce_(counts)
    return (sums / counts.clamp_min(1)[:, None]).to(codes.dtype)


def top_mask(scores: Tensor, keep: int) -> Tensor:
    """Boolean mask of the `keep` largest entries of each row."""
    index = scores.topk(keep, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index, True)


def sharpen(codes: Tensor, labels: Tensor, cfg: SharpenConfig, means: Tensor | None = None) -> Tensor:
    """Keeps the top-k% latents of each code: those with the largest class-mean code of the example's
    class (per_class; `means` as from class_means, computed here when not given) or the example's own
    largest (per_example). Other latents are zeroed. "random" has no codes to sharpen: see random_targets."""
    keep = n_kept(codes.shape[1], cfg.top_k_pct)
    if cfg.strategy == "per_class":
        if means is None:
            means = class_means(codes, labels, int(labels.max()) + 1)
        return codes * top_mask(means, keep)[labels]
    if cfg.strategy == "per_example":
        return codes * top_mask(codes, keep)
    raise ValueError(f"sharpen.strategy {cfg.strategy!r} has no codes to sharpen")


def random_targets(n: int, d: int, seed: int) -> Tensor:
    """(n, d) random unit vectors: the random-target control."""
    t = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return t / t.norm(dim=-1, keepdim=True)


@torch.no_grad()
def build_targets(sae: SAE, activations: Tensor, labels: Tensor, cfg: SharpenConfig, seed: int = 0,
                  means: Tensor | None = None) -> Tensor:
    """(N, d) targets for the train split, row i for example id i: decode(sharpen(encode(h_i)))."""
    if cfg.strategy == "random":
        return random_targets(len(activations), activations.shape[1], seed).to(activations.device)
    codes = encode_all(sae, activations)
    return sae.decode(sharpen(codes, labels, cfg, means))
