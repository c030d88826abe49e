"""Evidence: re-run a chosen configuration and its controls on fresh seeds, compare, and decide.

Arms (same seeds, same cycle 0):
- `best`:      the configuration the sweep chose;
- `aux0`:      aux.weight = 0 (the retraining is plain extra fine-tuning);
- `random`:    sharpen.strategy = random matched to the winner's strategy: per example, as many active
               latents as the winner keeps, drawn at random among the active ones in proportion to their
               activation ("the SAE latents the method chooses" vs other latents of the same example);
- `prototype`: sharpen.strategy = class_prototype, the class mean of h, no SAE ("pull toward class
               structure");
- `nosharpen`: sharpen.top_k_pct = 100, the SAE's plain reconstruction ("distil toward the SAE").
Cycle 0 does not read any aux or sharpening setting, so for each seed the controls resume from the
`best` arm's cycle-0 state: the arms differ only in what the method changes (a paired design), and
cycle 0 is computed once instead of once per arm.

The comparison (`summarize`) gives, per metric and control, the paired mean difference best − control
with a 95% t interval, the exact sign test beside the t-test, a Holm correction over the family
(verdict metrics × controls at the last cycle), wins/ties/losses in the metric's direction and a verdict
(`better`, `worse`, `equivalent` within the metric's margin, `inconclusive`); `verdict_line` says it in one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from saeception.config import MATCHED_STRATEGIES, ConfigError, build_config
from saeception.method.chain import ChainState, run_chain, sae_seed_spread
from saeception.method.errors import DivergedError
from saeception.store.artifacts import ChainPaths

ARMS = ("best", "aux0", "random", "prototype", "nosharpen")
CONTROLS = ARMS[1:]
# What each control changes, for tables, cards and help (one place).
ARM_DOC = {
    "best": "the configuration the sweep chose",
    "aux0": "aux.weight = 0: plain extra fine-tuning",
    "random": "as many active latents per example as the winner keeps, drawn at random (weighted by activation)",
    "prototype": "target = the class mean of h (no SAE)",
    "nosharpen": "sharpen.top_k_pct = 100: the SAE reconstruction",
}
# Metrics summarised by default (the method's claim: more monosemantic, accuracy kept, the SAE still faithful
# when spliced in).
SUMMARY_METRICS = ("task_accuracy", "sae_u", "sae_csi", "probe_accuracy", "k_sparse_probe_accuracy_k1", "loss_recovered",
                   "aux_cosine")
# Per arm, what its targets kept (reported beside the metrics, never compared).
KEPT_METRICS = ("sharpen_kept_fraction", "sharpen_kept_active", "sharpen_empty_fraction")
# The direction in which a metric is better; metrics not here get no verdict (l0, aux_* are descriptions
# or, like aux_cosine, differ between arms by construction).
METRIC_MODES = {
    "task_accuracy": "max", "task_f1_macro": "max", "probe_accuracy": "max",
    "k_sparse_probe_accuracy_k1": "max", "k_sparse_probe_accuracy_k5": "max", "k_sparse_probe_accuracy_k25": "max",
    "sae_csi": "max", "sae_u": "max", "sae_csi_all": "max", "sae_u_all": "max", "base_csi": "max", "base_u": "max",
    "ari": "max", "silhouette": "max", "davies_bouldin": "min", "calinski_harabasz": "max",
    "explained_variance": "max", "dead_pct": "min",
    "spliced_task_accuracy": "max", "task_accuracy_drop": "min", "spliced_ce": "min", "spliced_kl": "min",
    "loss_recovered": "max",
}
# Equivalence margins: a difference inside ±margin is no difference that matters. task_accuracy's is a
# choice (half a point); the others are about twice the SAE-seed spread measured on the default chain
# (BENCHMARKS.md, "Noise floor"): a smaller effect is one a retrained SAE would give by chance.
DEFAULT_MARGINS = {"task_accuracy": 0.005, "sae_u": 0.007, "sae_csi": 0.015, "probe_accuracy": 0.02,
                   "k_sparse_probe_accuracy_k1": 0.015}
VERDICTS = ("better", "worse", "equivalent", "inconclusive")


@dataclass
class ConfirmSettings:
    """The confirmation's settings: the `confirm:` section of a search space (and --confirm-controls)."""

    controls: tuple[str, ...] = CONTROLS  # which control arms run next to `best`
    alpha: float = 0.05  # family-wise error rate of the Holm-corrected tests
    margins: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS))  # per metric, test-split name
    sae_seeds: int = 3  # extra SAEs on the first seed's last cycle: the SAE-seed noise floor (0: none)

    def __post_init__(self) -> None:
        self.controls = tuple(self.controls)
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown or not self.controls or len(set(self.controls)) != len(self.controls):
            raise ConfigError(f"confirm.controls: {list(self.controls)} must be a non-empty list of distinct arms "
                              f"from: {', '.join(CONTROLS)}")
        if not (isinstance(self.alpha, float) and 0 < self.alpha < 1):
            raise ConfigError(f"confirm.alpha: must be a number in (0, 1), got {self.alpha!r}")
        for m, v in self.margins.items():
            if m not in METRIC_MODES or not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ConfigError(f"confirm.margins.{m}: must be a number >= 0 for a metric with a direction "
                                  f"({', '.join(METRIC_MODES)})")
        if not isinstance(self.sae_seeds, int) or isinstance(self.sae_seeds, bool) or not 0 <= self.sae_seeds <= 20:
            raise ConfigError(f"confirm.sae_seeds: must be an integer in [0, 20], got {self.sae_seeds!r}")

    @property
    def arms(self) -> tuple[str, ...]:
        return ("best", *self.controls)

    def to_dict(self) -> dict[str, Any]:
        return {"controls": list(self.controls), "alpha": self.alpha, "margins": dict(sorted(self.margins.items())),
                "sae_seeds": self.sae_seeds}


