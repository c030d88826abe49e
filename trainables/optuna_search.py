"""Ray's OptunaSearch with two corrections: failed trials, and results a resumed sweep repeats."""

from __future__ import annotations

import logging

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

# User attribute linking an Optuna trial to the Tune trial it serves (saeception.sweep.orphans reads it).
TUNE_TRIAL_ATTR = "tune_trial_id"


class FailAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch tells Optuna a failed trial's last intermediate value as COMPLETE (so a
    trial that diverged after a good first cycle could win the study). A failed trial is no
    measurement: passing no result makes Ray record it as FAIL.

    A sweep driver killed after Optuna recorded a trial's end but before Tune saved it resumes that
    trial (from its last checkpoint), which reports again; Optuna refuses updates to a finished trial
    and Ray's searcher would fail the whole sweep. The study (its SQLite storage) is the record: a
    trial it has finished keeps its recorded value and the repeat is logged, not told again."""

    def _finished_in_study(self, trial_id: str) -> bool:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return False
        state = self._ot_study._storage.get_trial(ot_trial._trial_id).state
        if not state.is_finished():
            return False
        log.info("trial %s is already %s in the Optuna study (a resumed sweep): not re-reported", trial_id, state.name)
        self._completed_trials.add(trial_id)
        return True

    def suggest(self, trial_id):
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            # Stored with the trial: a resumed sweep can tell which RUNNING trials no Tune trial serves.
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id, result):
        if not self._finished_in_study(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id not in self._completed_trials and self._finished_in_study(trial_id):
            return
        super().on_trial_complete(trial_id, None if error else result, error)
