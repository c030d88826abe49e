"""Clustering metrics in torch, on the device of their inputs, with scikit-learn's definitions:
k-means (KMeans: greedy k-means++ init, Lloyd iterations, best of n_init by inertia), the adjusted
Rand index, and the silhouette, Davies-Bouldin and Calinski-Harabasz scores of a labelling.

Random draws (k-means++) come from a CPU generator seeded by `seed`, so the same seed picks the same
starting points on every device. Sums over examples are matrix products with a one-hot matrix rather
than scatter-adds, which are not deterministic on CUDA. Distances for k-means and the silhouette are
float32 (||a||^2 - 2 a.b + ||b||^2, as scikit-learn computes them); Davies-Bouldin and
Calinski-Harabasz are linear in N and computed in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _sq_dists(a: Tensor, b: Tensor, a_sq: Tensor, b_sq: Tensor) -> Tensor:
    return (a_sq[:, None] - 2 * a @ b.T + b_sq[None, :]).clamp_min_(0)


def _sq_norms(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=1).square()


def _to_centers(x: Tensor, x_sq: Tensor, centers: Tensor) -> Tensor:
    """(N, k) squared distances; the k x N product is the faster one on the CPU (a skinny right operand
    makes MKL's product several times slower)."""
    return _sq_dists(centers, x, _sq_norms(centers), x_sq).T


def _plusplus(x: Tensor, x_sq: Tensor, k: int, g: torch.Generator) -> Tensor:
    """k-means++ as scikit-learn runs it: each new centre is the best of 2 + log(k) candidates drawn
    with probability proportional to D^2 (the one that lowers the potential most)."""
    n, trials = len(x), 2 + int(math.log(k))
    first = torch.randint(n, (1,), generator=g).to(x.device)
    closest = _sq_dists(x[first], x, x_sq[first], x_sq)[0]
    chosen, potential = [first], closest.sum()
    for _ in range(1, k):
        draws = torch.rand(trials, generator=g, dtype=torch.float64).to(x.device) * potential
        candidates = torch.searchsorted(closest.double().cumsum(0), draws).clamp_max_(n - 1)
        dists = torch.minimum(closest, _sq_dists(x[candidates], x, x_sq[candidates], x_sq))
        potentials = dists.sum(1)
        best = potentials.argmin()
        closest, potential = dists[best], potentials[best]
        chosen.append(candidates[best, None])
    return x[torch.cat(chosen)]


def _update(x: Tensor, labels: Tensor, dists: Tensor, k: int) -> Tensor:
    """New centres from `labels`; an empty cluster takes the example farthest from its own centre,
    as scikit-learn relocates them."""
    onehot = F.one_hot(labels, k).to(x.dtype)
    sums, counts = onehot.T @ x, onehot.sum(0)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        far = dists.gather(1, labels[:, None]).squeeze(1).topk(len(empty)).indices.tolist()
        for cluster, i in zip(empty, far):
            sums[labels[i]] -= x[i]
            counts[labels[i]] -= 1
            sums[cluster], counts[cluster] = x[i], 1
    return sums / counts.clamp_min(1)[:, None]


def kmeans(x: Tensor, k: int, seed: int, n_init: int = 3, max_iter: int = 300, tol: float = 1e-4) -> Tensor:
    """(N,) cluster ids in [0, k) of the lowest-inertia of `n_init` seeded runs; x (N, d) float.
    Stops when the labels repeat or the total squared centre shift is <= tol x the mean variance."""
    x = x - x.mean(0)  # as scikit-learn: centred data loses less precision in the distance formula
    x_sq = _sq_norms(x)
    tol = float(x_sq.sum()) / x.numel() * tol  # the mean over features of their (population) variance
    g = torch.Generator().manual_seed(seed)
    best_labels, best_inertia = None, math.inf
    for _ in range(n_init):
        centers = _plusplus(x, x_sq, k, g)
        previous, settled = None, False
        for _ in range(max_iter):
            dists = _to_centers(x, x_sq, centers)
            labels = dists.argmin(1)
            new = _update(x, labels, dists, k)
            shift, centers = float((new - centers).pow(2).sum()), new
            if previous is not None and torch.equal(labels, previous):
                settled = True
                break
            if shift <= tol:
                break
            previous = labels
        dists = _to_centers(x, x_sq, centers)
        if not settled:  # as scikit-learn: one more assignment, so labels match the final centres
            labels = dists.argmin(1)
        inertia = float(dists.gather(1, labels[:, None]).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def adjusted_rand(a: Tensor, b: Tensor) -> float:
    """Adjusted Rand index of two labellings (N,), from the pair confusion matrix as scikit-learn."""
    _, a = torch.unique(a, return_inverse=True)
    _, b = torch.unique(b, return_inverse=True)
    ka, kb, n = int(a.max()) + 1, int(b.max()) + 1, len(a)
    table = torch.bincount(a * kb + b, minlength=ka * kb).view(ka, kb).double()
    squares = table.pow(2).sum()
    tp = squares - n
    fp = (table @ table.sum(0)).sum() - squares
    fn = (table.T @ table.sum(1)).sum() - squares
    tn = n ** 2 - fp - fn - squares
    if fn == 0 and fp == 0:
        return 1.0
    return float(2 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def _classes(labels: Tensor) -> tuple[Tensor, int]:
    _, y = torch.unique(labels, return_inverse=True)
    return y, int(y.max()) + 1


def silhouette(x: Tensor, labels: Tensor, block: int = 1 << 24) -> float:
    """Mean silhouette coefficient of the labelling; nan unless 2 <= classes <= N - 1 (where
    scikit-learn raises). Distances in row blocks of at most `block` entries."""
    y, k = _classes(labels)
    n = len(x)
    if not 2 <= k <= n - 1:
        return float("nan")
    x = x.float()
    onehot = F.one_hot(y, k).to(x.dtype)
    counts = onehot.sum(0)
    x_sq = _sq_norms(x)
    rows = max(1, block // n)
    scores = []
    for i in range(0, n, rows):
        j = min(i + rows, n)
        d = _sq_dists(x[i:j], x, x_sq[i:j], x_sq).sqrt_()
        d[torch.arange(j - i, device=x.device), torch.arange(i, j, device=x.device)] = 0
        sums = d @ onehot
        own = y[i:j, None]
        a = sums.gather(1, own).squeeze(1) / (counts[own.squeeze(1)] - 1)
        b = (sums / counts).scatter_(1, own, math.inf).min(1).values
        # A singleton's a is 0/0: its score is 0, as is a = b = 0 (scikit-learn's nan_to_num).
        scores.append(torch.nan_to_num((b - a) / torch.maximum(a, b), nan=0.0))
    return float(torch.cat(scores).double().mean())


# Float64 temporaries over wide codes are made a block of about this many elements at a time (512 MiB):
# partition_scores by rows, the per-latent metrics (saeception.eval.metrics) by columns.
BLOCK_ELEMENTS = 1 << 26


def partition_scores(x: Tensor, labels: Tensor) -> dict[str, float]:
    """davies_bouldin: mean over classes of the largest (s_i + s_j) / d(c_i, c_j), s the mean distance
    to the centroid c; calinski_harabasz: between- over within-class dispersion x (N - k) / (k - 1).
    float64, two passes over x; both nan unless 2 <= classes <= N - 1 (where scikit-learn raises)."""
    y, k = _classes(labels)
    n = len(x)
    if not 2 <= k <= n - 1:
        return {"davies_bouldin": float("nan"), "calinski_harabasz": float("nan")}
    onehot = F.one_hot(y, k).double()
    counts = onehot.sum(0)
    # float64 a block of rows at a time (BLOCK_ELEMENTS): never a whole float64 copy of wide codes.
    step = max(1, BLOCK_ELEMENTS // max(x.shape[1], 1))
    blocks = [slice(i, i + step) for i in range(0, n, step)]
    sums = sum(onehot[b].T @ x[b].double() for b in blocks)
    total = sum(x[b].double().sum(0) for b in blocks)
    centroids = sums / counts[:, None]
    # each example's squared distance to its centroid
    gaps = torch.cat([_sq_norms(x[b].double() - centroids[y[b]]) for b in blocks])

    spread = (onehot.T @ gaps.sqrt()) / counts
    between = torch.cdist(centroids[None], centroids[None], compute_mode="donot_use_mm_for_euclid_dist")[0]
    if bool((spread.abs() <= 1e-8).all()) or bool((between.abs() <= 1e-8).all()):
        db = 0.0
    else:
        between[between == 0] = math.inf
        db = float(((spread[:, None] + spread[None, :]) / between).max(1).values.mean())

    dispersion = (counts * _sq_norms(centroids - total / n)).sum()
    within = gaps.sum()
    ch = 1.0 if within == 0 else float(dispersion * (n - k) / (within * (k - 1)))
    return {"davies_bouldin": db, "calinski_harabasz": ch}


def davies_bouldin(x: Tensor, labels: Tensor) -> float:
    return partition_scores(x, labels)["davies_bouldin"]


def calinski_harabasz(x: Tensor, labels: Tensor) -> float:
    return partition_scores(x, labels)["calinski_harabasz"]


def distinct_rows_at_least(x: Tensor, k: int) -> bool:
    """Whether x has at least k distinct rows (k-means needs k distinct points); k passes over x."""
    fresh = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(k):
        if not bool(fresh.any()):
            return False
        row = x[fresh.nonzero()[0, 0]]
        fresh &= (x != row).any(1)
    return True
