"""Evidence: re-run a chosen configuration and its controls on fresh seeds, compare, and decide.

Arms (same seeds, same cycle 0):
- `best`:      the configuration the sweep chose;
- `aux0`:      aux.weight = 0 (the retraining is plain extra fine-tuning);
- `random`:    sharpen.strategy = random matched to the winner's strategy: per example, as many active
               latents as the winner keeps, drawn at random among the active ones in proportion to their
               activation ("the SAE latents the method chooses" vs other latents of the same example);
- `prototype`: sharpen.strategy = class_prototype, the class mean of h, no SAE ("pull toward class
               structure");
- `nosharpen`: sharpen.top_k_pct = 100, the SAE's plain reconstruction ("distil toward the SAE");
- `pairing`:   the other sharpen.pairing (aligned <-> shuffled: each target from the example's own code, or
               from another example's as the original SAE-ception's code builds them); opt-in, not a default.
Cycle 0 does not read any aux or sharpening setting, so for each seed the controls resume from the
`best` arm's cycle-0 state: the arms differ only in what the method changes (a paired design), and
cycle 0 is computed once instead of once per arm.

The comparison (`summarize`) gives, per metric and control, the paired mean difference best − control
and, at the last cycle, its anytime-valid confidence sequence at alpha / family (the family: the headline
metrics × the controls), so the verdict stays valid however often seeds are added and the study judged
again; the variance never below the SAE-seed noise the arms carry; and a verdict that says the effect's size
beside its sign (`better`, `better, negligible`, `equivalent`, `worse, negligible`, `worse`,
`inconclusive`); `verdict_line` says it in one. docs/evidence.md has the rules.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeception.config import MATCHED_STRATEGIES, ConfigError, build_config
from saeception.method.chain import ChainState, run_chain, sae_seed_spread
from saeception.method.errors import DivergedError
from saeception.method.sharpen import is_noop
from saeception.store.artifacts import ChainPaths

ARMS = ("best", "aux0", "random", "prototype", "nosharpen", "pairing")
CONTROLS = ARMS[1:]  # every control a confirmation may run
DEFAULT_CONTROLS = ("aux0", "random", "prototype", "nosharpen")  # what it runs unless the space or the CLI says
# What each control changes, for tables, cards and help (one place).
ARM_DOC = {
    "best": "the configuration the sweep chose",
    "aux0": "aux.weight = 0: plain extra fine-tuning",
    "random": "as many active latents per example as the winner keeps, drawn at random (weighted by activation)",
    "prototype": "target = the class mean of h (no SAE)",
    "nosharpen": "sharpen.top_k_pct = 100: the SAE reconstruction",
    "pairing": "the other sharpen.pairing: targets from the example's own code (aligned) or another's (shuffled)",
}
# Metrics summarised by default (the method's claim: more monosemantic, accuracy kept, the SAE still faithful
# when spliced in).
SUMMARY_METRICS = ("task_accuracy", "sae_u", "sae_csi", "probe_accuracy", "k_sparse_probe_accuracy_k1", "loss_recovered",
                   "aux_cosine")
# Per arm, what its targets kept (reported beside the metrics, never compared).
# sae_scored_latents: how many latents the per-latent metrics (sae_u, sae_csi) averaged over; arms that score
# different latent sets compare different things, so the count stands beside them.
KEPT_METRICS = ("sharpen_kept_fraction", "sharpen_kept_active", "sharpen_empty_fraction", "sae_scored_latents")
KEPT_HEADS = ("kept L1 fraction", "kept active latents", "empty codes", "scored latents")
# The direction in which a metric is better; metrics not here get no verdict (l0, aux_* are descriptions
# or, like aux_cosine, differ between arms by construction).
METRIC_MODES = {
    "task_accuracy": "max", "task_f1_macro": "max", "probe_accuracy": "max",
    "k_sparse_probe_accuracy_k1": "max", "k_sparse_probe_accuracy_k5": "max", "k_sparse_probe_accuracy_k25": "max",
    "sae_csi": "max", "sae_u": "max", "sae_csi_all": "max", "sae_u_all": "max", "base_csi": "max", "base_u": "max",
    "ari": "max", "argmax_ari": "max", "silhouette": "max", "davies_bouldin": "min", "calinski_harabasz": "max",
    "explained_variance": "max", "dead_pct": "min",
    "spliced_task_accuracy": "max", "task_accuracy_drop": "min", "spliced_ce": "min", "spliced_kl": "min",
    "loss_recovered": "max",
}
# Equivalence margins: a difference inside ±margin is no difference that matters. task_accuracy's is a
# choice (half a point); the others are about twice the SAE-seed spread measured on the default chain
# (BENCHMARKS.md, "Noise floor"): a smaller effect is one a retrained SAE would give by chance.
DEFAULT_MARGINS = {"task_accuracy": 0.005, "sae_u": 0.007, "sae_csi": 0.015, "probe_accuracy": 0.02,
                   "k_sparse_probe_accuracy_k1": 0.015}


@dataclass
class ConfirmSettings:
    """The confirmation's settings: the `confirm:` section of a search space (and --confirm-controls)."""

    controls: tuple[str, ...] = DEFAULT_CONTROLS  # which control arms run next to `best`
    alpha: float = 0.05  # family-wise error rate over the headline metrics x controls, at any number of seeds
    margins: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS))  # per metric, test-split name
    # extra SAEs on every arm's last cycle of every seed: the arm's numbers are the mean over its 1 + sae_seeds SAEs,
    # and their spread is the SAE-seed sd (0: one SAE per arm, no noise floor)
    sae_seeds: int = 2

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
    controls = raw.get("controls", DEFAULT_CONTROLS)
    if not isinstance(controls, list | tuple):
        raise ConfigError(f"{where}.controls: must be a list of arms from: {', '.join(CONTROLS)}")
    alpha = raw.get("alpha", 0.05)
    return ConfirmSettings(controls=tuple(controls), alpha=float(alpha) if isinstance(alpha, int | float) and not
                           isinstance(alpha, bool) else alpha,
                           margins={**DEFAULT_MARGINS, **margins},
                           sae_seeds=raw.get("sae_seeds", ConfirmSettings.sae_seeds))


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
        return {**values, "aux.weight": 0.0, "aux.weight_per_cycle": []}
    if arm == "random":
        return {**values, "sharpen.strategy": "random", "sharpen.match": method}
    if arm == "prototype":
        return {**values, "sharpen.strategy": "class_prototype"}
    if arm == "pairing":
        return {**values, "sharpen.pairing": "aligned" if build_config(values).sharpen.pairing == "shuffled" else "shuffled"}
    if arm == "nosharpen":
        # Every latent kept: with sharpen.keep mask, 100% would zero them all instead.
        return {**values, "sharpen.strategy": method, "sharpen.top_k_pct": 100.0, "sharpen.keep": "top"}
    raise ValueError(f"unknown arm {arm!r}")


