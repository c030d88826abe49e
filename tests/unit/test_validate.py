"""The validation pass's parts (saeception.validate): which combinations of a space it checks, what it
does with a hub dataset or model it cannot reach, and that checking a path writes nothing. The CLIs'
end of it: tests/unit/test_bad_inputs.py."""

from __future__ import annotations

import logging

import pytest

from saeception.config import ConfigError, DataConfig, ModelConfig, build_config
from saeception.sweep.space import parse_space
from saeception.validate import Checker, DataFacts, check_dir, check_run, check_space, combinations

OBJ = [{"metric": "val_sae_u", "mode": "max"}]


def test_combinations_cover_choices_and_range_ends_and_honour_when():
    space = parse_space({"fixed": {"model.hidden_sizes": [32, 16]}, "objectives": OBJ, "params": {
        "sae.kind": {"choices": ["topk", "l1"]},
        "sae.k": {"type": "int", "low": 2, "high": 9, "step": 3, "when": {"sae.kind": "topk"}},
        "sae.expansion_factor": {"choices": [2, 4]},
        "aux.weight": {"type": "float", "low": 0.1, "high": 1.0}}})  # irrelevant to the data and model checks
    combos = list(combinations(space))
    assert {"sae.kind": "topk", "sae.k": 8, "sae.expansion_factor": 2} in combos  # 9 is not on the step grid
    assert {"sae.kind": "l1", "sae.expansion_factor": 4} in combos and len(combos) == 6
    assert all("aux.weight" not in c for c in combos)
    check_space(space)


def test_a_searched_value_that_breaks_the_model_is_named():
    space = parse_space({"fixed": {"sae.k": 16}, "objectives": OBJ,
                         "params": {"model.hidden_sizes": {"choices": [[64, 32], [8, 2]]}}})
    with pytest.raises(ConfigError, match=r"^sae.k: .*\(when model.hidden_sizes=\[8, 2\]\)$"):
        check_space(space)


def test_hub_data_and_models_that_cannot_be_reached_are_left_to_the_run(caplog, monkeypatch):
    """Offline and not cached: a warning, and the run checks them when it loads them (same rules)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    checker = Checker()
    with caplog.at_level(logging.WARNING, logger="saeception.validate"):
        assert checker.data(DataConfig(name="no-such-org/no-such-dataset")) is None
        assert checker.width(ModelConfig(name="no-such-org/no-such-model"), "x.csv", DataFacts("text", 2, 0)) is None
    assert "not checked now" in caplog.text and "no-such-dataset" in caplog.text and "no-such-model" in caplog.text


def test_check_run_accepts_the_default_config():
    check_run(build_config({}))


def test_check_dir_writes_nothing(tmp_path):
    check_dir(tmp_path / "new" / "deeper", "--out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"^--out: .*f \(a parent of"):
        check_dir(tmp_path / "f" / "sub", "--out")
    with pytest.raises(ConfigError, match=r"^--cache: .*f is a file"):
        check_dir(tmp_path / "f", "--cache")
