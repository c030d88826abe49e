import math

import pytest
from scipy import stats

from saeception.confirm import arm_values, confirm_seeds, format_table, paired_test, run_arms, summarize
from saeception.sweep.plots import confirmation_plot

TINY = {"data.max_examples": 300, "model.hidden_sizes": [32, 16], "finetune.epochs": 2, "sae.steps": 80, "sae.k": 4,
        "aux.epochs": 1, "eval.probe_max_iter": 100, "chain.cycles": 1}


def test_arms_and_seeds():
    v = {"aux.weight": 2.0, "sharpen.strategy": "per_class"}
    assert arm_values(v, "aux0")["aux.weight"] == 0.0 and arm_values(v, "aux0")["sharpen.strategy"] == "per_class"
    assert arm_values(v, "random")["sharpen.strategy"] == "random" and arm_values(v, "random")["aux.weight"] == 2.0
    assert confirm_seeds(0, 3) == [1, 2, 3]  # fresh seeds, never the one the sweep selected on


def test_controls_share_cycle_zero_and_differ_after(tmp_path):
    h = run_arms(TINY, seed=5, root=tmp_path)
    assert h["aux0"][0] == h["best"][0] == h["random"][0]
    assert h["random"][1]["aux_cosine"] < h["best"][1]["aux_cosine"]
    assert h["aux0"][1]["task_accuracy"] != h["best"][1]["task_accuracy"] or h["aux0"][1]["aux_cosine"] != h["best"][1]["aux_cosine"]


def test_summary_statistics_match_scipy():
    best = [0.5, 0.6, 0.7]
    aux0 = [0.4, 0.55, 0.5]
    rnd = [0.45, 0.5, 0.6]
    results = {arm: {s: {1: {"sae_u": vals[i]}} for i, s in enumerate((1, 2, 3))}
               for arm, vals in (("best", best), ("aux0", aux0), ("random", rnd))}
    (row,) = summarize(results, ("sae_u",))
    assert row["best_mean"] == pytest.approx(0.6) and row["best_sd"] == pytest.approx(0.1)
    assert row["diff_aux0_mean"] == pytest.approx(sum(b - a for b, a in zip(best, aux0)) / 3)
    assert row["wins_aux0"] == 3
    assert row["p_aux0"] == pytest.approx(stats.ttest_rel(best, aux0).pvalue)
    table = format_table([row])
    assert "| 1 | sae_u | 0.6000 ± 0.1000 |" in table and "(3/3, p=" in table


def test_paired_test_edge_cases():
    assert math.isnan(paired_test([1.0], [0.0]))
    assert math.isnan(paired_test([1.0, 2.0], [1.0, 2.0]))


def test_plot_writes_png(tmp_path):
    rows = [{"cycle": c, "metric": "sae_u", "n_seeds": 3, **{f"{a}_{s}": 0.1 * c for a in ("best", "aux0", "random") for s in ("mean", "sd")}}
            for c in (0, 1)]
    out = confirmation_plot(rows, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
