"""Evidence: re-run a chosen configuration and its two controls on fresh seeds, then compare.

Arms (same seeds, same cycle 0):
- `best`:   the configuration the sweep chose;
- `aux0`:   the same with aux.weight = 0 (the retraining is plain extra fine-tuning);
- `random`: the same with sharpen.strategy = random (random unit targets).
Cycle 0 does not read any aux or sharpening setting, so for each seed the controls resume from the
`best` arm's cycle-0 checkpoint: the arms differ only in what the method changes (a paired design),
and cycle 0 is computed once instead of three times.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .artifacts import ChainPaths
from .chain import ChainState, run_chain
from .config import build_config

ARMS = ("best", "aux0", "random")
CONTROLS = ("aux0", "random")
# Metrics summarised by default (the method's claim: more monosemantic, accuracy kept).
SUMMARY_METRICS = ("task_accuracy", "sae_u", "sae_csi", "probe_accuracy", "k_sparse_probe_accuracy_k1", "aux_cosine")


def arm_values(values: dict[str, Any], arm: str) -> dict[str, Any]:
    if arm == "best":
        return dict(values)
    if arm == "aux0":
        return {**values, "aux.weight": 0.0}
    if arm == "random":
        return {**values, "sharpen.strategy": "random"}
    raise ValueError(f"unknown arm {arm!r}")


def confirm_seeds(base_seed: int, n: int) -> list[int]:
    """Fresh seeds: the sweep selected its winner on base_seed, so re-using it would carry the winner's curse."""
    return [base_seed + 1 + i for i in range(n)]


def run_arms(values: dict[str, Any], seed: int, root: Path,
             on_cycle: Callable[[str, int, dict, Path], None] | None = None,
             device=None, cache=None) -> dict[str, list[dict]]:
    """Runs every arm for one seed; controls start from the best arm's cycle 0. Returns histories."""
    histories = {}
    cycle0: dict[int, ChainState] = {}

    def keep_cycle0(cycle: int, state: ChainState) -> None:
        if cycle == 0:
            cycle0[0] = state.copy()  # in memory on every rank: no rank needs another's files

    for arm in ARMS:
        cfg = build_config({**arm_values(values, arm), "seed": seed})
        callback = (lambda c, m, d, arm=arm: on_cycle(arm, c, m, d)) if on_cycle else None
        if arm == "best":
            histories[arm] = run_chain(cfg, ChainPaths(root / arm), on_cycle=callback, device=device, on_state=keep_cycle0,
                                       cache=cache)
        else:
            histories[arm] = run_chain(cfg, ChainPaths(root / arm), on_cycle=callback, device=device,
                                       resume_from=cycle0[0].copy())
    return histories


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    return mean, sd


def paired_test(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value of a vs b over seeds (nan with < 2 pairs or no variation)."""
    from scipy import stats

    if len(a) < 2:
        return math.nan
    diffs = [x - y for x, y in zip(a, b)]
    if all(d == diffs[0] for d in diffs):
        return 0.0 if diffs[0] != 0 else math.nan
    return float(stats.ttest_rel(a, b).pvalue)


def summarize(results: dict[str, dict[int, dict[int, dict[str, float]]]], metrics: tuple[str, ...] = SUMMARY_METRICS) -> list[dict[str, Any]]:
    """results[arm][seed][cycle] = metrics. One row per (cycle, metric): mean/sd per arm over seeds,
    and for each control the paired difference best - control (mean, sd, wins, p)."""
    rows = []
    seeds = sorted(set.intersection(*(set(results[a]) for a in ARMS)))
    cycles = sorted({c for s in seeds for c in results["best"][s]})
    for cycle in cycles:
        for metric in metrics:
            vals = {a: [results[a][s].get(cycle, {}).get(metric) for s in seeds] for a in ARMS}
            if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals["best"]):
                continue
            row: dict[str, Any] = {"cycle": cycle, "metric": metric, "n_seeds": len(seeds)}
            for a in ARMS:
                row[f"{a}_mean"], row[f"{a}_sd"] = _mean_sd([v for v in vals[a] if v is not None])
            for c in CONTROLS:
                if any(v is None for v in vals[c]):
                    continue
                diffs = [b - x for b, x in zip(vals["best"], vals[c])]
                row[f"diff_{c}_mean"], row[f"diff_{c}_sd"] = _mean_sd(diffs)
                row[f"wins_{c}"] = sum(d > 0 for d in diffs)
                row[f"p_{c}"] = paired_test(vals["best"], vals[c])
            rows.append(row)
    return rows


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def format_table(rows: list[dict[str, Any]], last_cycle_only: bool = True) -> str:
    """A Markdown table: mean ± sd per arm, best − control (wins/n, paired p)."""
    if last_cycle_only and rows:
        last = max(r["cycle"] for r in rows)
        rows = [r for r in rows if r["cycle"] == last]
    head = "| cycle | metric | best | aux0 (λ=0) | random targets | best − aux0 (wins, p) | best − random (wins, p) |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        arms = [f"{_f(r[f'{a}_mean'])} ± {_f(r[f'{a}_sd'])}" for a in ARMS]
        diffs = []
        for c in CONTROLS:
            if f"diff_{c}_mean" in r:
                diffs.append(f"{_f(r[f'diff_{c}_mean'], 4)} ({r[f'wins_{c}']}/{r['n_seeds']}, p={_f(r[f'p_{c}'], 3)})")
            else:
                diffs.append("-")
        lines.append(f"| {r['cycle']} | {r['metric']} | " + " | ".join(arms + diffs) + " |")
    return "\n".join(lines)
