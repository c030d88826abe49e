"""Data: splits fixed by data.split_seed, split identity, labels, batching."""

import json

import pytest
import torch

from saeception.config import ConfigError, DataConfig, build_config
from saeception.data.tasks import load_task
from saeception.method.chain import run_chain
from saeception.store.artifacts import ChainPaths

TINY = {"model.hidden_sizes": [32, 16], "finetune.epochs": 1, "sae.steps": 50, "sae.k": 4, "eval.probe_max_iter": 50,
        "data.max_examples": 300}


def tiny(**over):
    return build_config({**TINY, **over})


def test_split_seed_fixes_the_splits_whatever_the_seed(tmp_path):
    from saeception.data.tasks import load_task

    a = load_task(build_config({"seed": 0}).data)
    b = load_task(build_config({"seed": 7}).data)
    c = load_task(build_config({"data.split_seed": 1}).data)
    assert a.splits_identity() == b.splits_identity() and a.splits_identity() != c.splits_identity()
    ids = {s: set(a.split(s).source_ids) for s in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["val"] & ids["test"]) and not (ids["train"] & ids["test"])
    history_paths = ChainPaths(tmp_path / "r")
    run_chain(tiny(**{"chain.cycles": 0, "seed": 3}), history_paths)
    results = json.loads(history_paths.results().read_text())
    assert results["splits"] == load_task(tiny(seed=0).data).splits_identity()


def test_two_splits_may_not_name_the_same_source_split():
    with pytest.raises(ConfigError, match="data.val_split"):
        DataConfig(val_split="train")
    with pytest.raises(ConfigError, match="data.val_split"):
        build_config({"data.test_split": "validation"})


def test_split_identity_hashes_the_sorted_source_ids():
    import hashlib

    task = load_task(DataConfig(name="digits", max_examples=100))
    ident = task.splits_identity()
    ids = sorted(task.val.source_ids)
    assert ident["val"] == {"n": len(ids), "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    assert all(i.startswith("all:") for i in ids)


def test_length_grouped_batches_cover_every_example_once_and_cut_padding():
    from saeception.data.tasks import length_grouped_batches

    lengths = [int(x) for x in torch.randint(1, 100, (1000,))]
    for shuffle in (True, False):
        batches = length_grouped_batches(lengths, 16, shuffle, seed=3)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        naive = sum(16 * max(lengths[i] for i in range(s, min(s + 16, 1000))) for s in range(0, 1000, 16))
        assert padded < 0.8 * naive


def test_batches_of_a_loader_carry_example_ids():
    from saeception.data.tasks import loader

    task = load_task(DataConfig(name="digits", max_examples=100))
    seen = torch.cat([b["ids"] for b in loader(task, "train", 16, shuffle=True, seed=0)])
    assert sorted(seen.tolist()) == list(range(len(task.train)))
    assert json.dumps(task.splits_identity())  # JSON-serialisable, as results.json stores it
