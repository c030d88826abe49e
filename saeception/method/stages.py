"""What a stage reads, declared once: the same declaration builds its cache key, restricts what its
code may read, and seeds its random numbers.

A `Stage` names the config keys it reads (a whole section or single keys), the stages whose outputs it
consumes, and the facts of the run it depends on (the data as split, the model's content, the world
size, the resolved device and precision). `do_stage` (in the chain) hands the stage's code a
`ConfigView` that raises `UndeclaredRead` on any other key, so a key cannot silently miss a field the
stage uses; and every stage draws from its own generator seeded by (seed, cycle, stage name), so
skipping a stage (cache hit, resume) cannot change the random numbers of the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Bump when what an entry holds changes: older entries become unreachable, never misread.
CACHE_VERSION = 4

# Facts of a run (not config keys) that a stage's result can depend on.
ENV_FACTS = ("data", "model_source", "world_size", "precision")


class UndeclaredRead(AttributeError):
    """A stage read a config key it does not declare (its cache key would miss it)."""


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # dotted config keys, or whole sections ("finetune")
    inputs: tuple[str, ...] = ()  # stages whose outputs this one consumes
    env: tuple[str, ...] = ()  # facts from ENV_FACTS

    def __post_init__(self) -> None:
        unknown = [e for e in self.env if e not in ENV_FACTS]
        if unknown:
            raise ValueError(f"stage {self.name}: unknown env fact {unknown[0]!r} (known: {', '.join(ENV_FACTS)})")


def declared(key: str, reads: tuple[str, ...]) -> bool:
    """Whether `key` (dotted) is covered by `reads` (itself or a section above it)."""
    return any(key == r or key.startswith(r + ".") for r in reads)


class ConfigView:
    """Read-only access to the keys a stage declares. Methods of the config classes work (they read
    through the view too); reading an undeclared key raises UndeclaredRead."""

    def __init__(self, obj: Any, stage: Stage, prefix: str = ""):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        obj, stage, prefix = self._obj, self._stage, self._prefix
        fields = {f.name for f in dataclasses.fields(obj)}
        if name not in fields:
            return types.MethodType(getattr(type(obj), name), self)
        key = prefix + name
        value = getattr(obj, name)
        if declared(key, stage.reads):
            return value
        if dataclasses.is_dataclass(value):  # a section: the error, if any, names the key read in it
            return ConfigView(value, stage, key + ".")
        raise UndeclaredRead(f"stage {stage.name!r} reads {key!r} but does not declare it (add it to its reads)")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a stage's config view is read-only")


def read_values(cfg: Any, stage: Stage) -> dict[str, Any]:
    """The values of every key the stage declares (sections as dicts)."""
    out = {}
    for key in stage.reads:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        out[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def stage_key(stage: Stage, cfg: Any, env: dict[str, str], input_keys: dict[str, str]) -> str:
    """The cache key: a digest of the stage's name, what it reads, its inputs' keys and its env facts."""
    payload = {"stage": stage.name, "v": CACHE_VERSION, "reads": read_values(cfg, stage),
               "inputs": {i: input_keys[i] for i in stage.inputs}, "env": {e: env[e] for e in stage.env}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def stage_seed(seed: int, cycle: int, name: str) -> int:
    """A 31-bit seed (what every generator here accepts, numpy's and scikit-learn's included) for one
    stage of one cycle, independent of every other stage's."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{cycle}/{name}".encode()).digest()[:4], "little") >> 1


@contextlib.contextmanager
def stage_rng(seed: int, cycle: int, name: str, device: torch.device | None = None) -> Iterator[int]:
    """Runs the block with torch's global generators (CPU, and `device` if CUDA) seeded for this stage
    and restored afterwards; yields the stage's seed for explicit generators (loaders, SAE, probes)."""
    s = stage_seed(seed, cycle, name)
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(s)
        yield s


def model_fingerprint(source: str, commit_hash: str | None = None) -> str:
    """What identifies a model's weights: the hub commit a hub id resolved to, or a local directory's
    content (names, sizes and SHA-256; for files over 64 MiB the hash covers their first and last
    MiB plus the size, so a multi-GB checkpoint is not read in full per trial)."""
    if source == "mlp":
        return "mlp"
    path = Path(source)
    if not path.is_dir():
        return f"hub:{source}@{commit_hash or 'unknown'}"
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path)}:{size}\n".encode())
        with open(f, "rb") as fh:
            if size <= 64 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read(1 << 20))
    return "dir:" + h.hexdigest()[:24]
