"""MLflow as users expect it, on a local SQLite store (the end-to-end sweep checks the same through a
real `mlflow server`): a model-training experiment, standard source/user tags and versions, the data as
dataset inputs, the confirmation as a table, cache counters under cache/."""

import json

import pytest

from saeception.store.cache import CACHE_COUNTERS, CacheStats
from saeception.sweep.tracking import (
    EXPERIMENT_KIND,
    Tracker,
    TrackingUnavailable,
    run_tags,
    run_url,
    trials_url,
    ui_url,
    unreachable,
)

SPLITS = {"train": {"n": 10, "ids_sha256": "a" * 64}, "val": {"n": 3, "ids_sha256": "b" * 64},
          "test": {"n": 4, "ids_sha256": "c" * 64}}


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_experiment_is_a_model_training_experiment(tracker, tmp_path):
    exp_id = tracker.experiment_id("e")
    assert tracker.client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # Its artifacts live beside the SQLite store, not in ./mlruns of the current directory.
    assert tracker.client.get_experiment(exp_id).artifact_location == str(tmp_path / "mlartifacts")
    # An experiment created elsewhere (e.g. by an older saeception) gets the tag too.
    other = tracker.client.create_experiment("older")
    assert tracker.experiment_id("older") == other
    assert tracker.client.get_experiment(other).tags.items() >= EXPERIMENT_KIND.items()


def test_runs_carry_source_user_and_version_tags(tracker):
    tags = run_tags()
    assert {"mlflow.source.name", "mlflow.source.type", "mlflow.user"} <= set(tags)
    assert {"versions/saeception", "versions/torch", "versions/ray", "versions/mlflow", "versions/optuna"} <= set(tags)
    parent = tracker.sweep_run("e", "sw", reuse=False, tags=tags)
    child = tracker.child_run(parent, "t1", role="trial", name="trial-t1", extra_tags=tags)
    for run_id in (parent, child):
        got = tracker.client.get_run(run_id).data.tags
        assert got["mlflow.source.name"] == tags["mlflow.source.name"] and got["versions/torch"] == tags["versions/torch"]
    assert tracker.client.get_run(child).data.tags["saeception.role"] == "trial"  # our tags are not overridden


def test_dataset_inputs_one_per_split_with_the_split_hash_as_digest(tracker):
    run_id = tracker.sweep_run("e", "sw", reuse=False)
    data = {"name": "glue", "subset": "sst2", "revision": "v1"}
    tracker.log_dataset(run_id, data, SPLITS)
    tracker.log_dataset(run_id, data, SPLITS)  # a resumed trial logs again: nothing new
    inputs = tracker.client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 3
    by_split = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert by_split["val"].digest == "b" * 16 and by_split["val"].name == "glue/sst2"
    assert by_split["train"].source_type == "hugging_face" and json.loads(by_split["train"].source)["revision"] == "v1"
    assert json.loads(by_split["test"].profile) == {"num_rows": 4, "ids_sha256": "c" * 64}
    tags = tracker.client.get_run(run_id).data.tags
    assert tags["saeception.split.train.sha256"] == "a" * 64 and tags["saeception.split.test.n"] == "4"


def test_confirmation_table_is_an_mlflow_table_logged_once(tracker, tmp_path):
    run_id = tracker.sweep_run("e", "sw", reuse=False)
    rows = [{"cycle": 1, "metric": "sae_u", "best mean": 0.5, "p vs aux0": None}]
    tracker.log_table(run_id, rows, "confirmation_table.json")
    tracker.log_table(run_id, rows, "confirmation_table.json")  # resumed sweep: MLflow would append
    table = json.loads(open(tracker.client.download_artifacts(run_id, "confirmation_table.json", str(tmp_path))).read())
    assert table["columns"] == ["cycle", "metric", "best mean", "p vs aux0"] and len(table["data"]) == 1
    logged = json.loads(tracker.client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "confirmation_table.json", "type": "table"} in logged


def test_cache_counters_sit_under_a_cache_prefix():
    assert all(k.startswith("cache/") for k in CACHE_COUNTERS)
    assert list(CacheStats(hits=2).as_metrics()) == list(CACHE_COUNTERS)


def test_ui_address_opens_the_model_training_view():
    # MLflow 3.17's UI ignores the experiment kind tag for its GenAI/model-training switch; the URL sets it.
    assert ui_url("http://127.0.0.1:5000/", "7") == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert run_url("http://h:5000", "7", "abc") == "http://h:5000/#/experiments/7/runs/abc?workflowType=machine_learning"


