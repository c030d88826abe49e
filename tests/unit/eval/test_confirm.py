"""The confirmation: matched controls, statistics that cannot print a p of 0, Holm, verdicts, per-arm
failures and the SAE-seed noise floor."""

import math

import pytest
import torch
from scipy import stats

from saeception.config import ConfigError, SAEConfig, SharpenConfig
from saeception.eval.confirm import (
    CONTROLS,
    ConfirmSettings,
    arm_values,
    confirm_seeds,
    decide,
    format_table,
    holm,
    paired_test,
    parse_settings,
    run_arms,
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


def test_holm_matches_the_step_down_procedure():
    p = [0.01, 0.04, 0.03, math.nan, 0.5]
    # sorted: 0.01*4, 0.03*3, 0.04*2 (monotone max), 0.5*1
    assert holm(p)[:3] == pytest.approx([0.04, 0.09, 0.09]) and math.isnan(holm(p)[3]) and holm(p)[4] == 0.5


def test_verdicts():
    assert decide(0.02, (0.01, 0.03), 0.01, 0.005, 0.05, 0) == "better"
    assert decide(-0.02, (-0.03, -0.01), 0.01, 0.005, 0.05, 0) == "worse"
    assert decide(0.001, (-0.002, 0.003), 0.4, 0.005, 0.05, 0) == "equivalent"
    assert decide(0.001, (-0.02, 0.03), 0.4, 0.005, 0.05, 0) == "inconclusive"
    assert decide(0.001, (-0.002, 0.003), 0.4, None, 0.05, 0) == "inconclusive"  # no margin: never equivalent
    # A diverged method arm counts against the method.
    assert decide(0.02, (0.01, 0.03), 0.01, 0.005, 0.05, 1) == "inconclusive"
    assert decide(0.001, (-0.002, 0.003), 0.4, 0.005, 0.05, 1) == "inconclusive"


def _results(values: dict[str, list[float]], metric="sae_u", cycle=1):
    return {arm: {s: {cycle: {metric: v}} for s, v in zip(range(1, len(vals) + 1), vals)} for arm, vals in values.items()}


def test_summary_statistics_match_scipy_and_holm_and_modes():
    best, aux0 = [0.5, 0.6, 0.7, 0.65], [0.4, 0.55, 0.5, 0.6]
    settings = ConfirmSettings(controls=("aux0",), margins={})
    (row,) = summarize(_results({"best": best, "aux0": aux0}), ("sae_u",), settings)
    diffs = [b - a for b, a in zip(best, aux0)]
    assert row["best_n"] == 4 and row["best_mean"] == pytest.approx(0.6125)
    assert row["diff_aux0_mean"] == pytest.approx(sum(diffs) / 4)
    assert row["p_aux0"] == pytest.approx(stats.ttest_rel(best, aux0).pvalue)
    assert row["p_holm_aux0"] == pytest.approx(row["p_aux0"])  # a family of one
    assert row["ci_aux0"] == pytest.approx(t_interval(diffs))
    assert (row["wins_aux0"], row["ties_aux0"], row["losses_aux0"]) == (4, 0, 0)
    # A metric to minimise: a larger value is a loss, a tie is shown as a tie.
    (row,) = summarize(_results({"best": [2.0, 2.0, 1.0], "aux0": [1.0, 2.0, 3.0]}, "davies_bouldin"),
                       ("davies_bouldin",), settings)
    assert (row["wins_aux0"], row["ties_aux0"], row["losses_aux0"]) == (1, 1, 1) and row["mode"] == "min"


def test_holm_runs_over_metrics_and_controls_at_the_last_cycle():
    settings = ConfirmSettings(controls=("aux0", "random"))
    res = {a: {s: {1: {"sae_u": b + 0.01 * s, "task_accuracy": 0.9 + 0.001 * s * (a == "best")}} for s in (1, 2, 3, 4)}
           for a, b in (("best", 0.5), ("aux0", 0.4), ("random", 0.45))}
    res["best"] = {s: {1: {"sae_u": 0.5 + 0.01 * s + 0.003 * (s % 2), "task_accuracy": 0.9 + 0.001 * s}} for s in (1, 2, 3, 4)}
    rows = summarize(res, ("sae_u", "task_accuracy"), settings)
    family = [r[f"p_{c}"] for r in rows for c in ("aux0", "random")]
    adjusted = holm(family)
    assert [r[f"p_holm_{c}"] for r in rows for c in ("aux0", "random")] == pytest.approx(adjusted)


def test_a_verdict_line_and_table_that_decide():
    settings = ConfirmSettings(controls=("aux0", "random"))
    best = [0.60, 0.62, 0.61, 0.63, 0.60, 0.62]
    res = {"best": {}, "aux0": {}, "random": {}}
    for i, s in enumerate(range(1, 7)):
        res["best"][s] = {1: {"sae_u": best[i], "task_accuracy": 0.95 + 0.0005 * (i % 2)}}
        res["aux0"][s] = {1: {"sae_u": best[i] - 0.1 - 0.001 * i, "task_accuracy": 0.95 + 0.0005 * ((i + 1) % 2)}}
        res["random"][s] = {1: {"sae_u": best[i] - 0.05 - 0.002 * i, "task_accuracy": 0.95}}
    rows = summarize(res, ("task_accuracy", "sae_u"), settings)
    by = {r["metric"]: r for r in rows}
    assert by["sae_u"]["verdict_aux0"] == by["sae_u"]["verdict_random"] == "better"
    assert by["task_accuracy"]["verdict_aux0"] == by["task_accuracy"]["verdict_random"] == "equivalent"
    line = verdict_line(rows, ("sae_u", "task_accuracy"), settings.controls)
    assert line == "sae_u: better than all 2 controls; task_accuracy: equivalent to all 2 controls (costs no accuracy)"
    table = format_table(rows, settings, ("sae_u", "task_accuracy"))
    assert table.startswith(f"**Verdict:** {line}") and "| sae_u | aux0 |" in table and "| better |" in table
    assert "| best | the configuration the sweep chose | 6/6 |" in table


def _verdict_at(k: int, mean: float, sd: float, margin: float) -> str:
    """The verdict of one comparison (a family of one) whose k paired differences have exactly this mean and sd."""
    z = [i - (k - 1) / 2 for i in range(k)]
    scale = math.sqrt(sum(x * x for x in z) / (k - 1))
    diffs = [mean + sd * x / scale for x in z]
    settings = ConfirmSettings(controls=("aux0",), margins={"sae_u": margin})
    (row,) = summarize(_results({"best": [0.5 + d for d in diffs], "aux0": [0.5] * k}), ("sae_u",), settings)
    assert row["diff_aux0_mean"] == pytest.approx(mean) and row["diff_aux0_sd"] == pytest.approx(sd)
    return row["verdict_aux0"]


@pytest.mark.parametrize("mean, sd, margin", [(0.002, 0.006, 0.005),   # decided as equivalent
                                               (0.02, 0.03, 0.005),    # decided as better
                                               (-0.004, 0.01, 0.005)])  # worse, before the interval fits the margin
def test_seeds_to_decide_is_the_first_seed_count_whose_verdict_is_decided(mean, sd, margin):
    """At the returned count the same mean and sd give a decided verdict; one seed fewer, still inconclusive:
    the count is what summarize itself would need, not a separate formula that could drift from it."""
    assert _verdict_at(4, mean, sd, margin) == "inconclusive"
    k = seeds_to_decide(mean, sd, 4, margin, 0.05, 1)
    assert 4 < k < math.inf
    assert _verdict_at(int(k), mean, sd, margin) != "inconclusive"
    assert int(k) - 1 == 4 or _verdict_at(int(k) - 1, mean, sd, margin) == "inconclusive"


def test_seeds_to_decide_in_rows_tables_and_its_limits():
    # Out of reach: a mean difference at the margin with a wide spread; unknown with one seed; not for a decided row.
    assert seeds_to_decide(0.005, 0.05, 3, 0.005, 0.05, 20) == math.inf
    assert math.isnan(seeds_to_decide(0.01, math.nan, 1, 0.005, 0.05, 1))
    assert seeds_to_decide(0.0, 0.0, 3, 0.005, 0.05, 1) == 4  # every difference 0: inside any margin
    settings = ConfirmSettings(controls=("aux0", "random"))
    res = _results({"best": [0.60, 0.62, 0.61, 0.64], "aux0": [0.50, 0.52, 0.52, 0.53], "random": [0.61, 0.6, 0.66, 0.6]})
    (row,) = summarize(res, ("sae_u",), settings)
    assert row["verdict_aux0"] == "better" and math.isnan(row["seeds_to_decide_aux0"])
    assert row["verdict_random"] == "inconclusive" and 4 < row["seeds_to_decide_random"]
    table = format_table([row], settings, ("sae_u",))
    expected = "> 200" if math.isinf(row["seeds_to_decide_random"]) else str(int(row["seeds_to_decide_random"]))
    assert "**Seeds to decide**" in table and f"sae_u vs random: {expected}" in table
    assert table.splitlines()[-2].endswith("| better | - |") and table.splitlines()[-1].endswith(f"| inconclusive | {expected} |")
    decided = summarize(_results({"best": [0.60, 0.62, 0.61, 0.64], "aux0": [0.50, 0.52, 0.52, 0.53]}), ("sae_u",),
                        ConfirmSettings(controls=("aux0",)))
    assert "Seeds to decide" not in format_table(decided, ConfirmSettings(controls=("aux0",)), ("sae_u",))


def test_a_diverged_method_arm_counts_against_the_method():
    settings = ConfirmSettings(controls=("aux0",))
    res = _results({"best": [0.6, 0.61, 0.62, 0.63, 0.6], "aux0": [0.4, 0.41, 0.42, 0.43, 0.4, 0.41]})
    (row,) = summarize(res, ("sae_u",), settings, failed={"best": {6: "DivergedError: loss is nan"}})
    assert row["best_n"] == 5 and row["aux0_n"] == 6 and row["n_seeds"] == 6
    assert (row["wins_aux0"], row["losses_aux0"], row["diverged_aux0"]) == (5, 1, 1)
    assert row["verdict_aux0"] == "inconclusive"
    assert "(+1 diverged)" in format_table([row], settings)


def test_settings_are_checked_and_parsed():
    assert parse_settings(None).controls == CONTROLS
    s = parse_settings({"controls": ["aux0"], "margins": {"sae_u": 0.01}, "sae_seeds": 0})
    assert s.controls == ("aux0",) and s.margins["sae_u"] == 0.01 and s.margins["task_accuracy"] == 0.005
    for raw, field in (({"controls": ["nope"]}, "confirm.controls"), ({"alpha": 2}, "confirm.alpha"),
                       ({"margins": {"l0": 1}}, "confirm.margins.l0"), ({"sae_seeds": -1}, "confirm.sae_seeds"),
                       ({"bogus": 1}, "confirm.bogus")):
        with pytest.raises(ConfigError, match=field):
            parse_settings(raw)


def test_controls_share_cycle_zero_and_differ_after(tmp_path):
    spreads = []
    h = run_arms(TINY, seed=5, root=tmp_path, sae_seeds=2, on_spread=spreads.append)
    assert set(h) == {"best", *CONTROLS}
    assert all(h[a][0] == h["best"][0] for a in CONTROLS)
    assert h["nosharpen"][1]["sharpen_kept_fraction"] == pytest.approx(1.0)
    assert h["random"][1]["sharpen_kept_active"] == pytest.approx(h["best"][1]["sharpen_kept_active"])
    assert h["prototype"][1]["sharpen_kept_fraction"] is None  # no codes: nan, stored as null
    assert h["aux0"][1]["task_accuracy"] != h["best"][1]["task_accuracy"] or h["aux0"][1]["aux_cosine"] != h["best"][1]["aux_cosine"]
    # The noise floor: other SAEs on the same activations; the model's own numbers do not move.
    (spread,) = spreads
    assert len(spread) == 2 and all(m["cycle"] == 1 for m in spread)
    assert all(m["task_accuracy"] == h["best"][1]["task_accuracy"] for m in spread)
    assert len({m["sae_u"] for m in spread} | {h["best"][1]["sae_u"]}) == 3


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


def test_plot_writes_png(tmp_path):
    rows = [{"cycle": c, "metric": "sae_u", "n_seeds": 3, **{f"{a}_{s}": 0.1 * c for a in ("best", "aux0", "random") for s in ("mean", "sd")}}
            for c in (0, 1)]
    out = confirmation_plot(rows, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
