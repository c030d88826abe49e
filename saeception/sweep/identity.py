"""A sweep's identity, stored with it, and the lock that lets only one driver run it.

Everything of a sweep's own lives under `<storage>/<name>/` (sweep_path), so sweeps of different names
share a storage (and its MLflow/Optuna databases and stage cache) without sharing anything else.
`<storage>/<name>/sweep.json` records what the sweep searches and how (the space's searched part, every fixed
setting including --set, seed, objectives, trials, scheduler, workers and resources per worker) at its
first launch. `--resume` with anything different exits 2 naming what differs; only `--trials` may grow.

The lock is taken before anything else is written. On a path (local disk, NFS) it is a POSIX record lock
(`fcntl.lockf`, which NFSv4 serves) on `<storage>/<name>/sweep.lock`, held by the driver's open file until its
process ends, however it ends. On an object store, which has no locks, it is a lease object
`<storage>/<name>/sweep.lease.json` (owner, host, pid, expiry) that a thread renews every LEASE_S/3; a driver that
dies without releasing it blocks a new launch for at most LEASE_S. Before each renewal the thread checks the
lease is still this driver's; a failed write is retried every RETRY_S. When the lease is another's, or cannot
be renewed before it lapses, the driver is stopped with that error (as by Ctrl-C: `--resume` continues), so
two drivers never run one study.
"""

from __future__ import annotations

import _thread
import atexit
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saeception.store.uris import filesystem, is_uri, redact

from ..config import ConfigError
from .plan import Confirmation, Resources, Search
from .space import SearchSpace

log = logging.getLogger(__name__)

IDENTITY_FILE = "sweep.json"
LOCK_FILE = "sweep.lock"
LEASE_FILE = "sweep.lease.json"
LEASE_S = 90.0
RETRY_S = 5.0  # after a failed renewal

# Identity fields and the flag that sets each (for the mismatch message).
FLAGS = {"space": "--space", "objectives": "--space (objectives)", "seed": "--seed", "trials": "--trials",
         "scheduler": "--scheduler", "workers_per_trial": "--workers-per-trial", "cpus_per_worker": "--cpus-per-worker",
         "gpus_per_worker": "--gpus-per-worker", "confirm_seeds": "--confirm-seeds",
         "confirm": "the confirmation's settings (--confirm-controls, the space's confirm:)"}
# Settings a resumed sweep may raise: more trials, more confirmation seeds (the new ones run, the old are reused).
GROWABLE = ("trials", "confirm_seeds")


def identity(space: SearchSpace, search: Search, resources: Resources, confirmation: Confirmation) -> dict[str, Any]:
    """What makes this sweep this sweep (JSON-ready)."""
    searched = space.to_dict()["params"]
    digest = hashlib.sha256(json.dumps(searched, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"space": digest, "fixed": {k: space.fixed[k] for k in sorted(space.fixed)},
            "objectives": [f"{o.metric}:{o.mode}" for o in space.objectives], "seed": search.seed, "trials": search.trials,
            "scheduler": search.scheduler, "workers_per_trial": resources.workers_per_trial,
            "cpus_per_worker": float(resources.cpus_per_worker), "gpus_per_worker": float(resources.gpus_per_worker),
            "confirm_seeds": confirmation.seeds, "confirm": confirmation.settings.to_dict()}


def sweep_path(storage: str, name: str) -> str:
    """The folder of sweep `name`'s own files under `storage` (a path or a URI)."""
    return f"{storage.rstrip('/')}/{name}" if is_uri(storage) else os.path.join(storage, name)


def read_identity(storage: str, name: str) -> dict[str, Any] | None:
    storage = sweep_path(storage, name)
    if is_uri(storage):
        fs, root = filesystem(storage)
        import pyarrow.fs as pafs  # lazy: object-store filesystems only for URIs

        path = f"{root.rstrip('/')}/{IDENTITY_FILE}"
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())
    path = Path(storage, IDENTITY_FILE)
    return json.loads(path.read_text()) if path.exists() else None


