import multiprocessing as mp
import time

import pytest

from saeception.artifacts import ChainPaths
from saeception.cache import StageCache, stage_keys
from saeception.chain import run_chain
from saeception.config import build_config

TINY = {"data.max_examples": 300, "model.hidden_sizes": [32, 16], "finetune.epochs": 2, "sae.steps": 60, "sae.k": 4,
        "aux.epochs": 1, "eval.probe_max_iter": 50, "chain.cycles": 1}


def keys(**over):
    return stage_keys(build_config({**TINY, **over}), "fp")


def test_same_inputs_same_keys_and_every_read_field_changes_them():
    base = keys()
    assert keys() == base
    # Cycle 0's model reads seed, data, model and fine-tuning settings: every one changes every key.
    for over in ({"seed": 1}, {"finetune.lr": 0.01}, {"finetune.epochs": 3}, {"model.name": "/models/other"},
                 {"model.hidden_sizes": [32, 8]}, {"data.max_examples": 200}):
        changed = keys(**over)
        assert all(changed[s] != base[s] for s in base), over
    assert stage_keys(build_config(TINY), "other-data")["model0"] != base["model0"]
    # Layer and pooling change the activations (and the SAE), not the fine-tuned model.
    for over in ({"model.layer": 0}, {"model.pooling": "mean"}):
        changed = keys(**over)
        assert changed["model0"] == base["model0"] and changed["acts0"] != base["acts0"] and changed["sae0"] != base["sae0"]
    # SAE settings change only the SAE; sharpening and aux settings change nothing cached.
    for over in ({"sae.k": 8}, {"sae.kind": "l1"}, {"sae.expansion_factor": 8}, {"sae.l1_coefficient": 0.1}):
        changed = keys(**over)
        assert changed["acts0"] == base["acts0"] and changed["sae0"] != base["sae0"]
    for over in ({"sharpen.top_k_pct": 5}, {"aux.weight": 0.0}, {"chain.cycles": 3}):
        assert keys(**over) == base


def test_cached_chain_equals_uncached_and_hits(tmp_path):
    cfg = build_config(TINY)
    plain = run_chain(cfg, ChainPaths(tmp_path / "plain"))
    cache = StageCache(tmp_path / "cache")
    first = run_chain(cfg, ChainPaths(tmp_path / "a"), cache=cache)
    assert cache.stats.misses == 3 and cache.stats.hits == 0
    second_cache = StageCache(tmp_path / "cache")
    # A different sharpening config reuses all of cycle 0.
    other = run_chain(build_config({**TINY, "sharpen.top_k_pct": 7.0}), ChainPaths(tmp_path / "b"), cache=second_cache)
    assert second_cache.stats.hits == 3 and second_cache.stats.misses == 0 and second_cache.stats.seconds_saved > 0
    for key in ("task_accuracy", "sae_u", "explained_variance", "probe_accuracy"):
        assert first[0][key] == plain[0][key] == other[0][key], key
    assert first[1]["task_accuracy"] == plain[1]["task_accuracy"]


def test_corrupted_entry_is_rebuilt_not_used(tmp_path):
    cfg = build_config(TINY)
    cache = StageCache(tmp_path / "cache")
    run_chain(cfg, ChainPaths(tmp_path / "a"), cache=cache)
    entry = cache.entry(stage_keys(cfg, _fingerprint(cfg))["sae0"])
    weights = entry / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    again = StageCache(tmp_path / "cache")
    run_chain(cfg, ChainPaths(tmp_path / "b"), cache=again)
    assert again.stats.hits == 2 and again.stats.misses == 1 and any("sae" in e for e in again.stats.events)
    assert (entry / "manifest.json").exists() and again.lookup(entry.name) is not None  # rebuilt, intact


def test_no_cache_bypasses_it(tmp_path):
    run_chain(build_config(TINY), ChainPaths(tmp_path / "a"), cache=None)
    assert not (tmp_path / "cache").exists()


def _fingerprint(cfg):
    from saeception.data import load_task

    return load_task(cfg.data, cfg.seed).fingerprint


def _builder(root: str, key: str, out, barrier) -> None:
    cache = StageCache(root)
    barrier.wait()
    with cache.lock(key):
        path = cache.lookup(key)
        if path is None:
            time.sleep(0.5)  # a slow build: the other builder must wait, not build too
            cache.publish(key, lambda d: (d / "x.json").write_text("{}"), 0.5)
            out.put("built")
        else:
            cache.record_hit(path)
            out.put("reused")


def test_two_concurrent_builders_produce_one_entry(tmp_path):
    ctx = mp.get_context("spawn")
    out, barrier = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=_builder, args=(str(tmp_path), "abcdef123", out, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(out.get(timeout=5) for _ in procs) == ["built", "reused"]
    entries = [p for p in (tmp_path / "ab").iterdir() if not p.name.endswith(".lock")]
    assert [p.name for p in entries] == ["abcdef123"]


@pytest.mark.parametrize("readonly", [True])
def test_readonly_cache_never_writes(tmp_path, readonly):
    cache = StageCache(tmp_path / "ro", readonly=readonly)
    run_chain(build_config(TINY), ChainPaths(tmp_path / "a"), cache=cache)
    assert cache.stats.misses == 3 and not (tmp_path / "ro").exists()
