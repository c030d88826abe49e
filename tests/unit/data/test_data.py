"""Data: splits fixed by data.split_seed, test splits redrawn by data.test_draw, split identity, labels, batching."""

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


def digits_task(**over):
    """The digits task (no cap) and the digits themselves, to check every example against its source id."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return load_task(DataConfig(name="digits", **over)), (d.data / 16.0).astype("float32"), d.target


def rows(split) -> list[int]:
    return [int(i.removeprefix("all:")) for i in split.source_ids]


def test_without_a_test_draw_the_test_split_is_the_split_seed_carve():
    from sklearn.model_selection import train_test_split

    task, _, y = digits_task(test_draw=None)
    assert task.splits_identity() == load_task(DataConfig(name="digits")).splits_identity()
    # The test split carved first from all examples (test_fraction, split_seed, stratified), as before test_draw.
    rest, test = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=y)
    assert rows(task.test) == sorted(test)
    assert sorted(rows(task.train) + rows(task.val)) == sorted(rest)


def test_each_test_draw_redraws_the_test_split_from_train_and_test_leaving_val_alone():
    import numpy as np

    carved, x, y = digits_task()
    draws = {seed: digits_task(test_draw=seed)[0] for seed in (0, 1)}
    pool = set(carved.train.source_ids) | set(carved.test.source_ids)
    tests = {"carved": set(carved.test.source_ids)} | {seed: set(t.test.source_ids) for seed, t in draws.items()}
    assert len({frozenset(t) for t in tests.values()}) == 3  # every draw its own test split, none the carve
    counts = np.bincount(y[rows(carved.test)], minlength=10)
    for seed, task in draws.items():
        assert len(task.test) == len(carved.test) and len(task.train) == len(carved.train), seed
        # Stratified: each class as many test examples as in the carve, give or take the rounding of one.
        assert np.abs(np.bincount(y[rows(task.test)], minlength=10) - counts).max() <= 1, seed
        # Val as the carve left it, example for example; train and test share out the same examples.
        assert task.val.source_ids == carved.val.source_ids and torch.equal(task.val.inputs, carved.val.inputs)
        assert set(task.train.source_ids) | set(task.test.source_ids) == pool
        assert not set(task.train.source_ids) & set(task.test.source_ids)
        assert not set(task.val.source_ids) & set(task.test.source_ids)
        assert task.splits_identity()["val"] == carved.splits_identity()["val"]
        assert task.splits_identity()["test"] != carved.splits_identity()["test"]
        for s in ("train", "test"):  # every example still carries its own inputs and label
            split = task.split(s)
            assert torch.equal(split.inputs, torch.as_tensor(x[rows(split)])) and split.labels.tolist() == y[rows(split)].tolist()


def test_the_same_test_draw_gives_the_same_splits():
    a, b = (digits_task(test_draw=3)[0] for _ in range(2))
    assert a.splits_identity() == b.splits_identity()
    assert all(a.split(s).source_ids == b.split(s).source_ids for s in ("train", "val", "test"))
    assert a.fingerprint == b.fingerprint
    capped = load_task(DataConfig(name="digits", test_draw=3, max_examples=100))  # the cap comes after the draw
    assert len(capped.test) == 100 and set(capped.test.source_ids) <= set(a.test.source_ids)


@pytest.mark.bad_input
@pytest.mark.parametrize("value", [-1, True, "one", 1.5])
def test_test_draw_must_be_null_or_an_integer_at_least_0(value):
    with pytest.raises(ConfigError, match=r"^data\.test_draw:"):
        DataConfig(test_draw=value)
    with pytest.raises(ConfigError, match=r"^data\.test_draw:"):
        build_config({"data.test_draw": value})


def test_test_draw_reads_null_and_integers_from_yaml_and_round_trips():
    from saeception.config import load_config, to_flat_dict

    assert load_config(None, ["data.test_draw=null"]).data.test_draw is None
    cfg = load_config(None, ["data.test_draw=0"])
    assert cfg.data.test_draw == 0 and build_config(to_flat_dict(cfg)).data.test_draw == 0
    assert build_config(to_flat_dict(build_config({}))).data.test_draw is None


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