def parse_settings(raw: Any, where: str = "confirm") -> ConfirmSettings:
    """ConfirmSettings from a space's `confirm:` mapping; margins given there are added to the defaults."""
    if raw is None:
        return ConfirmSettings()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping with controls, alpha, margins, sae_seeds")
    known = ("controls", "alpha", "margins", "sae_seeds")
    for k in raw:
        if k not in known:
            raise ConfigError(f"{where}.{k}: unknown field (allowed: {', '.join(known)})")
    margins = raw.get("margins", {})
    if not isinstance(margins, dict):
        raise ConfigError(f"{where}.margins: must be a mapping of metric: margin")
    controls = raw.get("controls", CONTROLS)
    if not isinstance(controls, list | tuple):
        raise ConfigError(f"{where}.controls: must be a list of arms from: {', '.join(CONTROLS)}")
    alpha = raw.get("alpha", 0.05)
    return ConfirmSettings(controls=tuple(controls), alpha=float(alpha) if isinstance(alpha, int | float) and not
                           isinstance(alpha, bool) else alpha,
                           margins={**DEFAULT_MARGINS, **margins}, sae_seeds=raw.get("sae_seeds", 3))


def with_controls(settings: ConfirmSettings, controls: str | None) -> ConfirmSettings:
    """settings with the controls of a comma-separated list (--confirm-controls) when one is given."""
    if not controls:
        return settings

    return dataclasses.replace(settings, controls=tuple(c.strip() for c in controls.split(",") if c.strip()))


def arm_values(values: dict[str, Any], arm: str) -> dict[str, Any]:
    """The config values of `arm` for the chosen config `values`."""
    strategy = build_config(values).sharpen.strategy
    method = strategy if strategy in MATCHED_STRATEGIES else "per_class"
    if arm == "best":
        return dict(values)
    if arm == "aux0":
        return {**values, "aux.weight": 0.0}
    if arm == "random":
        return {**values, "sharpen.strategy": "random", "sharpen.match": method}
    if arm == "prototype":
        return {**values, "sharpen.strategy": "class_prototype"}
    if arm == "nosharpen":
        return {**values, "sharpen.strategy": method, "sharpen.top_k_pct": 100.0}
    raise ValueError(f"unknown arm {arm!r}")


def confirm_seeds(base_seed: int, n: int) -> list[int]:
    """Fresh seeds: the sweep selected its winner on base_seed, so re-using it would carry the winner's curse."""
    return [base_seed + 1 + i for i in range(n)]


