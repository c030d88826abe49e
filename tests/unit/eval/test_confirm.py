"""The confirmation: matched controls, statistics that cannot print a p of 0, anytime-valid verdicts, per-arm
failures and the SAE-seed noise floor."""

import math
import random
import statistics

import pytest
import torch
from scipy import stats

from saeception.config import ConfigError, SAEConfig, SharpenConfig
from saeception.eval.confirm import (
    CONTROLS,
    DEFAULT_CONTROLS,
    KEPT_METRICS,
    MIN_SEEDS,
    ConfirmSettings,
    arm_values,
    average_saes,
    confirm_seeds,
    cs_half_width,
    decide,
    degenerate_controls,
    format_table,
    mixture_e_value,
    paired_test,
    parse_settings,
    pooled_sd,
    run_arms,
    seed_values,
    seeds_to_decide,
    sign_test,
    summarize,
    t_interval,
    verdict_line,
)
from saeception.method.sae import train_sae
from saeception.method.sharpen import build_targets, kept_ratios, sharpen
from saeception.sweep.plots import confirmation_plot

TINY = {"data.max_examples": 300, "model.hidden_sizes": [32, 16], "finetune.epochs": 2, "sae.steps": 80, "sae.k": 4,
        "aux.epochs": 1, "eval.probe_max_iter": 100, "chain.cycles": 1}


def test_arms_and_seeds():
    v = {"aux.weight": 2.0, "sharpen.strategy": "per_example", "sharpen.top_k_pct": 3.0}
    assert arm_values(v, "aux0")["aux.weight"] == 0.0 and arm_values(v, "aux0")["sharpen.strategy"] == "per_example"
    # The random control is matched to whichever strategy won.
    assert arm_values(v, "random")["sharpen.strategy"] == "random" and arm_values(v, "random")["sharpen.match"] == "per_example"
    assert arm_values({}, "random")["sharpen.match"] == "per_class"
    assert arm_values(v, "prototype")["sharpen.strategy"] == "class_prototype"
    assert arm_values(v, "nosharpen")["sharpen.top_k_pct"] == 100.0
    assert confirm_seeds(0, 3) == [1, 2, 3]  # fresh seeds, never the one the sweep selected on


def _trained(n=400, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, d, generator=g) * 2
    acts = centers[labels] + torch.randn(n, d, generator=g)
    return acts, labels, train_sae(acts, SAEConfig(kind="topk", expansion_factor=8, k=8, steps=200), seed=0)


@pytest.mark.parametrize("match", ["per_class", "per_example"])
def test_random_control_keeps_as_many_active_latents_as_the_method(match):
    """Per example, the matched random control keeps exactly as many active latents as the winner's
    strategy, so its kept L1 mass is comparable (within 2x), never a near-empty code; the old construction
    (one random latent set per class) kept ~0 of a TopK code."""
    acts, labels, sae = _trained()
    codes = sae.encode(acts)
    method = sharpen(codes, labels, SharpenConfig(match, top_k_pct=4))
    control = sharpen(codes, labels, SharpenConfig("random", top_k_pct=4, match=match), seed=7)
    assert torch.equal((method > 0).sum(1), (control > 0).sum(1))
    assert ((control > 0) <= (codes > 0)).all()  # only active latents, with their own values
    assert torch.equal(control[control > 0], codes[control > 0])
    m, c = kept_ratios(codes, method).mean(), kept_ratios(codes, control).mean()
    assert c > 0.1 and m / c < 2.0, (float(m), float(c))
    assert not torch.equal(control, method)
    again = sharpen(codes, labels, SharpenConfig("random", top_k_pct=4, match=match), seed=7)
    other = sharpen(codes, labels, SharpenConfig("random", top_k_pct=4, match=match), seed=8)
    assert torch.equal(control, again) and not torch.equal(control, other)


