"""What data is accepted (saeception.data.checks), on the accepting side: rows dropped on request, labels
normalised the way a run encodes them. The rejecting side: tests/unit/test_bad_inputs.py."""

from __future__ import annotations

import json
import logging

import numpy as np

from saeception.config import DataConfig
from saeception.data.tasks import SPLITS, encode_labels, load_splits


def _csv(path, labels, texts=None):
    rows = ["text,label"] + [f"{texts[i] if texts else f'word{i % 7} apple {i}'},{y}" for i, y in enumerate(labels)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_drop_incomplete_drops_rows_without_label_or_text_and_says_how_many(tmp_path, caplog):
    labels = ["" if i % 10 == 3 else "nan" if i % 10 == 5 else -1 if i % 10 == 7 else i % 2 for i in range(60)]
    texts = [" " if i == 8 else f"apple pear {i}" for i in range(60)]
    name = _csv(tmp_path / "d.csv", labels, texts)
    with caplog.at_level(logging.WARNING, logger="saeception.data.checks"):
        splits = load_splits(DataConfig(name=name, drop_incomplete=True))
    kept = {i for s in SPLITS for i in splits[s][2]}
    dropped = {f"all:{i}" for i in range(60) if i % 10 in (3, 5, 7) or i == 8}
    assert len(dropped) == 19 and not kept & dropped and len(kept) == 60 - 19  # source ids still name file rows
    assert "dropped 19 of 60 rows" in caplog.text
    encoded, n_classes = encode_labels(splits)
    assert n_classes == 2 and all(set(encoded[s].tolist()) == {0, 1} for s in SPLITS)


def test_labels_are_normalised_as_a_run_encodes_them(tmp_path):
    # Null labels make a JSON column float: after dropping them, 0.0/1.0 are the class ids 0/1.
    rows = [{"text": f"apple {i}", "label": None if i % 9 == 0 else i % 2} for i in range(60)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    splits = load_splits(DataConfig(name=str(tmp_path / "d.jsonl"), drop_incomplete=True))
    assert splits["train"][1].dtype == np.int64 and set(splits["train"][1].tolist()) == {0, 1}
    # Class names are encoded in sorted order; integer labels stay the class ids they are.
    names = _csv(tmp_path / "n.csv", ["pos" if i % 2 else "neg" for i in range(60)])
    assert encode_labels(load_splits(DataConfig(name=names)))[1] == 2
    ids = _csv(tmp_path / "i.csv", [i % 3 for i in range(60)])
    encoded, n = encode_labels(load_splits(DataConfig(name=ids)))
    assert n == 3 and set(encoded["train"].tolist()) == {0, 1, 2}
