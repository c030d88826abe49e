"""The one save/load pair for weights (safetensors) with their config (JSON beside them), and the one
object that owns every artifact path of a chain. Nothing here unpickles anything."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT_VERSION = 1


class CycleDir:
    """The files of one complete cycle, wherever the directory lives (a run, or a restored checkpoint)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def sae(self) -> Path:
        return self.path / "sae"

    @property
    def metrics(self) -> Path:
        """The chain's metric history up to this cycle."""
        return self.path / "metrics.json"

    @property
    def latents(self) -> Path:
        """The latent browser's data (saeception.eval.latents; absent with browser.latents 0 or before it existed)."""
        return self.path / "latents.json"

    @property
    def manifest(self) -> Path:
        """Size and SHA-256 of every other file; written last, so its presence marks a complete cycle."""
        return self.path / MANIFEST

    def seal(self) -> None:
        seal_dir(self.path)

    def verify(self) -> str | None:
        """None when every file matches the manifest; otherwise what is wrong (the cycle must not be loaded)."""
        return verify_dir(self.path, required=CYCLE_FILES)


class ChainPaths:
    """Every file a chain writes lives under `root`, named here and nowhere else."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def cycle(self, cycle: int) -> CycleDir:
        return CycleDir(self.root / f"cycle_{cycle:03d}")

    def results(self) -> Path:
        return self.root / "results.json"


MANIFEST = "manifest.json"
# What a complete cycle directory holds (its manifest must list each).
CYCLE_FILES = ("model.safetensors", "model.json", "sae.safetensors", "sae.json", "metrics.json")
_SHA256 = frozenset("0123456789abcdef")


def is_plain_name(name: Any) -> bool:
    """A file name that stays inside the directory it is joined to: no separator, not '.', '..' or absolute."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and not os.path.isabs(name))


def manifest_problem(data: Any) -> str | None:
    """None when `data` is a manifest as seal_dir writes it: a non-empty mapping from plain file names to
    {"bytes": int >= 0, "sha256": 64 hex digits}; otherwise what is wrong. Manifests come from storage
    that others may write (shared directories, object stores): they are input, never trusted as is."""
    if not isinstance(data, dict):
        return f"must be a JSON object of files, not {type(data).__name__}"
    if not data:
        return "lists no files"
    for name, entry in data.items():
        if not is_plain_name(name) or name == MANIFEST:
            return f"file name {name!r} is not a plain file name"
        if not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"}:
            return f"entry of {name!r} must be {{bytes, sha256}}"
        size, digest = entry["bytes"], entry["sha256"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"bytes of {name!r} must be an integer >= 0"
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _SHA256:
            return f"sha256 of {name!r} must be 64 lowercase hex digits"
    return None


def seal_dir(path: Path) -> None:
    """Writes MANIFEST (size and SHA-256 of every other file) last: its presence marks completeness."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"))
    write_json(path / MANIFEST, {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files})


def verify_dir(path: Path, required: tuple[str, ...] = (), exact: bool = False) -> str | None:
    """None when the manifest is well formed, lists every `required` file (and, `exact`, every file
    there is), and every listed file matches it; otherwise what is wrong."""
    if not path.is_dir():
        return f"{path}: not a directory"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"{path}: no manifest (incomplete)"
    try:
        expected = json.loads(manifest.read_text())
    except (ValueError, OSError):
        return f"{manifest}: unreadable"
    problem = manifest_problem(expected)
    if problem:
        return f"{manifest}: {problem}"
    absent = [n for n in required if n not in expected]
    if absent:
        return f"{manifest}: does not list {', '.join(absent)}"
    if exact:
        extra = sorted(p.name for p in path.iterdir() if p.name != MANIFEST and p.name not in expected)
        if extra:
            return f"{path}: {extra[0]} is not in the manifest"
    for name, want in expected.items():
        p = path / name
        if not p.is_file():
            return f"{p}: missing"
        if p.stat().st_size != want["bytes"] or sha256_file(p) != want["sha256"]:
            return f"{p}: does not match its checksum (truncated or corrupted)"
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status) or, elsewhere, set and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], path: Path | str) -> None:
    """safetensors' save_file with the mode every other file written here gets (0666 less the umask):
    save_file creates its files 0600, so a shared artifact store or an MLflow server run by another user
    could read a run's JSON but not its weights."""
    save_file(tensors, str(path))
    os.chmod(path, 0o666 & ~umask())


def save_weights(prefix: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Writes `prefix.safetensors` and `prefix.json`, each atomically (write aside, then rename)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    weights, meta = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    # safetensors refuses shared storage (tied embeddings): store independent contiguous copies.
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp = weights.with_suffix(".safetensors.tmp")
    save_tensors(flat, tmp)
    os.replace(tmp, weights)
    write_json(meta, {"format_version": FORMAT_VERSION, **config})


def load_weights(prefix: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    weights, meta = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    config = json.loads(meta.read_text())
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        found = config.get("format_version") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{meta}: format_version {found} != {FORMAT_VERSION}")
    return load_file(str(weights), device=str(device)), config


def save_module(prefix: Path, module: nn.Module, config: dict[str, Any]) -> None:
    save_weights(prefix, module.state_dict(), config)


def load_state_strict(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Loads a state dict saved by save_module; tied weights are saved under every name, so nothing
    may be missing and nothing extra may be there."""
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(f"state mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    os.replace(tmp, path)
