"""Hugging Face datasets (a hub id, or a directory written by `datasets.save_to_disk`) the HF way: loaded
by `datasets`, checked for the configured columns and labels, and tokenized by `datasets.Dataset.map`,
which caches the result beside the data under a fingerprint of the rows, the function and the tokenizer,
so every run or trial on a node after the first reads it instead of tokenizing again."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from saeception.config import ConfigError, DataConfig
from saeception.data.sources import SPLITS, Raw, as_texts, source_kind, text_columns

log = logging.getLogger(__name__)

# Hub datasets addressed as "<name>/<config>".
_MULTI_CONFIG_DATASETS = {"glue", "super_glue", "nyu-mll/glue", "aps/super_glue"}


def _hf_splits(cfg: DataConfig) -> dict[str, Any]:
    """{source split name: datasets.Dataset} of a hub dataset (at `data.revision`) or a saved one."""
    import datasets  # lazy: datasets only for Hugging Face data

    if source_kind(cfg.name) == "saved":
        try:
            loaded = datasets.load_from_disk(str(Path(cfg.name).expanduser()))
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.name: cannot read the saved dataset {cfg.name}: {e}") from e
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    name, subset = cfg.name, cfg.subset or None
    head, _, tail = name.rpartition("/")
    if subset is None and head in _MULTI_CONFIG_DATASETS:
        name, subset = head, tail
    return dict(datasets.load_dataset(name, subset, revision=cfg.revision or None))


def _hf_source_splits(cfg: DataConfig, dd: dict[str, Any]) -> dict[str, Any]:
    """{ours: Dataset} for the configured splits that exist and carry labels (an unlabelled one, such
    as GLUE's test, is carved from train instead). Checks the columns."""
    out = {}
    for ours, theirs in (("train", cfg.train_split), ("val", cfg.val_split), ("test", cfg.test_split)):
        if theirs not in dd:
            continue
        ds = dd[theirs]
        inputs = (("data.features", cfg.features),) if cfg.features else text_columns(cfg)
        for key, col in (*inputs, ("data.label_column", cfg.label_column)):
            if col not in ds.column_names:
                raise ConfigError(f"{key}: column {col!r} not in {cfg.name}[{theirs}] (columns: {', '.join(ds.column_names)})")
        labels = np.asarray(ds[cfg.label_column][:])
        if np.issubdtype(labels.dtype, np.integer) and len(labels) and (labels < 0).all():
            log.info("split %s of %s is unlabelled; carving it from train", theirs, cfg.name)
            continue
        out[ours] = ds
    if "train" not in out:
        raise ConfigError(f"data.train_split: {cfg.train_split!r} not in {cfg.name} (splits: {', '.join(dd)})")
    return out


def load_hf(cfg: DataConfig) -> tuple[dict[str, tuple[Any, np.ndarray]], dict[str, Any] | None]:
    """Raw texts and labels of a hub or saved dataset, and its Datasets (for tokenization by `.map`); with
    data.features, the pixels of its image column and no Datasets."""
    sources = _hf_source_splits(cfg, _hf_splits(cfg))
    if cfg.features:  # an image column: pixels, nothing to tokenize
        from saeception.data.features import image_features  # lazy: only for image data

        return {ours: (image_features(ds[cfg.features][:], f"{cfg.name}[{ours}]"), np.asarray(ds[cfg.label_column][:]))
                for ours, ds in sources.items()}, None
    raw = {ours: (as_texts([ds[c][:] for _, c in text_columns(cfg)]), np.asarray(ds[cfg.label_column][:]))
           for ours, ds in sources.items()}
    return raw, sources


def _tokenize_batch(batch: dict[str, list], tokenizer, columns: tuple[str, ...], max_length: int) -> dict[str, list]:
    texts = [[str(t) for t in batch[c]] for c in columns]
    return {"input_ids": tokenizer(*texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]}


def token_ids_by_map(sources: dict[str, Any], splits: dict[str, Raw], cfg: DataConfig, tokenizer) -> dict[str, list[list[int]]]:
    """Token ids of every final split, tokenized with `datasets.Dataset.map` over the rows the splits
    use: datasets caches the result beside the dataset under a fingerprint of the rows, the function and
    the tokenizer, so every trial on a node after the first reads it instead of tokenizing."""
    columns = tuple(c for _, c in text_columns(cfg))
    fn = partial(_tokenize_batch, tokenizer=tokenizer, columns=columns, max_length=cfg.max_length)
    wanted: dict[str, set[int]] = {}
    for s in SPLITS:
        for sid in splits[s][2]:
            src, _, row = str(sid).rpartition(":")
            wanted.setdefault(src, set()).add(int(row))
    by_row: dict[tuple[str, int], list[int]] = {}
    for src, rows in wanted.items():
        ordered = sorted(rows)
        ds = sources[src]
        subset = ds if ordered == list(range(len(ds))) else ds.select(ordered)
        mapped = subset.map(fn, batched=True, remove_columns=subset.column_names, desc=f"tokenizing {src}")
        by_row.update(zip(((src, r) for r in ordered), mapped["input_ids"][:]))
    out = {}
    for s in SPLITS:
        out[s] = [by_row[(src, int(row))] for src, _, row in (str(sid).rpartition(":") for sid in splits[s][2])]
    return out
