"""The sweep's command line before Ray starts: --dry-run, --config as the base of every trial, numbers
written 1e-4 through both CLIs, and MLflow's environment variables."""

import json
import re
from pathlib import Path

import pytest
import yaml

from saeception import sweep
from saeception.sweep.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "tests" / "spaces" / "tiny.yaml")


def test_dry_run_prints_the_plan_and_the_sampler_s_first_configs_and_starts_nothing(tmp_path, capsys, monkeypatch):
    import saeception.sweep.driver as driver

    monkeypatch.setattr(driver, "run", lambda p: pytest.fail("--dry-run started the sweep"))
    storage = tmp_path / "s"
    argv = ["--space", TINY, "--trials", "2", "--seed", "3", "--storage", str(storage), "--num-cpus", "2",
            "--workers-per-trial", "2", "--cpus-per-worker", "0.5", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    base = yaml.safe_load(out.split("base config (every trial; searched keys are overridden per trial):\n")[1].split("\n\n")[0])
    assert base["sae"]["steps"] == 100 and base["chain"]["cycles"] == 1  # the space's fixed values, resolved
    assert "resources per trial: 1.25 CPU (0.25 for the trial driver + 2 worker(s) x 0.5), 0 GPU" in out
    assert "concurrency: 1 trial(s) at once on a local Ray with 2 CPUs, 0 GPUs" in out
    assert not storage.exists()  # nothing written

    # The configs shown are the ones the sweep's own searcher proposes first (same sampler, same seed).
    import optuna
    from saeception.trainables.optuna_search import FailAwareOptunaSearch

    p = sweep.plan(sweep.parser().parse_args(argv))
    searcher = FailAwareOptunaSearch(space=p.space.suggest, metric="val_sae_u", mode="max",
                                     sampler=optuna.samplers.TPESampler(seed=3, constant_liar=False),
                                     storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"), study_name="t")
    for i in range(2):
        real = searcher.suggest(f"t{i}")
        shown = re.search(rf"  trial {i}: (.*)", out).group(1)
        assert shown == " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in real.items())


def test_config_is_the_base_of_every_trial(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text("finetune: {lr: 1e-4, weight_decay: 0.01}\naux.lr: 2.0e-4\nsae.steps: 999\naux.weight: 0.5\n")
    args = sweep.parser().parse_args(["--space", TINY, "--config", str(base), "--storage", str(tmp_path / "s"),
                                      "--set", "aux.lr=3e-4", "--dry-run"])
    p = sweep.plan(args)
    cfg = p.space.config({"aux.weight": 1.5})
    assert cfg.finetune.lr == 1e-4 and cfg.finetune.weight_decay == 0.01  # from --config ("1e-4" read as a number)
    assert cfg.sae.steps == 100  # the space's fixed: wins over --config
    assert cfg.aux.lr == 3e-4  # --set wins over both
    assert cfg.aux.weight == 1.5 and "aux.weight" not in p.space.fixed  # a searched key stays searched
    assert p.space.fixed["finetune.weight_decay"] == 0.01  # so trials, the parent run's fixed.* params and best_config see it


@pytest.mark.parametrize("content, message", [
    ("sae: {k: 0}\n", "error: sae.k: must be >= 1"),
    ("sae.nope: 1\n", "error: sae.nope: unknown config key"),
    ("data.test_fraction: 0.5\n", "error: --config: with the space's fixed values and --set, data.val_fraction"),
])
def test_bad_base_config_exits_2_naming_the_key(tmp_path, capsys, content, message):
    base = tmp_path / "base.yaml"
    base.write_text(content)
    extra = ["--set", "data.val_fraction=0.6"] if "fraction" in content else []
    storage = tmp_path / "s"
    code = main(["--space", TINY, "--config", str(base), "--storage", str(storage), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not storage.exists()


def test_set_1e_4_is_a_number_through_both_clis(tmp_path, capsys):
    assert main(["--space", TINY, "--storage", str(tmp_path / "s"), "--set", "finetune.lr=1e-4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.0001\n" in out.split("finetune:")[1]

    from saeception.run import main as run_main

    out_dir = tmp_path / "run"
    code = run_main(["--set", "finetune.lr=1e-4", "--set", "finetune.epochs=1", "--set", "chain.cycles=0",
                     "--set", "sae.steps=20", "--set", "data.max_examples=100", "--set", "model.hidden_sizes=[16]",
                     "--set", "sae.k=4", "--set", "eval.probe_max_iter=20", "--out", str(out_dir)])
    assert code == 0
    assert json.loads((out_dir / "results.json").read_text())["config"]["finetune"]["lr"] == 1e-4


def test_mlflow_environment_variables_when_the_flags_are_absent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel/mlflow.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    p = sweep.plan(sweep.parser().parse_args(["--space", TINY, "--storage", str(tmp_path / "s")]))
    # A relative SQLite path is made absolute (Tune changes the trials' working directory).
    assert p.mlflow_uri == f"sqlite:///{tmp_path / 'rel' / 'mlflow.db'}" and p.experiment == "from-env"
    flag_uri = f"sqlite:///{tmp_path / 'flag' / 'mlflow.db'}"
    p = sweep.plan(sweep.parser().parse_args(["--space", TINY, "--storage", str(tmp_path / "s2"),
                                              "--mlflow-uri", flag_uri, "--experiment", "flag"]))
    assert p.mlflow_uri == flag_uri and p.experiment == "flag"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    p = sweep.plan(sweep.parser().parse_args(["--space", TINY, "--storage", str(tmp_path / "s3")]))
    assert p.mlflow_uri == f"sqlite:///{tmp_path / 's3' / 'mlflow.db'}" and p.experiment == "saeception"