def test_random_control_keeps_mass_of_the_methods_order_on_heavy_tailed_codes():
    """32 active latents a row, a few large: the method keeps the 3 largest (37% of the mass). A uniform draw
    of 3 active latents keeps ~9% (4x less: "beats random" would be nearly automatic); the control draws in
    proportion to the activation and stays within 2x."""
    g = torch.Generator().manual_seed(0)
    codes = torch.zeros(500, 256)
    for i in range(500):
        codes[i, torch.randperm(256, generator=g)[:32]] = torch.rand(32, generator=g) ** 4 + 0.01
    labels = torch.randint(0, 4, (500,), generator=g)
    method = sharpen(codes, labels, SharpenConfig("per_example", top_k_pct=1))
    control = sharpen(codes, labels, SharpenConfig("random", top_k_pct=1, match="per_example"), seed=3)
    assert torch.equal((method > 0).sum(1), (control > 0).sum(1))
    ratio = kept_ratios(codes, method).mean() / kept_ratios(codes, control).mean()
    assert 1 < ratio < 2, float(ratio)


def test_build_targets_reports_kept_mass_and_active_latents_of_each_arm():
    acts, labels, sae = _trained()
    method = build_targets(sae, acts, labels, SharpenConfig("per_class", top_k_pct=4))
    control = build_targets(sae, acts, labels, SharpenConfig("random", top_k_pct=4, match="per_class"), seed=1)
    assert method.kept_active == pytest.approx(control.kept_active)
    assert 0 < method.kept_fraction < 1 and 0.5 < method.kept_fraction / control.kept_fraction < 2
    full = build_targets(sae, acts, labels, SharpenConfig("per_class", top_k_pct=100))
    assert full.kept_fraction == pytest.approx(1.0) and full.kept_active == pytest.approx(8.0)
    torch.testing.assert_close(full.targets, sae.decode(sae.encode(acts)))  # nosharpen: the reconstruction
    proto = build_targets(sae, acts, labels, SharpenConfig("class_prototype"))
    for c in range(4):
        torch.testing.assert_close(proto.targets[labels == c], acts[labels == c].mean(0).expand(int((labels == c).sum()), -1))
    assert math.isnan(proto.kept_fraction) and math.isnan(proto.kept_active)


def test_paired_statistics_never_give_a_p_of_zero():
    # A one-example gain on 3 seeds: every difference equal. The t-test is undefined, not p = 0.
    assert math.isnan(paired_test([0.5028, 0.6028, 0.7028], [0.5, 0.6, 0.7]))
    assert math.isnan(paired_test([1.0], [0.0])) and math.isnan(paired_test([1.0, 2.0], [1.0, 2.0]))
    assert sign_test([0.1, 0.1, 0.1]) == pytest.approx(0.25)  # 2 * 0.5^3
    assert sign_test([0.0, 0.0]) == 1.0
    assert sign_test([1, 1, 1, 1, -1, 0]) == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue)
    lo, hi = t_interval([0.1, 0.2, 0.3])
    half = stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.2 - half, 0.2 + half))


def test_verdicts_say_the_effect_size_beside_its_sign():
    """Equivalence testing's four outcomes, from the method's side, on an interval in the metric's direction."""
    assert decide((0.01, 0.03), 0.005, 10) == "better"
    assert decide((0.001, 0.004), 0.005, 10) == "better, negligible"  # excludes 0, inside the margin
    assert decide((-0.002, 0.003), 0.005, 10) == "equivalent"
    assert decide((-0.004, -0.001), 0.005, 10) == "worse, negligible"
    assert decide((-0.03, -0.001), 0.005, 10) == "worse"  # may be beyond the margin
    assert decide((-0.02, 0.03), 0.005, 10) == "inconclusive"
    assert decide((-0.002, 0.003), None, 10) == "inconclusive"  # no margin: never equivalent
    assert decide((0.001, 0.004), None, 10) == "better"
    assert decide((-math.inf, math.inf), 0.005, 10) == "inconclusive"
    assert decide((0.01, 0.03), 0.005, MIN_SEEDS - 1) == "inconclusive"  # too few seeds
    # A diverged method arm counts against the method; diverged on every seed: a loss.
    assert decide((0.01, 0.03), 0.005, 10, diverged_method=1) == "inconclusive"
    assert decide((-0.002, 0.003), 0.005, 10, diverged_method=1) == "inconclusive"
    assert decide((-0.03, -0.01), 0.005, 10, diverged_method=1) == "worse"
    assert decide((math.nan, math.nan), 0.005, 0, diverged_method=MIN_SEEDS) == "worse"