def degenerate_controls(values: dict[str, Any], controls: tuple[str, ...], width: int | None) -> dict[str, str]:
    """The controls whose targets would equal the winner's, each with why: a control whose config is the
    winner's (its strategy, or aux.weight 0, is the control's), and `random`/`nosharpen` when the winner keeps
    every active latent (top_k_pct 100, or per_example keeping >= sae.k of a TopK code; `width`, the tapped
    layer's width, None when unknown: that case is then not checked). Such a comparison could only tie."""
    best = build_config(values)
    out: dict[str, str] = {}
    keeps_all = best.sharpen.strategy in MATCHED_STRATEGIES and best.sharpen.keep == "top" and (
        best.sharpen.top_k_pct >= 100 or (width is not None and is_noop(
            best.sharpen.strategy, best.sae.kind, best.sae.k, best.sae.n_latents(width), best.sharpen.top_k_pct)))
    for c in controls:
        if build_config(arm_values(values, c)) == best:
            out[c] = f"its config is the winner's ({ARM_DOC[c]})"
        elif c == "pairing" and best.sharpen.strategy in ("class_prototype", "random_direction"):
            out[c] = f"the winner's targets read no SAE codes (sharpen.strategy {best.sharpen.strategy}), so pairing changes nothing"
        elif c in ("random", "nosharpen") and keeps_all:
            out[c] = (f"the winner keeps every active latent (sharpen.strategy {best.sharpen.strategy}, top_k_pct "
                      f"{best.sharpen.top_k_pct:g}, sae.k {best.sae.k}), so its targets equal this control's")
    return out