def run_arms(values: dict[str, Any], seed: int, root: Path,
             on_cycle: Callable[[str, int, dict, Path], None] | None = None,
             device=None, cache=None, arms: tuple[str, ...] = ARMS, sae_seeds: int = 0,
             on_diverged: Callable[[str, str], None] | None = None,
             on_spread: Callable[[list[dict]], None] | None = None) -> dict[str, list[dict]]:
    """Runs every arm for one seed; controls start from the best arm's cycle 0. Returns the histories of
    the arms that finished. An arm whose chain diverges is reported (on_diverged(arm, reason)) and the
    others still run; when `best` diverges in cycle 0 there is no cycle 0 to share and no control runs.
    sae_seeds > 0: after `best`, that many more SAEs on its last cycle (on_spread(their metrics))."""
    histories = {}
    cycle0: dict[int, ChainState] = {}
    last: dict[int, ChainState] = {}

    def keep_states(cycle: int, state: ChainState) -> None:
        if cycle == 0:
            cycle0[0] = state.copy()  # in memory on every rank: no rank needs another's files
        last[0] = state

    for arm in arms:
        cfg = build_config({**arm_values(values, arm), "seed": seed})
        callback = (lambda c, m, d, arm=arm: on_cycle(arm, c, m, d)) if on_cycle else None
        try:
            if arm == "best":
                histories[arm] = run_chain(cfg, ChainPaths(root / arm), on_cycle=callback, device=device,
                                           on_state=keep_states, cache=cache)
                if sae_seeds > 0:
                    spread = sae_seed_spread(cfg, last[0].copy(), sae_seeds, device)
                    if on_spread is not None:
                        on_spread(spread)
            elif 0 not in cycle0:
                raise DivergedError("the best arm diverged in cycle 0, which every control shares")
            else:
                histories[arm] = run_chain(cfg, ChainPaths(root / arm), on_cycle=callback, device=device,
                                           resume_from=cycle0[0].copy())
        except DivergedError as e:
            if on_diverged is None:
                raise
            on_diverged(arm, str(e))
    return histories


# --------------------------------------------------------------------------------------------------
# Statistics


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    return mean, sd


def paired_test(a: list[float], b: list[float]) -> float:
    """Two-sided paired t-test p-value of a vs b over seeds; nan when it is undefined (< 2 pairs, or every
    difference equal, where the t statistic has no spread to divide by: never a p of 0)."""
    from scipy import stats  # lazy: scipy only for the statistics

    if len(a) < 2:
        return math.nan
    diffs = [x - y for x, y in zip(a, b)]
    if max(diffs) - min(diffs) <= 1e-12 * max(1.0, max(abs(d) for d in diffs)):
        return math.nan
    return float(stats.ttest_rel(a, b).pvalue)


