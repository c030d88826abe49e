"""Reliability, each behaviour really done: real processes killed, real files damaged.

Run one alone with its marker, e.g. `python -m pytest -m worker_kill`.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import REPO, TINY
from raytools import kill_all


def sweep_cmd(storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "saeception.sweep", "--space", str(TINY), "--storage", str(storage),
            "--name", "rel", "--confirm-seeds", "0", "--no-plots", *extra]


def logged_steps(db: Path, key: str) -> dict[str, list[int]]:
    """run_uuid -> steps of `key`, read straight from MLflow's SQLite store (no client, no locks held)."""
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        try:
            rows = con.execute("select run_uuid, step from metrics where key = ? order by step", (key,)).fetchall()
        except sqlite3.OperationalError:
            return {}
    out: dict[str, list[int]] = {}
    for run, step in rows:
        out.setdefault(run, []).append(step)
    return out


def reported_controllers(experiment: Path) -> dict[str, set[str]]:
    """Each Tune trial's reported Train controller ids (the driver's leak sweeper watches them), by trial directory."""
    import json

    from saeception.sweep.vocab import TRAIN_CONTROLLER

    out = {}
    for f in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[f.parent.name] = {row[TRAIN_CONTROLLER] for row in rows if row.get(TRAIN_CONTROLLER)}
    return out


def trial_errors(experiment: Path) -> dict[str, str]:
    """Each errored Tune trial's error.txt (its last 2,000 characters), by trial directory."""
    return {f.parent.name: f.read_text(errors="replace")[-2000:] for f in experiment.glob("*/error.txt")}


# Words of Ray's own log lines that say why a trial's workers did not start or were killed.
RAY_LOG_WORDS = ("placement group", "PlacementGroup", "worker group", "Timeout", "memory", "killed", "Killed")


def ray_log_lines(ray_tmp: str, words: tuple[str, ...] = RAY_LOG_WORDS) -> list[str]:
    """Lines of the Ray logs under RAY_TMPDIR `ray_tmp` that mention one of `words`, by file."""
    out = []
    for log in sorted(Path(ray_tmp).glob("ray/session_*/logs/*")):
        if log.is_file() and log.suffix in (".err", ".out", ".log"):
            out += [f"{log.name}: {line}" for line in log.read_text(errors="replace").splitlines()
                    if not line.startswith((":", "[state-dump]")) and any(w in line for w in words)]
    return out


