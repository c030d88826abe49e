"""PNG plots for review (matplotlib, headless). Pure functions: data in, file out."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from saeception.eval.confirm import last_cycle


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


def confirmation_plot(rows: list[dict[str, Any]], headline: tuple[str, ...], controls: tuple[str, ...], path: Path) -> Path:
    """The confirmation as a forest plot, at its last cycle: one panel per headline metric, one line per control
    with the mean paired difference best − control and its anytime-valid interval (the one the verdict rests on;
    an interval without bounds, from too few seeds, runs off the panel as an arrow), the equivalence margin as a
    band around 0, and the verdict at the right."""
    plt = _plt()
    with plt.style.context("default"):  # Optuna's plots switch matplotlib's global style to ggplot
        return _forest(plt, rows, headline, controls, path)


def _forest(plt, rows, headline, controls, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib only when a plot is drawn

    last = {r["metric"]: r for r in last_cycle(rows)}
    metrics = [m for m in headline if m in last and any(f"verdict_{c}" in last[m] for c in controls)]
    n = max(len(controls), 1)
    fig, axes = plt.subplots(max(len(metrics), 1), 1, figsize=(8, 0.9 + 0.55 * n * max(len(metrics), 1) + 0.5 * len(metrics)),
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        r = last[metric]
        shown = [c for c in controls if f"verdict_{c}" in r]
        margin = r.get("margin")
        finite = [v for c in shown for v in (r[f"diff_{c}_mean"], *r[f"ci_{c}"]) if math.isfinite(v)]
        if margin:
            finite += [-margin, margin]
        span = (max(map(abs, finite)) if finite else 1.0) * 1.15 or 1.0
        if margin:
            ax.axvspan(-margin, margin, color="#2a9d8f", alpha=0.15, lw=0)
        ax.axvline(0, color="#555", lw=0.8)
        for y, c in enumerate(reversed(shown)):
            lo, hi = r[f"ci_{c}"]
            mean = r[f"diff_{c}_mean"]
            ax.plot([max(lo, -span), min(hi, span)], [y, y], color="#264653", lw=2)
            for end, bound in ((-span, lo), (span, hi)):
                if not math.isfinite(bound) or abs(bound) > span:
                    ax.annotate("", xy=(end, y), xytext=(end * 0.9, y), arrowprops={"arrowstyle": "->", "color": "#264653"})
            ax.plot([mean], [y], "o", color="#e76f51", ms=6)
            bounds = f"[{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) and math.isfinite(hi) else "[no bound yet]"
            ax.text(1.02, y, f"{r[f'verdict_{c}']}\n{mean:+.4f} {bounds}", transform=ax.get_yaxis_transform(),
                    va="center", fontsize=8)
        ax.set_yticks(range(len(shown)), list(reversed(shown)))
        ax.set_ylim(-0.6, len(shown) - 0.4)
        ax.set_xlim(-span, span)
        ax.xaxis.set_major_locator(MaxNLocator(5, symmetric=True))
        direction = {"max": "higher is better", "min": "lower is better"}.get(r.get("mode"), "")
        band = f"; band: margin ±{margin:.3g}" if margin else ""
        ax.set_title(f"{metric}: best − control ({direction}{band})", fontsize=10, loc="left")
        ax.tick_params(labelsize=9)
    if metrics:
        cycle, seeds = last[metrics[0]]["cycle"], last[metrics[0]].get("n_seeds")
        fig.suptitle(f"confirmation at cycle {cycle}" + (f", {seeds} seeds" if seeds else "")
                     + ": mean difference (dot) and anytime-valid interval", fontsize=10)
    else:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no comparison finished", ha="center", va="center")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
