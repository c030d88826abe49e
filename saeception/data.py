"""Task data: loading, deterministic stratified splits, stable example ids, dynamic padding.

Every example carries an id (its position in its split, fixed at load time). Every later stage
(extraction, targets, retraining) indexes by that id, never by the position a loader happened to
yield it at: that is what keeps each target with its own example after shuffling.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import ConfigError, DataConfig
from .datacheck import (
    check_carving,
    check_classes,
    check_header_row,
    check_splits,
    incomplete_rows_kept,
    normalise_labels,
)
from .distributed import rank, world_size

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Hub datasets addressed as "<name>/<config>".
_MULTI_CONFIG_DATASETS = {"glue", "super_glue", "nyu-mll/glue", "aps/super_glue"}


@dataclass
class Split:
    """One split. `inputs` is a float (N, F) tensor (features) or a list of N token-id lists (text)."""

    inputs: Any
    labels: Tensor  # (N,) long
    ids: Tensor  # (N,) long, equal to arange(N): the stable example id
    source_ids: list[str] = field(default_factory=list)  # "<source split>:<row>" of each example

    def identity(self) -> dict[str, Any]:
        """{"n", "ids_sha256"}: which source examples this split holds (hash of the sorted source ids)."""
        digest = hashlib.sha256("\n".join(sorted(self.source_ids)).encode()).hexdigest()
        return {"n": len(self), "ids_sha256": digest}

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split
    n_classes: int
    kind: str  # "features" or "text"
    input_dim: int = 0  # features only
    pad_token_id: int = 0  # text only
    padding_side: str = "right"
    # Order-sensitive digest of the raw examples and labels (for caches and provenance).
    fingerprint: str = ""

    def split(self, name: str) -> Split:
        return getattr(self, name)

    def splits_identity(self) -> dict[str, dict[str, Any]]:
        return {s: self.split(s).identity() for s in SPLITS}


# --------------------------------------------------------------------------------------------------
# Raw sources -> {split: (inputs, labels)}


def _digits() -> dict[str, tuple[Any, np.ndarray]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return {"all": ((d.data / 16.0).astype(np.float32), d.target.astype(np.int64))}


def package_path(spec: str, key: str) -> Path:
    """'package:<pkg>/<relative path>' -> that path inside the installed package, found without
    importing it (some data wheels fail on import)."""
    rest = spec[len("package:"):]
    pkg, _, rel = rest.partition("/")
    found = importlib.util.find_spec(pkg) if pkg else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"{key}: package {pkg!r} is not installed (from {spec!r})")
    return Path(found.submodule_search_locations[0]) / rel


def _read_table(path: Path, cfg: DataConfig):
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            sep = cfg.delimiter or ("\t" if suffix == ".tsv" else ",")
            names = cfg.column_names or None
            # Tab-separated text is rarely quoted; a stray quote must not swallow the next lines.
            quoting = 3 if sep == "\t" else 0
            return pd.read_csv(path, sep=sep, header=None if names else "infer", names=names,
                               quoting=quoting, keep_default_na=False)
        if suffix in (".json", ".jsonl"):
            return pd.read_json(path, lines=suffix == ".jsonl")
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"data.name: cannot read {path}: {e}") from e
    raise ConfigError(f"data.name: {path} must end in .csv, .tsv, .json, .jsonl or .parquet")


def _columns(table, cfg: DataConfig, where: str) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    cols = list(table.columns)
    for key, col in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if col not in cols:
            raise ConfigError(f"{key}: column {col!r} not in {where} (columns: {', '.join(map(str, cols))})")
    # A null text (JSON null, a NaN cell) is a missing text, not the word "None" or "nan".
    texts = ["" if not isinstance(t, str) and pd.isna(t) else str(t) for t in table[cfg.text_column]]
    return texts, np.asarray(table[cfg.label_column])


def _class_folders(root: Path) -> dict[str, tuple[Any, np.ndarray]]:
    """A directory whose sub-folders are classes, each holding .txt documents."""
    texts, labels = [], []
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    for c in classes:
        for f in sorted((root / c).glob("*.txt")):
            texts.append(f.read_text(errors="replace"))
            labels.append(c)
    if not texts:
        raise ConfigError(f"data.name: {root} has no <class>/<doc>.txt files")
    return {"all": (texts, np.asarray(labels))}


def _local(path: Path, cfg: DataConfig) -> dict[str, tuple[Any, np.ndarray]]:
    if not path.exists():
        raise ConfigError(f"data.name: {path} does not exist")
    if path.is_dir():
        return _class_folders(path)
    table = _read_table(path, cfg)
    check_header_row(table, cfg, path)
    return {"all": _columns(table, cfg, str(path))}


def _hub(cfg: DataConfig) -> dict[str, tuple[Any, np.ndarray]]:
    import datasets

    name, subset = cfg.name, cfg.subset or None
    head, _, tail = name.rpartition("/")
    if subset is None and head in _MULTI_CONFIG_DATASETS:
        name, subset = head, tail
    dd = datasets.load_dataset(name, subset)
    out = {}
    for ours, theirs in (("train", cfg.train_split), ("val", cfg.val_split), ("test", cfg.test_split)):
        if theirs not in dd:
            continue
        table = dd[theirs].to_pandas()
        texts, labels = _columns(table, cfg, f"{cfg.name}[{theirs}]")
        if np.issubdtype(labels.dtype, np.integer) and (labels < 0).all():
            log.info("split %s of %s is unlabelled; carving it from train", theirs, cfg.name)
            continue
        out[ours] = (texts, labels)
    if "train" not in out:
        raise ConfigError(f"data.train_split: {cfg.train_split!r} not in {cfg.name} (splits: {', '.join(dd)})")
    return out


def is_local(cfg: DataConfig) -> bool:
    """Digits, package data or a local file/directory (anything else is a hub dataset id)."""
    path = Path(cfg.name).expanduser()
    return cfg.name == "digits" or cfg.name.startswith("package:") or path.exists() \
        or path.suffix.lower() in (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def load_raw(cfg: DataConfig) -> dict[str, tuple[Any, np.ndarray]]:
    if cfg.name == "digits":
        return _digits()
    if cfg.name.startswith("package:"):
        return _local(package_path(cfg.name, "data.name"), cfg)
    if is_local(cfg):
        return _local(Path(cfg.name).expanduser(), cfg)
    return _hub(cfg)


def check_source(cfg: DataConfig, model_name: str) -> None:
    """Cheap up-front checks for local data (files, package data, digits): it loads, has the configured
    columns, and suits the model (features need model.name: mlp, text a transformer). Hub datasets are
    checked when a run loads them. (saeception.validate checks far more; this is its quick subset.)"""
    if not is_local(cfg):
        return
    inputs = next(iter(load_raw(cfg).values()))[0]
    is_features = isinstance(inputs, np.ndarray)
    if is_features and model_name != "mlp":
        raise ConfigError(f"model.name: {cfg.name} is feature data; it needs model.name: mlp")
    if not is_features and model_name == "mlp":
        raise ConfigError(f"model.name: text data ({cfg.name}) needs a transformer model, not 'mlp'")


# --------------------------------------------------------------------------------------------------
# Splitting. The rules a run's data must meet (saeception.datacheck) are checked by the code that builds
# the splits, so a validation pass (saeception.validate) and a run cannot disagree about them.

def _take(inputs: Any, idx: np.ndarray) -> Any:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[i] for i in idx]


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.unique(labels, return_counts=True)[1]
    held = math.ceil(fraction * len(labels))
    # scikit-learn stratifies only with >= 2 examples per class and >= one per class on each side.
    ok = counts.min() >= 2 and min(held, len(labels) - held) >= len(counts)
    keep, held_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels if ok else None)
    return np.sort(keep), np.sort(held_idx)


# A split as it moves through carving: (inputs, labels, source ids).
Raw = tuple[Any, np.ndarray, np.ndarray]


def _where(cfg: DataConfig, split: str) -> str:
    return cfg.name if split == "all" else f"{cfg.name}[{split}]"


def _complete(split: str, x: Any, y: np.ndarray, ids: np.ndarray, cfg: DataConfig) -> Raw:
    """The split without rows lacking a label or a text (an error, or dropped when data.drop_incomplete
    is set), its labels normalised (saeception.datacheck)."""
    keep = incomplete_rows_kept(_where(cfg, split), x, y, cfg)
    if keep is not None:
        x, y, ids = _take(x, keep), y[keep], ids[keep]
    return x, normalise_labels(y), ids


def make_splits(raw: dict[str, tuple[Any, np.ndarray]], cfg: DataConfig) -> dict[str, Raw]:
    """Fills missing val/test splits from train with stratified splits seeded by `cfg.split_seed`
    (never by a trial's seed) and caps sizes; every example keeps its source id "<split>:<row>".
    Raises ConfigError for data a run cannot use (the rules: saeception.datacheck)."""
    out: dict[str, Raw] = {}
    for name, (x, y) in raw.items():
        ids = np.asarray([f"{name}:{i}" for i in range(len(y))])
        out["train" if name == "all" else name] = _complete(name, x, np.asarray(y), ids, cfg)
    check_classes(np.concatenate([y for _, y, _ in out.values()]), cfg)
    inputs, labels, ids = out["train"]
    missing = [s for s in ("test", "val") if s not in out]
    total = len(labels)
    for s in missing:
        frac = (cfg.test_fraction if s == "test" else cfg.val_fraction) * total / len(labels)
        check_carving(labels, frac, s, cfg)
        keep, held = _stratified(labels, frac, cfg.split_seed)
        out[s] = (_take(inputs, held), labels[held], ids[held])
        inputs, labels, ids = _take(inputs, keep), labels[keep], ids[keep]
    out["train"] = (inputs, labels, ids)
    if cfg.max_examples:
        for s in SPLITS:
            x, y, i = out[s]
            if len(y) > cfg.max_examples:
                n_classes = len(np.unique(y))
                if cfg.max_examples < n_classes:
                    raise ConfigError(f"data.max_examples: {cfg.max_examples} examples cannot hold the {n_classes} classes "
                                      f"of the {s} split of {cfg.name}; use >= {n_classes} (or 0: no cap)")
                keep, _ = _stratified(y, 1 - cfg.max_examples / len(y), cfg.split_seed)
                out[s] = (_take(x, keep), y[keep], i[keep])
    check_splits({s: out[s][1] for s in SPLITS}, cfg)
    return out


def load_splits(cfg: DataConfig) -> dict[str, Raw]:
    """The data as split for a run (read once, checked; nothing tokenized). Raises ConfigError."""
    return make_splits(load_raw(cfg), cfg)


def encode_labels(splits: dict[str, Raw]) -> tuple[dict[str, Tensor], int]:
    """Integer labels as they are (class ids, checked contiguous); string labels class-encoded, sorted."""
    all_labels = np.concatenate([splits[s][1] for s in SPLITS])
    if all_labels.dtype.kind in "iu":
        n = int(all_labels.max()) + 1
        return {s: torch.as_tensor(splits[s][1].astype(np.int64)) for s in SPLITS}, n
    classes = sorted({str(v) for v in all_labels})
    index = {c: i for i, c in enumerate(classes)}
    return {s: torch.tensor([index[str(v)] for v in splits[s][1]], dtype=torch.long) for s in SPLITS}, len(classes)


def _fingerprint(splits: dict[str, Raw]) -> str:
    h = hashlib.sha256()
    for s in SPLITS:
        x, y, _ = splits[s]
        h.update(s.encode())
        h.update(np.ascontiguousarray(x).tobytes() if isinstance(x, np.ndarray) else "\x00".join(x).encode())
        h.update(np.asarray(y).astype(str).tobytes())
    return h.hexdigest()[:16]


def load_task(cfg: DataConfig, tokenizer=None) -> TaskData:
    """Loads and splits the data; tokenizes text with `tokenizer` (required for text data)."""
    splits = load_splits(cfg)
    labels, n_classes = encode_labels(splits)
    fp = _fingerprint(splits)
    first = splits["train"][0]
    if isinstance(first, np.ndarray):
        parts = {s: Split(torch.as_tensor(splits[s][0], dtype=torch.float32), labels[s],
                          torch.arange(len(labels[s])), list(splits[s][2])) for s in SPLITS}
        return TaskData(**parts, n_classes=n_classes, kind="features", input_dim=first.shape[1], fingerprint=fp)
    if tokenizer is None:
        raise ConfigError(f"model.name: text data ({cfg.name}) needs a transformer model, not 'mlp'")
    parts = {}
    for s in SPLITS:
        enc = tokenizer(list(splits[s][0]), truncation=True, max_length=cfg.max_length, add_special_tokens=True)
        ids = [seq if len(seq) else [tokenizer.pad_token_id] for seq in enc["input_ids"]]
        parts[s] = Split(ids, labels[s], torch.arange(len(labels[s])), list(splits[s][2]))
    return TaskData(**parts, n_classes=n_classes, kind="text", pad_token_id=int(tokenizer.pad_token_id),
                    padding_side=cfg.padding_side, fingerprint=fp)


# --------------------------------------------------------------------------------------------------
# Batching


class SplitDataset(torch.utils.data.Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        return self.split.inputs[i], int(self.split.labels[i]), int(self.split.ids[i])


def collate(items: list[tuple[Any, int, int]], pad_token_id: int = 0, padding_side: str = "right") -> dict[str, Tensor]:
    """Batches examples; token sequences are padded to the longest in the batch (dynamic padding)."""
    inputs, labels, ids = zip(*items)
    batch = {"labels": torch.tensor(labels, dtype=torch.long), "ids": torch.tensor(ids, dtype=torch.long)}
    if isinstance(inputs[0], Tensor):
        batch["features"] = torch.stack(inputs)
        return batch
    width = max(len(seq) for seq in inputs)
    input_ids = torch.full((len(inputs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(inputs), width), dtype=torch.long)
    for row, seq in enumerate(inputs):
        span = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        input_ids[row, span] = torch.as_tensor(seq)
        mask[row, span] = 1
    batch["input_ids"] = input_ids
    batch["attention_mask"] = mask
    return batch


def length_grouped_batches(lengths: list[int], batch_size: int, shuffle: bool, seed: int,
                           group: int = 50) -> list[list[int]]:
    """Batches of similar-length examples, so dynamic padding pads little. Shuffled: indices are
    shuffled, cut into groups of `group` batches, each group sorted by length, and the batches'
    order shuffled (randomness kept, padding cut). Not shuffled: one sort by length."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=g).tolist() if shuffle else list(range(len(lengths)))
    span = batch_size * group if shuffle else len(order)
    batches = []
    for start in range(0, len(order), max(span, 1)):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def shard_batches(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """Rank `rank`'s share of a batch list: every rank gets the same number of batches (DDP steps in
    lockstep), the list padded by cycling its first batches, as DistributedSampler pads examples.
    Extraction writes rows by example id, so a repeated example is harmless there."""
    if not batches:
        return batches
    total = len(batches) + (-len(batches) % world)
    return [batches[i % len(batches)] for i in range(rank, total, world)]


def loader(task: TaskData, split: str, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0,
           distributed: bool = False, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over one split. Under torch.distributed each rank reads its own shard. Text is
    batched by similar length (every stage indexes by example id, so order is free).
    pin_memory=True (for CUDA) lets batches copy to the device without blocking the host."""
    from functools import partial

    ds = SplitDataset(task.split(split))
    fn = partial(collate, pad_token_id=task.pad_token_id, padding_side=task.padding_side)
    if task.kind == "text":
        # Every rank computes the same length-grouped batches (same seed), then takes its share.
        lengths = [len(seq) for seq in task.split(split).inputs]
        batches = length_grouped_batches(lengths, batch_size, shuffle, seed * 1000 + epoch)
        if distributed:
            batches = shard_batches(batches, rank(), world_size())
        return torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=fn, pin_memory=pin_memory)
    if distributed:
        sampler = torch.utils.data.DistributedSampler(ds, shuffle=shuffle, seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=fn, pin_memory=pin_memory)
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=fn,
                                       pin_memory=pin_memory)
