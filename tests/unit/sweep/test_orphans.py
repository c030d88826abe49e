"""No half-told runs, piece by piece and without a Ray cluster: which Tune trials a saved experiment state
will run again, closing the MLflow runs and Optuna trials no live Tune trial serves, the link from an
Optuna trial to its Tune trial, and the parent run of a driver that died or stopped on an error.
(The whole story, with a real driver SIGKILLed and resumed: tests/unit/sweep/test_faults.py, marker orphans.)"""

from __future__ import annotations

import json

import optuna
import pytest

from saeception.sweep.orphans import ORPHANED, close_orphans, live_tune_trials
from saeception.sweep.tracking import FAILURE, INTERRUPTED, TRIAL_ID, Tracker, sqlite_uri


def _state(directory, *trials: tuple[str, str], name: str = "experiment_state-2026-11-27_00-00-00.json") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rows = [[json.dumps({"trial_id": t, "status": status, "config": {"_type": "CLOUDPICKLE_FALLBACK", "value": "00"}}), "{}"]
            for t, status in trials]
    (directory / name).write_text(json.dumps({"trial_data": rows, "runner_data": {}}))


@pytest.mark.orphans
def test_live_tune_trials_are_the_saved_ones_tune_will_run_again(tmp_path):
    exp = tmp_path / "exp"
    _state(exp, ("a", "TERMINATED"), ("b", "PENDING"), ("c", "ERROR"), name="experiment_state-2026-01-01_00-00-00.json")
    _state(exp, ("a", "TERMINATED"), ("b", "TERMINATED"), ("c", "ERROR"), ("d", "RUNNING"))  # the newest wins
    assert live_tune_trials(str(exp)) == {"c", "d"}  # finished ones are not live; errored ones restart
    assert live_tune_trials(str(tmp_path / "nothing-saved")) == set()  # Tune restarts: nothing of before is live
    (exp / "experiment_state-2099-01-01_00-00-00.json").write_text("{truncated")
    assert live_tune_trials(str(exp)) is None  # unreadable: close nothing rather than close a live run


@pytest.fixture
def tracker(tmp_path):
    return Tracker(sqlite_uri(tmp_path / "mlflow.db"))


@pytest.mark.orphans
def test_close_orphans_closes_what_no_live_trial_serves(tmp_path, tracker):
    from saeception.trainables.optuna_search import TUNE_TRIAL_ATTR

    parent = tracker.sweep_run("e", "sw", reuse=False)
    runs = {t: tracker.child_run(parent, t, role="trial", name=t) for t in ("live", "orphan", "done")}
    tracker.finish(runs["done"])
    optuna_uri = sqlite_uri(tmp_path / "optuna.db")
    study = optuna.create_study(study_name="sw", storage=optuna_uri)
    for tune_id in ("live", "orphan", None):
        trial = study.ask()
        if tune_id:
            trial.set_user_attr(TUNE_TRIAL_ATTR, tune_id)
    exp = tmp_path / "ray" / "sw"
    _state(exp, ("live", "PENDING"), ("done", "TERMINATED"))

    closed = close_orphans(tracker, parent, str(exp), optuna_uri, "sw")

    assert closed == {"runs": [runs["orphan"]], "trials": [1, 2]}
    status = {t: tracker.client.get_run(r).info.status for t, r in runs.items()}
    assert status == {"live": "RUNNING", "orphan": "FAILED", "done": "FINISHED"}
    assert tracker.failure(runs["orphan"]) == ORPHANED
    trials = optuna.load_study(study_name="sw", storage=optuna_uri).trials
    assert [t.state.name for t in trials] == ["RUNNING", "FAIL", "FAIL"]
    assert trials[1].user_attrs[FAILURE] == ORPHANED
    assert close_orphans(tracker, parent, str(exp), optuna_uri, "sw") == {"runs": [], "trials": []}  # idempotent
    assert tracker.client.get_run(runs["live"]).data.tags[TRIAL_ID] == "live"


@pytest.mark.orphans
def test_the_searcher_links_each_optuna_trial_to_its_tune_trial(tmp_path):
    from ray import tune
    from saeception.trainables.optuna_search import TUNE_TRIAL_ATTR, FailAwareOptunaSearch

    uri = f"sqlite:///{tmp_path / 'o.db'}"
    s = FailAwareOptunaSearch(space={"x": tune.uniform(0, 1)}, metric="val_acc", mode="max",
                              storage=optuna.storages.RDBStorage(uri), study_name="s")
    s.suggest("t1")
    s.suggest("t2")
    trials = optuna.load_study(study_name="s", storage=uri).trials
    assert [t.user_attrs[TUNE_TRIAL_ATTR] for t in trials] == ["t1", "t2"]


@pytest.mark.orphans
def test_a_parent_whose_driver_died_or_failed_is_marked_when_reopened(tracker):
    died = tracker.sweep_run("e", "died", reuse=False)  # left RUNNING: its driver was killed
    assert tracker.sweep_run("e", "died", reuse=True) == died
    assert "driver stopped" in tracker.client.get_run(died).data.tags[INTERRUPTED]
    failed = tracker.sweep_run("e", "failed", reuse=False)
    tracker.finish(failed, failed="driver stopped: RuntimeError: boom")
    assert tracker.sweep_run("e", "failed", reuse=True) == failed
    run = tracker.client.get_run(failed)
    assert "RuntimeError: boom" in run.data.tags[INTERRUPTED] and tracker.failure(failed) is None  # reopened clean
    closed = tracker.sweep_run("e", "closed", reuse=False)
    tracker.finish(closed)
    assert tracker.sweep_run("e", "closed", reuse=True) == closed  # a finished sweep resumed for more trials
    run = tracker.client.get_run(closed)
    assert INTERRUPTED not in run.data.tags and run.info.status == "RUNNING"


@pytest.mark.orphans
def test_a_driver_stopping_on_an_error_fails_its_parent_run(monkeypatch):
    from saeception.sweep import driver

    finished = []

    class FakeTracker:
        def finish(self, run_id, failed=None):
            finished.append((run_id, failed))

    def search(p, s):
        raise RuntimeError("the MLflow server went away")

    monkeypatch.setattr(driver, "ray_env", lambda p: None)
    monkeypatch.setattr(driver, "start_ray", lambda p: False)
    monkeypatch.setattr(driver, "open_parent_run", lambda p: driver.Session(FakeTracker(), "parent", None, 1, None))
    monkeypatch.setattr(driver, "search", search)
    with pytest.raises(RuntimeError, match="went away"):
        driver.execute(None)
    assert finished == [("parent", "driver stopped: RuntimeError: the MLflow server went away")]
