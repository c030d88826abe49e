"""A content-addressed cache for the stages that most trials of a sweep repeat.

Cycle 0's fine-tuned model depends only on data, model and fine-tuning settings (and the seed); its
activations only on that model and the layer/pooling; cycle 0's SAE only on those activations and the
SAE settings. Each stage's key hashes exactly the config fields it reads, the keys of its inputs, the
data fingerprint and a format version, so no two different stages ever share an entry.

An entry is a directory of safetensors + JSON files with a manifest of sizes and SHA-256 sums. It is
built aside and published with one atomic rename; builders of the same key serialise on an exclusive
file lock (one builds, the others wait and reuse); an entry that fails its checksums is deleted and
rebuilt, never used. The root is a local or shared (NFS) directory, visible to every worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import seal_dir, verify_dir
from .config import Config

log = logging.getLogger(__name__)

CACHE_VERSION = 2


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def stage_keys(cfg: Config, data_fingerprint: str) -> dict[str, str]:
    """The cache key of each cacheable stage of cycle 0."""
    model0 = _digest({"stage": "model0", "v": CACHE_VERSION, "seed": cfg.seed, "data": cfg.data.__dict__,
                      "fingerprint": data_fingerprint, "model": {"name": cfg.model.name, "hidden_sizes": cfg.model.hidden_sizes},
                      "finetune": cfg.finetune.__dict__, "device": cfg.device})
    acts0 = _digest({"stage": "acts0", "v": CACHE_VERSION, "model0": model0, "layer": cfg.model.layer,
                     "pooling": cfg.model.pooling})
    sae0 = _digest({"stage": "sae0", "v": CACHE_VERSION, "acts0": acts0, "sae": cfg.sae.__dict__, "seed": cfg.seed,
                    "batch_size": cfg.finetune.batch_size})
    return {"model0": model0, "acts0": acts0, "sae0": sae0}


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds_saved: float = 0.0  # build time recorded with each entry, summed over hits
    seconds_building: float = 0.0
    events: list[str] = field(default_factory=list)

    def as_metrics(self) -> dict[str, float]:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_bytes_read": self.bytes_read,
                "cache_bytes_written": self.bytes_written, "cache_seconds_saved": self.seconds_saved,
                "cache_seconds_building": self.seconds_building}


class StageCache:
    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        self.readonly = readonly
        self.stats = CacheStats()
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes (and NFS clients with lockd)."""
        if self.readonly:
            yield
            return
        path = self.entry(key).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def lookup(self, key: str) -> Path | None:
        """The entry's directory when present and intact; a damaged entry is removed (to be rebuilt)."""
        path = self.entry(key)
        if not path.exists():
            return None
        problem = verify_dir(path)
        if problem is None:
            return path
        log.warning("cache entry %s is damaged (%s): rebuilding it", key, problem)
        self.stats.events.append(f"rejected {key}: {problem}")
        if not self.readonly:
            shutil.rmtree(path, ignore_errors=True)
        return None

    def record_hit(self, path: Path) -> None:
        meta = json.loads((path / "entry.json").read_text())
        self.stats.hits += 1
        self.stats.seconds_saved += float(meta.get("build_seconds", 0.0))
        self.stats.bytes_read += sum(p.stat().st_size for p in path.iterdir() if p.is_file())

    def publish(self, key: str, write: Callable[[Path], None], build_seconds: float) -> Path | None:
        """Writes an entry aside with `write(dir)`, seals it and renames it into place (atomic)."""
        self.stats.misses += 1
        self.stats.seconds_building += build_seconds
        if self.readonly:
            return None
        final = self.entry(key)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            write(tmp)
            (tmp / "entry.json").write_text(json.dumps({"key": key, "build_seconds": build_seconds, "created": time.time()}))
            seal_dir(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.stats.bytes_written += sum(p.stat().st_size for p in final.iterdir() if p.is_file())
        return final
