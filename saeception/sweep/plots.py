"""PNG plots for review (matplotlib, headless). Pure functions: data in, file out."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from saeception.eval.confirm import ARM_DOC, ARMS


def _plt():
    import matplotlib  # lazy: matplotlib only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

    return plt


def _save(fig, path: Path, dpi: int = 90) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)
    return path


def confirmation_plot(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = ("task_accuracy", "sae_u", "sae_csi")) -> Path:
    """Mean ± sd over seeds per cycle, one panel per metric, one line per arm."""
    plt = _plt()
    metrics = tuple(m for m in metrics if any(r["metric"] == m for r in rows))
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.5 * max(len(metrics), 1), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        sel = sorted((r for r in rows if r["metric"] == metric), key=lambda r: r["cycle"])
        for arm in (a for a in ARMS if any(f"{a}_mean" in r for r in sel)):
            xs = [r["cycle"] for r in sel]
            ys = [r[f"{arm}_mean"] for r in sel]
            sd = [0.0 if math.isnan(r[f"{arm}_sd"]) else r[f"{arm}_sd"] for r in sel]
            ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=f"{arm}: {ARM_DOC[arm]}" if arm != "best" else "best (chosen config)")
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


def _target(i: int, mode: str | None):
    """Objective i of a trial; negated for a maximised objective when `mode` is given (PED-ANOVA ranks
    low target values as good)."""
    sign = -1.0 if mode == "max" else 1.0
    return lambda t: sign * t.values[i]


def _save_axes(ax, path: Path) -> Path:
    """Saves the figure Optuna drew (its colour-bar axes do not take tight_layout: cropped instead)."""
    fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
    fig.savefig(path, dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return path


def optuna_plots(study, metrics: list[str], modes: list[str], out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """The sweep's Optuna views, drawn by optuna.visualization.matplotlib from the study as stored:
    optimization history (per objective), Pareto front (several objectives), parallel coordinates and
    slice (per objective; Optuna draws a log axis for a log-range param every trial has) and parameter
    importances (per objective) by PED-ANOVA, Optuna's default evaluator, which assesses conditional
    params (sae.k, sae.l1_coefficient) over the trials where they exist. Returns the files and, per view
    that could not be drawn, why."""
    import optuna  # lazy: Optuna only where the study is opened
    from optuna.visualization import matplotlib as ovm  # lazy: Optuna only where the study is opened

    _plt()
    files, skipped = [], {}
    multi = len(metrics) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message=".*computes the importances of params to achieve low `target` values.*")
        # matplotlib's note on the axis of a param every trial drew the same value for (a small sweep): noise in
        # the user's terminal, and the axis is drawn anyway.
        warnings.filterwarnings("ignore", message="Attempting to set identical low and high [xy]lims")
        for i, metric in enumerate(metrics):
            target = _target(i, None) if multi else None
            files.append(_save_axes(ovm.plot_optimization_history(study, target=target, target_name=metric),
                                    out_dir / f"optimization_history_{metric}.png"))
            files.append(_save_axes(ovm.plot_parallel_coordinate(study, target=target, target_name=metric),
                                    out_dir / (f"parallel_coordinates_{metric}.png" if multi else "parallel_coordinates.png")))
            files.append(_save_axes(ovm.plot_slice(study, target=target, target_name=metric), out_dir / f"slice_{metric}.png"))
            try:
                ax = ovm.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                                target=_target(i, modes[i]) if multi else None, target_name=metric)
            except (ValueError, RuntimeError) as e:  # e.g. too few complete trials for the quantiles
                skipped[f"importance_{metric}"] = str(e)[:500]
                _plt().close("all")
                continue
            files.append(_save_axes(ax, out_dir / f"importance_{metric}.png"))
        if multi:
            files.append(_save_axes(ovm.plot_pareto_front(study, target_names=metrics), out_dir / "pareto_front.png"))
    return files, skipped
