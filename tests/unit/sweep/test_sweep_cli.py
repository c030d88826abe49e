"""The sweep's command line before Ray starts: --dry-run, --config as the base of every trial, numbers
written 1e-4 through both CLIs, and MLflow's environment variables."""

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from paths import TINY as TINY_PATH

from saeception.sweep import cli as sweep
from saeception.sweep.cli import main

TINY = str(TINY_PATH)


def test_dry_run_prints_the_plan_and_the_sampler_s_first_configs_and_starts_nothing(tmp_path, capsys, monkeypatch):
    import saeception.sweep.driver as driver

    monkeypatch.setattr(driver, "execute", lambda p: pytest.fail("--dry-run started the sweep"))
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


# --------------------------------------------------------------------------------------------------
# GPU memory in the plan (saeception.parallel.memory, sweep/memory_plan.py)


def test_dry_run_prints_the_memory_estimate_of_the_base_config_and_each_shown_trial(tmp_path, capsys):
    assert main(["--space", TINY, "--trials", "2", "--storage", str(tmp_path / "s"), "--num-cpus", "2", "--dry-run"]) == 0
    section = capsys.readouterr().out.split("GPU memory per worker (estimates")[1].split("\n\n")[0]
    assert section.count("estimated GPU memory per worker: ") == 3, section  # the base config + 2 trials
    assert "  base config: estimated GPU memory per worker: " in section and "  trial 1: estimated" in section
    assert "largest the space can sample: " in section and "(sae.expansion_factor=4; peak: " in section
    assert "these workers have no GPU" in section  # --gpus-per-worker 0: the figures are for GPU workers


def _wide_space(tmp_path) -> Path:
    """TINY's MLP with a searched dictionary size: the base config (expansion 4) is not the largest."""
    path = tmp_path / "wide.yaml"
    path.write_text("name: wide\nfixed: {data.name: digits, data.max_examples: 300, model.hidden_sizes: [32, 16], sae.k: 4}\n"
                    "params:\n  sae.expansion_factor: {choices: [1, 64]}\n  aux.weight: {type: float, low: 0.1, high: 2.0}\n"
                    "objectives: [{metric: val_sae_u, mode: max}]\n")
    return path


def _memory_argv(space: Path, storage: Path, gb: float) -> list[str]:
    # --address: the local machine has no GPU, and with a cluster the plan leaves resources to the connection
    return ["--space", str(space), "--storage", str(storage), "--address", "auto", "--gpus-per-worker", "1",
            "--gpu-memory-gb", repr(gb), "--dry-run"]


