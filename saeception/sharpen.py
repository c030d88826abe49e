"""Sharpening: SAE codes -> sharpened codes -> one target vector per training example.

Targets are returned as an (N, d) tensor indexed by example id (row i belongs to example id i), so
retraining looks them up with `targets[batch["ids"]]`, never by loader position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import SharpenConfig
from .distributed import all_reduce_
from .sae import SAE, chunk_rows


def n_kept(n_latents: int, top_k_pct: float) -> int:
    """How many latents top_k_pct keeps: round(n * pct / 100), at least 1."""
    return max(1, min(n_latents, round(n_latents * top_k_pct / 100.0)))


def class_means(codes: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """(C, n_latents) mean code per class. Under torch.distributed each rank passes its own shard and
    the sums and counts are all-reduced, so every rank gets the means over all shards."""
    return _means([(codes, labels)], n_classes, codes.shape[1], codes.dtype, codes.device)


@torch.no_grad()
def encoded_class_means(sae: SAE, activations: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """class_means(encode(activations), labels), encoding a chunk of rows at a time (sae.chunk_rows): the
    codes of the whole split are never held at once."""
    step = chunk_rows(sae.n_latents)
    chunks = ((sae.encode(activations[i:i + step]), labels[i:i + step]) for i in range(0, len(activations), step))
    return _means(chunks, n_classes, sae.n_latents, sae.W_enc.dtype, activations.device)


def _means(chunks, n_classes: int, n_latents: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    sums = torch.zeros(n_classes, n_latents, dtype=torch.float64, device=device)
    counts = torch.zeros(n_classes, dtype=torch.float64, device=device)
    for codes, labels in chunks:
        sums.index_add_(0, labels, codes.double())
        counts += torch.bincount(labels, minlength=n_classes).double().to(device)
    all_reduce_(sums)
    all_reduce_(counts)
    return (sums / counts.clamp_min(1)[:, None]).to(dtype)


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
    return _mean_or_nan(kept_ratios(codes, sharpened))


def kept_ratios(codes: Tensor, sharpened: Tensor) -> Tensor:
    """||sharpened||_1 / ||code||_1 of each example with a non-zero code."""
    total = codes.abs().sum(-1)
    live = total > 0
    return sharpened.abs().sum(-1)[live] / total[live]


def _mean_or_nan(ratios: Tensor) -> float:
    return float(ratios.double().mean()) if len(ratios) else float("nan")


def is_noop(strategy: str, sae_kind: str, k: int, n_latents: int, top_k_pct: float) -> bool:
    """per_example keeps every active latent of a TopK/BatchTopK code when it keeps >= k latents."""
    return strategy == "per_example" and sae_kind in ("topk", "batchtopk") and n_kept(n_latents, top_k_pct) >= k


@torch.no_grad()
def build_targets(sae: SAE, activations: Tensor, labels: Tensor, cfg: SharpenConfig, seed: int = 0,
                  means: Tensor | None = None, n_classes: int | None = None) -> tuple[Tensor, float]:
    """(N, d) targets for the train split, row i for example id i: decode(sharpen(encode(h_i))), and
    the kept fraction of the codes' L1 mass (nan for random_direction, which has no codes). A chunk of
    rows at a time (sae.chunk_rows): every step is per row once the class means are known, so the codes
    of the whole split (N x n_latents, 26 GB for 67k examples and 98,304 latents) are never held at once."""
    if cfg.strategy == "random_direction":
        return random_directions(len(activations), activations.shape[1], seed).to(activations.device), float("nan")
    n_classes = n_classes or int(labels.max()) + 1
    if cfg.strategy == "per_class" and means is None:
        means = encoded_class_means(sae, activations, labels, n_classes)
    targets = torch.empty_like(activations, dtype=sae.W_dec.dtype)
    ratios = []
    step = chunk_rows(sae.n_latents)
    for i in range(0, len(activations), step):
        codes = sae.encode(activations[i:i + step])
        sharpened = sharpen(codes, labels[i:i + step], cfg, means, n_classes, seed)
        targets[i:i + step] = sae.decode(sharpened)
        ratios.append(kept_ratios(codes, sharpened))
    return targets, _mean_or_nan(torch.cat(ratios) if ratios else activations.new_zeros(0))
