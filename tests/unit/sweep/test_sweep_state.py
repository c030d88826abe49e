"""A sweep's state belongs to it: resource planning, stored identity, the one-driver lock, where its
databases live, and credentials kept out of everything it prints or stores. No Ray cluster here."""

import atexit
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import TINY

from saeception.config import ConfigError
from saeception.sweep import cli as sweep
from saeception.sweep.identity import differences, hold_lock
from saeception.sweep.plan import Resources
from saeception.sweep.redact import has_credentials, redact
from saeception.sweep.resources import HEAD_RESOURCE, NodeGroup, groups_from_launcher_config, plan_concurrency
from saeception.sweep.state import state_dir


def _fit(groups, trials=64, **resources) -> int:
    """Trials at once for a sweep of `trials` whose trials take `resources` (saeception.sweep.plan.Resources)."""
    return plan_concurrency(Resources(**resources), groups, trials)


# --- resources -------------------------------------------------------------------------------------

AUTOSCALING = [NodeGroup("head", {"CPU": 8, HEAD_RESOURCE: 1000}, 1, live=1),
               NodeGroup("gpu_worker", {"CPU": 8, "GPU": 1}, 8, live=0)]


def test_plan_counts_nodes_the_autoscaler_may_add():
    """cluster.yaml at launch: a CPU head, no GPU worker up; 8 may come, each holds one 1-GPU worker."""
    assert _fit(AUTOSCALING, gpus_per_worker=1, cpus_per_worker=4) == 8
    assert _fit(AUTOSCALING, gpus_per_worker=1, cpus_per_worker=4, max_concurrent=3) == 3
    assert _fit(AUTOSCALING, gpus_per_worker=1, cpus_per_worker=4, trials=2) == 2
    # Two DDP workers per trial: two nodes each; 8 nodes -> 4 trials.
    assert _fit(AUTOSCALING, gpus_per_worker=1, workers_per_trial=2) == 4
    # Trial drivers (0.25 CPU + one saeception_head unit) stay on the head: 8 CPUs hold 32 of them.
    assert _fit([AUTOSCALING[0], NodeGroup("cpu", {"CPU": 64}, 8)]) == 32


def test_plan_on_one_machine_matches_pooled_cpus():
    """A local Ray: 0.25 CPU per trial driver plus its workers, packed on one node."""
    one = [NodeGroup("local", {"CPU": 2}, 1, live=1)]
    assert _fit(one, workers_per_trial=2, cpus_per_worker=0.5) == 1
    assert _fit(one, cpus_per_worker=0.5) == 2
    assert _fit([NodeGroup("local", {"CPU": 4}, 1)], cpus_per_worker=0.25) == 8


@pytest.mark.parametrize("kw,flag", [
    ({"gpus_per_worker": 1}, "--gpus-per-worker"),  # a CPU-only cluster
    ({"cpus_per_worker": 16}, "--cpus-per-worker"),  # no node has 16 CPUs
    ({"workers_per_trial": 9, "gpus_per_worker": 1}, "--workers-per-trial"),  # more than 8 GPU nodes can hold
])
def test_impossible_requests_name_the_flag(kw, flag):
    groups = AUTOSCALING if kw.get("workers_per_trial") else [NodeGroup("head", {"CPU": 8, HEAD_RESOURCE: 1000}, 1, live=1),
                                                               NodeGroup("cpu", {"CPU": 8}, 4)]
    with pytest.raises(ConfigError, match=f"^{flag}:"):
        _fit(groups, **kw)


@pytest.mark.parametrize("argv,flag", [
    (["--cpus-per-worker", "3", "--num-cpus", "2"], "--cpus-per-worker: no node type"),
    (["--workers-per-trial", "3", "--num-cpus", "2"], "--workers-per-trial: a trial needs 3 workers"),
    (["--gpus-per-worker", "1"], "--gpus-per-worker: no node type"),
])
def test_impossible_request_on_the_local_ray_exits_2_before_it_starts(tmp_path, capsys, argv, flag):
    import torch

    if "--gpus-per-worker" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    storage = tmp_path / "sweep"
    _main_exits_2(capsys, ["--space", str(TINY), "--storage", str(storage), *argv], flag)
    assert not storage.exists()

