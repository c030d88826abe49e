import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from paths import BAD_INPUTS, REPO

from saeception.config import ConfigError
from saeception.sweep import cli as sweep
from saeception.sweep import report
from saeception.sweep.space import load_space, parse_space

BAD = sorted(BAD_INPUTS.glob("*.yaml"))


def all_space_files():
    files = sorted(p for p in (REPO / "search_spaces").rglob("*") if p.suffix in (".yaml", ".yml"))
    assert len(files) >= 4
    return files


@pytest.mark.parametrize("path", all_space_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_space_validates(path):
    space = load_space(path)
    keys = {p.key for p in space.params}
    assert {"sae.expansion_factor", "sharpen.top_k_pct", "aux.weight"} <= keys
    assert keys & {"sae.k", "sae.l1_coefficient"}
    assert all(m.startswith("val_") for m in space.metrics)


def test_conditional_params_follow_their_condition():
    import optuna

    space = load_space(REPO / "search_spaces" / "default.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    kinds = set()
    for _ in range(12):
        trial = study.ask()
        space.suggest(trial)
        kinds.add(trial.params["sae.kind"])
        assert ("sae.k" in trial.params) == (trial.params["sae.kind"] == "topk")
        assert ("sae.l1_coefficient" in trial.params) == (trial.params["sae.kind"] == "l1")
        space.config(trial.params)  # every sample is a valid config
        study.tell(trial, 0.0)
    assert kinds == {"topk", "l1"}


def test_pareto_front():
    rows = [{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}, {"a": 0.5, "b": 0.5}, {"a": 0.4, "b": 0.4}]
    front = report.pareto_front(rows, ["a", "b"], ["max", "max"])
    assert rows[3] not in front and len(front) == 3


def _row(trial_id, a, b, stopped_at=None):
    return {"trial_id": trial_id, "error": False, "stopped_at": stopped_at, "config": {}, "a": a, "b": b}


def test_best_trial_and_front_honour_mode_and_skip_stopped_trials():
    """The confirmed point is the front's first: best by the first objective in ITS direction (min here);
    a trial a scheduler stopped early is no candidate, however good its early value."""
    from saeception.sweep.space import Objective, SearchSpace

    space = SearchSpace("s", {}, [], [Objective("a", "min"), Objective("b", "max")])
    rows = [_row("lo", 0.1, 0.2), _row("hi", 0.9, 0.9), _row("mid", 0.5, 0.5), _row("early", 0.0, 1.0, stopped_at=1)]
    front = report.best_trials(rows, space)
    assert [r["trial_id"] for r in front] == ["lo", "mid", "hi"]
    single = SearchSpace("s", {}, [], [Objective("a", "min")])
    assert [r["trial_id"] for r in report.best_trials(rows, single)] == ["lo"]


def test_constraints_make_a_trial_infeasible_and_it_is_never_best():
    """`constraints:` bound validation metrics: the best trial and the front are chosen among trials that
    meet them all (a trial missing a constrained metric meets none)."""
    space = parse_space({"params": {"aux.weight": {"type": "float", "low": 0.1, "high": 1.0}},
                         "objectives": [{"metric": "val_sae_u", "mode": "max"}],
                         "constraints": [{"metric": "val_explained_variance", "min": 0.8},
                                         {"metric": "val_task_accuracy", "min": "9e-1"}]})
    assert [c.to_dict() for c in space.constraints] == [{"metric": "val_explained_variance", "min": 0.8},
                                                        {"metric": "val_task_accuracy", "min": 0.9}]
    rows = [{**_row("top", 0.9, 0.0), "val_sae_u": 0.9, "val_explained_variance": 0.5, "val_task_accuracy": 0.95},
            {**_row("ok", 0.5, 0.0), "val_sae_u": 0.5, "val_explained_variance": 0.85, "val_task_accuracy": 0.91},
            {**_row("nan", 0.8, 0.0), "val_sae_u": 0.8, "val_explained_variance": float("nan"), "val_task_accuracy": 0.99}]
    assert [r["trial_id"] for r in report.best_trials(rows, space)] == ["ok"]
    assert space.to_dict()["constraints"][1] == {"metric": "val_task_accuracy", "min": 0.9}
    assert report.best_trials(rows[:1], space) == []
    with pytest.raises(ConfigError, match=r"^constraints: a metric is bounded twice"):
        parse_space({"params": {"aux.weight": {"type": "float", "low": 0.1, "high": 1.0}},
                     "objectives": [{"metric": "val_sae_u"}],
                     "constraints": [{"metric": "val_task_accuracy", "min": 0.9}, {"metric": "val_task_accuracy", "max": 1}]})


def test_optuna_is_told_each_trials_constraints(tmp_path):
    """The searcher sets each finished trial's violations (Optuna 5's Trial.set_constraint), which TPE reads;
    a failed trial has none (Optuna leaves FAIL trials out anyway)."""
    import optuna
    from ray import tune
    from saeception.trainables.optuna_search import FailAwareOptunaSearch

    from saeception.sweep.space import Constraint

    s = FailAwareOptunaSearch(space={"x": tune.uniform(0, 1)}, metric="val_sae_u", mode="max",
                              storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"), study_name="s",
                              constraints=[Constraint("val_explained_variance", min=0.8)])
    for t, ev in (("t1", 0.9), ("t2", 0.5)):
        s.suggest(t)
        s.on_trial_complete(t, {"val_sae_u": 0.1, "val_explained_variance": ev})
    s.suggest("t3")
    s.on_trial_complete("t3", {"val_sae_u": 0.1}, error=True)
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}").trials
    assert [t.constraints for t in trials] == [{"val_explained_variance": pytest.approx(-0.1)},
                                               {"val_explained_variance": pytest.approx(0.3)}, {}]
    assert [t.state for t in trials][:2] == [optuna.trial.TrialState.COMPLETE] * 2


def _materialise(path: Path, tmp_path: Path, text_csv: Path, gpt2_dir: Path) -> Path:
    text = path.read_text().replace("@DATA@", str(text_csv)).replace("@MODEL@", str(gpt2_dir))
    out = tmp_path / path.name
    out.write_text(text)
    return out


@pytest.mark.bad_input
@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_space_exits_2_naming_the_field_before_ray(path, tmp_path, capsys, text_csv, gpt2_dir):
    expect = re.match(r"# expect: (\S+)", path.read_text()).group(1)
    storage = tmp_path / "storage"
    space = _materialise(path, tmp_path, text_csv, gpt2_dir)
    code = sweep.main(["--space", str(space), "--storage", str(storage), "--trials", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {expect}"), err
    assert not storage.exists(), "nothing may be left behind"
    import ray

    assert not ray.is_initialized()


@pytest.mark.bad_input
def test_bad_input_corpus_is_large_enough():
    assert len(BAD) >= 20


@pytest.mark.bad_input
@pytest.mark.parametrize("args,expect", [
    (["--trials", "0"], "--trials"),
    (["--workers-per-trial", "0"], "--workers-per-trial"),
    (["--cpus-per-worker", "0"], "--cpus-per-worker"),
    (["--set", "sae.kind=relu"], "fixed.sae.kind"),
    (["--set", "aux.weight=1"], "params.aux.weight"),
    (["--space", "/nonexistent/space.yaml"], "--space"),
    (["--space", "/tmp"], "--space"),
    (["--resume"], "--resume"),
    (["--space", str(REPO / "search_spaces" / "multi_objective.yaml"), "--scheduler", "asha"], "--scheduler"),
    (["--name", "a/b"], "--name"),
    (["--no-cache", "--cache", "/tmp/x"], "--no-cache"),
    (["--cache", "/nonexistent/cache", "--cache-readonly"], "--cache"),
    (["--cache", "nosuchfs://bucket/cache"], "--cache"),
    (["--confirm-seeds", "-1"], "--confirm-seeds"),
])
def test_bad_flags_exit_2(args, expect, tmp_path, capsys):
    storage = tmp_path / "storage"
    code = sweep.main(["--storage", str(storage), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {expect}"), err
    assert not storage.exists()


def test_unwritable_storage_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = sweep.main(["--storage", str(blocker / "sub")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --storage:") and "not writable" in err


def test_malformed_space_through_the_real_cli_starts_no_ray(tmp_path):
    ray_tmp = tmp_path / "r"
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    r = subprocess.run([sys.executable, "-m", "saeception.sweep", "--space", str(BAD[0]), "--storage", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ")
    assert list(ray_tmp.iterdir()) == [] and not (tmp_path / "s").exists()


def test_parse_space_rejects_non_mapping_param():
    with pytest.raises(ConfigError, match="params.aux.weight"):
        parse_space({"params": {"aux.weight": 3}, "objectives": [{"metric": "val_sae_u", "mode": "max"}]})


def test_cache_defaults_and_no_cache(tmp_path):
    args = sweep.parser().parse_args(["--storage", str(tmp_path / "s")])
    assert sweep.plan(args).cache_dir == str(tmp_path / "s" / "cache")
    args = sweep.parser().parse_args(["--storage", str(tmp_path / "s2"), "--no-cache"])
    assert sweep.plan(args).cache_dir is None
    # Object stores: the URI is kept as given (each worker opens it itself).
    args = sweep.parser().parse_args(["--storage", str(tmp_path / "s3"), "--cache", "s3://bucket/saeception-cache/"])
    assert sweep.plan(args).cache_dir == "s3://bucket/saeception-cache"


def test_a_searched_aux_weight_that_weight_per_cycle_would_replace_is_refused(tmp_path):
    import pytest
    import yaml

    from saeception.config import ConfigError
    from saeception.sweep.space import load_space

    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump({"name": "s", "fixed": {"chain.cycles": 2, "aux.weight_per_cycle": [0.1, 0.2]},
                                     "params": {"aux.weight": {"type": "float", "low": 0.1, "high": 1.0}},
                                     "objectives": [{"metric": "val_sae_u", "mode": "max"}]}))
    with pytest.raises(ConfigError, match="params.aux.weight: fixed.aux.weight_per_cycle replaces aux.weight"):
        load_space(space)
