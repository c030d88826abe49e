"""Ray's OptunaSearch with one correction for failed trials."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class FailAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch tells Optuna a failed trial's last intermediate value as COMPLETE (so a
    trial that diverged after a good first cycle could win the study). A failed trial is no
    measurement: passing no result makes Ray record it as FAIL."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        super().on_trial_complete(trial_id, None if error else result, error)
