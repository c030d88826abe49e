"""Placement groups a dead Ray Train controller left behind, removed by the driver while the sweep runs.

Each trial's Train controller (an actor) creates its worker group's placement group. Ray removes a
non-detached placement group only once both its creator actor and its creator job are dead, and the job
is the sweep's driver, alive to the end; so when a trial is stopped (ASHA) or killed before Train's own
PlacementGroupCleaner has the group, or that cleaner dies first, the group's CPUs/GPUs stay reserved for
the rest of the sweep and a later trial's workers wait for them until Train's start timeout fails it (seen
in the ASHA test of tests/system/test_reliability_on_ray.py; docs/development.md). A placement group whose
creator actor is dead has no owner left to use or remove it: the driver removes it.

Only the GCS's placement group table records the creator actor (the state API shows the job alone), read
here through Ray's private accessor, as `ray.util.placement_group_table()` reads it (checked on Ray 2.60)."""

from __future__ import annotations

import time

SWEEP_EVERY_S = 5.0  # how often the driver's callback looks, at most
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
    """A Tune callback that removes orphaned placement groups when a trial ends and every SWEEP_EVERY_S
    of the driver's loop (a stopped trial's controller can outlive the trial's end event by a few seconds)."""
    from ray.tune import Callback  # lazy: Ray is loaded only in the processes that use it

    class PlacementGroupSweeper(Callback):
        def __init__(self):
            self.last = 0.0
            self.removed = 0
            self.failures = 0  # in a row; the sweeper turns itself off after MAX_FAILURES

        def _sweep(self) -> None:
            if self.failures >= MAX_FAILURES:
                return
            self.last = time.monotonic()
            try:
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

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._sweep()

        def on_trial_error(self, iteration, trials, trial, **info):
            self._sweep()

    return PlacementGroupSweeper()
