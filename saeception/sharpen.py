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


def random_class_mask(n_classes: int, n_latents: int, keep: int, gen: torch.Generator) -> Tensor:
    """(C, n_latents) bool: for each class a random set of `keep` latents (the random control's choice)."""
    scores = torch.rand(n_classes, n_latents, generator=gen)
    return top_mask(scores, keep)


def sharpen(codes: Tensor, labels: Tensor, cfg: SharpenConfig, means: Tensor | None = None,
            n_classes: int | None = None, seed: int = 0) -> Tensor:
    """Keeps top_k_pct of the latents of each code, zeroing the rest:
    per_class   those with the largest class-mean code of the example's class (`means` as from
                class_means, computed here when not given);
    per_example the example's own largest;
    random      a random set of the same size per class (seeded): per_class's construction with the
                choice of latents drawn at random, the control for what the class means pick."""
    keep = n_kept(codes.shape[1], cfg.top_k_pct)
    n_classes = n_classes or int(labels.max()) + 1
    if cfg.strategy == "per_class":
        if means is None:
            means = class_means(codes, labels, n_classes)
        return codes * top_mask(means, keep)[labels]
    if cfg.strategy == "per_example":
        return codes * top_mask(codes, keep)
    if cfg.strategy == "random":
        mask = random_class_mask(n_classes, codes.shape[1], keep, torch.Generator().manual_seed(seed))
        return codes * mask.to(codes.device)[labels]
    raise ValueError(f"sharpen.strategy {cfg.strategy!r} has no codes to sharpen")


def random_directions(n: int, d: int, seed: int) -> Tensor:
    """(n, d) isotropic random unit vectors: `random_direction`, a weaker control than `random` (nothing
    like a decoded SAE code)."""
    t = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return t / t.norm(dim=-1, keepdim=True)


def kept_fraction(codes: Tensor, sharpened: Tensor) -> float:
    """Mean over examples with a non-zero code of ||sharpened||_1 / ||code||_1 (1.0: sharpening kept
    everything, the target is just the reconstruction)."""
    total = codes.abs().sum(-1)
    live = total > 0
    if not live.any():
        return float("nan")
    return float((sharpened.abs().sum(-1)[live] / total[live]).double().mean())


def is_noop(strategy: str, sae_kind: str, k: int, n_latents: int, top_k_pct: float) -> bool:
    """per_example keeps every active latent of a TopK/BatchTopK code when it keeps >= k latents."""
    return strategy == "per_example" and sae_kind in ("topk", "batchtopk") and n_kept(n_latents, top_k_pct) >= k


@torch.no_grad()
def build_targets(sae: SAE, activations: Tensor, labels: Tensor, cfg: SharpenConfig, seed: int = 0,
                  means: Tensor | None = None, n_classes: int | None = None) -> tuple[Tensor, float]:
    """(N, d) targets for the train split, row i for example id i: decode(sharpen(encode(h_i))), and
    the kept fraction of the codes' L1 mass (nan for random_direction, which has no codes)."""
    if cfg.strategy == "random_direction":
        return random_directions(len(activations), activations.shape[1], seed).to(activations.device), float("nan")
    codes = encode_all(sae, activations)
    sharpened = sharpen(codes, labels, cfg, means, n_classes, seed)
    return sae.decode(sharpened), kept_fraction(codes, sharpened)
