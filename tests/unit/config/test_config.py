import subprocess
import sys

import pytest

from saeception.config import Config, ConfigError, build_config, config_keys, load_config
from saeception.sweep.space import parse_space

INVALID = [
    ({"sae.kind": "relu"}, "sae.kind"),
    ({"sae.expansion_factor": 0}, "sae.expansion_factor"),
    ({"sae.expansion_factor": 2.5}, "sae.expansion_factor"),
    ({"sae.k": 0}, "sae.k"),
    ({"sae.k": "many"}, "sae.k"),
    ({"sae.l1_coefficient": -1.0}, "sae.l1_coefficient"),
    ({"sae.lr": 0}, "sae.lr"),
    ({"sae.steps": 0}, "sae.steps"),
    ({"sae.tokens": "some"}, "sae.tokens"),
    ({"sharpen.strategy": "best"}, "sharpen.strategy"),
    ({"sharpen.top_k_pct": 0}, "sharpen.top_k_pct"),
    ({"sharpen.top_k_pct": 150}, "sharpen.top_k_pct"),
    ({"aux.weight": -0.5}, "aux.weight"),
    ({"aux.epochs": 0}, "aux.epochs"),
    ({"chain.cycles": -1}, "chain.cycles"),
    ({"data.val_fraction": 1.5}, "data.val_fraction"),
    ({"data.val_fraction": 0.6, "data.test_fraction": 0.5}, "data.val_fraction"),
    ({"data.padding_side": "middle"}, "data.padding_side"),
    ({"model.pooling": "max"}, "model.pooling"),
    ({"model.freeze": "all"}, "model.freeze"),
    ({"model.layer": 5}, "model.layer"),
    ({"model.layer": 1.5}, "model.layer"),
    ({"model.hidden_sizes": []}, "model.hidden_sizes"),
    ({"finetune.epochs": -1}, "finetune.epochs"),
    ({"device": "tpu"}, "device"),
    ({"seed": "zero"}, "seed"),
    ({"eval.min_firing_rate": 0}, "eval.min_firing_rate"),
    ({"eval.min_firing_rate": 1}, "eval.min_firing_rate"),
    ({"eval.min_firing_rate": -0.1}, "eval.min_firing_rate"),
    ({"eval.min_firings": 5}, "eval.min_firings"),
    ({"sae.bogus": 1}, "sae.bogus"),
    ({"nonsense": 1}, "nonsense"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize("values,key", INVALID, ids=[k for _, k in INVALID])
def test_every_invalid_value_names_its_key(values, key):
    with pytest.raises(ConfigError) as e:
        build_config(values)
    assert str(e.value).startswith(f"{key}:")


@pytest.mark.bad_input
def test_a_config_or_space_naming_the_removed_min_firings_fails_and_points_to_the_rate(tmp_path):
    """eval.min_firings (an absolute count) became eval.min_firing_rate (a share of the split): an old config or
    space fails by the old key's name, with the new key in the message, not the list of every key."""
    p = tmp_path / "old.yaml"
    p.write_text("eval:\n  min_firings: 5\n")
    for load in (lambda: load_config(p), lambda: load_config(None, ["eval.min_firings=5"])):
        with pytest.raises(ConfigError) as e:
            load()
        assert str(e.value).startswith("eval.min_firings: removed") and "eval.min_firing_rate" in str(e.value)
        assert "known:" not in str(e.value)
    for space, where in (({"fixed": {"eval.min_firings": 5}, "params": {"sae.k": {"choices": [4, 8]}}}, "fixed"),
                         ({"params": {"eval.min_firings": {"type": "int", "low": 1, "high": 9}}}, "params")):
        with pytest.raises(ConfigError) as e:
            parse_space(space)
        assert str(e.value).startswith(f"{where}.eval.min_firings: removed") and "eval.min_firing_rate" in str(e.value)
    assert build_config({"eval.min_firing_rate": 0.05}).eval.min_firing_rate == 0.05


def test_k_must_be_below_latent_count():
    cfg = build_config({"sae.k": 64, "sae.expansion_factor": 2})
    with pytest.raises(ConfigError, match="sae.k: must be < the number of latents"):
        cfg.sae.check_width(32)
    cfg.sae.check_width(64)


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("sae:\n  kind: l1\n  l1_coefficient: 0.01\nchain.cycles: 3\n")
    cfg = load_config(p, ["sae.expansion_factor=8", "model.hidden_sizes=[32, 16]", "model.layer=model.hidden.0"])
    assert cfg.sae.kind == "l1" and cfg.sae.l1_coefficient == 0.01
    assert cfg.chain.cycles == 3 and cfg.sae.expansion_factor == 8
    assert cfg.model.hidden_sizes == [32, 16] and cfg.model.layer == "model.hidden.0"


def test_public_keys_exist():
    keys = config_keys()
    for k in ["seed", "chain.cycles", "data.name", "model.name", "model.layer", "sae.kind", "sae.expansion_factor",
              "sae.k", "sae.l1_coefficient", "sharpen.strategy", "sharpen.top_k_pct", "aux.weight"]:
        assert k in keys
    assert isinstance(Config(), Config)


@pytest.mark.bad_input
@pytest.mark.parametrize("args,key", [
    (["--set", "sae.kind=relu"], "sae.kind"),
    (["--set", "sharpen.top_k_pct=0"], "sharpen.top_k_pct"),
    (["--set", "sae.k=100000"], "sae.k"),
    (["--config", "/nonexistent.yaml"], "--config"),
    (["--set", "data.name=/nonexistent/file.csv"], "data.name"),
])
def test_run_cli_rejects_bad_config_with_exit_2(tmp_path, args, key):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "saeception.run", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}:"), r.stderr
    assert not out.exists()