def sign_test(gains: list[float]) -> float:
    """Exact two-sided sign test over the non-zero paired differences (1.0 when all are zero)."""
    from scipy import stats  # lazy: scipy only for the statistics

    pos, neg = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    if pos + neg == 0:
        return 1.0
    return float(stats.binomtest(pos, pos + neg, 0.5).pvalue)


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t-based confidence interval of the mean difference (nan with < 2 pairs)."""
    from scipy import stats  # lazy: scipy only for the statistics

    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    mean, sd = _mean_sd(diffs)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone); nan entries stay nan and do not count in the family."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def base_metric(metric: str) -> str:
    return metric.removeprefix("val_")


def metric_mode(metric: str, modes: dict[str, str] | None = None) -> str | None:
    """'max', 'min', or None (no direction: no verdict); `modes` (the space's objectives) first."""
    modes = modes or {}
    return modes.get(metric) or modes.get(base_metric(metric)) or METRIC_MODES.get(base_metric(metric))


def decide(mean_gain: float, ci: tuple[float, float], p_holm: float, margin: float | None, alpha: float,
           diverged_method: int) -> str:
    """The verdict of one comparison, from the method's side (gain = the difference in the metric's
    direction): `better`/`worse` when the Holm-adjusted p is below alpha; else `equivalent` when the 95%
    interval lies inside ±margin; else `inconclusive`. A seed whose method arm diverged counts against the
    method: the verdict can then be `worse` or `inconclusive`, never `better` or `equivalent`."""
    if not math.isnan(p_holm) and p_holm < alpha and mean_gain != 0:
        if mean_gain < 0:
            return "worse"
        return "inconclusive" if diverged_method else "better"
    lo, hi = ci
    if margin is not None and not diverged_method and not math.isnan(lo) and -margin <= lo and hi <= margin:
        return "equivalent"
    return "inconclusive"


# How far seeds_to_decide looks: past this many seeds a comparison is called out of reach ("> 200").
SEEDS_TO_DECIDE_MAX = 200


def seeds_to_decide(mean: float, sd: float, n: int, margin: float | None, alpha: float, family: int,
                    most: int = SEEDS_TO_DECIDE_MAX) -> float:
    """A planning aid for an inconclusive comparison, not a test: the fewest seeds (more than the `n` run) at
    which the verdict would be decided *if the mean paired difference and its sd stayed as observed*: the 95%
    t interval inside ±margin (`equivalent`), or the paired t-test below alpha/family (`better`/`worse`;
    Bonferroni's bound over the Holm family, which Holm's p never exceeds, so the count is never too small
    for that). Every difference equal (sd 0): the exact sign test's bound. inf when neither happens by `most`
    seeds; nan when the spread is unknown (< 2 seeds)."""
    from scipy import stats  # lazy: scipy only for the statistics

    if n < 2 or math.isnan(sd) or math.isnan(mean):
        return math.nan
    ks = np.arange(n + 1, most + 1)
    if ks.size == 0:
        return math.inf
    level = alpha / max(family, 1)
    if sd == 0:
        if margin is not None and abs(mean) <= margin:
            return float(ks[0])
        ok = (abs(mean) > 0) & (2.0 * 0.5 ** ks <= level)
    else:
        se = sd / np.sqrt(ks)
        equivalent = (abs(mean) + stats.t.ppf(0.975, ks - 1) * se <= margin) if margin is not None else np.zeros(ks.size, bool)
        different = abs(mean) / se >= stats.t.ppf(1 - level / 2, ks - 1)
        ok = equivalent | different
    return float(ks[np.argmax(ok)]) if ok.any() else math.inf


def summarize(results: dict[str, dict[int, dict[int, dict[str, float]]]], metrics: tuple[str, ...] = SUMMARY_METRICS,
              settings: ConfirmSettings | None = None, modes: dict[str, str] | None = None,
              failed: dict[str, dict[int, str]] | None = None,
              spread: list[dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """results[arm][seed][cycle] = metrics of the arms that finished; failed[arm][seed] = why an arm did
    not; spread: the last cycle's metrics of the SAE-seed runs (the first seed's own SAE and its extra
    ones). One row per (cycle, metric): n, mean and sd per arm, the SAE-seed sd, and per control the
    paired difference best − control (mean, sd, 95% interval, wins/ties/losses in the metric's direction,
    t and sign p, Holm p, verdict). Holm's family: metrics with a direction × controls, at the last cycle."""
    settings = settings or ConfirmSettings()
    failed = failed or {}
    arms = settings.arms
    seeds = sorted(set().union(*(set(results.get(a, {})) | set(failed.get(a, {})) for a in arms)))
    cycles = sorted({c for a in arms for s in results.get(a, {}).values() for c in s})
    rows: list[dict[str, Any]] = []
    for cycle in cycles:
        for metric in metrics:
            def value(arm: str, seed: int, cycle: int = cycle, metric: str = metric) -> float | None:
                v = results.get(arm, {}).get(seed, {}).get(cycle, {}).get(metric)
                return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

            if all(value(a, s) is None for a in arms for s in seeds):
                continue
            mode = metric_mode(metric, modes)
            row: dict[str, Any] = {"cycle": cycle, "metric": metric, "mode": mode, "n_seeds": len(seeds),
                                   "margin": settings.margins.get(base_metric(metric)) if mode else None}
            for a in arms:
                vals = [v for s in seeds if (v := value(a, s)) is not None]
                row[f"{a}_n"] = len(vals)
                row[f"{a}_mean"], row[f"{a}_sd"] = _mean_sd(vals)
            noise = [float(m[metric]) for m in spread or [] if isinstance(m.get(metric), (int, float))
                     and not math.isnan(m[metric])]
            row["sae_seed_sd"] = _mean_sd(noise)[1] if len(noise) > 1 else math.nan
            row["sae_seed_n"] = len(noise)
            method_failed = set(failed.get("best", {}))
            for c in settings.controls:
                pairs = [(b, x) for s in seeds if (b := value("best", s)) is not None and (x := value(c, s)) is not None]
                diverged = sum(1 for s in method_failed if value(c, s) is not None)
                if not pairs and not diverged:
                    continue
                diffs = [b - x for b, x in pairs]
                sign = -1.0 if mode == "min" else 1.0
                gains = [sign * d for d in diffs]
                mean, sd = _mean_sd(diffs)
                lo, hi = t_interval(diffs)
                row.update({f"diff_{c}_mean": mean, f"diff_{c}_sd": sd, f"ci_{c}": (lo, hi), f"n_{c}": len(pairs),
                            f"wins_{c}": sum(g > 0 for g in gains), f"ties_{c}": sum(g == 0 for g in gains),
                            f"losses_{c}": sum(g < 0 for g in gains) + diverged, f"diverged_{c}": diverged,
                            f"p_{c}": paired_test([b for b, _ in pairs], [x for _, x in pairs]),
                            f"p_sign_{c}": sign_test(gains + [-1.0] * diverged)})
            rows.append(row)
    if rows:
        last = max(r["cycle"] for r in rows)
        family = [(r, c) for r in rows if r["cycle"] == last and r["mode"] for c in settings.controls if f"n_{c}" in r]
        # The t-test where it is defined, the sign test where it is not (every difference equal).
        raw = [r[f"p_{c}"] if not math.isnan(r[f"p_{c}"]) else r[f"p_sign_{c}"] for r, c in family]
        for (r, c), p in zip(family, holm(raw)):
            gain = (-1.0 if r["mode"] == "min" else 1.0) * r[f"diff_{c}_mean"] if r[f"n_{c}"] else math.nan
            lo, hi = r[f"ci_{c}"]
            oriented = (lo, hi) if r["mode"] != "min" else (-hi, -lo)
            r[f"p_holm_{c}"] = p
            r[f"verdict_{c}"] = decide(gain if not math.isnan(gain) else 0.0, oriented, p, r["margin"], settings.alpha,
                                       r[f"diverged_{c}"])
            # Only for a comparison more seeds can decide: a diverged method arm keeps it from better/equivalent.
            undecided = r[f"verdict_{c}"] == "inconclusive" and not r[f"diverged_{c}"]
            r[f"seeds_to_decide_{c}"] = seeds_to_decide(r[f"diff_{c}_mean"], r[f"diff_{c}_sd"], r[f"n_{c}"], r["margin"],
                                                        settings.alpha, len(family)) if undecided else math.nan
    return rows


def last_cycle(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        return rows
    last = max(r["cycle"] for r in rows)
    return [r for r in rows if r["cycle"] == last]


def verdict_line(rows: list[dict[str, Any]], headline: tuple[str, ...], controls: tuple[str, ...]) -> str:
    """One sentence over the headline metrics at the last cycle, e.g. "sae_u: better than all 4 controls;
    task_accuracy: equivalent to all 4 controls (costs no accuracy)"."""
    parts = []
    by_metric = {r["metric"]: r for r in last_cycle(rows)}
    for metric in headline:
        r = by_metric.get(metric)
        if r is None or not r.get("mode"):
            continue
        verdicts = {c: r.get(f"verdict_{c}") for c in controls if r.get(f"verdict_{c}")}
        if not verdicts:
            continue
        groups: dict[str, list[str]] = {}
        for c, v in verdicts.items():
            groups.setdefault(v, []).append(c)
        words = {"better": "better than", "worse": "worse than", "equivalent": "equivalent to", "inconclusive": "inconclusive vs"}
        if len(groups) == 1 and len(verdicts) > 1:
            (v,) = groups
            text = f"{metric}: {words[v]} all {len(verdicts)} controls"
        else:
            text = f"{metric}: " + "; ".join(f"{words[v]} {', '.join(cs)}" for v, cs in groups.items())
        if base_metric(metric) == "task_accuracy":
            if "worse" in groups:
                text += " (costs accuracy)"
            elif set(groups) <= {"better", "equivalent"}:
                text += " (costs no accuracy)"
            else:
                text += " (accuracy cost not settled)"
        parts.append(text)
    return "; ".join(parts) if parts else "no verdict: no comparison finished"


def seeds_line(rows: list[dict[str, Any]], headline: tuple[str, ...], controls: tuple[str, ...]) -> str | None:
    """For the headline metrics' inconclusive comparisons at the last cycle: the seeds that would decide each at
    the observed mean and spread (seeds_to_decide), e.g. "task_accuracy vs aux0: 23"; None when none is."""
    by_metric = {r["metric"]: r for r in last_cycle(rows)}
    parts = [f"{m} vs {c}: {seeds_text(v)}" for m in headline if (r := by_metric.get(m))
             for c in controls if not math.isnan(v := r.get(f"seeds_to_decide_{c}", math.nan))]
    return "; ".join(parts) or None


# --------------------------------------------------------------------------------------------------
# Tables


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def seeds_text(v: Any) -> str:
    """seeds_to_decide as the tables write it: the count, "> 200" past the search's end, "-" where it does not apply."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"> {SEEDS_TO_DECIDE_MAX}" if math.isinf(v) else str(int(v))


def _p(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


def arms_table(rows: list[dict[str, Any]], arms: tuple[str, ...]) -> str:
    """Per arm at the last cycle: finished seeds, what its targets kept, and each metric's mean ± sd."""
    rows = last_cycle(rows)
    metrics = [r for r in rows if r["metric"] not in KEPT_METRICS]
    kept = {r["metric"]: r for r in rows if r["metric"] in KEPT_METRICS}
    head = ["arm", "what it is", "seeds", "kept L1 fraction", "kept active latents", "empty codes",
            *(r["metric"] for r in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        n = max((r.get(f"{a}_n", 0) for r in rows), default=0)
        total = rows[0]["n_seeds"] if rows else 0
        cells = [a, ARM_DOC[a], f"{n}/{total}"]
        for k in KEPT_METRICS:
            r = kept.get(k)
            cells.append(f"{_f(r[f'{a}_mean'], 3)} ± {_f(r[f'{a}_sd'], 3)}" if r and r.get(f"{a}_n") else "-")
        cells += [f"{_f(r[f'{a}_mean'])} ± {_f(r[f'{a}_sd'])}" for r in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(rows: list[dict[str, Any]], controls: tuple[str, ...], last_cycle_only: bool = True) -> str:
    """Per metric and control: best − control with its 95% interval, wins/ties/losses in the metric's
    direction, the t-test, the sign test and Holm's p, the margin, the SAE-seed sd, the verdict and, where
    it is inconclusive, how many seeds would decide it at the observed mean and spread (seeds_to_decide)."""
    if last_cycle_only:
        rows = last_cycle(rows)
    elif any(r["cycle"] > 0 for r in rows):
        rows = [r for r in rows if r["cycle"] > 0]  # every arm shares cycle 0: nothing to compare there
    head = ("| cycle | metric | control | best − control [95% CI] | wins/ties/losses | p (t) | p (sign) | p (Holm) "
            "| margin | SAE-seed sd | verdict | seeds to decide |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r["metric"] in KEPT_METRICS:
            continue
        for c in controls:
            if f"n_{c}" not in r:
                continue
            lo, hi = r[f"ci_{c}"]
            div = f" (+{r[f'diverged_{c}']} diverged)" if r[f"diverged_{c}"] else ""
            lines.append(f"| {r['cycle']} | {r['metric']} | {c} | {_f(r[f'diff_{c}_mean'])} [{_f(lo)}, {_f(hi)}] | "
                         f"{r[f'wins_{c}']}/{r[f'ties_{c}']}/{r[f'losses_{c}']}{div} | {_p(r[f'p_{c}'])} | "
                         f"{_p(r[f'p_sign_{c}'])} | {_p(r.get(f'p_holm_{c}'))} | {_f(r['margin'])} | "
                         f"{_f(r['sae_seed_sd'])} | {r.get(f'verdict_{c}', '-')} | {seeds_text(r.get(f'seeds_to_decide_{c}'))} |")
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]], settings: ConfirmSettings | None = None, headline: tuple[str, ...] = (),
                 last_cycle_only: bool = True) -> str:
    """The confirmation as Markdown: the verdict line, the seeds that would decide what is inconclusive, the arms,
    the comparisons."""
    settings = settings or ConfirmSettings()
    parts = [f"**Verdict:** {verdict_line(rows, headline, settings.controls)}"]
    if more := seeds_line(rows, headline, settings.controls):
        parts.append(f"**Seeds to decide** (if the mean differences and their spread stay as observed; "
                     f"`--resume --confirm-seeds N` runs only the missing seeds): {more}")
    return "\n\n".join([*parts, arms_table(rows, settings.arms), comparison_table(rows, settings.controls, last_cycle_only)])