def test_the_interval_is_the_mixture_confidence_sequence():
    """cs_half_width is the boundary where the mixture e-value reaches 1/alpha (the two are one rule), and it
    is wider than the fixed-n t interval (the price of judging at any number of seeds)."""
    n, ss, alpha = 10, 9 * 0.01**2, 0.05
    h = cs_half_width(n, ss, alpha)
    assert mixture_e_value(n, h, ss) == pytest.approx(1 / alpha, rel=1e-9)
    assert mixture_e_value(n, 0.99 * h, ss) < 1 / alpha < mixture_e_value(n, 1.01 * h, ss)
    t_half = stats.t.ppf(0.975, n - 1) * 0.01 / math.sqrt(n)
    assert 1.2 * t_half < h < 3 * t_half
    assert cs_half_width(3, ss, alpha) == math.inf and cs_half_width(10, 0.0, alpha) == math.inf
    assert mixture_e_value(1, 0.5, 0.0) == 1.0


def _results(values: dict[str, list[float]], metric="sae_u", cycle=1):
    return {arm: {s: {cycle: {metric: v}} for s, v in zip(range(1, len(vals) + 1), vals)} for arm, vals in values.items()}


ONE = ConfirmSettings(controls=("aux0",), margins={"sae_u": 0.007, "task_accuracy": 0.005})


def _row(best, control, metric="sae_u", settings=ONE, **kw):
    (row,) = summarize(_results({"best": best, "aux0": control}, metric), (metric,), settings, headline=(metric,), **kw)
    return row


def test_summary_statistics_and_the_interval_the_verdict_rests_on():
    best, aux0 = [0.5, 0.6, 0.7, 0.65, 0.61, 0.66], [0.4, 0.55, 0.5, 0.6, 0.58, 0.6]
    row = _row(best, aux0)
    diffs = [b - a for b, a in zip(best, aux0)]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    assert row["best_n"] == 6 and row["best_mean"] == pytest.approx(statistics.mean(best))
    assert row["diff_aux0_mean"] == pytest.approx(mean)
    assert row["p_aux0"] == pytest.approx(stats.ttest_rel(best, aux0).pvalue)  # descriptive, beside
    h = cs_half_width(6, 5 * sd**2, 0.05)  # a family of one: alpha itself
    assert row["ci_aux0"] == pytest.approx((mean - h, mean + h))
    assert row["p_family_aux0"] == pytest.approx(min(1.0, 1 / mixture_e_value(6, mean, 5 * sd**2)))
    assert (row["wins_aux0"], row["ties_aux0"], row["losses_aux0"]) == (6, 0, 0)
    # A metric to minimise: a larger value is a loss, a tie is shown as a tie.
    row = _row([2.0, 2.0, 1.0], [1.0, 2.0, 3.0], "davies_bouldin", ConfirmSettings(controls=("aux0",), margins={}))
    assert (row["wins_aux0"], row["ties_aux0"], row["losses_aux0"]) == (1, 1, 1) and row["mode"] == "min"


def test_a_verdict_line_and_table_that_decide():
    settings = ConfirmSettings(controls=("aux0", "random"))
    g = random.Random(3)
    res = {"best": {}, "aux0": {}, "random": {}}
    for s in range(1, 21):
        b = 0.6 + g.gauss(0, 0.01)
        res["best"][s] = {1: {"sae_u": b, "task_accuracy": 0.95 + g.gauss(0, 0.001)}}
        res["aux0"][s] = {1: {"sae_u": b - 0.1 + g.gauss(0, 0.002), "task_accuracy": 0.95 + g.gauss(0, 0.001)}}
        res["random"][s] = {1: {"sae_u": b - 0.05 + g.gauss(0, 0.002), "task_accuracy": 0.95 + g.gauss(0, 0.001)}}
    rows = summarize(res, ("task_accuracy", "sae_u"), settings, headline=("sae_u", "task_accuracy"))
    by = {r["metric"]: r for r in rows}
    assert by["sae_u"]["verdict_aux0"] == by["sae_u"]["verdict_random"] == "better"
    assert by["task_accuracy"]["verdict_aux0"] == by["task_accuracy"]["verdict_random"] == "equivalent"
    line = verdict_line(rows, ("sae_u", "task_accuracy"), settings.controls)
    assert line == "sae_u: better than all 2 controls; task_accuracy: equivalent to all 2 controls (costs no accuracy)"
    table = format_table(rows, settings, ("sae_u", "task_accuracy"))
    assert table.startswith(f"**Verdict:** {line}") and "| sae_u | aux0 |" in table and "| better |" in table
    assert "| best | the configuration the sweep chose | 20/20 |" in table


