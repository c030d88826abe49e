"""The rules data must meet before a run uses it, each failure a ConfigError naming the key and file.

saeception.data.tasks applies them while it reads and splits (so a run never trains on data that breaks
them) and saeception.validate reaches them through the same code before any work starts:

- no header row read as data (`data.column_names` is for header-less files);
- every row has a label and a text: a blank, `nan`, `null` or `None` label, a -1 label (the hub's
  "unlabelled") or an empty text is an error, or the row is dropped with `data.drop_incomplete`;
- labels are class ids 0..C-1 with every class present (integers), or class names (strings), C >= 2;
- a carved validation/test split is stratified: >= 2 examples per class, >= one per class each side;
- train holds every class; validation and test hold >= 2 classes (their metrics compare classes).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from saeception.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

# Label cells that mean "no label" (case-insensitive, stripped); -1 is the hub's "unlabelled".
MISSING_LABELS = ("", "nan", "null", "none")


def is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def check_header_row(table, cfg: DataConfig, path: Path) -> None:
    """With data.column_names the file must not have a header row: it would become an example (and,
    in the label column, a class of its own)."""
    if not cfg.column_names or table.empty:
        return
    first = [str(v).strip() for v in table.iloc[0]]
    names = [str(n).strip() for n in cfg.column_names]
    looks_like_header = [v.lower() for v in first[:len(names)]] == [n.lower() for n in names]
    if not looks_like_header and cfg.label_column in table.columns and len(table) > 1:
        # A word above a column of integers: the header of a file whose names differ from column_names.
        labels = [str(v).strip() for v in table[cfg.label_column]]
        looks_like_header = not is_int(labels[0]) and all(is_int(v) for v in labels[1:])
    if looks_like_header:
        raise ConfigError(f"data.column_names: {path} starts with a header row ({', '.join(first)}); data.column_names is "
                          "for files without one (leave it empty to read the header)")


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) or type(v).__name__ in ("NAType", "NaTType")


def _incomplete_rows(x: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks: a missing label (blank, nan, null), -1 (unlabelled), an empty text."""
    if y.dtype.kind in "iub":
        missing, unlabelled = np.zeros(len(y), bool), (y == -1) if y.dtype.kind != "b" else np.zeros(len(y), bool)
    elif y.dtype.kind == "f":
        missing, unlabelled = np.isnan(y), y == -1
    else:
        missing = np.array([_is_null(v) or (isinstance(v, str) and v.strip().lower() in MISSING_LABELS) for v in y], bool)
        unlabelled = np.array([(isinstance(v, str) and v.strip() == "-1")
                               or (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and v == -1)
                               for v in y], bool)
    # A text, or a (text, pair) tuple for sentence-pair tasks: empty when any part is.
    empty = np.zeros(len(y), bool) if isinstance(x, np.ndarray) else \
        np.array([not all(p.strip() for p in (t if isinstance(t, tuple) else (t,))) for t in x], bool)
    return missing, unlabelled, empty


def incomplete_rows_kept(where: str, x: Any, y: np.ndarray, cfg: DataConfig) -> np.ndarray | None:
    """Rows lacking a label or a text are an error, or (data.drop_incomplete) dropped with a warning.
    Returns the indices of the rows to keep, or None to keep all."""
    missing, unlabelled, empty = _incomplete_rows(x, y)
    bad = missing | unlabelled | empty
    if bad.any() and not cfg.drop_incomplete:
        hint = "; or set data.drop_incomplete: true to drop such rows"
        for mask, key, what in ((missing, "data.label_column", "have no label (blank, nan, null)"),
                                (unlabelled, "data.label_column", "are labelled -1 (unlabelled)"),
                                (empty, "data.text_column", "have an empty text")):
            if mask.any():
                raise ConfigError(f"{key}: {int(mask.sum())} of {len(y)} rows of {where} {what}, first at row "
                                  f"{int(np.flatnonzero(mask)[0])} (counting data rows from 0){hint}")
    if len(y) == int(bad.sum()):
        raise ConfigError(f"data.name: {where} has no examples" + (" left after data.drop_incomplete" if bad.any() else ""))
    if not bad.any():
        return None
    log.warning("data.drop_incomplete: dropped %d of %d rows of %s (missing label or empty text)", int(bad.sum()), len(y), where)
    return np.flatnonzero(~bad)