def seed_values(values: dict[str, Any], arm: str, seed: int) -> dict[str, Any]:
    """The config values of `arm` on confirmation seed `seed`: the seed, and a test split drawn for that seed
    (data.test_draw; val untouched), so the seeds' spread holds the test examples' sampling error too."""
    return {**arm_values(values, arm), "seed": seed, "data.test_draw": seed}


def confirm_seeds(base_seed: int, n: int) -> list[int]:
    """Fresh seeds: the sweep selected its winner on base_seed, so re-using it would carry the winner's curse."""
    return [base_seed + 1 + i for i in range(n)]


def run_arms(values: dict[str, Any], seed: int, root: Path,
             on_cycle: Callable[[str, int, dict, Path], None] | None = None,
             device=None, cache=None, arms: tuple[str, ...] = ARMS, sae_seeds: int = 0,
             on_diverged: Callable[[str, str], None] | None = None,
             on_spread: Callable[[str, list[dict]], None] | None = None) -> dict[str, list[dict]]:
    """Runs every arm for one seed; controls start from the best arm's cycle 0. Returns the histories of
    the arms that finished. An arm whose chain diverges is reported (on_diverged(arm, reason)) and the
    others still run; when `best` diverges in cycle 0 there is no cycle 0 to share and no control runs.
    sae_seeds > 0: after each arm, that many more SAEs on its last cycle (on_spread(arm, their metrics)):
    the arm's numbers are then the mean over its SAEs (average_saes), their spread the SAE-seed noise."""
    histories = {}
    cycle0: dict[int, ChainState] = {}
    last: dict[int, ChainState] = {}

    def keep_states(cycle: int, state: ChainState) -> None:
        if cycle == 0:
            cycle0[0] = state.copy()  # in memory on every rank: no rank needs another's files
        last[0] = state

    for arm in arms:
        cfg = build_config(seed_values(values, arm, seed))
        callback = (lambda c, m, d, arm=arm: on_cycle(arm, c, m, d)) if on_cycle else None
        try:
            if arm == "best":
                histories[arm] = run_chain(cfg, ChainPaths(root / arm), on_cycle=callback, device=device,
                                           on_state=keep_states, cache=cache)
            elif 0 not in cycle0:
                raise DivergedError("the best arm diverged in cycle 0, which every control shares")
            else:
                histories[arm] = run_chain(cfg, ChainPaths(root / arm), on_cycle=callback, device=device,
                                           resume_from=cycle0[0].copy(), on_state=keep_states)
            if sae_seeds > 0:
                spread = sae_seed_spread(cfg, last[0].copy(), sae_seeds, device)
                if on_spread is not None:
                    on_spread(arm, spread)
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
    """Two-sided paired t-test p-value of a vs b over seeds, descriptive (the verdict rests on the confidence
    sequence); nan when it is undefined (< 2 pairs, or every difference equal: never a p of 0)."""
    from scipy import stats  # lazy: scipy only for the statistics

    if len(a) < 2:
        return math.nan
    if _ss([x - y for x, y in zip(a, b)]) == 0:  # every difference equal: the t statistic is undefined
        return math.nan
    return float(stats.ttest_rel(a, b).pvalue)


def sign_test(gains: list[float]) -> float:
    """Exact two-sided sign test over the non-zero paired differences (1.0 when all are zero); descriptive."""
    from scipy import stats  # lazy: scipy only for the statistics

    pos, neg = sum(g > 0 for g in gains), sum(g < 0 for g in gains)
    if pos + neg == 0:
        return 1.0
    return float(stats.binomtest(pos, pos + neg, 0.5).pvalue)


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float]:
    """The fixed-n t confidence interval of the mean difference (nan with < 2 pairs); descriptive only."""
    from scipy import stats  # lazy: scipy only for the statistics

    n = len(diffs)
    if n < 2:
        return math.nan, math.nan
    mean, sd = _mean_sd(diffs)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def base_metric(metric: str) -> str:
    return metric.removeprefix("val_")


def metric_mode(metric: str, modes: dict[str, str] | None = None) -> str | None:
    """'max', 'min', or None (no direction: no verdict); `modes` (the space's objectives) first."""
    modes = modes or {}
    return modes.get(metric) or modes.get(base_metric(metric)) or METRIC_MODES.get(base_metric(metric))


