"""Hugging Face data the HF way, offline: a DatasetDict saved with `save_to_disk` goes through the same code
as a hub dataset (load, column and label checks, tokenization by `datasets.Dataset.map`, cached by
datasets' fingerprint), sentence pairs are tokenized together, and bad columns fail before any work."""

import random
import sys

import pytest

from saeception.config import ConfigError, DataConfig, ModelConfig, build_config
from saeception.data.tasks import SPLITS, check_source, load_task, source_kind
from saeception.models.classifiers import load_tokenizer

WORDS = ["apple", "engine", "violin", "the", "a", "pear", "gear", "drum"]


@pytest.fixture
def pair_dataset(tmp_path):
    """A sentence-pair task (premise, hypothesis, 3 labels) as a saved DatasetDict with a ClassLabel
    column and an unlabelled test split (like GLUE's): the test split is carved from train."""
    import datasets

    rng = random.Random(0)

    def split(n, labelled=True):
        return datasets.Dataset.from_dict(
            {"premise": [" ".join(rng.choices(WORDS, k=rng.randint(2, 9))) for _ in range(n)],
             "hypothesis": [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(n)],
             "label": [i % 3 if labelled else -1 for i in range(n)]},
            features=datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=["entail", "neutral", "contra"])
                                        if labelled else datasets.Value("int64")}))

    path = tmp_path / "pairs"
    datasets.DatasetDict({"train": split(90), "validation": split(30), "test": split(20, labelled=False)}).save_to_disk(str(path))
    return path


def pair_cfg(path, **kw) -> DataConfig:
    return build_config({"data.name": str(path), "data.text_column": "premise", "data.text_pair_column": "hypothesis",
                         "data.max_length": 16, **{f"data.{k}": v for k, v in kw.items()}}).data


def cache_files(path):
    return sorted(p.name for p in path.rglob("cache-*.arrow"))


def test_saved_dataset_is_tokenized_by_map_with_pairs_and_the_result_is_reused(pair_dataset, gpt2_dir):
    cfg = pair_cfg(pair_dataset)
    assert source_kind(cfg.name) == "saved"
    task = load_task(cfg, load_tokenizer(ModelConfig(name=str(gpt2_dir))))
    # GLUE-style unlabelled test split: carved from train; validation kept.
    assert {s: len(task.split(s)) for s in SPLITS} == {"train": 72, "val": 30, "test": 18}
    assert task.n_classes == 3 and task.kind == "text"
    written = cache_files(pair_dataset)
    assert written, "tokenization did not go through datasets.Dataset.map (no cache file beside the dataset)"

    # Every example's ids are the tokenizer's on (text, pair), for the example its source id names.
    import datasets

    raw = datasets.load_from_disk(str(pair_dataset))
    tok = load_tokenizer(ModelConfig(name=str(gpt2_dir)))
    for s in SPLITS:
        split = task.split(s)
        for sid, ids in list(zip(split.source_ids, split.inputs))[:10]:
            source, row = {"train": "train", "val": "validation"}[sid.split(":")[0]], int(sid.split(":")[1])
            ex = raw[source][row]
            assert ids == tok(ex["premise"], ex["hypothesis"], truncation=True, max_length=16)["input_ids"]

    # A second load (a new tokenizer object, as in another trial) reuses the cached result: no new file.
    stamps = {p: p.stat().st_mtime_ns for p in pair_dataset.rglob("cache-*.arrow")}
    again = load_task(cfg, load_tokenizer(ModelConfig(name=str(gpt2_dir))))
    assert cache_files(pair_dataset) == written
    assert {p: p.stat().st_mtime_ns for p in pair_dataset.rglob("cache-*.arrow")} == stamps
    assert again.split("train").inputs == task.split("train").inputs and again.fingerprint == task.fingerprint

    # Without the pair column the examples are different inputs: different ids and data fingerprint.
    single = load_task(pair_cfg(pair_dataset, text_pair_column=""), tok)
    assert single.fingerprint != task.fingerprint
    assert single.split("train").inputs != task.split("train").inputs


def test_pairs_from_a_local_csv_match_the_tokenizer(tmp_path, gpt2_dir):
    path = tmp_path / "pairs.csv"
    path.write_text("a,b,label\n" + "\n".join(f"apple {i},gear {i % 5},{i % 2}" for i in range(40)) + "\n")
    cfg = build_config({"data.name": str(path), "data.text_column": "a", "data.text_pair_column": "b"}).data
    tok = load_tokenizer(ModelConfig(name=str(gpt2_dir)))
    task = load_task(cfg, tok)
    sid, ids = task.split("train").source_ids[0], task.split("train").inputs[0]
    row = int(sid.split(":")[1])
    assert ids == tok(f"apple {row}", f"gear {row % 5}", truncation=True, max_length=128)["input_ids"]


@pytest.mark.parametrize("key, value, message", [
    ("text_pair_column", "nope", "data.text_pair_column: column 'nope' not in"),
    ("text_column", "nope", "data.text_column: column 'nope' not in"),
    ("label_column", "premise", "data.label_column: 'premise' must hold at least 2 classes"),
    ("train_split", "other", "data.train_split: 'other' not in"),
    ("revision", "v1", "data.revision: only for Hugging Face hub datasets"),
])
def test_preflight_names_the_bad_key(pair_dataset, key, value, message):
    cfg = pair_cfg(pair_dataset, **{key: value})
    if key == "label_column":  # one distinct label value
        import datasets

        d = datasets.load_from_disk(str(pair_dataset))
        d = datasets.DatasetDict({k: v.map(lambda ex: {"premise": "same"}) for k, v in d.items()})
        path = pair_dataset.parent / "one_label"
        d.save_to_disk(str(path))
        cfg = pair_cfg(path, label_column="premise")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_source(cfg, "gpt2")


def test_preflight_of_an_unreachable_hub_dataset_is_a_note(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    note = check_source(DataConfig(name="saeception-test/not-cached-anywhere"), "gpt2")
    assert note and note.startswith("data.name: 'saeception-test/not-cached-anywhere' is neither reachable nor cached")


def test_sweep_preflight_rejects_a_bad_column_before_ray(pair_dataset, gpt2_dir, tmp_path, capsys):
    from saeception.sweep.cli import main

    storage = tmp_path / "s"
    argv = ["--space", "tests/support/spaces/tiny.yaml", "--storage", str(storage), "--dry-run",
            "--set", f"data.name={pair_dataset}", "--set", f"model.name={gpt2_dir}", "--set", "data.text_column=premise",
            "--set", "data.text_pair_column=hypo"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.text_pair_column: column 'hypo' not in") and "\n" not in err
    assert not storage.exists()
    assert "ray" not in sys.modules or not __import__("ray").is_initialized()
