"""Sharpening: SAE codes -> sharpened codes -> one target vector per training example.

Targets are returned as an (N, d) tensor indexed by example id (row i belongs to example id i), so
retraining looks them up with `targets[batch["ids"]]`, never by loader position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saeception.config import SharpenConfig
from saeception.method.sae import SAE, chunk_rows
from saeception.parallel.distributed import all_reduce_


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


def uniform_scores(rows: Tensor, n_latents: int, seed: int) -> Tensor:
    """(len(rows), n_latents) float64 uniform numbers in [0, 1), a function of (seed, row id, latent) alone: the
    random control draws the same numbers whether the split is sharpened whole or a chunk of rows at a time.
    (Integer hashing modulo a prime below 2^31: every product fits in int64, so nothing overflows.)"""
    p = 2147483629  # a prime < 2^31
    latents = torch.arange(n_latents, dtype=torch.int64, device=rows.device)
    x = (rows.to(torch.int64)[:, None] * n_latents + latents[None, :]) % p
    x = (x + (seed % p) * 97 + 1) % p
    for a, b in ((48271, 11), (69621, 7), (40692, 3)):
        x = (x * a + b) % p
        x = (x ^ (x >> 13)) % p
    return x.to(torch.float64) / p


def matched_random_mask(codes: Tensor, method_mask: Tensor, rows: Tensor, seed: int) -> Tensor:
    """The random control's mask: for each example, as many of its *active* latents as the method's mask
    keeps (|method_mask ∧ code > 0|), drawn at random among its active latents without replacement with
    probability proportional to their activation (Efraimidis-Spirakis keys u^(1/z)): the count is the
    method's exactly, and the kept L1 mass of the same order as the method's (a uniform draw of 2 of 32
    active TopK latents kept a fifth of the method's mass on the default chain: BENCHMARKS.md §11)."""
    active = codes > 0
    n_keep = (method_mask & active).sum(-1, keepdim=True)
    u = uniform_scores(rows, codes.shape[1], seed).to(codes.device).clamp_min(1e-12)
    keys = torch.where(active, u.log() / codes.double().clamp_min(1e-30), torch.full_like(u, -torch.inf))
    order = keys.argsort(dim=-1, descending=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(codes.shape[1], device=codes.device).expand_as(order))
    return (ranks < n_keep) & active


def method_mask(codes: Tensor, labels: Tensor, strategy: str, keep: int, means: Tensor | None, n_classes: int,
                mode: str = "top") -> Tensor:
    """The boolean mask per_class or per_example keeps: its `keep` chosen latents (mode `top`), or every latent
    but those (mode `mask`)."""
    if strategy == "per_class":
        if means is None:
            means = class_means(codes, labels, n_classes)
        chosen = top_mask(means, keep)[labels]
    elif strategy == "per_example":
        chosen = top_mask(codes, keep)
    else:
        raise ValueError(f"sharpen strategy {strategy!r} keeps no latents of its own")
    return ~chosen if mode == "mask" else chosen


def code_source(activations: Tensor, cfg: SharpenConfig, seed: int) -> Tensor:
    """The rows whose codes sharpening reads for each train example: its own (pairing `aligned`), or another
    example's, row i taking row perm[i] of a permutation seeded by `seed` (pairing `shuffled`, the original
    SAE-ception's pairing: codes from a shuffled loader, labels in dataset order). Every rank draws the same
    permutation. The strategies without codes read their own rows."""
    if cfg.pairing == "aligned" or cfg.strategy in ("class_prototype", "random_direction"):
        return activations
    perm = torch.randperm(len(activations), generator=torch.Generator().manual_seed(seed))
    return activations[perm.to(activations.device)]


def sharpen(codes: Tensor, labels: Tensor, cfg: SharpenConfig, means: Tensor | None = None,
            n_classes: int | None = None, seed: int = 0, rows: Tensor | None = None) -> Tensor:
    """Keeps top_k_pct of the latents of each code, zeroing the rest (with `sharpen.keep: mask` the reverse:
    zeroes those and keeps the rest):
    per_class   those with the largest class-mean code of the example's class (`means` as from
                class_means, computed here when not given);
    per_example the example's own largest;
    random      the control matched to `sharpen.match` (per_class or per_example): per example, the same
                number of active latents as that strategy keeps, drawn at random among the active ones
                with probability proportional to their activation (seeded; `rows`, the examples' ids,
                default 0..N-1, make the draw independent of chunking)."""
    keep = n_kept(codes.shape[1], cfg.top_k_pct)
    n_classes = n_classes or int(labels.max()) + 1
    if cfg.strategy in ("per_class", "per_example"):
        return codes * method_mask(codes, labels, cfg.strategy, keep, means, n_classes, cfg.keep)
    if cfg.strategy == "random":
        rows = torch.arange(len(codes), device=codes.device) if rows is None else rows
        matched = method_mask(codes, labels, cfg.match, keep, means, n_classes, cfg.keep)
        return codes * matched_random_mask(codes, matched, rows, seed)
    raise ValueError(f"sharpen.strategy {cfg.strategy!r} has no codes to sharpen")


def class_prototypes(activations: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """(N, d) targets of the class_prototype control: each example's class mean of h on the split (no SAE)."""
    return class_means(activations.float(), labels, n_classes)[labels]


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


def needs_class_means(cfg: SharpenConfig) -> bool:
    """Whether sharpening reads the class means of the codes (per_class, and random matched to it)."""
    return cfg.strategy == "per_class" or (cfg.strategy == "random" and cfg.match == "per_class")


@dataclass
class Targets:
    """What sharpening hands to retraining, and what it kept."""

    targets: Tensor  # (N, d), row i for example id i
    kept_fraction: float  # mean ||sharpened||_1 / ||code||_1 (nan when the targets have no codes)
    kept_active: float  # mean number of active latents kept per example (nan likewise)
    empty_fraction: float  # share of examples whose code is all zero: their target is decode(0) (nan likewise)


@torch.no_grad()
def build_targets(sae: SAE, activations: Tensor, labels: Tensor, cfg: SharpenConfig, seed: int = 0,
                  means: Tensor | None = None, n_classes: int | None = None) -> Targets:
    """(N, d) targets for the train split, row i for example id i: decode(sharpen(encode(h_i))), the
    class mean of h (class_prototype) or random unit vectors (random_direction). A chunk of rows at a time
    (sae.chunk_rows): every step is per row once the class means are known, so the codes of the whole split
    (N x n_latents, 26 GB for 67k examples and 98,304 latents) are never held at once."""
    nan = float("nan")
    n_classes = n_classes or int(labels.max()) + 1
    if cfg.strategy == "random_direction":
        return Targets(random_directions(len(activations), activations.shape[1], seed).to(activations.device), nan, nan, nan)
    if cfg.strategy == "class_prototype":
        return Targets(class_prototypes(activations, labels, n_classes).to(sae.W_dec.dtype), nan, nan, nan)
    if needs_class_means(cfg) and means is None:
        means = encoded_class_means(sae, activations, labels, n_classes)
    targets = torch.empty_like(activations, dtype=sae.W_dec.dtype)
    ratios, active, empty = [], [], 0
    step = chunk_rows(sae.n_latents)
    for i in range(0, len(activations), step):
        codes = sae.encode(activations[i:i + step])
        rows = torch.arange(i, i + len(codes), device=codes.device)
        sharpened = sharpen(codes, labels[i:i + step], cfg, means, n_classes, seed, rows)
        targets[i:i + step] = sae.decode(sharpened)
        ratios.append(kept_ratios(codes, sharpened))
        active.append((sharpened > 0).sum(-1))
        empty += int((codes.abs().sum(-1) == 0).sum())
    none = activations.new_zeros(0)
    return Targets(targets, _mean_or_nan(torch.cat(ratios) if ratios else none),
                   _mean_or_nan(torch.cat(active) if active else none), empty / max(len(activations), 1))