# --------------------------------------------------------------------------------------------------
# The decision: an anytime-valid confidence sequence per comparison (docs/evidence.md, "How a verdict is made")

# The mixture's prior variance of the standardised effect (mean / sd): 1 is the unit-information choice; the
# intervals are then 1.7x a fixed-n t interval's width at 10 seeds and 1.6x at 20 (BENCHMARKS.md §16).
MIXTURE_G = 1.0
# No verdict on fewer paired seeds than this, whatever the interval says.
MIN_SEEDS = 3
# The only verdicts summarize gives, from the method's side.
VERDICTS = ("better", "better, negligible", "equivalent", "worse, negligible", "worse", "inconclusive")


def mixture_e_value(n: int, mean: float, ss: float, g: float = MIXTURE_G) -> float:
    """The scale-invariant Gaussian-mixture e-value against "the mean paired difference is 0" after n
    differences with this mean and sum of squared deviations ss (Lai 1976; the safe t-test's statistic): the
    Bayes factor with a N(0, g) prior on the standardised effect and the right-Haar prior on the scale,
    a test martingale over seeds, so P(it ever reaches 1/alpha | no difference) <= alpha (Ville)."""
    if n < 2 or ss <= 0:
        return 1.0
    c, m = 1.0 + n * g, n * mean * mean
    return math.exp(-0.5 * math.log(c) + 0.5 * n * (math.log(ss + m) - math.log(ss + m / c)))


def cs_half_width(n: int, ss: float, alpha: float, g: float = MIXTURE_G) -> float:
    """Half-width of the time-uniform (1 - alpha) confidence sequence for a mean from n Gaussian observations of
    unknown variance whose sum of squared deviations is ss: the means mu where mixture_e_value of (mean - mu)
    stays below 1/alpha. It holds at every n at once, so judging after every added seed keeps alpha. inf where
    the set is unbounded (n < 2, ss = 0, or too few seeds for this alpha)."""
    if n < 2 or ss <= 0:
        return math.inf
    c = 1.0 + n * g
    r = math.exp((math.log(c) - 2.0 * math.log(alpha)) / n)
    if r >= c:
        return math.inf
    return math.sqrt((r - 1.0) / (1.0 - r / c) * ss / n)


def decide(ci: tuple[float, float], margin: float | None, n: int, diverged_method: int = 0) -> str:
    """The verdict of one comparison from its confidence sequence `ci`, oriented in the metric's direction
    (positive = the method gains), over n paired seeds:
    - `better` / `worse`: the interval excludes 0 and is not inside ±margin (a difference that may matter);
    - `better, negligible` / `worse, negligible`: it excludes 0 but lies inside ±margin;
    - `equivalent`: it holds 0 and lies inside ±margin (a metric without a margin is never equivalent);
    - `inconclusive`: it holds 0 and reaches past the margin, it is unbounded, or n < MIN_SEEDS.
    A seed whose method arm diverged counts against the method: with any, the verdict cannot be better
    (negligible or not) or equivalent; diverged on every seed (>= MIN_SEEDS of them, no pair left): `worse`."""
    if n == 0 and diverged_method >= MIN_SEEDS:
        return "worse"
    lo, hi = ci
    if n < MIN_SEEDS or math.isnan(lo) or math.isinf(lo) or math.isinf(hi):
        return "inconclusive"
    inside = margin is not None and -margin <= lo and hi <= margin
    if lo > 0:
        verdict = "better, negligible" if inside else "better"
    elif hi < 0:
        verdict = "worse, negligible" if inside else "worse"
    else:
        verdict = "equivalent" if inside else "inconclusive"
    if diverged_method and verdict in ("better", "better, negligible", "equivalent"):
        return "inconclusive"
    return verdict


def is_decided(verdict: str | None) -> bool:
    return verdict is not None and verdict != "inconclusive"


# How far seeds_to_decide looks: past this many seeds a comparison is called out of reach ("> 200").
SEEDS_TO_DECIDE_MAX = 200


