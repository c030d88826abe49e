"""Placement groups a dead Ray Train controller left behind, removed by the driver while the sweep runs.

Each trial's Train controller (an actor) creates its worker group's placement group. Ray removes a
non-detached placement group only once both its creator actor and its creator job are dead, and the job
is the sweep's driver, alive to the end; so when a trial is stopped (ASHA) or killed before Train's own
PlacementGroupCleaner has the group, or that cleaner dies first, the group's CPUs/GPUs stay reserved for
the rest of the sweep and a later trial's workers wait for them until Train's start timeout fails it (seen
in the ASHA test of tests/system/test_reliability_on_ray.py; docs/development.md). A placement group whose
creator actor is dead has no owner left to use or remove it: the driver removes it.

A controller can also outlive its trial: Tune has ended the trial (a scheduler stopped it) but the trial's
actor, the controller's owner, has not exited yet (Tune waits up to TUNE_FORCE_TRIAL_CLEANUP_S, 600 s, before it
kills a stopping actor), so the controller and its workers hold their CPUs/GPUs for nothing. Each trial's relay
reports its controller's actor id to Tune (vocab.TRAIN_CONTROLLER); a controller still alive GRACE_S after Tune
ended its trial is killed, and its group, whose creator is then dead, removed as above. (Both were seen together
in CI: trials 1-3 COMPLETE, 4 stopped by ASHA, 5 and 6 FAILED waiting for a worker CPU, with this module's first
rule finding nothing to remove.)

Only the GCS's tables record a placement group's creator actor and an actor's state by id (the state API
shows the job alone and needs the dashboard), read here through Ray's private accessor, as
`ray.util.placement_group_table()` and `ray._private.state.actors()` read them; a controller is killed by
id through the core worker, as `ray.kill` does with a handle (checked on Ray 2.60)."""

from __future__ import annotations

import time

from .vocab import TRAIN_CONTROLLER

SWEEP_EVERY_S = 5.0  # how often the driver's callback looks, at most
GRACE_S = 10.0  # how long a controller may outlive its trial's end (Train's own shutdown takes ~1 s)
MAX_FAILURES = 3  # failed looks in a row (e.g. a Ray whose private table reader changed) before it stops looking


def orphaned_placement_groups() -> list[str]:
    """Hex ids of this job's placement groups that are not removed, not detached, and whose creator was an
    actor that is now dead (placement groups a driver created, such as Tune's own per-trial groups, never are;
    another job's, on a shared cluster, are never touched)."""
    import ray  # lazy: Ray is loaded only in the processes that use it
    from ray._private.state import state  # lazy: as above; private, the one reader of a creator actor
    from ray.core.generated import gcs_pb2  # lazy: as above

    nil = ray.ActorID.nil().binary()
    job = bytes.fromhex(ray.get_runtime_context().get_job_id())
    out = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        ours = pg.creator_job_id == job and pg.creator_actor_id not in (b"", nil)
        if ours and pg.creator_actor_dead and not pg.is_detached and pg.state != gcs_pb2.PlacementGroupTableData.REMOVED:
            out.append(pg.placement_group_id.hex())
    return out


def controller_alive(actor_id: str) -> bool:
    """Whether the actor (hex id) is still alive, or coming up again, in the GCS's actor table."""
    from ray._private.state import state  # lazy: private, as above
    from ray.core.generated import gcs_pb2  # lazy: as above

    raw = state._connect_and_get_accessor().get_actor_info(_actor_id(actor_id))
    return raw is not None and gcs_pb2.ActorTableData.FromString(raw).state != gcs_pb2.ActorTableData.DEAD


def kill_controller(actor_id: str) -> None:
    """Kills the actor (hex id) for good, as `ray.kill(handle, no_restart=True)` does."""
    import ray  # lazy: Ray is loaded only in the processes that use it

    ray._private.worker.global_worker.core_worker.kill_actor(_actor_id(actor_id), True)


def _actor_id(actor_id: str):
    import ray  # lazy: Ray is loaded only in the processes that use it

    return ray.ActorID(bytes.fromhex(actor_id))


def kill_outlived_controllers(ended: dict[str, float], now: float, grace_s: float = GRACE_S) -> list[str]:
    """Kills the controllers of `ended` (actor id -> when Tune ended its trial, monotonic) still alive grace_s
    after their trial ended; forgets each one past its grace, dead or killed. Returns the killed ones' ids."""
    killed = []
    for actor_id, at in list(ended.items()):
        if now - at < grace_s:
            continue
        del ended[actor_id]
        if controller_alive(actor_id):
            kill_controller(actor_id)
            killed.append(actor_id)
            print(f"killed Ray Train controller {actor_id}: its trial ended {now - at:.0f} s ago and it still held "
                  "its workers", flush=True)
    return killed


def remove_orphaned_placement_groups() -> int:
    """Removes every orphaned placement group (above); returns how many."""
    import ray  # lazy: Ray is loaded only in the processes that use it
    from ray.util.placement_group import PlacementGroup, remove_placement_group  # lazy: as above

    found = orphaned_placement_groups()
    for pg_id in found:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
        # Printed like the progress lines: a user should see that resources had been held.
        print(f"removed placement group {pg_id}: its creator (a Ray Train controller) is dead, so its "
              "resources were held for nobody", flush=True)
    return len(found)


def sweeper_callback():
    """A Tune callback that, when a trial ends and every SWEEP_EVERY_S of the driver's loop, kills the Train
    controllers that outlived their trial by GRACE_S and removes orphaned placement groups (a stopped trial's
    controller can outlive the trial's end event by a few seconds)."""
    from ray.tune import Callback  # lazy: Ray is loaded only in the processes that use it

    class PlacementGroupSweeper(Callback):
        def __init__(self):
            self.last = 0.0
            self.removed = 0
            self.killed = 0
            self.failures = 0  # in a row; the sweeper turns itself off after MAX_FAILURES
            self.controllers: dict[str, str] = {}  # running trial id -> its Train controller's actor id
            self.ended: dict[str, float] = {}  # controller actor id -> when Tune ended its trial (monotonic)

        def _sweep(self) -> None:
            if self.failures >= MAX_FAILURES:
                return
            self.last = time.monotonic()
            try:
                self.killed += len(kill_outlived_controllers(self.ended, self.last))
                self.removed += remove_orphaned_placement_groups()
                self.failures = 0
            except Exception as e:  # noqa: BLE001 - a helper's failure is told; it must not end the sweep
                self.failures += 1
                off = self.failures >= MAX_FAILURES
                print(f"warning: looking for placement groups of dead Train controllers failed ({type(e).__name__}: "
                      f"{e})" + ("; not looking again in this sweep" if off else ""), flush=True)

        def on_step_begin(self, iteration, trials, **info):
            if time.monotonic() - self.last >= SWEEP_EVERY_S:
                self._sweep()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get(TRAIN_CONTROLLER):
                self.controllers[trial.trial_id] = result[TRAIN_CONTROLLER]

        def _trial_ended(self, trial) -> None:
            controller = self.controllers.pop(trial.trial_id, None)
            if controller:
                self.ended[controller] = time.monotonic()
            self._sweep()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._trial_ended(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._trial_ended(trial)

    return PlacementGroupSweeper()
