"""The Optuna searcher's corrections, without a Ray cluster."""

import optuna
from ray import tune
from saeception.trainables.optuna_search import FailAwareOptunaSearch


def _searcher(tmp_path):
    return FailAwareOptunaSearch(space={"x": tune.uniform(0, 1)}, metric="val_acc", mode="max",
                                 storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"), study_name="s")


def _trials(tmp_path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}").trials


def test_failed_trial_is_fail_not_complete(tmp_path):
    s = _searcher(tmp_path)
    s.suggest("t1")
    s.on_trial_result("t1", {"val_acc": 0.9, "training_iteration": 1})
    s.on_trial_complete("t1", {"val_acc": 0.9}, error=True)
    assert _trials(tmp_path)[0].state == optuna.trial.TrialState.FAIL


def test_a_resumed_trial_repeating_its_results_keeps_the_recorded_value(tmp_path):
    """The driver died after Optuna recorded t1's end but before Tune saved it: the resumed trial
    reports again. The sweep must go on and Optuna keep the first value."""
    s = _searcher(tmp_path)
    s.suggest("t1")
    s.on_trial_result("t1", {"val_acc": 0.7, "training_iteration": 1})
    s.on_trial_complete("t1", {"val_acc": 0.7})
    s._completed_trials.discard("t1")  # the searcher state Tune saved before the kill
    s.on_trial_result("t1", {"val_acc": 0.8, "training_iteration": 2})
    s.on_trial_complete("t1", {"val_acc": 0.8})
    (t,) = _trials(tmp_path)
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == 0.7


def test_a_trial_stopped_before_its_last_cycle_is_pruned_not_complete(tmp_path):
    """ASHA stopped t1 at cycle 1 of 3: its early value must not compete with finished trials' values."""
    s = _searcher(tmp_path)
    for t, cycle in (("t1", 1), ("t2", 3)):
        s.suggest(t)
        s.on_trial_result(t, {"val_acc": 0.99, "cycle": cycle, "final_cycle": 3, "training_iteration": 1})
        s.on_trial_complete(t, {"val_acc": 0.99 if t == "t1" else 0.5, "cycle": cycle, "final_cycle": 3})
    t1, t2 = _trials(tmp_path)
    assert t1.state == optuna.trial.TrialState.PRUNED and t2.state == optuna.trial.TrialState.COMPLETE
    assert t2.value == 0.5


def test_a_failed_trial_that_finishes_when_resumed_is_told_to_optuna(tmp_path):
    """--resume re-runs errored trials (resume_errored): a trial Optuna had as FAIL that then finished was
    logged and dropped, so the study never heard of its value."""
    s = _searcher(tmp_path)
    config = s.suggest("t1")
    s.on_trial_complete("t1", {"val_acc": 0.1}, error=True)
    s._completed_trials.discard("t1")  # a resumed driver's searcher
    s.on_trial_result("t1", {"val_acc": 0.8, "training_iteration": 1})
    s.on_trial_complete("t1", {"val_acc": 0.8})
    failed, rerun = _trials(tmp_path)
    assert failed.state == optuna.trial.TrialState.FAIL and rerun.state == optuna.trial.TrialState.COMPLETE
    assert rerun.value == 0.8 and rerun.params == failed.params == config and rerun.user_attrs["rerun_of_trial"] == 0

