"""Artifacts: one safetensors + JSON save/load pair, checksummed directories, one owner of every path."""

import json

import pytest
import torch

from saeception.store.artifacts import ChainPaths, load_weights, save_weights, seal_dir, verify_dir


def test_weights_round_trip_with_their_config(tmp_path):
    tensors = {"w": torch.randn(3, 4), "b": torch.arange(4.0)}
    save_weights(tmp_path / "x", tensors, {"kind": "topk"})
    loaded, cfg = load_weights(tmp_path / "x")
    assert cfg["kind"] == "topk" and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.safetensors"]  # nothing half-written left


def test_a_future_format_version_is_refused(tmp_path):
    save_weights(tmp_path / "x", {"w": torch.zeros(1)}, {})
    meta = json.loads((tmp_path / "x.json").read_text())
    (tmp_path / "x.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        load_weights(tmp_path / "x")


def test_sealed_directory_detects_truncation_and_missing_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    (tmp_path / "b.json").write_text("{}")
    assert "no manifest" in verify_dir(tmp_path)
    seal_dir(tmp_path)
    assert verify_dir(tmp_path) is None
    (tmp_path / "a.bin").write_bytes(b"x" * 99)
    assert "checksum" in verify_dir(tmp_path)
    (tmp_path / "a.bin").unlink()
    assert "missing" in verify_dir(tmp_path)


def test_chain_paths_name_every_file_once(tmp_path):
    paths = ChainPaths(tmp_path)
    files = paths.cycle(3)
    assert files.path == tmp_path / "cycle_003"
    assert files.model.parent == files.sae.parent == files.metrics.parent == files.path
    assert paths.results() == tmp_path / "results.json"


def test_weights_get_the_mode_of_the_json_beside_them(tmp_path):
    """safetensors creates its files 0600: weights saved here get 0666 less the umask, as the JSON beside them,
    so a shared artifact store or an MLflow server under another user reads both (issue #37)."""
    import os
    import stat

    import torch

    from saeception.store.artifacts import save_weights

    old = os.umask(0o022)
    try:
        save_weights(tmp_path / "m", {"w": torch.zeros(2)}, {"name": "x"})
        mode = {s: stat.S_IMODE(os.stat(tmp_path / f"m.{s}").st_mode) for s in ("safetensors", "json")}
        assert mode == {"safetensors": 0o644, "json": 0o644}
        os.umask(0o077)
        save_weights(tmp_path / "p", {"w": torch.zeros(2)}, {"name": "x"})
        assert stat.S_IMODE(os.stat(tmp_path / "p.safetensors").st_mode) == 0o600
    finally:
        os.umask(old)