def test_groups_from_a_launcher_config():
    config = {"max_workers": 3, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 8, HEAD_RESOURCE: 1000}, "max_workers": 0},
                                       "gpu": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 8}}}
    groups = {g.name: g for g in groups_from_launcher_config(config)}
    assert groups["head"].nodes == 1 and groups["gpu"].nodes == 3  # capped by the cluster's max_workers


def test_every_trial_on_an_autoscaling_cluster_may_wait_for_a_node():
    """The long wait was chosen only when nodes were missing at launch; a node up then and removed later
    when idle left the next trials Train's 60 s (x 3 retries) to get a new one, and they failed."""
    from saeception.sweep.resources import worker_start_timeout

    all_up = [NodeGroup("head", {"CPU": 8, HEAD_RESOURCE: 1000}, 1, live=1),
              NodeGroup("gpu_worker", {"CPU": 8, "GPU": 1}, 2, live=2, elastic=True)]
    assert worker_start_timeout(all_up, 1800.0) == 1800.0
    missing = [all_up[0], NodeGroup("gpu_worker", {"CPU": 8, "GPU": 1}, 8, live=0, autoscaled=True)]
    assert worker_start_timeout(missing, 1800.0) == 1800.0  # nodes missing now
    fixed = [NodeGroup("local", {"CPU": 2}, 1, live=1)]  # a fixed cluster (no autoscaler): Train's default
    assert worker_start_timeout(fixed, 1800.0) is None


# --- redaction -------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri,secret", [
    ("postgresql://alice:s3cr3t-pw@db.internal:5432/optuna", "s3cr3t-pw"),
    ("s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/sweeps", "wJalrXUtnFEMI"),
    ("s3://bucket/cache?access_key=AKIAX&secret_key=topsecretvalue&endpoint_override=h:9000", "topsecretvalue"),
    ("http://bob:hunter2@127.0.0.1:5000", "hunter2"),
    ("mysql+pymysql://u:p%40ss@h/db", "p%40ss"),
])
def test_redact_masks_passwords_and_secret_query_values(uri, secret):
    assert secret not in redact(uri) and has_credentials(uri)
    assert secret not in redact(f"error: cannot open {uri} (refused)")
    assert redact(redact(uri)) == redact(uri)


def test_redact_leaves_plain_uris_alone():
    for uri in ("s3://bucket/sweeps/x", "sqlite:////abs/optuna.db", "http://127.0.0.1:5000", "/mnt/nfs/x"):
        assert redact(uri) == uri and not has_credentials(uri)


def test_optuna_storage_pickles_without_its_password(tmp_path):
    """Ray pickles the searcher (with its study and storage) into tuner.pkl and searcher-state-*.pkl."""
    from saeception.trainables.optuna_search import CredentialSafeRDBStorage

    real = f"sqlite:///{tmp_path / 'o.db'}"
    storage = CredentialSafeRDBStorage(real)
    # A password-bearing URL: the same store registered under it (SQLite itself takes no password).
    secret_url = "postgresql://alice:s3cr3t-pw@db/optuna"
    storage.url = secret_url
    CredentialSafeRDBStorage._live_urls[redact(secret_url)] = real
    blob = pickle.dumps(storage)
    assert b"s3cr3t-pw" not in blob
    assert pickle.loads(blob).url == real  # reconnects with the URL this process was given
    CredentialSafeRDBStorage._live_urls.pop(redact(secret_url))
    with pytest.raises(RuntimeError, match="needs its credentials"):
        pickle.loads(blob)


def test_a_failure_reason_quoting_a_uri_is_tagged_without_its_password(tmp_path):
    from saeception.sweep.tracking import FAILURE, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracker.sweep_run("e", "s", reuse=False)
    tracker.finish(run, failed="OSError: cannot open s3://AKIAX:s3cr3t-pw@bucket/cache/ab/key.json")
    tag = tracker.client.get_run(run).data.tags[FAILURE]
    assert "s3cr3t-pw" not in tag and "s3://AKIAX:***@bucket" in tag