def seeds_to_decide(mean: float, sd: float, n: int, margin: float | None, alpha: float, family: int,
                    floor: float = 0.0, most: int = SEEDS_TO_DECIDE_MAX) -> float:
    """A planning aid for an inconclusive comparison, not a test: the fewest seeds (more than the `n` run) at
    which `decide` would give a verdict *if the mean paired difference and its sd stayed as observed*, under
    the same rule (the confidence sequence at alpha / family, the sd never below `floor`). inf when none by
    `most` seeds; nan when the spread is unknown (< 2 seeds) or nil (every difference equal, no floor)."""
    if n < 2 or math.isnan(sd) or math.isnan(mean):
        return math.nan
    s = max(sd, floor)
    if s <= 0:
        return math.nan
    level = alpha / max(family, 1)
    for k in range(max(n + 1, MIN_SEEDS), most + 1):
        h = cs_half_width(k, (k - 1) * s * s, level)
        if is_decided(decide((mean - h, mean + h), margin, k)):
            return float(k)
    return math.inf


# The headline metrics of a script's summarize: the default space's objective and task accuracy.
DEFAULT_HEADLINE = ("sae_u", "task_accuracy")


def _ss(xs: list[float]) -> float:
    """Sum of squared deviations; exactly 0 when the values are equal up to rounding (a float mean of equal
    values can sit 1e-17 off them, and a spread that small must not pass for one)."""
    if len(xs) < 2 or max(xs) - min(xs) <= 1e-12 * max(1.0, max(abs(x) for x in xs)):
        return 0.0
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs)


def pooled_sd(groups: list[list[float]]) -> tuple[float, int]:
    """The pooled within-group sd (each group: the values of the SAEs trained on one arm's activations of one
    seed) and its degrees of freedom; nan, 0 with no group of 2 or more."""
    dof = sum(len(g) - 1 for g in groups if len(g) > 1)
    if dof == 0:
        return math.nan, 0
    return math.sqrt(sum(_ss(g) for g in groups) / dof), dof


def average_saes(own: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm's last-cycle metrics as the mean over its own SAE and the extra SAEs trained on the same
    activations (every metric the extra runs carry; the model's own numbers are equal in all of them)."""
    out = dict(own)
    for k, v in own.items():
        vals = [v, *(m.get(k) for m in extra)]
        if (all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vals)
                and len(set(vals)) > 1):  # equal values (the model's own numbers) stay exactly as they are
            out[k] = sum(vals) / len(vals)
    return out


def summarize(results: dict[str, dict[int, dict[int, dict[str, float]]]], metrics: tuple[str, ...] = SUMMARY_METRICS,
              settings: ConfirmSettings | None = None, modes: dict[str, str] | None = None,
              failed: dict[str, dict[int, str]] | None = None,
              spread: list[list[dict[str, float]]] | list[dict[str, float]] | None = None,
              headline: tuple[str, ...] = DEFAULT_HEADLINE) -> list[dict[str, Any]]:
    """results[arm][seed][cycle] = metrics of the arms that finished (at the last cycle, the mean over the
    arm's SAEs when confirm.sae_seeds > 0); failed[arm][seed] = why an arm did not; spread: the SAE-seed
    groups, each the last cycle's metrics of the SAEs trained on one arm's activations of one seed (a flat
    list is one group). One row per (cycle, metric): n, mean and sd per arm, the pooled SAE-seed sd, and per
    control the paired difference best − control (mean, sd, wins/ties/losses in the metric's direction,
    the descriptive t and sign p) and, at the last cycle, its anytime-valid confidence sequence `ci_<control>`
    at alpha / family, the family-adjusted anytime p `p_family_<control>`, the verdict and, when it is
    inconclusive, the seeds that would decide it. The family is `headline` × the controls, whatever
    `metrics` holds; other metrics are judged at the same level, outside the family's guarantee."""
    settings = settings or ConfirmSettings()
    failed = failed or {}
    groups = [spread] if spread and isinstance(spread[0], dict) else list(spread or [])
    arms = settings.arms
    seeds = sorted(set().union(*(set(results.get(a, {})) | set(failed.get(a, {})) for a in arms)))
    cycles = sorted({c for a in arms for s in results.get(a, {}).values() for c in s})
    family = len(headline) * len(settings.controls)
    level = settings.alpha / family
    n_saes = 1 + settings.sae_seeds
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
                                   "margin": settings.margins.get(base_metric(metric)) if mode else None,
                                   "headline": metric in headline}
            for a in arms:
                vals = [v for s in seeds if (v := value(a, s)) is not None]
                row[f"{a}_n"] = len(vals)
                row[f"{a}_mean"], row[f"{a}_sd"] = _mean_sd(vals)
            noise = [[float(m[metric]) for m in g if isinstance(m.get(metric), (int, float)) and math.isfinite(m[metric])]
                     for g in groups]
            row["sae_seed_sd"], row["sae_seed_dof"] = pooled_sd(noise)
            # The paired difference's variance holds the two arms' SAE noise, each averaged over n_saes SAEs.
            floor = math.sqrt(2.0 / n_saes) * row["sae_seed_sd"] if row["sae_seed_dof"] else 0.0
            row["sd_floor"] = floor
            method_failed = set(failed.get("best", {}))
            for c in settings.controls:
                pairs = [(b, x) for s in seeds if (b := value("best", s)) is not None and (x := value(c, s)) is not None]
                diverged = sum(1 for s in method_failed if value(c, s) is not None)
                if not pairs and not diverged:
                    continue
                diffs = [b - x for b, x in pairs]
                sign = -1.0 if mode == "min" else 1.0
                gains = [sign * d for d in diffs]
                mean = _mean_sd(diffs)[0]
                sd = math.sqrt(_ss(diffs) / (len(diffs) - 1)) if len(diffs) > 1 else math.nan  # no spread: exactly 0
                row.update({f"diff_{c}_mean": mean, f"diff_{c}_sd": sd, f"n_{c}": len(pairs),
                            f"wins_{c}": sum(g > 0 for g in gains), f"ties_{c}": sum(g == 0 for g in gains),
                            f"losses_{c}": sum(g < 0 for g in gains) + diverged, f"diverged_{c}": diverged,
                            f"p_{c}": paired_test([b for b, _ in pairs], [x for _, x in pairs]),
                            f"p_sign_{c}": sign_test(gains + [-1.0] * diverged)})
            rows.append(row)
    if rows:
        last = max(r["cycle"] for r in rows)
        for r in rows:
            if r["cycle"] != last or not r["mode"]:
                continue
            for c in settings.controls:
                if f"n_{c}" not in r:
                    continue
                _judge(r, c, level, family, settings.alpha)
    return rows