def normalise_labels(y: np.ndarray) -> np.ndarray:
    """Integer-valued labels as int64 (0.0/1.0 from a JSON column with nulls, digit strings from a CSV
    column that had blanks); other labels as strings; non-integer numbers stay floats (rejected later)."""
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        return y.astype(np.int64) if bool(np.all(np.mod(y, 1) == 0)) else y
    if y.dtype.kind == "b":
        return y
    values = list(y)
    if all((isinstance(v, (int, np.integer)) and not isinstance(v, bool)) or (isinstance(v, str) and is_int(v.strip()))
           for v in values):
        return np.asarray([int(v) for v in values], dtype=np.int64)
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    return np.asarray([str(v) for v in values])


def check_classes(labels: np.ndarray, cfg: DataConfig) -> None:
    """Labels are class ids 0..C-1 with every class present (integers) or class names (strings), C >= 2."""
    key = "data.label_column"
    if labels.dtype.kind == "f":
        bad = labels[np.mod(labels, 1) != 0][0]
        raise ConfigError(f"{key}: labels must be class ids (integers) or class names (strings); {cfg.name} has {bad:g}")
    classes = np.unique(labels if labels.dtype.kind in "iu" else labels.astype(str))
    if len(classes) < 2:
        raise ConfigError(f"{key}: {cfg.label_column!r} must hold at least 2 classes; {cfg.name} has only one "
                          f"({classes.tolist()[0]!r})")
    if labels.dtype.kind in "iu":
        if classes[0] < 0:
            raise ConfigError(f"{key}: integer labels are class ids and must be >= 0; {cfg.name} has {classes[0]}")
        if classes[-1] + 1 != len(classes):
            absent = sorted(set(range(int(classes[-1]) + 1)) - set(classes.tolist()))
            raise ConfigError(f"{key}: integer labels are class ids and must be 0..C-1 with every class present; "
                              f"{cfg.name} has {len(classes)} labels from {classes[0]} to {classes[-1]} (no example of "
                              f"{absent[0]}{', ...' if len(absent) > 1 else ''}): relabel them 0..{len(classes) - 1}")


def check_carving(labels: np.ndarray, fraction: float, split: str, cfg: DataConfig) -> None:
    """A stratified carve needs >= 2 examples per class and >= one example per class on each side."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        c = classes.tolist()[int(counts.argmin())]
        raise ConfigError(f"data.label_column: class {c!r} has 1 example in {cfg.name}; carving a stratified {split} split "
                          f"needs >= 2 per class (add examples, or give a {split} split with data.{split}_split)")
    held = math.ceil(fraction * len(labels))
    if held < len(classes) or len(labels) - held < len(classes):
        raise ConfigError(f"data.{split}_fraction: carving a {split} split from {len(labels)} examples of {cfg.name} gives "
                          f"it {held} and train {len(labels) - held}; each needs at least one example per class "
                          f"({len(classes)}): use more data or another fraction")


def check_splits(labels: dict[str, np.ndarray], cfg: DataConfig) -> None:
    """Train holds every class; validation and test hold >= 2 classes (their metrics compare classes)."""
    train = set(np.unique(labels["train"]).tolist())
    for s in ("val", "test"):
        absent = sorted(set(np.unique(labels[s]).tolist()) - train, key=str)
        if absent:
            raise ConfigError(f"data.train_split: the train split of {cfg.name} has no example of class {absent[0]!r} "
                              f"(its {s} split has); every class needs training examples")
    for s in ("val", "test"):
        present = np.unique(labels[s])
        if len(present) < 2:
            raise ConfigError(f"data.{s}_split: the {s} split of {cfg.name} holds {len(labels[s])} examples of "
                              f"{len(present)} class; its metrics need >= 2 classes")