def test_no_spread_never_decides():
    """Every paired difference equal (ties on a small test split) gives a zero-width t interval: it used to
    read `equivalent` ("costs no accuracy") from two seeds. No spread and no SAE-seed floor: no verdict."""
    for k in (2, 5, 20):
        row = _row([0.95] * k, [0.95] * k, "task_accuracy")
        assert row["verdict_aux0"] == "inconclusive" and row["why_aux0"], k
        assert math.isnan(row["seeds_to_decide_aux0"])
    row = _row([0.953] * 20, [0.95] * 20, "task_accuracy")  # a constant gain is no spread either
    assert row["verdict_aux0"] == "inconclusive" and "no spread" in row["why_aux0"]
    line = verdict_line([row], ("task_accuracy",), ("aux0",))
    assert "costs no accuracy" not in line and "no spread" in line
    # Equal values whose float mean sits 1e-17 off them are no spread either, in the differences and in the
    # SAE-seed groups (a model metric the SAEs do not touch): no floor is made of rounding.
    groups = [[{"task_accuracy": 0.1}] * 3 for _ in range(4)]
    row = _row([0.1 + 0.2] * 20, [0.2] * 20, "task_accuracy", spread=groups)
    assert row["sd_floor"] == 0 and row["diff_aux0_sd"] == 0
    assert row["verdict_aux0"] == "inconclusive" and "no spread" in row["why_aux0"]
    # With a measured SAE-seed floor the variance is never below the arms' SAE noise: a finite interval.
    groups = [[{"sae_u": 0.5}, {"sae_u": 0.51}, {"sae_u": 0.49}] for _ in range(3)]
    row = _row([0.5] * 10, [0.5] * 10, spread=groups)
    floor = math.sqrt(2 / 3) * 0.01
    assert row["sd_floor"] == pytest.approx(floor) and row["sae_seed_sd"] == pytest.approx(0.01)
    h = cs_half_width(10, 9 * floor**2, 0.05)
    assert row["ci_aux0"] == pytest.approx((-h, h))
    # Too few seeds: no verdict, however clear the data.
    row = _row([0.6, 0.61], [0.4, 0.41])
    assert row["verdict_aux0"] == "inconclusive" and "2 paired seeds" in row["why_aux0"]


def test_a_difference_inside_the_margin_is_negligible_not_better_or_worse():
    """Losing about one test example in 360 on most seeds: the interval excludes 0 but lies inside the
    ±0.005 margin. It used to read `worse` and "(costs accuracy)"."""
    g = random.Random(0)
    best = [0.95 + g.gauss(0, 0.002) for _ in range(40)]
    control = [b + 0.0028 + g.gauss(0, 0.0005) for b in best]
    row = _row(best, control, "task_accuracy")
    lo, hi = row["ci_aux0"]
    assert -0.005 < lo < hi < 0
    assert row["verdict_aux0"] == "worse, negligible"
    line = verdict_line([row], ("task_accuracy",), ("aux0",))
    assert "costs accuracy" not in line and "negligibly" in line
    # The same on sae_u's side: a tiny gain is negligible, not `better`.
    row = _row([0.5 + 0.001 + g.gauss(0, 0.0002) for _ in range(40)], [0.5] * 40)
    assert row["verdict_aux0"] == "better, negligible"
    # A loss beyond the margin still costs accuracy.
    row = _row(best, [b + 0.02 + g.gauss(0, 0.002) for b in best], "task_accuracy")
    assert row["verdict_aux0"] == "worse"
    assert "(costs accuracy)" in verdict_line([row], ("task_accuracy",), ("aux0",))


def test_a_method_diverged_on_every_seed_is_worse():
    res = {"best": {}, "aux0": {s: {1: {"sae_u": 0.4}} for s in range(1, 6)}}
    rows = summarize(res, ("sae_u",), ONE, failed={"best": {s: "DivergedError: loss is nan" for s in range(1, 6)}},
                     headline=("sae_u",))
    (row,) = rows
    assert row["diverged_aux0"] == 5 and row["n_aux0"] == 0
    assert row["verdict_aux0"] == "worse" and "diverged on every seed" in row["why_aux0"]
    assert verdict_line(rows, ("sae_u",), ("aux0",)) == "sae_u: worse than aux0"


