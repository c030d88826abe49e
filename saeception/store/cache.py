"""A content-addressed cache for the stages that most trials of a sweep repeat.

Keys come from each stage's declaration of what it reads (`saeception.method.stages`); this module only
stores and finds entries.

An entry is a directory of safetensors + JSON files with a manifest of sizes and SHA-256 sums. It is
built aside and published with one atomic rename; builders of the same key serialise on an exclusive
file lock (one builds, the others wait and reuse); an entry that fails its checksums is deleted and
rebuilt, never used. The root is a local or shared (NFS) directory, visible to every worker, or an
object-store URI (`ObjectStageCache`: the same contract without rename or file locks).

Builders of one key serialise on a lock given as a parameter (`KeyLock`): a file lock by default, a
process-local lock for object stores; the Ray layer passes a cluster-wide lease lock
(`saeception.trainables.locks`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeception.store.artifacts import (
    MANIFEST,
    is_plain_name,
    manifest_problem,
    seal_dir,
    verify_dir,
    write_json,
)
from saeception.store.uris import filesystem, is_uri, local_path, redact

log = logging.getLogger(__name__)


class EntryError(ValueError):
    """A cache entry that passed its checksums but does not hold what the stage needs: rejected and rebuilt."""


# A cross-process lock per cache key: lock(key) is a context manager held while that key is built.
KeyLock = Callable[[str], ContextManager[None]]

# The counters a cache keeps, as a trial logs them (cumulative per trial). Under a cache/ prefix, so
# MLflow groups them apart from the science metrics.
CACHE_COUNTERS = ("cache/hits", "cache/misses", "cache/bytes_read", "cache/bytes_written", "cache/seconds_saved",
                  "cache/seconds_building", "cache/write_errors")
# Every entry holds this file (its key and build time), and its manifest lists it.
ENTRY_META = "entry.json"


def entry_meta_problem(meta: Any, key: str) -> str | None:
    """None when `meta` is an entry.json as _write_entry writes it, for `key`; otherwise what is wrong."""
    if not isinstance(meta, dict) or meta.get("key") != key:
        return f"{ENTRY_META} does not name key {key}"
    seconds = meta.get("build_seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        return f"{ENTRY_META}: build_seconds must be a number >= 0"
    return None


def pointer_problem(pointer: Any, key: str) -> str | None:
    """None when an object-store pointer is {"key": key, "build": <plain name>, "files": <manifest>} with
    entry.json among the files; otherwise what is wrong. A pointer is input: anyone who can write the
    bucket writes pointers, and every name in one becomes a path on the worker that reads it."""
    if not isinstance(pointer, dict) or set(pointer) != {"key", "build", "files"}:
        return "must be a JSON object with exactly key, build and files"
    if pointer["key"] != key:
        return f"names key {pointer['key']!r}, not {key}"
    if not is_plain_name(pointer["build"]):
        return f"build {pointer['build']!r} is not a plain name"
    problem = manifest_problem(pointer["files"])
    if problem:
        return f"files: {problem}"
    if ENTRY_META not in pointer["files"]:
        return f"files do not list {ENTRY_META}"
    return None


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds_saved: float = 0.0  # build time recorded with each entry, summed over hits
    seconds_building: float = 0.0
    write_errors: int = 0  # entries built but not stored (full disk, object-store error): the result was still used
    events: list[str] = field(default_factory=list)

    def as_metrics(self) -> dict[str, float]:
        values = (self.hits, self.misses, self.bytes_read, self.bytes_written, self.seconds_saved, self.seconds_building,
                  self.write_errors)
        return dict(zip(CACHE_COUNTERS, values))


class StageCache:
    def __init__(self, root: str | Path, readonly: bool = False, lock: KeyLock | None = None):
        self.root = Path(root)
        self.readonly = readonly
        self.stats = CacheStats()
        self._lock = lock or self._file_lock
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lock(self, key: str) -> ContextManager[None]:
        """Held while `key` is looked up and, on a miss, built and published (none when read-only)."""
        return contextlib.nullcontext() if self.readonly else self._lock(key)

    @contextlib.contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes (and NFS clients with lockd). Where no lock file can be
        made (a file in the way, a read-only or full disk) the stage runs unlocked: at worst two builders
        build the same entry, and a failed store is counted, not fatal."""
        path = self.entry(key).with_suffix(".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")
        except OSError as e:
            self.write_failed(key, e)
            yield
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def lookup(self, key: str) -> Path | None:
        """The entry's directory when present and intact; a damaged entry is removed (to be rebuilt)."""
        path = self.entry(key)
        if not path.exists() and not path.is_symlink():
            return None
        problem = verify_dir(path, required=(ENTRY_META,), exact=True) or self._meta_problem(path, key)
        if problem is None:
            return path
        self.reject(key, problem)
        return None

    @staticmethod
    def _meta_problem(path: Path, key: str) -> str | None:
        try:
            meta = json.loads((path / ENTRY_META).read_text())
        except (ValueError, OSError) as e:
            return f"{ENTRY_META} unreadable ({e})"
        return entry_meta_problem(meta, key)

    def reject(self, key: str, problem: str) -> None:
        """Drops a damaged or unusable entry (it will be rebuilt), with a warning naming it; whatever sits
        at the entry's path (a directory, a file, a link) is removed."""
        problem = redact(problem)  # it may quote an exception's text, and that the URI
        log.warning("cache entry %s is damaged (%s): rebuilding it", key, problem)
        self.stats.events.append(f"rejected {key}: {problem}")
        if not self.readonly:
            path = self.entry(key)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def write_failed(self, key: str, error: BaseException) -> None:
        """A store that failed (the stage's result is used all the same): a warning and a counted error."""
        text = redact(str(error))  # an object store's error quotes the path, with the URI's secret query
        log.warning("cache entry %s was not stored (%s: %s); the stage's result is used as computed",
                    key, type(error).__name__, text)
        self.stats.write_errors += 1
        self.stats.events.append(f"write failed {key}: {type(error).__name__}: {text}")

    @staticmethod
    def _write_entry(path: Path, key: str, write: Callable[[Path], None], build_seconds: float) -> None:
        """The entry's files, its entry.json, then the manifest that seals them."""
        write(path)
        (path / ENTRY_META).write_text(json.dumps({"key": key, "build_seconds": build_seconds, "created": time.time()}))
        seal_dir(path)

    def record_hit(self, path: Path) -> None:
        meta = json.loads((path / ENTRY_META).read_text())  # checked by lookup
        self.stats.hits += 1
        self.stats.seconds_saved += float(meta["build_seconds"])
        self.stats.bytes_read += sum(p.stat().st_size for p in path.iterdir() if p.is_file())

    def publish(self, key: str, write: Callable[[Path], None], build_seconds: float) -> Path | None:
        """Stores an entry built in `build_seconds` by `write(dir)`. A store that fails is logged and
        counted (`cache/write_errors`), never raised: the stage's result was computed and is used."""
        self.stats.misses += 1
        self.stats.seconds_building += build_seconds
        if self.readonly:
            return None
        try:
            return self._store(key, write, build_seconds)
        except Exception as e:  # a full disk, a file in the way, an object-store error: see write_failed
            self.write_failed(key, e)
            return None

    def _store(self, key: str, write: Callable[[Path], None], build_seconds: float) -> Path:
        """Writes an entry aside with `write(dir)`, seals it and renames it into place (atomic)."""
        final = self.entry(key)
        # Held under the key's lock: another .tmp of this key is a killed builder's, never finished.
        for stale in final.parent.glob(f".tmp-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            self._write_entry(tmp, key, write, build_seconds)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.stats.bytes_written += sum(p.stat().st_size for p in final.iterdir() if p.is_file())
        return final


# --------------------------------------------------------------------------------------------------
# Object stores (s3://, gs://, any fsspec URI): no rename, no flock.



class ObjectStageCache(StageCache):
    """The stage cache on an object store. An entry is an immutable blob folder written by one builder
    (`<kk>/<key>/<build-id>/…`) and published by writing its pointer `<kk>/<key>.json` last: one
    object PUT, atomic on S3/GCS, holding the blob's id and the size and SHA-256 of every file. A
    reader downloads the files to local scratch and checks them against the pointer; a mismatch drops
    the pointer (the entry is rebuilt). Builders of one key serialise on a lease lock in a named Ray
    actor (the Ray layer passes it as `lock`), or, without one, on a lock of this process."""

    _local_locks: dict[str, threading.Lock] = {}

    def __init__(self, root: str, readonly: bool = False, scratch: str | Path | None = None, lock: KeyLock | None = None):
        self.uri = root.rstrip("/")
        self.fs, self.base = filesystem(self.uri)
        self.readonly = readonly
        self.stats = CacheStats()
        self._lock = lock or self._process_lock
        # Without a scratch folder of the caller's, one of its own, removed with this object (or at exit).
        self._own_scratch = None if scratch else tempfile.TemporaryDirectory(prefix="saeception-cache-")
        self.scratch = Path(scratch or self._own_scratch.name)
        if not readonly:
            self.fs.create_dir(self.base, recursive=True)

    def _pointer(self, key: str) -> str:
        return f"{self.base}/{key[:2]}/{key}.json"

    def _blob(self, key: str, build: str) -> str:
        return f"{self.base}/{key[:2]}/{key}/{build}"

    def _read_pointer(self, key: str) -> dict | None:
        """The key's pointer, checked against its schema (pointer_problem); a malformed one (truncated,
        not JSON, a file name with a separator or '..') is dropped with a warning, as if never written."""
        import pyarrow.fs as pafs  # lazy: object-store filesystems only for URIs

        if self.fs.get_file_info(self._pointer(key)).type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(self._pointer(key)) as f:
            raw = f.read()
        try:
            pointer = json.loads(raw)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            problem = f"pointer is not JSON ({e})"
        else:
            problem = pointer_problem(pointer, key)
        if problem is None:
            return pointer
        problem = redact(problem)
        log.warning("cache entry %s is damaged (%s): rebuilding it", key, problem)
        self.stats.events.append(f"rejected {key}: {problem}")
        if not self.readonly:
            self._delete(self._pointer(key), directory=False)  # its blob is left: its name came from the bad pointer
        return None

    def _delete(self, path: str, directory: bool) -> None:
        import pyarrow.fs as pafs  # lazy: object-store filesystems only for URIs

        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:  # another reader may have been first
            self.fs.delete_dir(path) if directory else self.fs.delete_file(path)

    @contextlib.contextmanager
    def _process_lock(self, key: str) -> Iterator[None]:
        with self._local_locks.setdefault(key, threading.Lock()):
            yield

    def entry(self, key: str) -> Path:
        """A verified local copy of the entry (downloaded once per process)."""
        path = self.lookup(key)
        if path is None:
            # Raised on every rank that reads the entry: a rank other than 0 sends it to Ray's error.txt, unfiltered.
            raise FileNotFoundError(f"cache entry {key} is not in {redact(self.uri)}")
        return path

    def lookup(self, key: str) -> Path | None:
        pointer = self._read_pointer(key)
        if pointer is None:
            return None
        local = self.scratch / key / pointer["build"]
        if not local.exists():
            tmp = self.scratch / key / f".tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                blob = self._blob(key, pointer["build"])
                for name in pointer["files"]:
                    with self.fs.open_input_stream(f"{blob}/{name}") as src, open(tmp / name, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                write_json(tmp / MANIFEST, pointer["files"])
                problem = verify_dir(tmp, required=(ENTRY_META,), exact=True) or self._meta_problem(tmp, key)
                if problem is None:
                    os.rename(tmp, local)
            except FileNotFoundError as e:
                problem = f"missing blob file ({e})"
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if problem is not None:
                self._reject_blob(key, pointer["build"], problem)
                return None
        return local

    def reject(self, key: str, problem: str) -> None:
        pointer = self._read_pointer(key)
        if pointer is not None:
            self._reject_blob(key, pointer["build"], problem)

    def _reject_blob(self, key: str, build: str, problem: str) -> None:
        problem = redact(problem)
        log.warning("cache entry %s is damaged (%s): rebuilding it", key, problem)
        self.stats.events.append(f"rejected {key}: {problem}")
        shutil.rmtree(self.scratch / key / build, ignore_errors=True)
        if not self.readonly:
            self._delete(self._pointer(key), directory=False)
            self._delete(self._blob(key, build), directory=True)

    def _store(self, key: str, write: Callable[[Path], None], build_seconds: float) -> Path:
        """Writes the entry locally, uploads it as a new blob, then publishes its pointer (one PUT)."""
        build = uuid.uuid4().hex[:12]
        local = self.scratch / key / build
        local.mkdir(parents=True)
        self._write_entry(local, key, write, build_seconds)
        files = json.loads((local / MANIFEST).read_text())
        blob = self._blob(key, build)
        self.fs.create_dir(blob, recursive=True)
        for name in files:
            with open(local / name, "rb") as src, self.fs.open_output_stream(f"{blob}/{name}") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        with self.fs.open_output_stream(self._pointer(key)) as f:
            f.write(json.dumps({"key": key, "build": build, "files": files}).encode())
        self.stats.bytes_written += sum(f["bytes"] for f in files.values())
        return local


def open_cache(root: str | Path, readonly: bool = False, scratch: str | Path | None = None,
               lock: KeyLock | None = None) -> StageCache:
    """The stage cache at `root`: a local/NFS directory (or file:// URI), or an object-store URI (whose
    entries are downloaded under `scratch`; if None, under a temporary directory of the cache's own,
    removed with the cache object). `lock`: the per-key build lock (default: a file lock for directories,
    a process-local lock for object stores)."""
    root = str(root)
    if is_uri(root):
        return ObjectStageCache(root, readonly, scratch, lock)
    return StageCache(local_path(root), readonly, lock)
