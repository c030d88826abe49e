"""PNG plots for review (matplotlib, headless). Pure functions: data in, file out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 90) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def confirmation_plot(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = ("task_accuracy", "sae_u", "sae_csi")) -> Path:
    """Mean ± sd over seeds per cycle, one panel per metric, one line per arm."""
    from ..confirm import ARMS

    plt = _plt()
    metrics = tuple(m for m in metrics if any(r["metric"] == m for r in rows))
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.5), squeeze=False)
    labels = {"best": "chosen config", "aux0": "control: λ = 0", "random": "control: random targets"}
    for ax, metric in zip(axes[0], metrics):
        sel = sorted((r for r in rows if r["metric"] == metric), key=lambda r: r["cycle"])
        for arm in ARMS:
            xs = [r["cycle"] for r in sel]
            ys = [r[f"{arm}_mean"] for r in sel]
            sd = [0.0 if math.isnan(r[f"{arm}_sd"]) else r[f"{arm}_sd"] for r in sel]
            ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=labels[arm])
        ax.set_title(metric)
        ax.set_xlabel("cycle")
        ax.set_xticks(sorted({r["cycle"] for r in sel}))
    axes[0][0].legend(fontsize=8)
    return _save(fig, path, dpi=100)


TRAJECTORY_METRICS = ("task_accuracy", "sae_u", "sae_csi", "probe_accuracy", "explained_variance", "l0")


def trial_plot(history: dict[str, dict[int, float]], path: Path, title: str = "",
               metrics: tuple[str, ...] = TRAJECTORY_METRICS) -> Path:
    """history[metric][cycle] = value -> one small panel per metric across cycles."""
    plt = _plt()
    metrics = tuple(m for m in metrics if history.get(m))
    cols = 3
    rows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        cycles = sorted(history[metric])
        ax.plot(cycles, [history[metric][c] for c in cycles], marker="o")
        ax.set_title(metric, fontsize=10)
        ax.set_xticks(cycles)
        ax.set_xlabel("cycle")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi=90)


def objective_plot(rows: list[dict[str, Any]], metrics: list[str], modes: list[str], path: Path) -> Path:
    """Each objective over trials (in start order), with the running best."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, metric, mode in zip(axes[0], metrics, modes):
        ys = [r.get(metric) for r in rows]
        xs = [i for i, y in enumerate(ys) if isinstance(y, (int, float)) and math.isfinite(y)]
        vals = [ys[i] for i in xs]
        ax.scatter(xs, vals, label="trial")
        best, running = None, []
        for v in vals:
            best = v if best is None else (max(best, v) if mode == "max" else min(best, v))
            running.append(best)
        ax.step(xs, running, where="post", color="C1", label=f"best so far ({mode})")
        ax.set_xlabel("trial")
        ax.set_title(metric)
        ax.legend(fontsize=8)
    return _save(fig, path, dpi=90)


def pareto_plot(rows: list[dict[str, Any]], front: list[dict[str, Any]], metrics: list[str], path: Path) -> Path:
    """Two objectives: every trial, the Pareto front highlighted."""
    plt = _plt()
    x, y = metrics[:2]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r[x] for r in rows], [r[y] for r in rows], color="C0", alpha=0.6, label="trials")
    pts = sorted((r[x], r[y]) for r in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="C3", label="Pareto front")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(fontsize=8)
    return _save(fig, path, dpi=90)


def importance_plot(importances: dict[str, float], metric: str, path: Path) -> Path:
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"importance for {metric} (Optuna, fANOVA)")
    return _save(fig, path, dpi=90)


def parallel_plot(rows: list[dict[str, Any]], params: list[str], metric: str, path: Path) -> Path:
    """Parallel coordinates: each trial a line through its (min-max scaled) hyperparameters, coloured
    by the objective. Categorical values are placed at evenly spaced levels."""
    plt = _plt()
    import matplotlib.cm as cm

    usable = [r for r in rows if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    axes_vals = []
    for p in params:
        vals = [r["config"].get(p) for r in usable]
        present = [v for v in vals if v is not None]
        if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            lo, hi = min(present), max(present)
            axes_vals.append([None if v is None else (0.5 if hi == lo else (v - lo) / (hi - lo)) for v in vals])
        else:
            levels = sorted({str(v) for v in present})
            axes_vals.append([None if v is None else (levels.index(str(v)) + 0.5) / max(len(levels), 1) for v in vals])
    fig, ax = plt.subplots(figsize=(1.6 * max(len(params), 2) + 1, 4))
    scores = [r[metric] for r in usable]
    lo, hi = (min(scores), max(scores)) if scores else (0, 1)
    for i, r in enumerate(usable):
        xs = [j for j in range(len(params)) if axes_vals[j][i] is not None]
        colour = cm.viridis(0.5 if hi == lo else (r[metric] - lo) / (hi - lo))
        ax.plot(xs, [axes_vals[j][i] for j in xs], color=colour, alpha=0.8)
    ax.set_xticks(range(len(params)))
    ax.set_xticklabels(params, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_title(f"hyperparameters vs {metric} (yellow = high)")
    return _save(fig, path, dpi=90)
