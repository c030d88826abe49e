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


def confirmation_plot(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = ("task_accuracy", "sae_u", "sae_csi")) -> Path:
    """Mean ± sd over seeds per cycle, one panel per metric, one line per arm."""
    from .confirm import ARMS

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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
