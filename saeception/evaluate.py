"""One cycle's metric set, on the test split (plain names, for reporting) and the val split (`val_`
prefix, for model selection: sweeps optimise val_* only, so reported numbers never picked the model)."""

from __future__ import annotations

from torch import Tensor

from . import metrics as M
from .config import EvalConfig
from .sae import SAE, encode_all

SPARSE_PROBE_KS = (1, 5, 25)

# Measured while sharpening and retraining (cycle >= 1), on the train split.
AUX_METRICS = ("aux_cosine", "aux_cosine_before", "aux_cosine_centered", "aux_cosine_centered_before",
               "sharpen_kept_fraction")
# Every metric name a cycle can report (test split); val_<name> exists for each but aux_* and dead_pct.
METRIC_NAMES = (
    "task_accuracy", "task_f1_macro", "probe_accuracy",
    *(f"k_sparse_probe_accuracy_k{k}" for k in SPARSE_PROBE_KS),
    "sae_csi", "sae_u", "base_csi", "base_u",
    "ari", "silhouette", "davies_bouldin", "calinski_harabasz",
    "l0", "dead_pct", "explained_variance",
    *AUX_METRICS,
)
# Computed on the train split during retraining (cycle >= 1): no val_ twin.
TRAIN_ONLY = ("dead_pct", *AUX_METRICS)
VAL_METRIC_NAMES = tuple(f"val_{m}" for m in METRIC_NAMES if m not in TRAIN_ONLY)


def evaluate(sae: SAE, acts: dict[str, Tensor], logits: dict[str, Tensor], labels: dict[str, Tensor],
             n_classes: int, cfg: EvalConfig, seed: int) -> dict[str, float]:
    """acts/logits/labels keyed by split ("train", "val", "test"), rows ordered by example id.
    Probes are fit on train once and scored on val and test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes = {s: encode_all(sae, acts[s]) for s in ("train", "val", "test")}
    out: dict[str, float] = {"dead_pct": M.dead_pct(codes["train"])}

    def probe(columns=None):
        x = codes["train"] if columns is None else codes["train"][:, columns]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=cfg.probe_max_iter, random_state=seed))
        clf.fit(x.numpy(), labels["train"].numpy())
        return lambda s: float(clf.score((codes[s] if columns is None else codes[s][:, columns]).numpy(), labels[s].numpy()))

    scorers = {"probe_accuracy": probe()}
    ranking = M.f_scores(codes["train"], labels["train"], n_classes)
    for k in SPARSE_PROBE_KS:
        scorers[f"k_sparse_probe_accuracy_k{k}"] = probe(ranking.topk(min(k, len(ranking))).indices)

    for split, prefix in (("test", ""), ("val", "val_")):
        z, x, y = codes[split], acts[split], labels[split]
        row = M.task_metrics(logits[split], y, n_classes)
        row.update({name: score(split) for name, score in scorers.items()})
        sae_m, base_m = M.monosemanticity(z, y), M.monosemanticity(x, y)
        row.update(sae_csi=sae_m["csi"], sae_u=sae_m["u"], base_csi=base_m["csi"], base_u=base_m["u"])
        row.update(M.cluster_metrics(z, y, n_classes, cfg.cluster_max_examples, seed))
        row.update(l0=M.l0(z), explained_variance=M.explained_variance(x, sae.decode(z)))
        out.update({prefix + k: v for k, v in row.items()})
    return out
