"""A cluster-wide build lock per stage-cache key, for caches without file locks (object stores).

One named Ray actor (`saeception-cache-locks`, namespace `saeception`, 0 CPUs) holds every lock with a
lease: the holder renews it while it builds, and a crashed holder's lock lapses after LEASE_S so a
waiter takes over. The actor lives on the head node (Ray's `node:__internal_head__` resource, as Ray
Serve pins its controller): a worker node the autoscaler removes would take it down with every lock.
Every call to it has a timeout (RPC_TIMEOUT_S), and a waiter gives up after WAIT_S with an error naming the
key. Passed to the core's cache as its `lock` (`saeception.store.cache.open_cache`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator

LEASE_S = 60.0  # a builder's lock lapses this long after its process stops renewing it
RPC_TIMEOUT_S = 60.0  # one call to the lock actor
WAIT_S = 6 * 3600.0  # the longest a trial waits for another's build of one stage
HEAD = "node:__internal_head__"  # the resource Ray gives the head node only

log = logging.getLogger(__name__)


class _Locks:
    def __init__(self):
        self.held: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, owner: str, lease_s: float) -> bool:
        now = time.time()
        holder = self.held.get(key)
        if holder is None or holder[1] < now or holder[0] == owner:
            self.held[key] = (owner, now + lease_s)
            return True
        return False

    def release(self, key: str, owner: str) -> None:
        if self.held.get(key, ("", 0.0))[0] == owner:
            del self.held[key]


@contextlib.contextmanager
def lease_lock(key: str) -> Iterator[None]:
    """Holds the cluster-wide lock of `key` (needs a connected Ray), renewing its lease meanwhile."""
    import ray  # lazy: Ray is loaded only in the processes that use it

    locks = lock_actor()
    owner = uuid.uuid4().hex
    deadline = time.monotonic() + WAIT_S
    while not ray.get(locks.acquire.remote(key, owner, LEASE_S), timeout=RPC_TIMEOUT_S):
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage cache: waited {WAIT_S:.0f} s for the build lock of {key} (another trial "
                               "is building it and renewing its lease)")
        time.sleep(0.5)
    stop = threading.Event()

    def renew() -> None:
        told = False  # that the lease was lost (said once)
        # A failed renewal is told and retried at the next tick (the lease has 4 ticks' slack): one lost call to
        # the lock actor must not end the renewals and let the lease lapse while this build goes on.
        while not stop.wait(LEASE_S / 4):
            try:
                # A renewal waits at most one tick: a renewal that waited the full RPC timeout would outlast the lease.
                kept = ray.get(locks.acquire.remote(key, owner, LEASE_S), timeout=min(RPC_TIMEOUT_S, LEASE_S / 4))
            except Exception as e:  # noqa: BLE001 - told and retried; the build itself is unaffected
                log.warning("stage cache: renewing the build lock of %s failed (%s: %s); retrying in %.0f s",
                            key, type(e).__name__, e, LEASE_S / 4)
                continue
            if not kept and not told:
                told = True
                log.warning("stage cache: the build lock of %s lapsed and another trial holds it; both may build "
                            "the entry (the first to finish writes it)", key)

    renewer = threading.Thread(target=renew, daemon=True, name=f"cache-lease-{key[:8]}")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        ray.get(locks.release.remote(key, owner), timeout=RPC_TIMEOUT_S)


def lock_actor():
    """The named lock actor, created on the head node if it does not exist yet."""
    import ray  # lazy: Ray is loaded only in the processes that use it

    return ray.remote(num_cpus=0)(_Locks).options(
        name="saeception-cache-locks", namespace="saeception", lifetime="detached", get_if_exists=True,
        resources={HEAD: 0.001},
        # Outside the caller's placement group (a Train worker's): its bundles hold no head resource.
        scheduling_strategy="DEFAULT").remote()