# --- identity, resume and the lock -----------------------------------------------------------------

def _fake_sweep(tmp_path, name="s", **identity_overrides) -> Path:
    """A sweep directory as a first launch leaves it: Tune's experiment, the stores, its identity."""
    storage = tmp_path / "sweep"
    (storage / "ray" / name).mkdir(parents=True)
    (storage / "ray" / name / "tuner.pkl").write_bytes(b"x")
    import optuna

    optuna.storages.RDBStorage(f"sqlite:///{storage / 'optuna.db'}")
    (storage / "mlflow.db").write_bytes(b"runs")
    from saeception.sweep.identity import identity, write_identity
    from saeception.sweep.plan import Confirmation, Search
    from saeception.sweep.space import load_space

    ident = {**identity(load_space(TINY), Search(trials=2), Resources(), Confirmation()), **identity_overrides}
    write_identity(str(storage), name, ident)
    (storage / name / "sweep.lock").touch()  # the first driver's lock file
    return storage


def _snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


def _main_exits_2(capsys, argv, expect):
    code = sweep.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {expect}"), err
    import ray

    assert not ray.is_initialized()
    return err[0]


@pytest.mark.parametrize("changed,expect", [
    (["--seed", "1"], "--seed: 0 stored, 1 given"),
    (["--set", "sae.steps=50"], "fixed sae.steps: 100 stored, 50 given"),
    (["--trials", "1"], "--trials: 2 stored, 1 given"),
    (["--cpus-per-worker", "0.5"], "--cpus-per-worker: 1.0 stored, 0.5 given"),
])
def test_resume_with_a_changed_setting_exits_2_and_touches_nothing(tmp_path, capsys, changed, expect):
    storage = _fake_sweep(tmp_path)
    before = _snapshot(storage)
    line = _main_exits_2(capsys, ["--space", str(TINY), "--trials", "2", "--storage", str(storage), "--name", "s",
                                  "--resume", *changed], "--resume:")
    assert expect in line
    assert _snapshot(storage) == before


def test_resume_with_a_changed_space_names_it(tmp_path, capsys):
    storage = _fake_sweep(tmp_path, space="0" * 16)
    line = _main_exits_2(capsys, ["--space", str(TINY), "--trials", "2", "--storage", str(storage), "--name", "s", "--resume"],
                         "--resume:")
    assert "the searched params differ" in line


def test_identity_allows_only_growing_trials():
    stored = {"trials": 4, "seed": 0, "fixed": {"a": 1}}
    assert differences(stored, {"trials": 10, "seed": 0, "fixed": {"a": 1}}) == []
    assert differences(stored, {"trials": 3, "seed": 0, "fixed": {"a": 1}}) != []
    assert differences(stored, {"trials": 4, "seed": 0, "fixed": {"a": 1, "b": 2}}) == ["fixed b: <unset> stored, 2 given"]


def test_identity_holds_the_confirmation_settings():
    """--confirm-seeds may grow (the new seeds run); a smaller one, other controls or margins are another sweep."""
    from saeception.eval.confirm import ConfirmSettings

    conf = ConfirmSettings().to_dict()
    stored = {"trials": 4, "confirm_seeds": 3, "confirm": conf}
    assert differences(stored, {"trials": 4, "confirm_seeds": 10, "confirm": conf}) == []
    assert differences(stored, {"trials": 4, "confirm_seeds": 2, "confirm": conf}) == [
        "--confirm-seeds: 3 stored, 2 given (a resumed sweep may only grow)"]
    other = ConfirmSettings(controls=("aux0",)).to_dict()
    [line] = differences(stored, {"trials": 4, "confirm_seeds": 3, "confirm": other})
    assert line.startswith("the confirmation's settings (--confirm-controls, the space's confirm:)")
    assert differences({"trials": 4}, {"trials": 4, "confirm_seeds": 3, "confirm": conf}) == []  # an older sweep.json


