"""No half-told runs: what a dead sweep driver left RUNNING is closed when the sweep is resumed.

A driver killed between a trial's start and Ray Tune's next save of its experiment state leaves that
trial's MLflow run and its Optuna trial RUNNING with no Tune trial behind them: Tune restores only the
trials it saved. On `--resume`, before Tune continues, `close_orphans` closes every such run and trial
of this sweep: MLflow runs FAILED with `saeception.failure=orphaned`, Optuna trials FAIL (user attribute
`saeception.failure=orphaned`). Tune never counts them, so the sweep still runs the trials it was asked
for. An Optuna trial is linked to its Tune trial by the user attribute the searcher sets when it asks
for it (`TUNE_TRIAL_ATTR`); a RUNNING one without the link is an orphan too.
"""

from __future__ import annotations

import json
import logging
import os

from saeception.store.uris import is_uri

from .tracking import FAILURE, TRIAL_ID
from .vocab import TUNE_TRIAL_ATTR

log = logging.getLogger(__name__)

ORPHANED = "orphaned"


def live_tune_trials(experiment_path: str) -> set[str] | None:
    """Ids of the trials Tune's newest saved experiment state will run again on resume (every trial not
    TERMINATED: unfinished ones resume, errored ones restart); none when no state was saved. None when
    the state cannot be read (then nothing is closed).

    Reads only the plain JSON fields `trial_id` and `status` of Tune's experiment state; nothing in it is
    unpickled here."""
    import pyarrow.fs as pafs  # lazy: object-store filesystems only for URIs

    if is_uri(experiment_path):
        fs, base = pafs.FileSystem.from_uri(experiment_path)
    else:
        fs, base = pafs.LocalFileSystem(), os.path.abspath(experiment_path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        states = sorted(i.path for i in infos if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json"))
        if not states:
            return set()  # Tune saved no state: a resumed Tune starts afresh, so nothing of before is live
        with fs.open_input_stream(states[-1]) as f:
            data = json.loads(f.read())
        live = set()
        for state_json, _ in data["trial_data"]:
            state = json.loads(state_json)
            if state["status"] != "TERMINATED":
                live.add(str(state["trial_id"]))
        return live
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("cannot read Tune's experiment state under %s (%s): orphaned runs are left as they are", base, e)
        return None


def close_orphans(tracker, parent_id: str, experiment_path: str, optuna_uri: str, study_name: str) -> dict[str, list]:
    """Closes this sweep's MLflow trial runs and Optuna trials that are RUNNING with no live Tune trial
    behind them. Returns {"runs": [run ids], "trials": [Optuna trial numbers]} closed."""
    live = live_tune_trials(experiment_path)
    if live is None:
        return {"runs": [], "trials": []}
    runs = [r.info.run_id for r in tracker.children(parent_id, role="trial")
            if r.info.status == "RUNNING" and r.data.tags.get(TRIAL_ID) not in live]
    for run_id in runs:
        tracker.finish(run_id, failed=ORPHANED)
    trials = _fail_optuna_orphans(optuna_uri, study_name, live)
    if runs or trials:
        log.warning("closed what the stopped driver left running: %d MLflow run(s) FAILED, %d Optuna trial(s) FAIL "
                    "(saeception.failure=orphaned)", len(runs), len(trials))
    return {"runs": runs, "trials": trials}


def _fail_optuna_orphans(optuna_uri: str, study_name: str, live: set[str]) -> list[int]:
    import optuna  # lazy: Optuna only where the study is opened


    try:
        study = optuna.load_study(study_name=study_name, storage=optuna_uri)
    except KeyError:  # no study yet: the driver died before the searcher made it
        return []
    closed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get(TUNE_TRIAL_ATTR) in live:
            continue
        study._storage.set_trial_user_attr(t._trial_id, FAILURE, ORPHANED)
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        closed.append(t.number)
    return closed