def write_identity(storage: str, name: str, ident: dict[str, Any]) -> None:
    storage = sweep_path(storage, name)
    text = json.dumps(ident, indent=1, sort_keys=True, default=str)
    if is_uri(storage):
        fs, root = filesystem(storage)
        fs.create_dir(root.rstrip("/"), recursive=True)
        with fs.open_output_stream(f"{root.rstrip('/')}/{IDENTITY_FILE}") as f:
            f.write(text.encode())
        return
    Path(storage).mkdir(parents=True, exist_ok=True)
    tmp = Path(storage, IDENTITY_FILE + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, Path(storage, IDENTITY_FILE))


ID_KEY = "id"  # the sweep's own id in its identity file: which MLflow parent run is this sweep's


def sweep_id(storage: str, name: str) -> str:
    """This sweep's id: the one its identity file holds (a resumed sweep), or a new one (a first launch, or a
    sweep stored by a saeception that wrote none). Sweeps of one name under other storages, sharing an MLflow
    store, have other ids: a parent run is matched on it, never on the name alone."""
    stored = read_identity(storage, name)
    return str(stored[ID_KEY]) if stored and stored.get(ID_KEY) else uuid.uuid4().hex


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs, in flag terms; a larger --trials is not a difference (a resumed sweep may grow); the id is
    not a setting."""
    out = []
    for key in sorted((set(stored) | set(current)) - {ID_KEY}):
        old, new = stored.get(key), current.get(key)
        if key in GROWABLE and isinstance(old, int) and isinstance(new, int) and new >= old:
            continue
        if key in ("confirm_seeds", "confirm") and old is None:
            continue  # stored by an older saeception: nothing to compare
        if key == "fixed":
            old, new = old or {}, new or {}
            for k in sorted(set(old) | set(new)):
                if old.get(k, "<unset>") != new.get(k, "<unset>"):
                    out.append(f"fixed {k}: {old.get(k, '<unset>')} stored, {new.get(k, '<unset>')} given")
        elif old != new:
            what = "the searched params" if key == "space" else FLAGS.get(key, key)
            if key in GROWABLE:
                out.append(f"{FLAGS[key]}: {old} stored, {new} given (a resumed sweep may only grow)")
            elif key == "space":
                out.append(f"{what} differ (--space / --set)")
            else:
                out.append(f"{what}: {old} stored, {new} given")
    return out


def check_resume(current: dict[str, Any], storage: str, name: str) -> None:
    """ConfigError naming every difference between the stored identity and this launch's."""
    stored = read_identity(storage, name)
    if stored is None:
        raise ConfigError(f"--resume: sweep {name!r} under {redact(storage)} has no {IDENTITY_FILE} (started by an older "
                          "saeception?), so its settings cannot be checked; start a new --name")
    diff = differences(stored, current)
    if diff:
        raise ConfigError(f"--resume: sweep {name!r} was started with other settings: {'; '.join(diff)} "
                          "(pass the original ones, or start a new --name)")


def hold_lock(storage: str, name: str) -> Any:
    """Takes this sweep's lock for the life of this process; ConfigError naming --name when another
    driver holds it."""
    return _hold_lease(storage, name) if is_uri(storage) else _hold_file_lock(storage, name)


