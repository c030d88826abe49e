"""Ray's OptunaSearch with three corrections (failed trials, early-stopped trials, results a resumed sweep
repeats), an Optuna storage that keeps its password out of Ray's files, and a search budget a resumed sweep
can grow."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import optuna
from optuna.storages import RDBStorage
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY  # set_constraint's system-attr prefix
from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from saeception.store.uris import MASK, redact
from saeception.sweep.space import Constraint, violations
from saeception.sweep.vocab import TUNE_TRIAL_ATTR, stopped_early

log = logging.getLogger(__name__)
RERUN_ATTR = "rerun_of_trial"  # on an Optuna trial: the number of the FAIL trial whose re-run it records

# User attribute linking an Optuna trial to the Tune trial it serves (saeception.sweep.orphans reads it).


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

    def _tell_rerun(self, trial_id: str, result: dict | None, error: bool) -> None:
        """A trial Optuna has as FAIL that now finished (`--resume` re-runs errored trials): Optuna cannot
        change a finished trial, so the measurement goes in as a new COMPLETE trial with the same params
        (user attribute `rerun_of_trial`: the FAIL's number); otherwise the study never heard of it."""
        frozen = self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)
        if frozen.state != optuna.trial.TrialState.FAIL or error or stopped_early(result) or not result:
            return
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        if any(not isinstance(result.get(m), (int, float)) for m in metrics):
            return
        given = {f"{_CONSTRAINTS_KEY}:{c.metric}": v for c, v in zip(self.constraints, violations(self.constraints, result))}
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=frozen.params, distributions=frozen.distributions, values=[float(result[m]) for m in metrics],
            user_attrs={**frozen.user_attrs, RERUN_ATTR: frozen.number}, system_attrs=given or None))
        log.info("trial %s failed before and finished when resumed: told to Optuna as a new trial", trial_id)

    def __init__(self, *args, constraints: list[Constraint] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.constraints = list(constraints or [])

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
        """A trial a scheduler stopped before its last cycle (ASHA) is PRUNED, not COMPLETE with an early
        value that would compete with finished trials' last-cycle values."""
        if self._finished_in_study(trial_id):
            self._tell_rerun(trial_id, result, error)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and result and not error:
            # Optuna 5's constrained optimisation (TPE reads trial.constraints; <= 0 is feasible); its older
            # constraints_func is deprecated.
            for c, v in zip(self.constraints, violations(self.constraints, result)):
                ot_trial.set_constraint(c.metric, v)
        if error or stopped_early(result):
            result = None  # no value: FAIL on error, else PRUNED
        super().on_trial_complete(trial_id, result, error)


class CredentialSafeRDBStorage(RDBStorage):
    """Optuna's RDB storage whose pickle (Ray saves the searcher, with its study and storage, in tuner.pkl
    and searcher-state-*.pkl) holds the URL with its password masked. Unpickled in a driver that opened the
    same storage (the resumed sweep), it reconnects with the real URL that driver was given."""

    _live_urls: ClassVar[dict[str, str]] = {}  # masked URL -> real URL, in this process only

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self._live_urls[redact(self.url)] = self.url

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = redact(self.url)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        live = self._live_urls.get(state["url"])
        if live is None and MASK in state["url"]:
            raise RuntimeError(f"the Optuna storage {state['url']} needs its credentials: open it in this process first")
        super().__setstate__({**state, "url": live or state["url"]})


class SweepSearch(SearchGenerator):
    """Tune's wrapper of a searcher, whose sample budget grows when a sweep is resumed with a larger
    --trials: Tune restores the budget the sweep was started with, then this raises it."""

    budgets: ClassVar[dict[str, int]] = {}  # sweep name -> --trials of this driver process

    def __init__(self, searcher, sweep: str):
        super().__init__(searcher)
        self.sweep = sweep

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        wanted = self.budgets.get(self.sweep, 0)
        if wanted > self._total_samples:
            log.info("sweep %s grows from %d to %d trials", self.sweep, self._total_samples, wanted)
            self._total_samples = wanted
            self._finished = False