def test_the_trials_address_lists_one_sweeps_trials_best_first_in_charts():
    """The runs page (`/runs`: the experiment's own address drops these parameters, seen in Chromium) with a filter on
    the sweep's id and role, ordered by the objective in its direction, in the charts view."""
    import urllib.parse

    url = trials_url("http://h:5000", "7", "s1d", "val_loss", "min")
    path, _, query = url.partition("?")
    assert path == "http://h:5000/#/experiments/7/runs"
    q = dict(urllib.parse.parse_qsl(query))
    assert q == {"workflowType": "machine_learning", "compareRunsMode": "CHART", "orderByKey": "metrics.`val_loss`",
                 "orderByAsc": "true", "searchFilter": "tags.`saeception.role` = 'trial' and tags.`saeception.sweep_id` = 's1d'"}
    assert dict(urllib.parse.parse_qsl(trials_url("b", "7", "s", "val_sae_u", "max").partition("?")[2]))["orderByAsc"] == "false"


def test_runs_under_a_sweep_carry_its_name_and_id(tracker):
    parent = tracker.sweep_run("e", "sw", reuse=False, sweep_id="s1d")
    run = tracker.child_run(parent, "confirmation-k", role="confirmation", name="c")
    arm = tracker.child_run(run, "best-seed1-k", role="confirm", name="a")
    for r in (run, arm):
        tags = tracker.client.get_run(r).data.tags
        assert tags["saeception.sweep_id"] == "s1d" and tags["saeception.sweep"] == "sw"
    assert {r.info.run_id for r in tracker.descendants(parent)} == {run, arm}


def test_an_mlflow_server_that_does_not_answer_is_told_apart_from_other_mlflow_errors(tracker, monkeypatch):
    """The driver turns a lost server (after MLflow's retries) into one message and --resume advice; any
    other MLflow error stays what it is."""
    from mlflow.exceptions import MlflowException
    from raytools import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://user:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(MlflowException) as lost:
        Tracker(uri).client.get_run("0" * 32)
    assert unreachable(lost.value)
    message = str(TrackingUnavailable(uri, lost.value))
    assert "did not answer ([Errno 111] Connection refused)" in message and "hunter2" not in message
    with pytest.raises(MlflowException) as missing:
        tracker.client.get_run("0" * 32)
    assert not unreachable(missing.value)


def test_a_confirmation_arm_is_the_mean_over_its_saes_and_gives_its_sae_seed_group():
    """An arm run logs its own SAE's metrics per cycle and each extra SAE's last-cycle metrics under sae_seed/ at
    steps 1..n: the sweep judges the arm on the mean over its SAEs and pools their spread."""
    from saeception.sweep.confirmation import arm_results

    class Histories:
        def histories(self, run_id, keys):
            logged = {"sae_u": {0: 0.40, 1: 0.50}, "task_accuracy": {0: 0.9, 1: 0.95}, "sharpen_kept_fraction": {1: 0.3},
                      "sae_seed/sae_u": {1: 0.56, 2: 0.53}, "sae_seed/task_accuracy": {1: 0.95, 2: 0.95}}
            return {k: logged[k] for k in keys if k in logged}

    by_cycle, group = arm_results(Histories(), "run", ("sae_u", "task_accuracy", "sharpen_kept_fraction"))
    assert by_cycle[0] == {"sae_u": 0.40, "task_accuracy": 0.9}  # earlier cycles as logged
    assert by_cycle[1]["sae_u"] == pytest.approx((0.50 + 0.56 + 0.53) / 3)
    assert by_cycle[1]["task_accuracy"] == 0.95 and by_cycle[1]["sharpen_kept_fraction"] == 0.3
    assert [g["sae_u"] for g in group] == [0.50, 0.56, 0.53]


def test_only_a_diverged_arm_counts_against_the_method_a_stopped_one_runs_again():
    """An arm its trial closed FAILED as the trial was stopped (Ctrl-C: 'ActorDiedError: ... owner has died',
    seen in CI) was read as a divergence, a loss for the method; it did not finish, and --resume runs it."""
    from types import SimpleNamespace as NS

    from saeception.sweep.confirmation import _gather, _unfinished
    from saeception.sweep.tracking import FAILURE
    from saeception.sweep.vocab import KEY_TAG

    def run(arm, seed, status, failure=None):
        tags = {"saeception.arm": arm, "saeception.seed": str(seed), KEY_TAG: "k", **({FAILURE: failure} if failure else {})}
        return NS(data=NS(tags=tags), info=NS(status=status, run_id=f"{arm}{seed}"))

    class Store:
        def children(self, parent):
            return [run("best", 1, "FAILED", "DivergedError: loss is nan"), run("aux0", 1, "FINISHED"),
                    run("best", 2, "FAILED", "ActorDiedError: The actor died unexpectedly"), run("aux0", 2, "FINISHED")]

        def histories(self, run_id, keys):
            return {"sae_u": {1: 0.5}} if "sae_u" in keys else {}

    results, failed, _, _ = _gather(Store(), "parent", "k", ("best", "aux0"), [1, 2], ("sae_u",))
    assert failed["best"] == {1: "DivergedError: loss is nan"}
    assert _unfinished([1, 2], ("best", "aux0"), results, failed) == [2]
