"""What a user reviews (issue #37), on a local SQLite MLflow store: the sweep's run opens on the verdict, the
winner and the headline comparisons with a handful of metrics; the confirmation is one run holding its arms; the
terminal shows plain text under 120 columns; cache counters are tags, not charts."""

import math
import random
from types import SimpleNamespace

import pytest

from saeception.eval.confirm import CONTROLS, SUMMARY_METRICS, ConfirmSettings, summarize, verdict_line
from saeception.sweep.confirmation import _write, table_rows, terminal_summary
from saeception.sweep.report import NOTE, STALE_BEST, log_cache_totals, log_winner, sweep_note
from saeception.sweep.tracking import Tracker

HEADLINE = ("sae_u", "sae_csi", "task_accuracy")
SETTINGS = ConfirmSettings(controls=CONTROLS)  # all five controls: the widest confirmation


def _rows(seeds: int = 10):
    g = random.Random(0)
    res = {a: {} for a in SETTINGS.arms}
    for s in range(1, seeds + 1):
        for a in SETTINGS.arms:
            lift = 0.1 if a == "best" else 0.0
            res[a][s] = {c: {m: 0.5 + lift * c + g.gauss(0, 0.01) for m in SUMMARY_METRICS} for c in (0, 1, 2)}
    return summarize(res, SUMMARY_METRICS, SETTINGS, headline=HEADLINE)


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _plan(tmp_path, seeds=10, objectives=("val_sae_u",)):
    space = SimpleNamespace(metrics=list(objectives), modes=["max"] * len(objectives))
    return SimpleNamespace(name="sw", sweep_dir=tmp_path, space=space, confirm=SimpleNamespace(seeds=seeds))


def test_the_sweep_run_holds_a_handful_of_metrics_and_the_confirmation_run_the_rest(tracker, tmp_path):
    rows = _rows()
    parent = tracker.sweep_run("e", "sw", reuse=False)
    run = tracker.child_run(parent, "confirmation-k", role="confirmation", name="confirmation-k")
    line = verdict_line(rows, HEADLINE, SETTINGS.controls)
    _write(_plan(tmp_path), tracker, parent, run, rows, SETTINGS, HEADLINE, line)
    on_parent = tracker.client.get_run(parent).data
    # 3 headline metrics x 5 controls x (difference, interval low, high): 45, at most 60 with the objectives.
    assert len(on_parent.metrics) == 45 and "confirm_diff_random_sae_csi" in on_parent.metrics
    assert not [k for k in on_parent.tags if k.startswith("saeception.verdict.")]  # one verdict line, not 30 tags
    assert on_parent.tags["saeception.verdict"] == line
    on_run = tracker.client.get_run(run)
    assert on_run.info.status == "FINISHED" and on_run.data.tags["saeception.verdict.aux0.sae_u"] == "better"
    assert {"confirm_best_sae_u_mean", "confirm_p_family_aux0_sae_u"} <= set(on_run.data.metrics)
    for r in (parent, run):
        assert {"confirmation.png", "confirmation_table.json", "confirmation.md"} <= {
            a.path for a in tracker.client.list_artifacts(r)}
    # Four objectives: five headline metrics x five controls would be 75 with the intervals: the differences only.
    many = ("sae_u", "sae_csi", "probe_accuracy", "loss_recovered", "task_accuracy")
    g = random.Random(1)
    wide = summarize({a: {s: {2: {m: 0.5 + 0.1 * (a == "best") + g.gauss(0, 0.01) for m in many}} for s in range(1, 31)}
                      for a in SETTINGS.arms}, many, SETTINGS, headline=many)
    assert all(math.isfinite(r["ci_aux0"][0]) for r in wide)  # the intervals exist: they are left out, not missing
    other = tracker.sweep_run("e", "wide", reuse=False)
    _write(_plan(tmp_path, objectives=("val_sae_u", "val_sae_csi", "val_probe_accuracy", "val_loss_recovered")), tracker,
           other, tracker.child_run(other, "confirmation-w", role="confirmation", name="c"), wide, SETTINGS, many,
           verdict_line(wide, many, SETTINGS.controls))
    metrics = tracker.client.get_run(other).data.metrics
    assert len(metrics) == 25 and all(k.startswith("confirm_diff_") for k in metrics)


def test_the_confirmation_table_opens_on_the_last_cycle_and_its_headline_metrics():
    rows = table_rows(_rows(), SETTINGS, HEADLINE)
    assert [r["cycle"] for r in rows[:15]] == [2] * 15
    assert [r["metric"] for r in rows[:15]] == ["sae_u"] * 5 + ["sae_csi"] * 5 + ["task_accuracy"] * 5
    assert rows[0]["verdict"] == "better" and rows[-1]["cycle"] == 0


def test_the_terminal_shows_plain_text_under_120_columns():
    rows = _rows()
    text = terminal_summary(rows, SETTINGS, HEADLINE)
    lines = text.splitlines()
    assert lines[0].startswith("verdict: sae_u: better than all 5 controls")
    assert "**" not in text and "|" not in text and max(map(len, lines)) <= 120
    assert sum(line.startswith("  sae_csi ") for line in lines) == 5