def test_a_confirmation_is_keyed_by_its_winner_and_settings():
    from saeception.eval.confirm import ConfirmSettings
    from saeception.sweep.confirmation import confirm_key
    from saeception.sweep.vocab import arm_run_key

    a = confirm_key({"sae.k": 4, "aux.weight": 1.0}, ConfirmSettings())
    assert a == confirm_key({"aux.weight": 1.0, "sae.k": 4}, ConfirmSettings())
    assert a != confirm_key({"sae.k": 5, "aux.weight": 1.0}, ConfirmSettings())  # a new winner: confirmed afresh
    assert a != confirm_key({"sae.k": 4, "aux.weight": 1.0}, ConfirmSettings(sae_seeds=1))
    assert arm_run_key(a, "random", 3) == f"random-seed3-{a}"


HOLD = """
import sys, time
from saeception.sweep.identity import hold_lock
lock = hold_lock(sys.argv[1], "s")
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_launch_of_a_running_sweep_exits_2(tmp_path, capsys):
    """Another process (the first driver) holds the sweep's lock: the second launch, fresh or --resume,
    exits 2 before touching anything."""
    storage = _fake_sweep(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(storage)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(storage)
        for extra in (["--resume"], []):
            line = _main_exits_2(capsys, ["--space", str(TINY), "--trials", "2", "--storage", str(storage), "--name", "s",
                                          *extra], "--name:")
            assert "already running" in line
        assert _snapshot(storage) == before
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (however it ended): the lock is free again.
    hold_lock(str(storage), "s").close()


def test_uri_storage_lease_refuses_a_second_driver():
    from saeception.sweep import identity

    storage = f"memory://leases/{time.time_ns()}"
    first = identity._hold_lease(storage, "s", settle_s=0)
    try:
        with pytest.raises(ConfigError, match="^--name: sweep 's' .* is already running"):
            identity._hold_lease(storage, "s", settle_s=0)
    finally:
        first.release()
    identity._hold_lease(storage, "s", settle_s=0).release()  # released: free again


def _lease_until_lost(monkeypatch, tamper) -> tuple[list[str], float]:
    """A lease renewed every 0.1 s; `tamper(lease)` after its first renewal; what on_lost was told, and when."""
    from saeception.sweep import identity

    monkeypatch.setattr(identity, "LEASE_S", 0.3)
    monkeypatch.setattr(identity, "RETRY_S", 0.05)
    told: list[str] = []
    lease = identity._hold_lease(f"memory://leases/{time.time_ns()}", "s", settle_s=0, on_lost=told.append)
    t0 = time.time()
    try:
        time.sleep(0.15)
        tamper(lease)
        deadline = time.time() + 60  # generous: a starved machine only delays the renew thread
        while not told and time.time() < deadline:
            time.sleep(0.02)
    finally:
        lease._stop.set()
        atexit.unregister(lease.release)  # tampered with: releasing it at the interpreter's exit would raise there
    return told, time.time() - t0


def test_a_lease_taken_over_by_another_driver_stops_this_one(monkeypatch):
    """The renew thread wrote over whatever was there: two drivers then shared one study."""
    def another_driver(lease):
        with lease.fs.open_output_stream(lease.path) as f:
            f.write(json.dumps({"owner": "other", "holder": "host2 pid 7", "expires": time.time() + 60}).encode())

    told, _ = _lease_until_lost(monkeypatch, another_driver)
    assert told and "held by host2 pid 7" in told[0]


def test_a_lease_that_cannot_be_renewed_stops_the_driver_before_it_lapses(monkeypatch):
    """One failed PUT killed the renew thread silently; now it retries, and stops the driver in time."""
    def store_down(lease):
        def fail():
            raise OSError("PUT sweep.lease.json: 503 Slow Down")
        lease.write = fail

    told, elapsed = _lease_until_lost(monkeypatch, store_down)
    assert told and "could not be renewed before it lapsed" in told[0] and "503" in told[0]


def test_a_lease_object_holding_a_json_array_stops_the_driver_instead_of_the_renew_thread(monkeypatch):
    """Only OSError was caught: `[]` in the lease raised AttributeError in the renew thread, which died silently
    and let the lease lapse under a running sweep (issue #38)."""
    def damaged(lease):
        with lease.fs.open_output_stream(lease.path) as f:
            f.write(b'["owner", "host2"]')

    told, _ = _lease_until_lost(monkeypatch, damaged)
    assert told and "is held by nobody (it was deleted or damaged)" in told[0]


def test_any_error_of_a_renewal_stops_the_driver_with_it(monkeypatch):
    def broken(lease):
        def fail():
            raise RuntimeError("the store's client broke")
        lease.read = fail

    told, _ = _lease_until_lost(monkeypatch, broken)
    assert told and "could not be renewed (RuntimeError: the store's client broke)" in told[0]


def test_one_failed_renewal_is_retried_and_the_lease_kept(monkeypatch):
    def one_failure(lease):
        write, calls = lease.write, []

        def flaky():
            calls.append(1)
            if len(calls) == 1:
                raise OSError("PUT: connection reset")
            write()
        lease.write = flaky
        return calls

    from saeception.sweep import identity

    # A lease of 6 s renewed every 2 s: the retry 0.05 s after the failed renewal has seconds of slack, so a
    # starved machine cannot make it lapse (a 0.3 s lease and a fixed 0.8 s sleep could).
    monkeypatch.setattr(identity, "LEASE_S", 6.0)
    monkeypatch.setattr(identity, "RETRY_S", 0.05)
    told: list[str] = []
    lease = identity._hold_lease(f"memory://leases/{time.time_ns()}", "s", settle_s=0, on_lost=told.append)
    try:
        calls = one_failure(lease)
        deadline = time.time() + 60
        while len(calls) < 2 and time.time() < deadline:  # the failed renewal and its retry
            time.sleep(0.05)
        assert len(calls) >= 2 and told == [] and lease.read()["owner"] == lease.owner
    finally:
        lease.release()


# --- where the state lives, and unreachable stores -------------------------------------------------

def test_uri_storage_state_is_absolute_and_per_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAECEPTION_STATE_DIR", raising=False)
    a, b = state_dir("x", "s3://bucket/a"), state_dir("x", "s3://bucket/b")
    assert a.is_absolute() and a != b and not str(a).startswith(str(tmp_path))
    monkeypatch.setenv("SAECEPTION_STATE_DIR", str(tmp_path / "state"))
    assert state_dir("x", "s3://bucket/a").parent == tmp_path / "state"


def test_a_new_storage_is_created_when_the_state_dir_holds_the_databases(tmp_path, monkeypatch):
    """The cluster files set SAECEPTION_STATE_DIR: the storage directory must still be made (its lock was
    opened in a directory nobody had created: FileNotFoundError)."""
    monkeypatch.setenv("SAECEPTION_STATE_DIR", str(tmp_path / "state"))
    storage = tmp_path / "nfs" / "sweeps"
    p = sweep.plan(sweep.parser().parse_args(["--space", str(TINY), "--storage", str(storage), "--name", "s"]))
    try:
        assert (storage / "s" / "sweep.lock").exists() and p.local_dir.parent == tmp_path / "state"
        assert (p.local_dir / "optuna.db").exists() and not (storage / "optuna.db").exists()
    finally:
        p.lock.close()


def test_sweeps_of_other_names_under_one_storage_keep_their_own_files(tmp_path):
    """Identity, lock, best/, confirmation and Train state are per sweep name; the databases and the stage
    cache are the storage's, shared."""
    from saeception.sweep.identity import read_identity, write_identity

    storage = tmp_path / "sweep"
    plans = [sweep.plan(sweep.parser().parse_args(["--space", str(TINY), "--storage", str(storage), "--name", n,
                                                   *extra])) for n, extra in (("a", []), ("b", ["--trials", "3"]))]
    try:
        a, b = plans
        assert a.sweep_dir == storage / "a" and b.sweep_dir == storage / "b"
        assert a.train_dir != b.train_dir and a.ray_dir == b.ray_dir
        assert (a.mlflow_uri, a.optuna_uri, a.cache_dir) == (b.mlflow_uri, b.optuna_uri, b.cache_dir)
        write_identity(str(storage), "a", {"trials": 6})
        write_identity(str(storage), "b", {"trials": 3})
        assert read_identity(str(storage), "a") == {"trials": 6} and read_identity(str(storage), "b") == {"trials": 3}
        assert (storage / "a" / "sweep.lock").exists() and (storage / "b" / "sweep.lock").exists()
    finally:
        for p in plans:
            p.lock.close()


@pytest.mark.parametrize("name", ["ray", "train", "cache", "mlartifacts"])
def test_a_sweep_cannot_be_named_like_a_folder_every_sweep_shares(tmp_path, capsys, name):
    line = _main_exits_2(capsys, ["--space", str(TINY), "--storage", str(tmp_path / "s"), "--name", name], "--name:")
    assert "shares" in line and not (tmp_path / "s").exists()


@pytest.mark.parametrize("flag,value,secret", [
    ("--optuna-storage", "postgresql://alice:s3cr3t-pw@127.0.0.1:1/optuna", "s3cr3t-pw"),
    ("--optuna-storage", "sqlite:///{tmp}/a-file/optuna.db", None),
    ("--optuna-storage", "sqlite:///relative.db", None),
    ("--mlflow-uri", "http://bob:hunter2@127.0.0.1:1", "hunter2"),
    ("--mlflow-uri", "sqlite:///{tmp}/a-file/mlflow.db", None),
])
def test_unreachable_store_exits_2_before_ray_and_leaves_the_sweep(tmp_path, capsys, flag, value, secret):
    storage = _fake_sweep(tmp_path)
    (tmp_path / "a-file").write_text("a file, not a directory")
    before = _snapshot(storage)
    line = _main_exits_2(capsys, ["--space", str(TINY), "--trials", "2", "--storage", str(storage), "--name", "s",
                                  "--resume", flag, value.format(tmp=tmp_path)], flag)
    if secret:
        assert secret not in line and "***" in line
    assert _snapshot(storage) == before
    # A new sweep with that store: nothing is created.
    fresh = tmp_path / "fresh"
    _main_exits_2(capsys, ["--space", str(TINY), "--storage", str(fresh), flag, value.format(tmp=tmp_path)], flag)
    assert not fresh.exists()


def test_credentials_in_storage_uri_are_refused_and_not_printed(tmp_path, capsys):
    line = _main_exits_2(capsys, ["--space", str(TINY), "--storage", "s3://AKIAEXAMPLE:wJalrSECRET@bucket/sweeps/x"],
                         "--storage:")
    assert "wJalrSECRET" not in line and "environment" in line


def test_identity_file_is_json_with_the_settings(tmp_path):
    storage = _fake_sweep(tmp_path)
    ident = json.loads((storage / "s" / "sweep.json").read_text())
    assert ident["seed"] == 0 and ident["trials"] == 2 and ident["fixed"]["chain.cycles"] == 1
    assert ident["objectives"] == ["val_sae_u:max"]


# --- a real sweep with credentials in a URI --------------------------------------------------------

KEY, SECRET = "AKIASAECEPTIONTEST", "sEcReT-k3y-never-printed"


def test_the_local_rays_token_is_made_private(tmp_path, monkeypatch):
    """Ray 2.60 writes ~/.ray/auth_token for the local cluster a sweep starts with the umask's mode (0644)."""
    import stat

    from saeception.sweep.driver import private_token

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    made = private_token(tmp_path / ".ray" / "auth_token")
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and len(made.read_text()) >= 32
    loose = tmp_path / "loose"
    loose.write_text("t" * 64)
    loose.chmod(0o644)
    private_token(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600 and loose.read_text() == "t" * 64


def _token_at_once(path: str, barrier, out) -> None:
    from saeception.sweep.driver import private_token

    barrier.wait()
    try:
        out.put(private_token(Path(path)).read_text())
    except Exception as e:  # noqa: BLE001 - handed to the test, which fails with it
        out.put(f"{type(e).__name__}: {e}")


def test_two_sweeps_starting_at_once_on_a_fresh_home_share_one_token(tmp_path, monkeypatch):
    """The token was made with exists() then an O_EXCL open: the second of two sweeps starting together on a
    fresh HOME raised FileExistsError. Now all get the one complete token, every time (20 fresh homes, 4
    processes released together by a barrier)."""
    import multiprocessing as mp

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    ctx = mp.get_context("fork")
    for i in range(20):
        home = tmp_path / f"home{i}" / ".ray" / "auth_token"
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_token_at_once, args=(str(home), barrier, out)) for _ in range(4)]
        for proc in procs:
            proc.start()
        tokens = [out.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert len(set(tokens)) == 1 and len(tokens[0]) >= 32, tokens
        assert [f.name for f in home.parent.iterdir()] == ["auth_token"]  # no temporary file left


def test_resume_reopens_only_its_own_parent_run_when_another_storage_has_a_sweep_of_the_same_name(tmp_path):
    """Two sweeps of one name under two storages against one MLflow store (the default --name is the space's):
    each parent run carries its sweep's id (from its identity file), and --resume of one reopens that one,
    never the other's, whose trial keeps running. A parent an older saeception left without an id is taken
    by name once and tagged."""
    from saeception.sweep.identity import ID_KEY, sweep_id, write_identity
    from saeception.sweep.tracking import SWEEP_ID, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    a_store, b_store = str(tmp_path / "a"), str(tmp_path / "b")
    ids = {}
    for store in (a_store, b_store):
        ids[store] = sweep_id(store, "default")
        write_identity(store, "default", {"trials": 1, ID_KEY: ids[store]})
    assert ids[a_store] != ids[b_store] and sweep_id(a_store, "default") == ids[a_store]  # stable once written
    a = tracker.sweep_run("e", "default", reuse=False, sweep_id=ids[a_store])
    b = tracker.sweep_run("e", "default", reuse=False, sweep_id=ids[b_store])
    b_trial = tracker.child_run(b, "t1", role="trial", name="trial-t1")  # B still running
    tracker.finish(a, failed="RuntimeError: stopped")
    assert tracker.sweep_run("e", "default", reuse=True, sweep_id=ids[a_store]) == a
    assert tracker.client.get_run(b).info.status == "RUNNING" and tracker.client.get_run(b_trial).info.status == "RUNNING"
    assert tracker.sweep_run("e", "default", reuse=True, sweep_id=ids[b_store]) == b
    legacy = tracker.sweep_run("e", "old", reuse=False)  # no id: an older saeception's
    assert tracker.sweep_run("e", "old", reuse=True, sweep_id="c0ffee") == legacy
    assert tracker.client.get_run(legacy).data.tags[SWEEP_ID] == "c0ffee"
    assert tracker.sweep_run("e", "old", reuse=True, sweep_id="other") != legacy  # tagged: another sweep's now


def test_a_study_of_the_same_name_from_another_sweep_is_refused_not_shared(tmp_path):
    """Two sweeps of one name under two storages sharing one --optuna-storage would share one study (each
    suggesting from the other's trials): the study is marked as its sweep's when the sweep starts, and another
    sweep's launch is refused naming --name; the same sweep, or a study an older saeception left unmarked, is fine."""
    import optuna
    import pytest

    from saeception.config import ConfigError
    from saeception.sweep.state import check_study_owner, mark_study, study_owner

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    assert study_owner(url, "default") is None and not (tmp_path / "shared.db").exists()  # nothing created
    optuna.create_study(storage=url, study_name="default", direction="maximize")  # as Ray's searcher does
    mark_study(url, "default", "aaaa")
    assert study_owner(url, "default") == "aaaa"
    check_study_owner(url, "default", "aaaa")  # its own sweep (a resume, a retried launch)
    with pytest.raises(ConfigError, match="--name: the Optuna study 'default' .* belongs to another sweep \\(id aaaa"):
        check_study_owner(url, "default", "bbbb")
    optuna.create_study(storage=url, study_name="old", direction="maximize")  # an older saeception's: unmarked
    check_study_owner(url, "old", "bbbb")
    mark_study(url, "old", "bbbb")  # a resumed sweep marks it
    assert study_owner(url, "old") == "bbbb"
