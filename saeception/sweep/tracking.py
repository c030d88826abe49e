"""The one place that talks to MLflow. Stage code never imports mlflow; the sweep and the trainable
use this small interface with explicit run ids (MlflowClient), so an active fluent run elsewhere in
the process cannot redirect or break logging."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROLE = "saeception.role"
SWEEP = "saeception.sweep"
TRIAL_ID = "saeception.trial_id"
PARENT = "mlflow.parentRunId"
FAILURE = "saeception.failure"
INTERRUPTED = "saeception.interrupted"  # a parent run whose driver died, reopened by --resume


def sqlite_uri(path: str | Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def ui_command(uri: str, port: int = 5000) -> str:
    """The command that opens the MLflow UI on `uri`, bound to loopback only."""
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {port}"


class Tracker:
    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else self.client.create_experiment(name)

    def _find(self, experiment_id: str, tags: dict[str, str]) -> list:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([experiment_id], filter_string=query, max_results=1000)

    def sweep_run(self, experiment: str, sweep: str, reuse: bool) -> str:
        """The sweep's parent run: the existing one when `reuse` (a resumed sweep), else a new one."""
        exp_id = self.experiment_id(experiment)
        if reuse:
            found = self._find(exp_id, {ROLE: "sweep", SWEEP: sweep})
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
        run = self.client.create_run(exp_id, run_name=sweep, tags={ROLE: "sweep", SWEEP: sweep})
        return run.info.run_id

    def child_run(self, parent_id: str, key: str, role: str, name: str, extra_tags: dict[str, str] | None = None) -> str:
        """A child of `parent_id` identified by `key` (a trial id). A restarted trial gets its existing run back."""
        parent = self.client.get_run(parent_id)
        exp_id = parent.info.experiment_id
        found = self._find(exp_id, {PARENT: parent_id, TRIAL_ID: key})
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {PARENT: parent_id, ROLE: role, TRIAL_ID: key, SWEEP: parent.data.tags.get(SWEEP, "")}
        tags.update(extra_tags or {})
        return self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id

    def children(self, parent_id: str, role: str | None = None) -> list:
        exp_id = self.client.get_run(parent_id).info.experiment_id
        tags = {PARENT: parent_id, **({ROLE: role} if role else {})}
        return self._find(exp_id, tags)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(str(k), _param_value(v)) for k, v in params.items() if str(k) not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Logs the finite numeric entries of `metrics` at `step` (non-finite values are skipped)."""
        from mlflow.entities import Metric

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

    def failure(self, run_id: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(FAILURE)

    def clear_failure(self, run_id: str) -> None:
        if self.failure(run_id) is not None:
            self.client.delete_tag(run_id, FAILURE)

    def finish(self, run_id: str, failed: str | None = None) -> None:
        """Ends a run: FINISHED, or FAILED with the reason in the saeception.failure tag."""
        if failed:
            self.client.set_tag(run_id, FAILURE, failed[:5000])
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."