def test_the_description_opens_on_the_verdict_the_winner_and_the_comparisons(tmp_path):
    rows = _rows()
    trials = [{"trial_id": "t1", "error": False, "stopped_at": None, "config": {"sae.k": 8, "aux.weight": 0.3},
               "val_sae_u": 0.61},
              {"trial_id": "t2", "error": True, "stopped_at": None, "config": {}, "val_sae_u": None}]
    line = verdict_line(rows, HEADLINE, SETTINGS.controls)
    confirmation = {"rows": rows, "settings": SETTINGS, "headline": HEADLINE, "verdict": line, "n_seeds": 10}
    note = sweep_note(_plan(tmp_path), trials, trials[:1], line, confirmation)
    assert note.startswith("**Sweep `sw`**: 1 trials finished, 0 stopped early, 1 failed.")
    assert "**Verdict** (the winner against `aux0`, `random`, `prototype`, `nosharpen`, `pairing` on 10 fresh seeds" in note
    assert line in note and "### Winner: trial `t1`" in note and "| `sae.k` | 8 |" in note
    assert "### Headline comparisons at cycle 2" in note and note.count("| `sae_u` | `") == 5
    pending = sweep_note(_plan(tmp_path), trials, trials[:1])
    assert "has not finished (yet): no verdict" in pending and "Headline" not in pending
    assert "No confirmation ran" in sweep_note(_plan(tmp_path, seeds=0), trials, trials[:1])


def test_the_winners_values_are_params_and_a_changed_winner_says_they_are_stale(tracker):
    parent = tracker.sweep_run("e", "sw", reuse=False)
    log_winner(tracker, parent, {"config": {"sae.k": 8, "aux.weight": 0.3}})
    log_winner(tracker, parent, {"config": {"sae.k": 8, "aux.weight": 0.3}})  # a resume, same winner
    data = tracker.client.get_run(parent).data
    assert data.params == {"best.sae.k": "8", "best.aux.weight": "0.3"} and STALE_BEST not in data.tags
    log_winner(tracker, parent, {"config": {"sae.k": 16, "aux.weight": 0.3}})  # MLflow would refuse the new value
    data = tracker.client.get_run(parent).data
    assert data.params["best.sae.k"] == "8" and "best.sae.k" in data.tags[STALE_BEST]
    tracker.set_tags(parent, {NOTE: "x"})
    assert tracker.client.get_run(parent).data.tags[NOTE] == "x"


def test_cache_counters_are_tags_summed_over_trials_and_confirmation_arms(tracker, tmp_path, capsys):
    parent = tracker.sweep_run("e", "sw", reuse=False)
    trial = tracker.child_run(parent, "t1", role="trial", name="trial-t1")
    run = tracker.child_run(parent, "confirmation-k", role="confirmation", name="confirmation-k")
    arm = tracker.child_run(run, "best-seed1-k", role="confirm", name="best-seed1-k")
    tracker.set_tags(trial, {"cache/hits": "2", "cache/misses": "3", "cache/seconds_saved": "1.5"})
    tracker.set_tags(arm, {"cache/hits": "4", "cache/seconds_saved": "2.0"})
    log_cache_totals(SimpleNamespace(cache_dir=str(tmp_path / "cache")), tracker, parent)
    data = tracker.client.get_run(parent).data
    assert data.tags["cache/hits"] == "6" and data.tags["cache/misses"] == "3" and data.tags["cache/seconds_saved"] == "3.5"
    assert data.metrics == {} and "6 hits, 3 misses" in capsys.readouterr().out


def test_a_confirmation_arm_runs_from_its_own_start_to_its_last_report(tracker):
    """Arms run one after another in one trial: each arm's run is opened by the relay at its first report with the
    time its work began, and closed at its last report (they all used to open together at the trial's start and
    close together at its end). A restarted controller's relay finds the run by key, never a duplicate."""
    from saeception.sweep.vocab import LAST_REPORT_TAG, TRAIN_RUN_TAG
    from trainables.chain_trainable import LazyRun, _close, _opened, open_run

    parent = tracker.sweep_run("e", "sw", reuse=False)
    run = tracker.child_run(parent, "confirmation-k", role="confirmation", name="confirmation-k")
    lazy = {k: LazyRun(parent=run, role="control", tags={"saeception.arm": k, TRAIN_RUN_TAG: "confirm-x"},
                       params={"sae.k": 4}) for k in ("aux0-seed1-k", "random-seed1-k", "never-seed1-k")}
    opened: dict[str, str] = {}  # the relay's
    first = open_run(tracker, opened, lazy, "aux0-seed1-k", started=1_000.0)
    assert open_run(tracker, opened, lazy, "aux0-seed1-k", started=2_000.0) == first  # later reports of the same arm
    second = open_run(tracker, opened, lazy, "random-seed1-k", started=1_500.0)
    assert open_run(tracker, {}, lazy, "random-seed1-k", started=3_000.0) == second  # a restarted controller's relay
    info = tracker.client.get_run(first)
    assert info.info.start_time == 1_000_000 and info.data.params == {"sae.k": "4"}
    assert info.data.tags[TRAIN_RUN_TAG] == "confirm-x" and info.data.tags["saeception.arm"] == "aux0-seed1-k"
    assert tracker.client.get_run(second).info.start_time == 1_500_000
    assert _opened(tracker, {}, lazy) == {"aux0-seed1-k": first, "random-seed1-k": second}  # "never" never reported
    tracker.set_tags(first, {LAST_REPORT_TAG: "1400.000"})
    _close(tracker, first, end_time=1_400.0)
    assert tracker.client.get_run(first).info.end_time == 1_400_000
