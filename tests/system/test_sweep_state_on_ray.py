"""A real sweep's state belongs to it: a resumed sweep grows only what it may (--trials, --confirm-seeds), a
second sweep under the same storage keeps its own files, and credentials stay out of everything it prints or
stores. (The Ray-free half of these checks is tests/unit/sweep/test_sweep_state.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from paths import REPO, TINY

# --- a real sweep with credentials in a URI --------------------------------------------------------


@pytest.fixture
def moto_endpoint():
    """A real S3 endpoint on loopback (moto's server) with a bucket; yields host:port."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        import pyarrow.fs as pafs

        fs, _ = pafs.FileSystem.from_uri(f"s3://{KEY}:{SECRET}@creds?endpoint_override={host}:{port}&scheme=http"
                                         "&region=us-east-1&allow_bucket_creation=true")
        fs.create_dir("creds")
        yield f"{host}:{port}"
    finally:
        server.stop()


KEY, SECRET = "AKIASAECEPTIONTEST", "sEcReT-k3y-never-printed"


MLFLOW_USER, MLFLOW_SECRET = "alice", "mlflow-pw-never-printed"


@pytest.mark.ray(seconds=65)
@pytest.mark.security
@pytest.mark.sweep_state
@pytest.mark.mlflow_server
def test_no_credential_reaches_output_mlflow_or_rays_files(tmp_path, ray_env, moto_endpoint, mlflow_server):
    """The stage cache on S3 with its keys in the URI and an MLflow server with a password in its URI (the only
    credentials the sweep has: none in the environment). The sweep works, its runs are on that server, and
    neither secret is in stdout, stderr, the dry run's output, MLflow's params and tags, or any file under the
    storage (Ray Tune's and Ray Train's results and pickles, tuner.pkl held the progress callback's
    Tracker(uri)), the MLflow server's folder or Ray's session directory (logs, spilled objects)."""
    cache = f"s3://{KEY}:{SECRET}@creds/cache?endpoint_override={moto_endpoint}&scheme=http&region=us-east-1"
    mlflow_uri = mlflow_server.replace("http://", f"http://{MLFLOW_USER}:{MLFLOW_SECRET}@")
    storage = tmp_path / "sweep"
    env = {k: v for k, v in ray_env.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING"))}
    cwd = tmp_path / "cwd"  # like Ray's job directory: nothing of the sweep may land there
    cwd.mkdir()
    cmd = [sys.executable, "-m", "saeception.sweep", "--space", str(TINY), "--trials", "1", "--num-cpus", "2",
           "--storage", str(storage), "--cache", cache, "--mlflow-uri", mlflow_uri, "--confirm-seeds", "0", "--name", "creds", "--no-plots"]
    dry = subprocess.run([*cmd, "--dry-run"], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list(cwd.iterdir()) == [], "MLflow artifacts (./mlruns) or anything else in the working directory"
    assert "stage cache s3://AKIASAECEPTIONTEST:***@creds/cache" in r.stdout and "3 misses" in r.stdout
    for secret in (SECRET, MLFLOW_SECRET):
        for out in (dry.stdout, dry.stderr, r.stdout, r.stderr):
            assert secret not in out
    files = [p for root in (storage, tmp_path / "mlflow-server", Path(ray_env["RAY_TMPDIR"]))
             for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "tuner.pkl" for p in files) and any(p.name.startswith("searcher-state") for p in files)
    assert any("train" in p.parts for p in files)  # Ray Train's run of the trial
    assert any(p.suffix == ".log" and "session_" in str(p) for p in files)  # Ray's session logs were read
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes() or MLFLOW_SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert SECRET not in json.dumps({**run.data.params, **run.data.tags})
        assert MLFLOW_SECRET not in json.dumps({**run.data.params, **run.data.tags})
    parent = next(x for x in runs if x.data.tags.get("saeception.role") == "sweep")
    assert parent.data.tags["saeception.cache_dir"].startswith(f"s3://{KEY}:***@creds/cache")


@pytest.mark.ray(seconds=215)
@pytest.mark.sweep_state
def test_resume_with_more_trials_grows_a_finished_sweep(tmp_path, ray_env):
    """--trials and --confirm-seeds are the settings a resumed sweep may change, and only upwards: the
    finished 1-trial sweep runs one more trial (the study and Tune's experiment go on), and its identity
    records 2; the confirmation covers 2 seeds, reusing the first when the winner is the same, confirming
    afresh when it changed, never reporting the old winner's arms."""
    import optuna

    storage = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "saeception.sweep", "--space", str(TINY), "--num-cpus", "2", "--storage", str(storage),
           "--confirm-controls", "aux0", "--name", "grow", "--no-plots"]
    first = subprocess.run([*cmd, "--trials", "1", "--confirm-seeds", "1"], env=ray_env, cwd=REPO, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "finished per arm: best 1/1, aux0 1/1" in first.stdout
    grown = subprocess.run([*cmd, "--trials", "2", "--resume", "--confirm-seeds", "2"], env=ray_env, cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert grown.returncode == 0, grown.stdout[-3000:] + grown.stderr[-3000:]
    assert "sweep grow: 2 trials finished, 0 stopped early, 0 failed" in grown.stdout
    assert "confirmation at the last cycle (2 seeds; finished per arm: best 2/2, aux0 2/2" in grown.stdout
    rows = json.loads((storage / "grow" / "confirmation.json").read_text())
    assert {r["best_n"] for r in rows} == {2}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    best_trial = next(x for x in runs if x.data.tags.get("saeception.role") == "sweep").data.tags["best_trial_id"]
    winner = next(x for x in runs if x.data.tags.get("saeception.trial_id") == best_trial)
    confirms = [x for x in runs if x.data.tags.get("saeception.role") == "confirm"]
    keys = {x.data.tags["saeception.confirm_key"] for x in confirms}
    # --no-plots: no trial_metrics.png on a trial's or an arm's run (the end-to-end sweep draws them).
    assert not any("trial_metrics.png" in {a.path for a in client.list_artifacts(x.info.run_id)} for x in [winner, *confirms])
    same_winner = len(keys) == 1
    assert ("(1 seeds already confirmed for this winner)" in grown.stdout) == same_winner
    # The arms the final table reports were run with the final winner's sampled values.
    final = [x for x in confirms if x.data.params["sae.kind"] == winner.data.params["sae.kind"]
             and x.data.params["aux.weight"] == winner.data.params["aux.weight"]]
    assert len(final) == 2
    # A smaller --confirm-seeds is another sweep: refused, naming the flag.
    shrunk = subprocess.run([*cmd, "--trials", "2", "--resume", "--confirm-seeds", "1"], env=ray_env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert shrunk.returncode == 2 and "--confirm-seeds: 2 stored, 1 given" in shrunk.stderr
    study = optuna.load_study(study_name="grow", storage=f"sqlite:///{storage / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    stored = json.loads((storage / "grow" / "sweep.json").read_text())
    assert stored["trials"] == 2 and stored["confirm_seeds"] == 2 and stored["confirm"]["controls"] == ["aux0"]

    # Another sweep under the same storage, after it: its own identity, confirmation, best/ and Train state,
    # and the first sweep's left as they were (they once shared sweep.json, best/, confirmation.md and train/).
    before = {p: p.read_bytes() for p in (storage / "grow").rglob("*") if p.is_file() and p.name != "sweep.lock"}
    other = [a if a != "grow" else "other" for a in cmd]
    second = subprocess.run([*other, "--trials", "1", "--confirm-seeds", "1"], env=ray_env, cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert {p: p.read_bytes() for p in (storage / "grow").rglob("*") if p.is_file() and p.name != "sweep.lock"} == before
    assert json.loads((storage / "other" / "sweep.json").read_text())["trials"] == 1
    assert (storage / "other" / "confirmation.json").exists() and (storage / "other" / "best" / "README.md").exists()
    assert {p.name for p in (storage / "train").iterdir()} == {"grow", "other"}
    assert {p.name for p in (storage / "ray").iterdir()} >= {"grow", "other"}