def test_gpu_memory_refuses_a_space_whose_largest_sampled_config_does_not_fit(tmp_path, capsys):
    from saeception.sweep.memory_plan import HEADROOM, Planner
    from saeception.sweep.space import load_space
    from saeception.validate import Checker

    space = load_space(_wide_space(tmp_path))
    planner = Planner(Checker(), 1)
    base = planner.estimate(space.config({})).estimate.total
    largest = planner.largest(space)
    assert largest.sampled == {"sae.expansion_factor": 64} and largest.estimate.total > 2 * base
    between = (base + largest.estimate.total) / 2 / HEADROOM / 1e9  # the base config fits, expansion 64 does not
    storage = tmp_path / "s"
    assert main(_memory_argv(_wide_space(tmp_path), storage, between)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gpu-memory-gb: a trial needs an estimated ") and err.count("\n") == 1, err
    assert "sae.expansion_factor=64" in err and "--workers-per-trial 1" in err and "model.name=mlp" in err
    assert "lower sae.expansion_factor or cap data.max_examples" in err  # its peak: evaluation's dense codes
    assert not storage.exists()

    enough = largest.estimate.total * 1.5 / HEADROOM / 1e9
    assert main(_memory_argv(_wide_space(tmp_path), storage, enough)) == 0
    out = capsys.readouterr().out
    assert f"--gpu-memory-gb {enough:g}: " in out and "the largest fits" in out


def test_gpu_memory_refusal_of_a_training_step_names_the_flags_that_shrink_it(tmp_path, capsys, text_csv, gpt2_dir):
    space = tmp_path / "big_batch.yaml"
    space.write_text(f"name: big\nfixed: {{data.name: '{text_csv}', model.name: '{gpt2_dir}', model.layer: 0, data.max_length: 64, "
                     "data.max_examples: 40}\nparams:\n  finetune.batch_size: {type: int, low: 8, high: 4096}\n"
                     "  sae.k: {type: int, low: 2, high: 8}\nobjectives: [{metric: val_sae_u, mode: max}]\n")
    assert main(_memory_argv(space, tmp_path / "s", 0.01)) == 2
    err = capsys.readouterr().err
    assert "in its training step (" in err and "finetune.batch_size=4096" in err and "train.strategy=ddp" in err, err
    assert ("raise --workers-per-trial with --set train.strategy=fsdp, --set model.gradient_checkpointing=true, "
            "--set model.dtype=bfloat16, or lower finetune.batch_size / aux.batch_size") in err


@pytest.mark.parametrize("extra, message", [
    (["--gpu-memory-gb", "80"], "error: --gpu-memory-gb: the workers have no GPU (--gpus-per-worker is 0)"),
    (["--gpu-memory-gb", "0", "--gpus-per-worker", "1", "--address", "auto"], "error: --gpu-memory-gb: must be > 0"),
])
def test_gpu_memory_flag_errors(tmp_path, capsys, extra, message):
    assert main(["--space", TINY, "--storage", str(tmp_path / "s"), "--dry-run", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_the_neox20b_space_plans_offline_without_estimating_what_it_cannot_read(tmp_path, capsys):
    """The hub model and dataset cannot be read here (HF_HUB_OFFLINE): the plan says so and goes on."""
    assert main(["--space", "neox20b_sst2", "--storage", str(tmp_path / "s"), "--address", "auto", "--gpus-per-worker", "1",
                 "--workers-per-trial", "4", "--gpu-memory-gb", "80", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "note: --gpu-memory-gb: model.name EleutherAI/gpt-neox-20b cannot be read now" in captured.err
    assert "  base config: not estimated (the model cannot be read now)" in captured.out
    assert "not checked: nothing could be estimated now" in captured.out


def test_asha_stops_trials_at_a_rung_but_lets_the_last_cycle_end_by_itself(tmp_path):
    """ASHA's default STOP at max_t killed a trial at its last cycle while its Train controller shut down
    (its run FAILED though Optuna had it COMPLETE; its worker group's resources could leak)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from saeception.sweep.driver import asha

    p = sweep.plan(sweep.parser().parse_args(["--space", TINY, "--storage", str(tmp_path / "s"), "--scheduler", "asha",
                                              "--set", "chain.cycles=2"]))
    scheduler = asha(p, "val_sae_u", "max")
    trials = [SimpleNamespace(trial_id=f"t{i}", config={}) for i in range(6)]
    for i, trial in enumerate(trials):
        scheduler.on_trial_add(None, trial)
        scheduler.on_trial_result(None, trial, {"cycle": 1, "val_sae_u": float(i)})
    # A trial below the cycle-1 rung's cutoff is stopped early; the best, at its last cycle, is not stopped.
    bad = SimpleNamespace(trial_id="bad", config={})
    scheduler.on_trial_add(None, bad)
    assert scheduler.on_trial_result(None, bad, {"cycle": 1, "val_sae_u": -1.0}) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, trials[-1], {"cycle": 2, "val_sae_u": 9.0}) == TrialScheduler.CONTINUE


def test_the_dry_run_prints_no_credential_of_any_store(tmp_path, capsys, monkeypatch):
    """It printed `stage cache: s3://AKIA…:secret@…` (and the MLflow and Optuna URLs) as given."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # (pyarrow takes no session_token in an S3 URI: such a --cache is refused, test below)
    cache = "s3://AKIAEXAMPLEKEY:wJalr-cache-secret@bucket/cache?region=eu-west-1"
    assert main(["--space", TINY, "--storage", str(tmp_path / "s"), "--cache", cache, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "stage cache: s3://AKIAEXAMPLEKEY:***@bucket/cache?region=eu-west-1" in out
    assert "wJalr-cache-secret" not in out


@pytest.mark.parametrize("cache,why", [
    ("s3://bucket/cache?session_token=tok-s3cr3t", "Unexpected query parameter in S3 URI: 'session_token'"),
    ("s3://bucket/cache?endpoint=127.0.0.1:9000", "Unexpected query parameter in S3 URI: 'endpoint'"),
    ("s3:///cache", "Missing bucket name in S3 URI"),
    ("gs://bucket/cache?bogus=1", "Unexpected query parameter in GCS URI"),
    ("sftp://AKIAX:pw-s3cr3t@host/cache", 'SFTPFileSystem requires "paramiko"'),
])
def test_a_cache_uri_no_trial_could_open_stops_the_sweep_at_start(tmp_path, capsys, cache, why):
    """Only the scheme was checked: a URI pyarrow rejects (or whose fsspec package is missing) failed every trial
    of the sweep instead. Now one line naming --cache, exit 2, before Ray starts or anything is written."""
    if why.startswith("SFTP") and importlib.util.find_spec("paramiko"):
        pytest.skip("paramiko is installed here: sftp:// opens")
    from saeception.config import ConfigError

    argv = ["--space", TINY, "--storage", str(tmp_path / "s"), "--cache", cache, "--trials", "1"]
    t0 = time.time()
    with pytest.raises(ConfigError, match="^--cache: "):  # the plan, which precedes Ray's start (never reached here)
        sweep.plan(sweep.parser().parse_args(argv))
    assert not (tmp_path / "s").exists()
    assert main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --cache: ") and why in err and len(err.splitlines()) == 1, err
    assert "s3cr3t" not in err and time.time() - t0 < 20


def test_mlflow_credentials_in_the_uri_move_to_mlflow_s_own_variables():
    """A URI is copied into Ray's pickles and MLflow's exception texts; its userinfo goes to the variables
    MLflow authenticates with instead."""
    from saeception.sweep.tracking import credentials_to_env

    env = {}
    assert credentials_to_env("http://alice:p%40ss@127.0.0.1:5000", env) == "http://127.0.0.1:5000"
    assert env == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "p@ss"}
    env = {}
    assert credentials_to_env("https://TOKEN123@mlflow.example.com/prefix", env) == "https://mlflow.example.com/prefix"
    assert env == {"MLFLOW_TRACKING_TOKEN": "TOKEN123"}
    for uri in ("http://127.0.0.1:5000", "sqlite:////abs/mlflow.db", "databricks"):
        env = {}
        assert credentials_to_env(uri, env) == uri and env == {}


def test_mlflow_credentials_in_the_uri_are_refused_for_a_cluster(tmp_path, capsys):
    """On a cluster the trial processes are not this driver's children: the variables would not reach them."""
    assert main(["--space", TINY, "--storage", str(tmp_path / "s"), "--address", "auto", "--dry-run",
                 "--mlflow-uri", "http://alice:hunter2-pw@127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--mlflow-uri:" in err and "secrets.env" in err and "hunter2-pw" not in err


def test_no_plots_skips_optuna_s_views_and_says_so_on_the_parent_run(tmp_path):
    """--no-plots: no Optuna view is drawn (nor the study opened) and the parent run's saeception.plots_skipped
    tag says why; without it the views are drawn (tests/system/test_sweep_end_to_end.py checks them)."""
    from saeception.sweep.report import log_sweep_plots

    argv = ["--space", TINY, "--storage", str(tmp_path / "s")]
    assert sweep.plan(sweep.parser().parse_args(argv)).plots
    p = sweep.plan(sweep.parser().parse_args([*argv, "--no-plots"]))
    tags = {}

    class Tracker:
        def set_tags(self, run, t):
            tags.update(t)

        def log_artifact(self, run, path):
            raise AssertionError(f"a view was drawn: {path}")

    log_sweep_plots(p, Tracker(), "parent", [], [])
    assert not p.plots and tags == {"saeception.plots_skipped": "--no-plots"}


@pytest.mark.parametrize("flag,uri,secret", [
    ("--cache", "s3://AKIAX:s3cr3t-key@bucket/cache", "s3cr3t-key"),
    ("--cache", "s3://bucket/cache?secret_key=s3cr3t-key&key=AKIAX", "s3cr3t-key"),
    ("--optuna-storage", "postgresql://alice:hunter2-pw@db:5432/optuna", "hunter2-pw"),
])
def test_a_credential_in_any_uri_is_refused_for_a_cluster(tmp_path, capsys, flag, uri, secret):
    """With --address the command line lands in Ray's job table, readable by any token holder: a credential in
    --cache or --optuna-storage is refused (exit 2, before anything is reached or written), saying where to put it."""
    assert main(["--space", TINY, "--storage", str(tmp_path / "s"), "--address", "auto", "--dry-run", flag, uri]) == 2
    err = capsys.readouterr().err
    assert f"{flag}: a credential in the URI would be kept in the cluster's job table" in err
    assert "secrets.env" in err and secret not in err and not (tmp_path / "s").exists()


def test_a_launch_whose_study_name_belongs_to_another_sweep_is_refused(tmp_path, capsys):
    """The plan checks the study's owner before Ray starts (exit 2 naming --name)."""
    import optuna
    import yaml

    from saeception.sweep.state import mark_study

    name = yaml.safe_load(open(TINY))["name"]
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=url, study_name=name, direction="maximize")
    mark_study(url, name, "another-sweeps-id")
    assert main(["--space", TINY, "--storage", str(tmp_path / "s"), "--optuna-storage", url, "--trials", "1"]) == 2
    assert f"--name: the Optuna study '{name}'" in capsys.readouterr().err