def _judge(r: dict[str, Any], c: str, level: float, family: int, alpha: float) -> None:
    """The confidence sequence, anytime p, verdict, why and seeds to decide of row r's comparison with control c."""
    n, mean, sd, floor = r[f"n_{c}"], r[f"diff_{c}_mean"], r[f"diff_{c}_sd"], r["sd_floor"]
    ss = (n - 1) * max(sd if not math.isnan(sd) else 0.0, floor) ** 2 if n > 1 else 0.0
    h = cs_half_width(n, ss, level)
    r[f"ci_{c}"] = (mean - h, mean + h) if n else (math.nan, math.nan)
    r[f"p_family_{c}"] = min(1.0, family / mixture_e_value(n, mean, ss)) if n > 1 and ss > 0 else math.nan
    lo, hi = r[f"ci_{c}"]
    oriented = (lo, hi) if r["mode"] != "min" else (-hi, -lo)
    diverged = r[f"diverged_{c}"]
    verdict = decide(oriented, r["margin"], n, diverged)
    r[f"verdict_{c}"] = verdict
    if verdict == "worse" and n == 0:
        why = "the method diverged on every seed"
    elif n < MIN_SEEDS:
        why = f"{n} paired seeds (a verdict needs {MIN_SEEDS})"
    elif ss <= 0:
        why = "no spread: every difference equal and no SAE-seed floor"
    elif math.isinf(h):
        why = f"{n} seeds are too few for an interval at level {level:.4g}"
    elif diverged and verdict == "inconclusive":
        why = f"the method diverged on {diverged} seed(s)"
    else:
        why = ""
    r[f"why_{c}"] = why
    # Only for a comparison more seeds can decide: a diverged method arm keeps it from better/equivalent.
    undecided = verdict == "inconclusive" and not diverged
    r[f"seeds_to_decide_{c}"] = (seeds_to_decide(mean, sd, n, r["margin"], alpha, family, floor) if undecided
                                 else math.nan)