def test_the_family_is_fixed_by_the_headline_not_by_the_printed_metrics():
    """Summarising one more metric (loss_recovered) used to grow Holm's family and flip a verdict."""
    settings = ConfirmSettings(controls=("aux0", "random"))
    g = random.Random(1)
    res = {a: {s: {1: {"sae_u": 0.5 + g.gauss(0, 0.003) + (0.004 if a == "best" else 0),
                       "task_accuracy": 0.95 + g.gauss(0, 0.002), "loss_recovered": 0.9 + g.gauss(0, 0.01)}}
               for s in range(1, 16)} for a in settings.arms}
    few = {r["metric"]: r for r in summarize(res, ("sae_u", "task_accuracy"), settings, headline=("sae_u", "task_accuracy"))}
    more = {r["metric"]: r for r in summarize(res, ("sae_u", "task_accuracy", "loss_recovered"), settings,
                                             headline=("sae_u", "task_accuracy"))}
    for m in ("sae_u", "task_accuracy"):
        for c in settings.controls:
            assert few[m][f"ci_{c}"] == more[m][f"ci_{c}"] and few[m][f"verdict_{c}"] == more[m][f"verdict_{c}"]
    # Equivalence is corrected over the same family: a larger family, a wider interval for every comparison.
    wide = {r["metric"]: r for r in summarize(res, ("sae_u",), settings, headline=("sae_u", "task_accuracy", "sae_csi"))}
    lo, hi = wide["sae_u"]["ci_aux0"]
    assert hi - lo > few["sae_u"]["ci_aux0"][1] - few["sae_u"]["ci_aux0"][0]


def _decisions(effect: float, sd: float, studies: int, most: int, seed: int) -> list[int | None]:
    """For each simulated study, the first seed count (2..most) at which summarize gives a better/worse
    verdict (negligible or not) when judged again after every added seed; None when it never does."""
    g = random.Random(seed)
    out = []
    for _ in range(studies):
        diffs = [g.gauss(effect, sd) for _ in range(most)]
        first = None
        for k in range(2, most + 1):
            row = _row([0.5 + d for d in diffs[:k]], [0.5] * k)
            if row["verdict_aux0"].startswith(("better", "worse")):
                first = k
                break
        out.append(first)
    return out


def test_verdicts_stay_valid_when_seeds_are_added_one_by_one():
    """Optional stopping: with no true difference, judging after every added seed up to 20 decided
    better/worse in ~15% of studies with the fixed-n t interval; the confidence sequence keeps it at most
    alpha (5%, within simulation error), while a true effect of 3x the paired sd beyond the margin is found
    by 19 seeds in at least 80% of studies."""
    null = _decisions(0.0, 0.01, 1000, 20, seed=0)
    rate = sum(d is not None for d in null) / len(null)
    assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 1000), rate
    power = _decisions(0.03, 0.01, 1000, 19, seed=1)  # 3 sd, beyond the 0.007 margin
    assert sum(d is not None for d in power) / len(power) >= 0.8


def _verdict_at(k: int, mean: float, sd: float, margin: float) -> str:
    """The verdict of one comparison (a family of one) whose k paired differences have exactly this mean and sd."""
    z = [i - (k - 1) / 2 for i in range(k)]
    scale = math.sqrt(sum(x * x for x in z) / (k - 1))
    diffs = [mean + sd * x / scale for x in z]
    settings = ConfirmSettings(controls=("aux0",), margins={"sae_u": margin})
    row = _row([0.5 + d for d in diffs], [0.5] * k, settings=settings)
    assert row["diff_aux0_mean"] == pytest.approx(mean) and row["diff_aux0_sd"] == pytest.approx(sd)
    return row["verdict_aux0"]


@pytest.mark.parametrize("mean, sd, margin", [(0.001, 0.004, 0.01),    # decided as equivalent
                                               (0.02, 0.03, 0.005),    # decided as better
                                               (-0.004, 0.01, 0.005)])  # worse