def _holder_text() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def _hold_file_lock(storage: str, name: str) -> Any:
    path = Path(sweep_path(storage, name), LOCK_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held open until the process ends: that is the lock
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise ConfigError(f"--name: sweep {name!r} under {storage} is already running (another driver holds {path}); "
                          "wait for it to end or stop it first") from None
    return f


class _Lease:
    def __init__(self, fs, path: str):
        self.fs, self.path, self.owner = fs, path, uuid.uuid4().hex
        self.expires = 0.0
        self._stop = threading.Event()

    def read(self) -> dict[str, Any] | None:
        import pyarrow.fs as pafs  # lazy: object-store filesystems only for URIs

        if self.fs.get_file_info(self.path).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(self.path) as f:
            try:
                record = json.loads(f.read().decode())
            except ValueError:
                return None
        # Anything but the record write() makes (a JSON array, a string expiry) is a damaged lease, as unparseable
        # JSON is: a list here killed the renew thread with an AttributeError, silently, and the lease lapsed.
        if not isinstance(record, dict) or not isinstance(record.get("expires", 0), (int, float)):
            return None
        return record

    def write(self) -> None:
        record = {"owner": self.owner, "holder": _holder_text(), "expires": time.time() + LEASE_S}
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(record).encode())
        self.expires = record["expires"]

    def renew_once(self) -> str | None:
        """Renews the lease; why this driver must stop (the lease is another's, or lapses unrenewed), or None.
        Raises OSError when the store did not answer (the caller retries)."""
        current = self.read()
        if current is None or current.get("owner") != self.owner:
            holder = current.get("holder", "another driver") if current else "nobody (it was deleted or damaged)"
            return f"the sweep's lease {self.path} is held by {holder}"
        self.write()
        return None

    def renew_until_exit(self, on_lost: Callable[[str], None] | None = None) -> None:
        on_lost = on_lost or _stop_driver

        def renew() -> None:
            wait = LEASE_S / 3
            while not self._stop.wait(wait):
                try:
                    lost = self.renew_once()
                    wait = LEASE_S / 3
                except OSError as e:
                    lost = None
                    wait = RETRY_S
                    if time.time() + RETRY_S >= self.expires:
                        lost = f"the sweep's lease {self.path} could not be renewed before it lapsed ({redact(str(e))[:300]})"
                    else:
                        log.warning("renewing the sweep's lease failed, retrying in %.0f s: %s", RETRY_S, redact(str(e))[:300])
                except Exception as e:  # anything else ended this thread unseen, and the lease lapsed under a running sweep
                    log.exception("renewing the sweep's lease failed")
                    lost = f"the sweep's lease {self.path} could not be renewed ({type(e).__name__}: {redact(str(e))[:300]})"
                if lost:
                    on_lost(lost)
                    return

        threading.Thread(target=renew, daemon=True, name="sweep-lease").start()
        atexit.register(self.release)

    def release(self) -> None:
        self._stop.set()
        current = self.read()
        if current and current.get("owner") == self.owner:
            self.fs.delete_file(self.path)


def _stop_driver(reason: str) -> None:
    """Stops the driver from the lease thread: the error, then a KeyboardInterrupt in the main thread (the
    sweep ends as after Ctrl-C; --resume continues it once the other driver is gone)."""
    print(f"error: {reason}; stopping this driver so that two never run one sweep", file=sys.stderr, flush=True)
    _thread.interrupt_main()


def _hold_lease(storage: str, name: str, settle_s: float = 1.0,
                on_lost: Callable[[str], None] | None = None) -> _Lease:
    fs, root = filesystem(sweep_path(storage, name))
    fs.create_dir(root.rstrip("/"), recursive=True)
    lease = _Lease(fs, f"{root.rstrip('/')}/{LEASE_FILE}")

    def refuse(current: dict[str, Any]) -> ConfigError:
        until = time.strftime("%H:%M:%S", time.localtime(current["expires"]))
        return ConfigError(f"--name: sweep {name!r} under {redact(storage)} is already running ({current.get('holder')}; "
                           f"its lease runs until {until} unless renewed); wait for it to end or stop it first")

    current = lease.read()
    if current and current.get("owner") != lease.owner and current.get("expires", 0) > time.time():
        raise refuse(current)
    lease.write()
    time.sleep(settle_s)  # an object store has no compare-and-swap: a racing writer shows up here
    current = lease.read()
    if not current or current.get("owner") != lease.owner:
        raise refuse(current or {"holder": "another driver", "expires": time.time() + LEASE_S})
    lease.renew_until_exit(on_lost)
    return lease