def last_cycle(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not rows:
        return rows
    last = max(r["cycle"] for r in rows)
    return [r for r in rows if r["cycle"] == last]


def verdict_line(rows: list[dict[str, Any]], headline: tuple[str, ...], controls: tuple[str, ...]) -> str:
    """One sentence over the headline metrics at the last cycle, e.g. "sae_u: better than all 4 controls;
    task_accuracy: equivalent to all 4 controls (costs no accuracy)"; an inconclusive comparison says why when
    the data could not decide it at all (too few seeds, no spread)."""
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
        words = {"better": "better than", "better, negligible": "better (negligibly, inside the margin) than",
                 "worse": "worse than", "worse, negligible": "worse (negligibly, inside the margin) than",
                 "equivalent": "equivalent to", "inconclusive": "inconclusive vs"}
        if len(groups) == 1 and len(verdicts) > 1:
            (v,) = groups
            text = f"{metric}: {words[v]} all {len(verdicts)} controls"
        else:
            text = f"{metric}: " + "; ".join(f"{words[v]} {', '.join(cs)}" for v, cs in groups.items())
        whys = sorted({r[f"why_{c}"] for c in groups.get("inconclusive", []) if r.get(f"why_{c}")})
        if whys:
            text += f" [{'; '.join(whys)}]"
        if base_metric(metric) == "task_accuracy":
            # "costs accuracy" only for a loss that may exceed the margin, never for a negligible one.
            if "worse" in groups:
                text += " (costs accuracy)"
            elif "inconclusive" in groups:
                text += " (accuracy cost not settled)"
            elif "worse, negligible" in groups:
                text += " (a loss inside the margin: no accuracy cost that matters)"
            else:
                text += " (costs no accuracy)"
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
    """Per arm at the last cycle: finished seeds, what its targets kept, how many latents its per-latent
    metrics scored, and each metric's mean ± sd."""
    rows = last_cycle(rows)
    metrics = [r for r in rows if r["metric"] not in KEPT_METRICS]
    kept = {r["metric"]: r for r in rows if r["metric"] in KEPT_METRICS}
    head = ["arm", "what it is", "seeds", *KEPT_HEADS, *(r["metric"] for r in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in arms:
        n = max((r.get(f"{a}_n", 0) for r in rows), default=0)
        total = rows[0]["n_seeds"] if rows else 0
        cells = [a, ARM_DOC[a], f"{n}/{total}"]
        for k in KEPT_METRICS:
            r = kept.get(k)
            digits = 1 if k == "sae_scored_latents" else 3
            cells.append(f"{_f(r[f'{a}_mean'], digits)} ± {_f(r[f'{a}_sd'], digits)}" if r and r.get(f"{a}_n") else "-")
        cells += [f"{_f(r[f'{a}_mean'])} ± {_f(r[f'{a}_sd'])}" for r in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(rows: list[dict[str, Any]], controls: tuple[str, ...], last_cycle_only: bool = True) -> str:
    """Per metric and control: best − control with its anytime-valid interval (the one the verdict rests on),
    wins/ties/losses in the metric's direction, the family-adjusted anytime p, the margin, the SAE-seed sd,
    the verdict and, where it is inconclusive, how many seeds would decide it at the observed mean and spread."""
    if last_cycle_only:
        rows = last_cycle(rows)
    elif any(r["cycle"] > 0 for r in rows):
        rows = [r for r in rows if r["cycle"] > 0]  # every arm shares cycle 0: nothing to compare there
    head = ("| cycle | metric | control | best − control [interval] | w/t/l | p (family) | margin | SAE sd "
            "| verdict | seeds to decide |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if r["metric"] in KEPT_METRICS:
            continue
        for c in controls:
            if f"n_{c}" not in r:
                continue
            lo, hi = r.get(f"ci_{c}", (math.nan, math.nan))
            div = f" (+{r[f'diverged_{c}']} diverged)" if r[f"diverged_{c}"] else ""
            interval = f" [{_f(lo)}, {_f(hi)}]" if f"ci_{c}" in r else ""
            lines.append(f"| {r['cycle']} | {r['metric']} | {c} | {_f(r[f'diff_{c}_mean'])}{interval} | "
                         f"{r[f'wins_{c}']}/{r[f'ties_{c}']}/{r[f'losses_{c}']}{div} | {_p(r.get(f'p_family_{c}'))} | "
                         f"{_f(r['margin'])} | {_f(r['sae_seed_sd'])} | {r.get(f'verdict_{c}', '-')} | "
                         f"{seeds_text(r.get(f'seeds_to_decide_{c}'))} |")
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