def failure_report(storage: Path, r: subprocess.CompletedProcess, ray_tmp: str) -> str:
    """What a failed sweep test prints, the evidence first (CI's log keeps a long message's head and tail and
    cuts its middle): what Ray's own logs said of placement groups and worker-group starts, the sweep's lines
    on controllers it killed or groups it removed, each errored trial's error (its last lines), and the sweep's
    last output lines."""
    def last(text: str, n: int) -> str:
        return "\n".join(line[:300] for line in text.strip().splitlines()[-n:])

    sweeper = [line for line in r.stdout.splitlines() if line.startswith(("killed Ray Train", "removed placement"))]
    errors = "\n".join(f"--- {trial[:60]}:\n{last(text, 3)}" for trial, text in trial_errors(storage / "ray" / "rel").items())
    return ("--- Ray's logs (last 30 matching lines):\n" + "\n".join(x[:300] for x in ray_log_lines(ray_tmp)[-30:])
            + f"\n--- the sweeper's lines:\n{chr(10).join(sweeper) or '(none)'}\n--- trial errors:\n{errors or '(none)'}"
            f"\n--- sweep stdout (end):\n{last(r.stdout, 15)}\n--- stderr (end):\n{last(r.stderr, 10)}")


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {out[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def runs_with_role(db: Path, role: str) -> list[str]:
    """Run ids tagged saeception.role = `role`, read straight from MLflow's SQLite store."""
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        try:
            rows = con.execute("select run_uuid from tags where key = 'saeception.role' and value = ?", (role,))
            return [r for (r,) in rows.fetchall()]
        except sqlite3.OperationalError:
            return []


def mlflow_children(storage: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("saeception")
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("saeception.role") == "trial"]


@pytest.mark.ray(seconds=75)
@pytest.mark.worker_kill
def test_killed_worker_resumes_from_last_cycle(tmp_path, ray_env, monkeypatch):
    """1. A Train worker is SIGKILLed mid-trial; the trial resumes from its last completed cycle and MLflow holds
    one run with one complete history. The kill must land after cycle 0's checkpoint is registered and before the
    last cycle's: the worker is found by its process title (milliseconds; Ray's state API took seconds) while cycle
    0 runs, and killed as soon as cycle 0 is in MLflow, with three cycles (600 SAE steps each, seconds) still to
    run. Ray Train registers a report's checkpoint before it calls the report callbacks, the MLflow relay among
    them, so cycle 0 in MLflow means its checkpoint is Train's (Tune's result files, which the test used to wait
    for, come later: in a clean-clone run the trial had ended before they showed cycle 0). A kill that came too
    late fails saying so, not as a missing tag."""
    import ray
    from raytools import pids_titled

    for k in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED"):  # restored after the test
        monkeypatch.setenv(k, ray_env[k])
    ctx = ray.init(num_cpus=2, log_to_driver=False)
    try:
        storage = tmp_path / "s"
        proc = subprocess.Popen(
            sweep_cmd(storage, "--trials", "1", "--address", ctx.address_info["address"], "--workers-per-trial", "2",
                      "--cpus-per-worker", "0.5", "--set", "chain.cycles=3", "--set", "sae.steps=600"),
            env=ray_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        workers = wait_for(lambda: pids_titled("ray::RayTrainWorker", ray_env["RAY_TMPDIR"]), 300, "a live Train worker",
                           proc)
        wait_for(lambda: 0 in next(iter(logged_steps(storage / "mlflow.db", "cycle").values()), []), 300,
                 "cycle 0 in MLflow (its checkpoint registered)", proc)
        try:
            os.kill(workers[0], signal.SIGKILL)
        except ProcessLookupError:
            out, _ = proc.communicate(timeout=600)
            raise AssertionError(f"the Train worker had exited before cycle 0 reached MLflow: {out[-3000:]}") from None
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    finally:
        ray.shutdown()
    client, children = mlflow_children(storage)
    assert len(children) == 1
    run = client.get_run(children[0].info.run_id)
    assert run.info.status == "FINISHED"
    assert "saeception.resumed_after_cycle" in run.data.tags, "the kill landed after the trial's last cycle: nothing resumed"
    resumed = int(run.data.tags["saeception.resumed_after_cycle"])  # resumed from a checkpoint, not from scratch
    assert 0 <= resumed < 3
    for key in ("cycle", "task_accuracy", "val_sae_u"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2, 3], key


@pytest.mark.ray(seconds=120)
@pytest.mark.driver_kill
@pytest.mark.orphans
def test_killed_driver_resumes_without_rerunning_finished_trials_and_closes_its_orphan(tmp_path, ray_env):
    """2 and 2b (one sweep since issue #35; they were two tests, each SIGKILLing a driver and resuming). The
    driver is SIGKILLed once the first trial has finished and the second's MLflow run exists. Tune adds one
    trial per step (TUNE_MAX_PENDING_TRIALS_PG) and saves its state only at its first step and at a trial's
    checkpoints (TUNE_GLOBAL_CHECKPOINT_S), so the second trial, killed before its first checkpoint, is in no
    saved state: an orphan, made certain. Before --resume its MLflow run and Optuna trial are RUNNING (the
    half-told state). After --resume: nothing RUNNING in MLflow or Optuna; the orphan is FAILED (saeception.failure
    = orphaned, in MLflow and Optuna) and not counted; the finished trial was not re-run; Optuna's completed
    trials = FINISHED MLflow trial runs = trials requested, each with its whole history; the parent run says
    its driver died."""
    import optuna

    storage = tmp_path / "s"
    db = storage / "mlflow.db"
    cmd = sweep_cmd(storage, "--trials", "2", "--num-cpus", "2", "--max-concurrent", "1")
    window = {"TUNE_GLOBAL_CHECKPOINT_S": "1000000000", "TUNE_MAX_PENDING_TRIALS_PG": "1"}
    proc = subprocess.Popen(cmd, env={**ray_env, **window}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def first_finished_second_started():
        finished = [run for run, steps in logged_steps(db, "cycle").items() if steps == [0, 1]]
        return finished if finished and len(runs_with_role(db, "trial")) == 2 else None

    finished_before = set(wait_for(first_finished_second_started, 400, "the first trial to finish and the second to start",
                                   proc))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kill_all(ray_env["RAY_TMPDIR"])  # the machine is gone: its Ray processes with it
    client, children = mlflow_children(storage)
    second = [c for c in children if c.info.run_id not in finished_before]
    # The half-told state: the second trial's run and Optuna trial RUNNING, with no cycle logged yet (logged
    # before the kill, its checkpoint could have been in Tune's saved state: no orphan).
    assert len(second) == 1 and second[0].info.status == "RUNNING", [(c.info.run_id, c.info.status) for c in children]
    assert client.get_metric_history(second[0].info.run_id, "cycle") == [], "the kill came after the second trial's cycle 0"
    study = optuna.load_study(study_name="rel", storage=f"sqlite:///{storage / 'optuna.db'}")
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)

    r = subprocess.run([*cmd, "--resume"], env=ray_env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client, trials = mlflow_children(storage)
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    assert [x.info.status for x in runs if x.info.status == "RUNNING"] == []
    orphans = [x for x in trials if x.data.tags.get("saeception.failure") == "orphaned"]
    assert [x.info.run_id for x in orphans] == [second[0].info.run_id] and orphans[0].info.status == "FAILED"
    counted = [x for x in trials if x not in orphans]
    # The sweep still ran the trials it was asked for, each with its whole history.
    assert len(counted) == 2 and all(x.info.status == "FINISHED" for x in counted), \
        [(x.data.tags.get("saeception.trial_id"), x.info.status) for x in trials]
    for x in counted:
        assert [m.step for m in client.get_metric_history(x.info.run_id, "cycle")] == [0, 1]
    for run_id in finished_before:
        # Not re-run: either Tune knew it had finished, or (killed before Tune saved that) the trial
        # resumed from its final cycle's checkpoint and computed nothing again.
        assert client.get_run(run_id).data.tags.get("saeception.resumed_after_cycle", "1") == "1"
    parent = next(x for x in runs if x.data.tags.get("saeception.role") == "sweep")
    assert parent.info.status == "FINISHED" and "saeception.interrupted" in parent.data.tags
    study = optuna.load_study(study_name="rel", storage=f"sqlite:///{storage / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["saeception.failure"] == "orphaned"
    assert failed[0].user_attrs["tune_trial_id"] == orphans[0].data.tags["saeception.trial_id"]


@pytest.mark.ray(seconds=60)
@pytest.mark.divergence
@pytest.mark.storage_faults
def test_diverging_trial_fails_everywhere_and_the_sweep_goes_on_past_a_file_in_a_cache_entry(tmp_path, ray_env):
    """3. An absurd learning rate makes one trial's loss NaN: it stops at once and is FAILED in Tune,
    Optuna and MLflow (reason in a tag); the best trial is chosen among the rest. And (test_faults_on_ray's
    own sweep until issue #35) the trial that runs after it finds a file in the place of its cycle 0's
    fine-tune and extract cache entries: they count as misses (not hits, not write errors), are rebuilt where
    the files were, and the trial finishes."""
    import optuna
    import yaml
    from faults import stage_keys

    from saeception.store.cache import StageCache

    space = tmp_path / "space.yaml"
    space.write_text(TINY.read_text().replace("  chain.cycles: 1\n", "  chain.cycles: 1\n  finetune.epochs: 3\n")
                     .replace("params:\n", "params:\n  finetune.lr: {choices: [0.001, 1.0e+30]}\n"))
    storage = tmp_path / "s"
    # Cycle 0's model and activations depend on the fine-tune's rate, not on the searched SAE settings: the sane
    # trial's keys. The diverging trial's differ (its rate) and it caches nothing.
    keys = stage_keys({**yaml.safe_load(space.read_text())["fixed"], "finetune.lr": 0.001})
    cache = StageCache(storage / "cache")
    for stage in ("finetune", "extract"):
        cache.entry(keys[stage]).parent.mkdir(parents=True, exist_ok=True)
        cache.entry(keys[stage]).write_text("in the way")
    # Seed 1 draws the absurd rate for the first trial and a sane one for the second (`--dry-run` shows it): a
    # failed trial, then one that runs after it.
    cmd = sweep_cmd(storage, "--trials", "2", "--num-cpus", "2", "--seed", "1")
    cmd[cmd.index("--space") + 1] = str(space)
    r = subprocess.run(cmd, env=ray_env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    client, children = mlflow_children(storage)
    failed = [c for c in children if c.info.status == "FAILED"]
    ok = [c for c in children if c.info.status == "FINISHED"]
    assert failed and ok, [(c.info.status, c.data.params.get("finetune.lr")) for c in children]
    for c in failed:
        assert float(c.data.params["finetune.lr"]) > 1
        assert "DivergedError" in c.data.tags["saeception.failure"]
        assert [m.step for m in client.get_metric_history(c.info.run_id, "cycle")] == []  # stopped in cycle 0
    study = optuna.load_study(study_name="rel", storage=f"sqlite:///{storage / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == len(failed)
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(ok)
    assert f"{len(failed)} failed" in r.stdout
    best_id = client.get_run(children[0].data.tags["mlflow.parentRunId"]).data.tags["best_trial_id"]
    assert best_id in {c.data.tags["saeception.trial_id"] for c in ok}
    # The file in the way: the sane trial missed (no hit: the diverged trial cached nothing of its keys), wrote
    # every entry, and its cycle 0's entries are whole where the files were.
    (sane,) = ok
    assert sane.data.tags["cache/hits"] == "0" and sane.data.tags["cache/write_errors"] == "0", sane.data.tags
    assert sane.data.tags["cache/misses"] == "3"  # cycle 0's stages: fine-tune, extract, SAE
    assert all(cache.lookup(keys[s]) is not None for s in ("finetune", "extract"))


@pytest.mark.ray(seconds=120)
@pytest.mark.asha
def test_asha_stopped_trials_are_pruned_and_free_their_workers(tmp_path, ray_env):
    """7. ASHA stops trials at cycle 1 of 2: each is PRUNED in Optuna (never COMPLETE with an early value),
    KILLED with saeception.stopped_at_cycle in MLflow, never the best trial; and its Train workers'
    resources come back, so all 5 trials run on 2 CPUs, the fifth after the stopped fourth (a leaked placement
    group made later trials wait for workers forever). Another Ray runs on the machine meanwhile, as a second
    sweep or any Ray program may: Ray Train's placement-group cleaner asked Ray's state API about "the" Ray,
    which refuses to choose between two, and its thread died (a trial now names its cluster:
    trainables/chain_trainable.py, name_the_cluster)."""
    import shutil
    import tempfile

    import optuna

    ended = {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    storage = tmp_path / "s"
    other_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    other = subprocess.Popen([sys.executable, "-c", "import ray, time; ray.init(num_cpus=0, include_dashboard=False); "
                              "print('up', flush=True); time.sleep(3600)"], env={**ray_env, "RAY_TMPDIR": other_tmp},
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert other.stdout.readline().strip() == "up", "the other Ray did not start"
        r = subprocess.run(sweep_cmd(storage, "--trials", "5", "--num-cpus", "2", "--scheduler", "asha",
                                     "--set", "chain.cycles=2"), env=ray_env, cwd=REPO, capture_output=True, text=True,
                           timeout=1200)
    finally:
        other.kill()
        kill_all(other_tmp)
        shutil.rmtree(other_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    confused = ray_log_lines(ray_env["RAY_TMPDIR"], ("Found multiple active Ray instances",))
    assert not confused, "\n".join(confused[-5:])
    study = optuna.load_study(study_name="rel", storage=f"sqlite:///{storage / 'optuna.db'}")
    states = [t.state for t in study.trials]
    # No second run: a trial that FAILED after a stopped one is the placement-group leak this test exists for
    # (docs/development.md, "The ASHA flake"); the failure report below carries its evidence.
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    # A failed trial says why: its Ray error and the sweep's last lines, as one string (pytest shortens any
    # other message to 240 characters, and the CI log then showed neither).
    assert len(states) == 5 and set(states) <= ended, (
        f"{[s.name for s in states]}\n{failure_report(storage, r, ray_env['RAY_TMPDIR'])}")
    assert pruned, "ASHA stopped no trial: the test needs at least one"
    # ...and a trial after it, whose workers needed the resources the stopped one held (the sampler's seed makes
    # the fourth trial of five the stopped one).
    assert any(t.number > pruned[0].number for t in study.trials), "no trial ran after the stopped one"
    # Every trial named its one controller to the driver, which kills one that outlives its trial.
    controllers = reported_controllers(storage / "ray" / "rel")
    assert len(controllers) == 5 and all(len(c) == 1 for c in controllers.values()), controllers
    client, children = mlflow_children(storage)
    stopped = [c for c in children if "saeception.stopped_at_cycle" in c.data.tags]
    assert len(stopped) == len(pruned) and all(c.info.status == "KILLED" for c in stopped)
    assert all(int(c.data.tags["saeception.stopped_at_cycle"]) < 2 for c in stopped)
    best_id = client.get_run(children[0].data.tags["mlflow.parentRunId"]).data.tags["best_trial_id"]
    assert best_id not in {c.data.tags["saeception.trial_id"] for c in stopped}
    assert f"{len(pruned)} stopped early" in r.stdout


@pytest.mark.ray
@pytest.mark.asha
def test_a_placement_group_whose_creator_actor_died_is_found_and_removed(ray_env, monkeypatch):
    """What made the ASHA test's later trials wait: a Train controller (an actor) killed with its worker group's
    placement group not yet handed to Train's cleaner leaves the group CREATED for as long as the driver's job
    lives; and a controller whose trial Tune has ended can stay alive (its owner, the trial's actor, is given up
    to 600 s to exit), holding its group. The driver's sweeper (saeception.sweep.leaks) kills a controller that
    outlived its trial by GRACE_S and removes the groups whose creator is dead: a driver's own groups (Tune's),
    a live actor's and a controller still within its grace stay."""
    import time

    import ray
    from ray.util import placement_group_table
    from ray.util.placement_group import placement_group

    from saeception.sweep.leaks import (
        GRACE_S,
        controller_alive,
        kill_outlived_controllers,
        orphaned_placement_groups,
        remove_orphaned_placement_groups,
    )

    for k in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED"):  # restored after the test
        monkeypatch.setenv(k, ray_env[k])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Controller:
            def make(self) -> str:
                pg = placement_group([{"CPU": 0.25}])
                ray.get(pg.ready())
                return pg.id.hex()

            def actor_id(self) -> str:
                return ray.get_runtime_context().get_actor_id()

        drivers = placement_group([{"CPU": 0.25}])
        ray.get(drivers.ready())
        dead, alive, outlived, recent = (Controller.remote() for _ in range(4))
        dead_pg, alive_pg, outlived_pg, recent_pg = ray.get([a.make.remote() for a in (dead, alive, outlived, recent)])
        assert orphaned_placement_groups() == []
        ray.kill(dead)
        wait_for(lambda: orphaned_placement_groups() == [dead_pg], 30, "the killed actor's group to be orphaned")
        assert placement_group_table()[dead_pg]["state"] == "CREATED"  # Ray keeps it while the job lives
        assert remove_orphaned_placement_groups() == 1
        wait_for(lambda: placement_group_table()[dead_pg]["state"] == "REMOVED", 30, "the group to be removed")

        # Controllers whose trials Tune ended: one GRACE_S + 1 s ago, one 1 s ago.
        outlived_id, recent_id = ray.get([outlived.actor_id.remote(), recent.actor_id.remote()])
        now = time.monotonic()
        ended = {outlived_id: now - GRACE_S - 1, recent_id: now - 1}
        assert kill_outlived_controllers(ended, now) == [outlived_id] and ended == {recent_id: now - 1}
        wait_for(lambda: not controller_alive(outlived_id), 30, "the outlived controller to die")
        wait_for(lambda: orphaned_placement_groups() == [outlived_pg], 30, "its group to be orphaned")
        assert remove_orphaned_placement_groups() == 1
        wait_for(lambda: placement_group_table()[outlived_pg]["state"] == "REMOVED", 30, "its group to be removed")
        states = placement_group_table()
        assert all(states[g]["state"] == "CREATED" for g in (alive_pg, recent_pg, drivers.id.hex()))
        assert controller_alive(recent_id) and ray.get(alive.actor_id.remote())
        assert orphaned_placement_groups() == [] and remove_orphaned_placement_groups() == 0
    finally:
        ray.shutdown()


@pytest.mark.ray(seconds=55)
@pytest.mark.interrupt
def test_interrupted_sweep_exits_non_zero(tmp_path, ray_env):
    """8. Ctrl-C (SIGINT) ends the sweep with exit code 130, the parent run KILLED, no report. Both trials run
    at once, so Tune has stopped every trial of the search when it returns, each TERMINATED as if it had ended
    (which the driver used to take for a finished search, and report)."""
    storage = tmp_path / "s"
    # Cycles 1..3 of 2000 SAE steps each remain after the first cycle is logged: the signal lands while both
    # trials run (with one short cycle left, both could finish first and the sweep exit 0).
    proc = subprocess.Popen(sweep_cmd(storage, "--trials", "2", "--num-cpus", "2", "--max-concurrent", "2",
                                      "--cpus-per-worker", "0.5", "--set", "chain.cycles=3", "--set", "sae.steps=2000"),
                            env=ray_env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(runs_with_role(storage / "mlflow.db", "trial")) == 2
             and logged_steps(storage / "mlflow.db", "cycle"), 300, "both trials and a first cycle", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out and "best trial" not in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    parent = [x for x in runs if x.data.tags.get("saeception.role") == "sweep"][0]
    assert parent.info.status == "KILLED"


@pytest.mark.ray(seconds=135)
@pytest.mark.interrupt
def test_ctrl_c_during_the_confirmation_judges_nothing_and_resume_confirms(tmp_path, ray_env):
    """8b. Ctrl-C while the confirmation runs: exit 130, no verdict, no export, the parent run and the arms
    that did not finish KILLED (it used to judge whatever had finished, export the winner and exit 0);
    `--resume` runs the missing seeds and judges them all."""
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "s"
    # One control (aux0): what is checked is the confirmation stopped and resumed, not the controls, which the
    # end-to-end sweep runs all four of.
    cmd = sweep_cmd(storage, "--trials", "1", "--num-cpus", "2", "--confirm-seeds", "2", "--confirm-controls", "aux0")
    proc = subprocess.Popen(cmd, env=ray_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: runs_with_role(storage / "mlflow.db", "confirm"), 300, "a confirmation run", proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out and "verdict:" not in out and "confirmation failed" not in out, out[-3000:]
    assert not (storage / "rel" / "confirmation.md").exists() and not (storage / "rel" / "best").exists()
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    parent = next(x for x in runs if x.data.tags.get("saeception.role") == "sweep")
    arms = [x for x in runs if x.data.tags.get("saeception.role") in ("confirm", "control")]
    # An arm that finished before the signal landed stays FINISHED (--resume does not run it again); none is
    # left RUNNING or FAILED, and at least one was stopped (the signal landed during the confirmation).
    statuses = sorted(x.info.status for x in arms)
    assert parent.info.status == "KILLED" and "KILLED" in statuses and set(statuses) <= {"KILLED", "FINISHED"}, \
        (parent.info.status, statuses)

    r = subprocess.run([*cmd, "--resume"], env=ray_env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "\nverdict: " in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    assert (storage / "rel" / "confirmation.md").exists() and (storage / "rel" / "best").exists()
    runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
    arms = [x for x in runs if x.data.tags.get("saeception.role") in ("confirm", "control")]
    assert len(arms) == 2 * 2 and all(x.info.status == "FINISHED" for x in arms)  # 2 seeds x (best, aux0)


@pytest.mark.ray(seconds=75)
@pytest.mark.mlflow_outage
def test_mlflow_server_stopped_mid_sweep_the_sweep_completes(tmp_path, ray_env):
    """9. The MLflow server is stopped right after the first cycle reached it and comes back on the same
    port (held by the test throughout: nothing else can take it) 10 s after a request met the outage: MLflow's client retries with backoff
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7, about 4 min in all), so the sweep completes; every run
    ends FINISHED (none RUNNING) with each cycle logged once."""
    from mlflow.tracking import MlflowClient
    from mlflowserver import MlflowServer, Unavailable

    server = MlflowServer(tmp_path / "mlflow").start()
    storage = tmp_path / "s"
    try:
        proc = subprocess.Popen(sweep_cmd(storage, "--trials", "1", "--num-cpus", "2", "--mlflow-uri", server.url,
                                          "--set", "chain.cycles=2"),
                                env=ray_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: logged_steps(server.db, "cycle"), 300, "a first cycle in MLflow", proc)
        server.stop()
        # Down (its port answering 503, as a proxy in front of it does) until a request has met the outage.
        with Unavailable(server.socket) as outage:
            wait_for(lambda: outage.requests, 300, "an MLflow request during the outage", proc)
            time.sleep(10)
        server.start()
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
        client = MlflowClient(server.url)
        runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
        assert runs and {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
        trials = [r for r in runs if r.data.tags.get("saeception.role") == "trial"]
        assert len(trials) == 1
        for r in trials:
            assert [m.step for m in client.get_metric_history(r.info.run_id, "cycle")] == [0, 1, 2]
    finally:
        server.close()


@pytest.mark.ray(seconds=125)
@pytest.mark.mlflow_outage
def test_mlflow_outage_longer_than_the_retries_fails_clearly_and_resume_finishes(tmp_path, ray_env):
    """9b. An outage longer than MLflow's retries (cut to 1 here, MLFLOW_HTTP_REQUEST_MAX_RETRIES): the server
    is gone and its port, held by the test, answers nothing (each request times out after
    MLFLOW_HTTP_REQUEST_TIMEOUT, 5 s here); the sweep stops with a message naming the MLflow server; with the server back, `--resume` finishes it and
    nothing is left RUNNING."""
    from mlflow.tracking import MlflowClient
    from mlflowserver import MlflowServer

    env = {**ray_env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    server = MlflowServer(tmp_path / "mlflow").start()
    storage = tmp_path / "s"
    cmd = sweep_cmd(storage, "--trials", "1", "--num-cpus", "2", "--mlflow-uri", server.url, "--set", "chain.cycles=2")
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: logged_steps(server.db, "cycle"), 300, "a first cycle in MLflow", proc)
        server.stop()
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 1, out[-3000:] + err[-3000:]
        assert f"the MLflow server at {server.url} did not answer" in err and "--resume --name rel" in err, err[-3000:]
        # The driver's last word is that message, not its traceback (Ray's log of each failed trial comes before;
        # whatever Ray prints at exit may follow, so no line position is assumed).
        lines = err.splitlines()
        said = max(i for i, line in enumerate(lines) if line.startswith("error: the MLflow server"))
        assert not any(line.startswith("Traceback") for line in lines[said:]), err[-3000:]
        server.start()
        r = subprocess.run([*cmd, "--resume"], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        client = MlflowClient(server.url)
        runs = client.search_runs([client.get_experiment_by_name("saeception").experiment_id])
        assert {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]
        trials = [r for r in runs if r.data.tags.get("saeception.role") == "trial"]
        assert len(trials) == 1
        for t in trials:
            assert sorted({m.step for m in client.get_metric_history(t.info.run_id, "cycle")}) == [0, 1, 2]
    finally:
        server.close()
