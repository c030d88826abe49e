"""Metrics over tensors, vectorised over latents (no per-latent Python loop).

Definitions (docs/metrics.md repeats them):
- CSI_i = (mu_max - mu_other) / (|mu_max| + |mu_other|), mu_max the largest class mean of latent i,
  mu_other its mean over the examples outside that class; 0 when both are 0.
- U_i = I(1[z_i > 0]; y) / H(y), both in nats; 0 for a latent that never or always fires.
- monosemanticity averages both over latents that fire (z > 0) on at least min_firings_for(n,
  eval.min_firing_rate) of the n examples of the evaluated set (the `*_all` twins: at least once).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from saeception.eval import clustering as C


def _onehot(labels: Tensor, n_classes: int) -> Tensor:
    return torch.nn.functional.one_hot(labels.long(), n_classes).double()


def per_column_blocks(fn, x: Tensor, *args) -> Tensor:
    """fn(x[:, block], *args) over column blocks of x (clustering.BLOCK_ELEMENTS each), concatenated: for
    statistics computed column by column (each latent's value depends on its own column only, so blocks
    change no number, and a wide code matrix, 98,304 latents, is never copied whole to float64)."""
    step = max(1, C.BLOCK_ELEMENTS // max(len(x), 1))
    if x.shape[1] <= step:
        return fn(x, *args)
    return torch.cat([fn(x[:, j:j + step], *args) for j in range(0, x.shape[1], step)])


def csi_per_latent(codes: Tensor, labels: Tensor, n_classes: int | None = None) -> Tensor:
    """(n_latents,) class selectivity index."""
    return per_column_blocks(_csi, codes, labels, n_classes or int(labels.max()) + 1)


def _csi(codes: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    x = codes.double()
    y = _onehot(labels, n_classes)  # (N, C)
    counts = y.sum(0)  # (C,)
    sums = y.t() @ x  # (C, n)
    means = sums / counts.clamp_min(1)[:, None]
    means = torch.where(counts[:, None] > 0, means, torch.full_like(means, -torch.inf))
    mu_max, c_star = means.max(0)
    other_count = len(labels) - counts[c_star]
    mu_other = (x.sum(0) - sums.gather(0, c_star[None]).squeeze(0)) / other_count.clamp_min(1)
    denom = mu_max.abs() + mu_other.abs()
    return torch.where(denom > 0, (mu_max - mu_other) / denom.clamp_min(1e-300), torch.zeros_like(denom))


def u_per_latent(codes: Tensor, labels: Tensor, n_classes: int | None = None) -> Tensor:
    """(n_latents,) uncertainty coefficient of the firing indicator about the label."""
    return per_column_blocks(_u, codes, labels, n_classes or int(labels.max()) + 1)


def _u(codes: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    n = len(labels)
    fires = (codes > 0).double()  # (N, n)
    y = _onehot(labels, n_classes)
    p_y = y.sum(0) / n  # (C,)
    joint1 = (fires.t() @ y) / n  # (n, C): p(fire, y=c)
    joint0 = p_y[None, :] - joint1  # p(silent, y=c)
    p1 = joint1.sum(1, keepdim=True)
    p0 = 1 - p1

    def term(joint: Tensor, marginal: Tensor) -> Tensor:
        ratio = joint / (marginal * p_y[None, :]).clamp_min(1e-300)
        return torch.where(joint > 0, joint * torch.log(ratio.clamp_min(1e-300)), torch.zeros_like(joint)).sum(1)

    mi = term(joint1, p1) + term(joint0, p0)
    h_y = -(p_y[p_y > 0] * torch.log(p_y[p_y > 0])).sum()
    rate = p1.squeeze(1)
    constant = (rate <= 0) | (rate >= 1)
    if h_y <= 0:
        return torch.zeros_like(rate)
    return torch.where(constant, torch.zeros_like(mi), (mi / h_y).clamp_min(0))


def min_firings_for(n: int, rate: float) -> int:
    """The firing count a latent needs on a set of `n` examples to be scored: ceil(rate * n), at least 1.
    rate in [0, 1) (eval.min_firing_rate; 0: every latent that fires). Doubling the set doubles both a
    latent's firings and the share it must reach, so which latents count does not depend on the set's size."""
    if not 0 <= rate < 1:
        raise ValueError(f"min_firing_rate must be in [0, 1), got {rate}")
    # Rounded first: 0.07 * 100 is 7.000000000000001 in floating point, and its ceil is 8.
    return max(1, math.ceil(round(rate * n, 9)))


def monosemanticity(codes: Tensor, labels: Tensor, min_firing_rate: float = 0.0) -> dict[str, float]:
    """Mean CSI and U over the latents that fire (z > 0) on at least min_firings_for(N, min_firing_rate)
    examples (`csi`, `u`, and their count `n`), and over every latent that fires at least once (`csi_all`,
    `u_all`). A latent firing on one example has CSI 1 and U near 0 whatever it encodes: the threshold keeps
    such latents from driving the mean. codes (N, n_latents), labels (N,)."""
    firings = (codes > 0).sum(0)
    scored, alive = firings >= min_firings_for(len(labels), min_firing_rate), firings > 0
    out = {"csi": 0.0, "u": 0.0, "n": float(scored.sum()), "csi_all": 0.0, "u_all": 0.0}
    if not alive.any():
        return out
    n_classes = int(labels.max()) + 1
    csi, u = csi_per_latent(codes, labels, n_classes), u_per_latent(codes, labels, n_classes)
    out.update(csi_all=float(csi[alive].mean()), u_all=float(u[alive].mean()))
    if scored.any():
        out.update(csi=float(csi[scored].mean()), u=float(u[scored].mean()))
    return out


def f_scores(x: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """(n_features,) one-way ANOVA F statistic per feature (how well it separates the classes)."""
    return per_column_blocks(_f_scores, x, labels, n_classes)


def _f_scores(x: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    x = x.double()
    y = _onehot(labels, n_classes)
    counts = y.sum(0)
    present = counts > 0
    c = int(present.sum())
    n = len(labels)
    means = (y.t() @ x) / counts.clamp_min(1)[:, None]
    grand = x.mean(0)
    between = (counts[:, None] * (means - grand) ** 2)[present].sum(0) / max(c - 1, 1)
    within = ((x ** 2).sum(0) - (counts[:, None] * means ** 2)[present].sum(0)) / max(n - c, 1)
    return torch.nan_to_num(between / within.clamp_min(1e-12), nan=0.0)


def argmax_ari(codes: Tensor, labels: Tensor) -> float:
    """The original SAE-ception's ARI: each example's cluster is its most active latent (`argmax` of its code;
    an all-zero code goes to latent 0, as numpy's argmax puts it), scored against the labels."""
    if len(labels) < 2:
        return float("nan")
    return C.adjusted_rand(labels, codes.float().argmax(1))


def cluster_metrics(x: Tensor, labels: Tensor, n_classes: int, cap: int, seed: int,
                    backend: str = "torch") -> dict[str, float]:
    """ari: k-means (k = classes, 3 seeded inits) vs labels; silhouette / davies_bouldin /
    calinski_harabasz: the label partition scored in x. Silhouette (O(N^2)) runs on a seeded subsample
    of at most `cap` (the same rows for both backends). backend "torch" computes on x's device
    (saeception.eval.clustering), "sklearn" on CPU with scikit-learn; they agree to the tolerances in
    tests/unit/eval/test_evaluate.py (k-means differs by its random draws only)."""
    nan = float("nan")
    sub = torch.as_tensor(np.random.default_rng(seed).choice(len(labels), size=min(cap, len(labels)), replace=False))
    if backend == "sklearn":
        return _cluster_metrics_sklearn(x, labels, n_classes, sub.numpy(), seed)
    if len(torch.unique(labels)) < 2 or not C.distinct_rows_at_least(x, n_classes):
        return {"ari": nan, "silhouette": nan, "davies_bouldin": nan, "calinski_harabasz": nan}
    sub = sub.to(x.device)
    return {
        "ari": C.adjusted_rand(labels, C.kmeans(x.float(), n_classes, seed, n_init=3)),
        "silhouette": C.silhouette(x[sub], labels[sub]),
        **C.partition_scores(x, labels),
    }


def _cluster_metrics_sklearn(x: Tensor, labels: Tensor, n_classes: int, sub: np.ndarray, seed: int) -> dict[str, float]:
    from sklearn.cluster import KMeans  # lazy: scikit-learn only for eval.backend sklearn
    from sklearn.metrics import (  # lazy: scikit-learn only for eval.backend sklearn
        adjusted_rand_score,
        calinski_harabasz_score,
        davies_bouldin_score,
        silhouette_score,
    )

    xa, ya = x.double().cpu().numpy(), labels.cpu().numpy()
    nan = float("nan")
    if len(np.unique(ya)) < 2 or len(np.unique(xa, axis=0)) < n_classes:
        return {"ari": nan, "silhouette": nan, "davies_bouldin": nan, "calinski_harabasz": nan}
    clusters = KMeans(n_clusters=n_classes, n_init=3, random_state=seed).fit_predict(xa)
    return {
        "ari": float(adjusted_rand_score(ya, clusters)),
        "silhouette": float(silhouette_score(xa[sub], ya[sub])) if len(np.unique(ya[sub])) > 1 else nan,
        "davies_bouldin": float(davies_bouldin_score(xa, ya)),
        "calinski_harabasz": float(calinski_harabasz_score(xa, ya)),
    }


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the whole set (not averaged per batch)."""
    x, x_hat = x.double(), x_hat.double()
    total = (x - x.mean(0)).pow(2).sum()
    return float(1 - (x - x_hat).pow(2).sum() / total) if total > 0 else float("nan")


def l0(codes: Tensor) -> float:
    """Mean number of active latents per example."""
    return float((codes > 0).sum(1).double().mean())


def dead_pct(codes: Tensor) -> float:
    """Percentage of latents that never fire on `codes`."""
    return float(100.0 * (~(codes > 0).any(0)).double().mean())


def task_metrics(logits: Tensor, labels: Tensor, n_classes: int) -> dict[str, float]:
    """task_accuracy and task_f1_macro (unweighted mean F1 over the classes present in labels or predictions)."""
    pred = logits.argmax(-1)
    y = _onehot(labels, n_classes)
    p = _onehot(pred, n_classes)
    tp = (y * p).sum(0)
    support, predicted = y.sum(0), p.sum(0)
    f1 = torch.where(support + predicted > 0, 2 * tp / (support + predicted).clamp_min(1), torch.zeros_like(tp))
    present = (support + predicted) > 0
    return {"task_accuracy": float((pred == labels).double().mean()), "task_f1_macro": float(f1[present].mean())}


def cosine(h: Tensor, targets: Tensor, center: Tensor | None = None) -> float:
    """Mean cosine similarity between matching rows (of h - center and targets - center)."""
    h, targets = h.double(), targets.double()
    if center is not None:
        h, targets = h - center.double(), targets - center.double()
    return float(torch.nn.functional.cosine_similarity(h, targets, dim=-1).mean())


# fidelity_metrics' names, in its order.
FIDELITY_METRICS = ("spliced_task_accuracy", "task_accuracy_drop", "spliced_ce", "ablated_ce", "spliced_kl", "loss_recovered")


def fidelity_metrics(clean: Tensor, spliced: Tensor, ablated: Tensor, labels: Tensor) -> dict[str, float]:
    """Spliced-in fidelity from logits (N, C) of the same examples: the model as it is (`clean`), with the
    tapped layer's output replaced by the SAE's reconstruction (`spliced`) and by zero (`ablated`).
    spliced_task_accuracy, task_accuracy_drop (clean − spliced accuracy), spliced_ce, ablated_ce (mean
    cross-entropy with the labels), spliced_kl (mean KL(clean ‖ spliced) of the class distributions) and
    loss_recovered = (ablated_ce − spliced_ce) / (ablated_ce − clean_ce), SAEBench's loss recovered: 1 when
    splicing costs nothing, 0 when it is as bad as zero-ablation; NaN when zero-ablation costs nothing."""
    clean, spliced, ablated, labels = clean.double(), spliced.double(), ablated.double(), labels.long()
    ce = {name: float(torch.nn.functional.cross_entropy(x, labels)) for name, x in
          (("clean", clean), ("spliced", spliced), ("ablated", ablated))}
    log_p, log_q = clean.log_softmax(-1), spliced.log_softmax(-1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    accuracy = {name: float((x.argmax(-1) == labels).double().mean()) for name, x in (("clean", clean), ("spliced", spliced))}
    gap = ce["ablated"] - ce["clean"]
    return {"spliced_task_accuracy": accuracy["spliced"], "task_accuracy_drop": accuracy["clean"] - accuracy["spliced"],
            "spliced_ce": ce["spliced"], "ablated_ce": ce["ablated"], "spliced_kl": kl,
            "loss_recovered": (ce["ablated"] - ce["spliced"]) / gap if abs(gap) > 1e-12 else float("nan")}