def test_seeds_to_decide_is_the_first_seed_count_whose_verdict_is_decided(mean, sd, margin):
    """At the returned count the same mean and sd give a decided verdict; one seed fewer, still inconclusive:
    the count is what summarize itself would need, under the same anytime rule."""
    assert _verdict_at(4, mean, sd, margin) == "inconclusive"
    k = seeds_to_decide(mean, sd, 4, margin, 0.05, 1)
    assert 4 < k < math.inf
    assert _verdict_at(int(k), mean, sd, margin) != "inconclusive"
    assert int(k) - 1 == 4 or _verdict_at(int(k) - 1, mean, sd, margin) == "inconclusive"


def test_seeds_to_decide_in_rows_tables_and_its_limits():
    # Out of reach: a mean difference at the margin with a wide spread; unknown with one seed or no spread.
    assert seeds_to_decide(0.005, 0.05, 3, 0.005, 0.05, 20) == math.inf
    assert math.isnan(seeds_to_decide(0.01, math.nan, 1, 0.005, 0.05, 1))
    assert math.isnan(seeds_to_decide(0.0, 0.0, 3, 0.005, 0.05, 1))
    assert seeds_to_decide(0.0, 0.0, 3, 0.005, 0.05, 1, floor=0.001) < math.inf  # a floor makes it plannable
    settings = ConfirmSettings(controls=("aux0", "random"))
    g = random.Random(2)
    res = _results({"best": [0.60 + g.gauss(0, 0.01) for _ in range(8)], "aux0": [0.40 + g.gauss(0, 0.01) for _ in range(8)],
                    "random": [0.61 + g.gauss(0, 0.03) for _ in range(8)]})
    (row,) = summarize(res, ("sae_u",), settings, headline=("sae_u",))
    assert row["verdict_aux0"] == "better" and math.isnan(row["seeds_to_decide_aux0"])
    assert row["verdict_random"] == "inconclusive" and 8 < row["seeds_to_decide_random"]
    table = format_table([row], settings, ("sae_u",))
    expected = "> 200" if math.isinf(row["seeds_to_decide_random"]) else str(int(row["seeds_to_decide_random"]))
    assert "**Seeds to decide**" in table and f"sae_u vs random: {expected}" in table
    assert table.splitlines()[-2].endswith("| better | - |") and table.splitlines()[-1].endswith(f"| inconclusive | {expected} |")


def test_a_partly_diverged_method_arm_counts_against_the_method():
    settings = ConfirmSettings(controls=("aux0",))
    res = _results({"best": [0.6, 0.61, 0.62, 0.63, 0.6, 0.62, 0.61, 0.6], "aux0": [0.4, 0.41, 0.42, 0.43, 0.4, 0.41, 0.4, 0.42, 0.41]})
    (row,) = summarize(res, ("sae_u",), settings, failed={"best": {9: "DivergedError: loss is nan"}}, headline=("sae_u",))
    assert row["best_n"] == 8 and row["aux0_n"] == 9 and row["n_seeds"] == 9
    assert (row["wins_aux0"], row["losses_aux0"], row["diverged_aux0"]) == (8, 1, 1)
    assert row["verdict_aux0"] == "inconclusive" and "diverged" in row["why_aux0"]
    assert "(+1 diverged)" in format_table([row], settings)


def test_sae_seed_groups_pool_and_average():
    assert pooled_sd([[1.0, 3.0], [10.0, 12.0], [5.0]]) == (pytest.approx(math.sqrt(2.0)), 2)
    assert math.isnan(pooled_sd([[1.0]])[0])
    own = {"sae_u": 0.5, "task_accuracy": 0.9, "cycle": 1, "sharpen_kept_fraction": None}
    avg = average_saes(own, [{"sae_u": 0.6, "task_accuracy": 0.9, "cycle": 1}, {"sae_u": 0.7, "task_accuracy": 0.9, "cycle": 1}])
    assert avg["sae_u"] == pytest.approx(0.6) and avg["task_accuracy"] == 0.9 and avg["sharpen_kept_fraction"] is None


def test_settings_are_checked_and_parsed():
    assert parse_settings(None).controls == DEFAULT_CONTROLS
    s = parse_settings({"controls": ["aux0"], "margins": {"sae_u": 0.01}, "sae_seeds": 0})
    assert s.controls == ("aux0",) and s.margins["sae_u"] == 0.01 and s.margins["task_accuracy"] == 0.005
    for raw, field in (({"controls": ["nope"]}, "confirm.controls"), ({"alpha": 2}, "confirm.alpha"),
                       ({"margins": {"l0": 1}}, "confirm.margins.l0"), ({"sae_seeds": -1}, "confirm.sae_seeds"),
                       ({"bogus": 1}, "confirm.bogus")):
        with pytest.raises(ConfigError, match=field):
            parse_settings(raw)


