"""One cycle's metric set, on the test split (plain names, for reporting) and the val split (`val_`
prefix, for model selection: sweeps optimise val_* only, so reported numbers never picked the model)."""

from __future__ import annotations

import torch
from torch import Tensor

from saeception.config import EvalConfig
from saeception.eval import metrics as M
from saeception.eval.probe import accuracy, fit_probe
from saeception.method.sae import SAE, encode_all

SPLITS = ("train", "val", "test")
SPARSE_PROBE_KS = (1, 5, 25)
# eval.backend "auto" on CPU: torch measured faster at the default chain's shape and at 12,000 x 6,144
# codes (BENCHMARKS.md section 5; with 2 threads on an oversubscribed CPU small shapes can favour sklearn).
CPU_BACKEND = "torch"

# Measured while sharpening and retraining (cycle >= 1), on the train split.
AUX_METRICS = ("aux_cosine", "aux_cosine_before", "aux_cosine_centered", "aux_cosine_centered_before",
               "sharpen_kept_fraction", "sharpen_kept_active", "sharpen_empty_fraction")
# Every metric name a cycle can report (test split); val_<name> exists for each but aux_* and dead_pct.
METRIC_NAMES = (
    "task_accuracy", "task_f1_macro", "probe_accuracy",
    *(f"k_sparse_probe_accuracy_k{k}" for k in SPARSE_PROBE_KS),
    "sae_csi", "sae_u", "base_csi", "base_u", "sae_csi_all", "sae_u_all", "sae_scored_latents",
    "ari", "argmax_ari", "silhouette", "davies_bouldin", "calinski_harabasz",
    "l0", "dead_pct", "explained_variance",
    *M.FIDELITY_METRICS,  # computed by the chain (a model forward on every rank), not by evaluate()
    *AUX_METRICS,
)
# Computed on the train split during retraining (cycle >= 1): no val_ twin.
TRAIN_ONLY = ("dead_pct", *AUX_METRICS)
VAL_METRIC_NAMES = tuple(f"val_{m}" for m in METRIC_NAMES if m not in TRAIN_ONLY)


def resolve_backend(backend: str, device: torch.device) -> str:
    """eval.backend for codes on `device`: "auto" is torch on CUDA and, on CPU, the backend measured
    faster there (BENCHMARKS.md, "Evaluation backends")."""
    if backend != "auto":
        return backend
    return "torch" if device.type == "cuda" else CPU_BACKEND


@torch.no_grad()
def evaluate(sae: SAE, acts: dict[str, Tensor], logits: dict[str, Tensor], labels: dict[str, Tensor],
             n_classes: int, cfg: EvalConfig, seed: int) -> dict[str, float]:
    """acts/logits/labels keyed by split ("train", "val", "test"), rows ordered by example id.
    Probes are fit on train once and scored on val and test. Everything is computed where the codes
    are (the device of `acts` and `sae`), or by scikit-learn on CPU (eval.backend)."""
    codes = {s: encode_all(sae, acts[s]) for s in SPLITS}
    device = codes["train"].device
    backend = resolve_backend(cfg.backend, device)
    labels = {s: labels[s].to(device) for s in SPLITS}
    out: dict[str, float] = {"dead_pct": M.dead_pct(codes["train"])}

    def probe(columns: Tensor | None = None):
        pick = (lambda z: z) if columns is None else (lambda z: z[:, columns])
        predict = fit_probe(pick(codes["train"]), labels["train"], cfg.probe_max_iter, backend)
        return lambda s: accuracy(predict, pick(codes[s]), labels[s])

    scorers = {"probe_accuracy": probe()}
    ranking = M.f_scores(codes["train"], labels["train"], n_classes)
    for k in SPARSE_PROBE_KS:
        scorers[f"k_sparse_probe_accuracy_k{k}"] = probe(ranking.topk(min(k, len(ranking))).indices)

    for split, prefix in (("test", ""), ("val", "val_")):
        z, x, y = codes[split], acts[split], labels[split]
        row = M.task_metrics(logits[split].to(device), y, n_classes)
        row.update({name: score(split) for name, score in scorers.items()})
        sae_m, base_m = M.monosemanticity(z, y, cfg.min_firing_rate), M.monosemanticity(x, y, cfg.min_firing_rate)
        row.update(sae_csi=sae_m["csi"], sae_u=sae_m["u"], base_csi=base_m["csi"], base_u=base_m["u"],
                   sae_csi_all=sae_m["csi_all"], sae_u_all=sae_m["u_all"], sae_scored_latents=sae_m["n"])
        row.update(M.cluster_metrics(z, y, n_classes, cfg.cluster_max_examples, seed, backend))
        row["argmax_ari"] = M.argmax_ari(z, y)
        row.update(l0=M.l0(z), explained_variance=M.explained_variance(x, sae.decode(z)))
        out.update({prefix + k: v for k, v in row.items()})
    return out