def test_controls_share_cycle_zero_and_differ_after(tmp_path):
    spreads = {}
    h = run_arms(TINY, seed=5, root=tmp_path, sae_seeds=1, on_spread=spreads.__setitem__)
    assert set(h) == {"best", *CONTROLS}
    assert all(h[a][0] == h["best"][0] for a in CONTROLS)
    assert h["nosharpen"][1]["sharpen_kept_fraction"] == pytest.approx(1.0)
    assert h["random"][1]["sharpen_kept_active"] == pytest.approx(h["best"][1]["sharpen_kept_active"])
    assert h["prototype"][1]["sharpen_kept_fraction"] is None  # no codes: nan, stored as null
    assert h["aux0"][1]["task_accuracy"] != h["best"][1]["task_accuracy"] or h["aux0"][1]["aux_cosine"] != h["best"][1]["aux_cosine"]
    # Every arm's SAE noise: other SAEs on the same activations; the model's own numbers do not move.
    assert set(spreads) == set(h)
    for arm, spread in spreads.items():
        assert len(spread) == 1 and all(m["cycle"] == 1 for m in spread)
        assert all(m["task_accuracy"] == h[arm][1]["task_accuracy"] for m in spread)
        assert len({m["sae_u"] for m in spread} | {h[arm][1]["sae_u"]}) == 2


def test_a_diverged_arm_is_reported_and_the_others_run(tmp_path, monkeypatch):
    from saeception.eval import confirm as confirm_mod
    from saeception.method.errors import DivergedError

    real = confirm_mod.run_chain

    def run_chain(cfg, paths, **kw):
        if cfg.sharpen.strategy == "class_prototype":
            raise DivergedError("aux loss is nan")
        return real(cfg, paths, **kw)

    monkeypatch.setattr(confirm_mod, "run_chain", run_chain)
    diverged = []
    h = run_arms(TINY, seed=5, root=tmp_path, arms=("best", "prototype", "aux0"),
                 on_diverged=lambda arm, why: diverged.append((arm, why)))
    assert diverged == [("prototype", "aux loss is nan")] and set(h) == {"best", "aux0"}


def test_the_confirmation_plot_is_a_forest_of_the_differences_the_verdict_rests_on(tmp_path, monkeypatch):
    """confirmation.png draws, per headline metric and control at the last cycle, best − control with its anytime-valid
    interval (not the arm means), the margin band and the verdict; an unbounded interval (3 seeds) still draws."""
    import matplotlib.axes

    settings = ConfirmSettings(controls=("aux0", "random"))
    g = random.Random(1)
    res = {"best": {}, "aux0": {}, "random": {}}
    for s in range(1, 11):
        b = 0.6 + g.gauss(0, 0.01)
        res["best"][s] = {c: {"sae_u": b + c, "task_accuracy": 0.95 + g.gauss(0, 0.001)} for c in (0, 1)}
        res["aux0"][s] = {c: {"sae_u": b - 0.1 + g.gauss(0, 0.002), "task_accuracy": 0.95 + g.gauss(0, 0.001)} for c in (0, 1)}
        res["random"][s] = {c: {"sae_u": b + g.gauss(0, 0.02), "task_accuracy": 0.95 + g.gauss(0, 0.001)} for c in (0, 1)}
    rows = summarize(res, ("task_accuracy", "sae_u"), settings, headline=("sae_u", "task_accuracy"))
    drawn, texts = [], []
    real_plot, real_text = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, *a, **k: (drawn.append((ax.get_title(), a)), real_plot(ax, *a, **k))[1])
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda ax, x, y, s, *a, **k: (texts.append(s), real_text(ax, x, y, s, *a, **k))[1])
    out = confirmation_plot(rows, ("sae_u", "task_accuracy"), settings.controls, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by = {r["metric"]: r for r in rows if r["cycle"] == 1}
    intervals = {tuple(a[0]) for _, a in drawn if len(a[0]) == 2}
    for m in ("sae_u", "task_accuracy"):
        for c in settings.controls:
            lo, hi = by[m][f"ci_{c}"]
            assert any(x == pytest.approx((lo, hi)) for x in intervals), (m, c)  # the interval, clipped only if unbounded
            assert [by[m][f"diff_{c}_mean"]] in [list(a[0]) for _, a in drawn if len(a[0]) == 1]
            assert any(t.startswith(by[m][f"verdict_{c}"] + "\n") for t in texts)
    assert by["sae_u"]["verdict_aux0"] == "better"
    few = summarize({a: {s: res[a][s] for s in (1, 2, 3)} for a in res}, ("sae_u",), settings, headline=("sae_u",))
    assert confirmation_plot(few, ("sae_u",), settings.controls, tmp_path / "few.png").exists()


def test_controls_that_would_equal_the_winner_are_found_before_any_seed_runs():
    """A winner that keeps every active latent makes `random` and `nosharpen` targets equal its own (it used to
    run them with only a warning); a winner whose strategy or aux weight is a control's duplicates that arm."""
    per_class = {"sharpen.strategy": "per_class", "sharpen.top_k_pct": 10.0, "aux.weight": 1.0}
    assert degenerate_controls(per_class, CONTROLS, width=16) == {}
    keeps_all = degenerate_controls({**per_class, "sharpen.top_k_pct": 100.0}, CONTROLS, width=16)
    assert set(keeps_all) == {"random", "nosharpen"} and "keeps every active latent" in keeps_all["random"]
    # per_example keeping >= k latents of a TopK code keeps them all: known only with the layer's width.
    topk = {"sharpen.strategy": "per_example", "sharpen.top_k_pct": 50.0, "sae.kind": "topk", "sae.k": 4,
            "sae.expansion_factor": 2, "aux.weight": 1.0}
    assert set(degenerate_controls(topk, CONTROLS, width=16)) == {"random", "nosharpen"}
    assert degenerate_controls(topk, CONTROLS, width=None) == {}
    assert set(degenerate_controls({**per_class, "aux.weight": 0.0}, CONTROLS, width=16)) == {"aux0"}
    proto = degenerate_controls({"sharpen.strategy": "class_prototype", "aux.weight": 1.0}, CONTROLS, width=16)
    assert set(proto) == {"prototype", "pairing"} and "its config is the winner's" in proto["prototype"]


def test_each_confirmation_seed_draws_its_own_test_split():
    """The seeds' spread holds the test examples' sampling error: every arm of a seed shares that seed's draw."""
    assert {seed_values({}, a, 7)["data.test_draw"] for a in CONTROLS} == {7}
    assert seed_values({}, "best", 7)["seed"] == 7 and seed_values({}, "best", 8)["data.test_draw"] == 8


def test_each_arm_reports_how_many_latents_its_per_latent_metrics_scored():
    res = {a: {s: {1: {"sae_u": 0.5, "sae_scored_latents": n}} for s in (1, 2, 3)} for a, n in (("best", 40), ("aux0", 52))}
    rows = summarize(res, ("sae_u", *KEPT_METRICS), ONE, headline=("sae_u",))
    table = format_table(rows, ONE, ("sae_u",))
    assert "scored latents" in table.splitlines()[2] and "| 40.0 ± 0.0 |" in table and "| 52.0 ± 0.0 |" in table
    assert not any(r["metric"] == "sae_scored_latents" and "verdict_aux0" in r for r in rows)


def test_the_pairing_control_flips_the_winner_s_pairing_and_is_opt_in():
    """`pairing` (the original SAE-ception's mispaired targets against aligned ones) is a control a space or
    --confirm-controls asks for; it runs the winner with the other sharpen.pairing, and is skipped as
    degenerate when the winner's targets read no codes."""
    from saeception.config import build_config

    assert "pairing" not in ConfirmSettings().controls == DEFAULT_CONTROLS
    assert "pairing" in parse_settings({"controls": ["aux0", "pairing"]}).controls
    shuffled = {"sharpen.pairing": "shuffled"}
    assert build_config(arm_values(shuffled, "pairing")).sharpen.pairing == "aligned"
    assert build_config(arm_values({}, "pairing")).sharpen.pairing == "shuffled"
    assert degenerate_controls({}, ("pairing",), None) == {}
    why = degenerate_controls({"sharpen.strategy": "class_prototype"}, ("pairing",), None)
    assert "read no SAE codes" in why["pairing"]
