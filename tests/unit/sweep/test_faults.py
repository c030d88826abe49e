"""Faults, each really done: stored files crafted or damaged, a cache that cannot be written, a NaN on
one DDP rank, a sweep driver SIGKILLed right after a trial started. Run one group alone with its marker
(`storage_faults`, `security`, `divergence`, `orphans`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import torch
from faults import FAULT_CHAIN, stage_keys

from saeception.config import build_config
from saeception.method.chain import ChainState, run_chain
from saeception.method.errors import CorruptCycleError
from saeception.store.artifacts import ChainPaths, seal_dir, verify_dir
from saeception.store.cache import StageCache


def _tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if any(p == s or s in p.parents for s in skip):
            continue
        st = p.lstat()
        out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


# ---- stored files are input -----------------------------------------------------------------------


@pytest.mark.storage_faults
@pytest.mark.security
def test_crafted_pointer_writes_nothing_outside_the_scratch_directory(tmp_path):
    """A pointer whose file or build names climb out ('../') is rejected before any path is made from
    it; a truncated or mistyped pointer is rejected too, never a crash."""
    from saeception.store.cache import ObjectStageCache

    store, scratch = tmp_path / "store", tmp_path / "a" / "b" / "scratch"
    cache = ObjectStageCache(f"local://{store}", scratch=scratch)
    key = "abcdef0123456789"
    cache.publish(key, lambda d: (d / "x.json").write_text('{"v": 1}'), 1.0)
    good = cache._read_pointer(key)
    payload = b"owned"
    evil_file = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    blob = cache._blob(key, good["build"])
    with cache.fs.open_output_stream(blob + "/escaped.txt") as f:  # what a reader would copy out
        f.write(payload)
    crafted = {
        "file name with ../": json.dumps({**good, "files": {**good["files"], "../../../../escaped.txt": evil_file}}),
        "absolute file name": json.dumps({**good, "files": {**good["files"], str(tmp_path / "escaped.txt"): evil_file}}),
        "build with ../": json.dumps({**good, "build": "../../../escaped-build"}),
        "truncated": json.dumps(good)[:40],
        "a JSON list": json.dumps([good]),
        "no files": json.dumps({"key": key, "build": good["build"]}),
        "another key": json.dumps({**good, "key": "0" * 16}),
    }
    for what, text in crafted.items():
        reader = ObjectStageCache(f"local://{store}", scratch=scratch)
        with reader.fs.open_output_stream(reader._pointer(key)) as f:
            f.write(text.encode())
        before = _tree(tmp_path, skip=(scratch, store))
        assert reader.lookup(key) is None, what
        assert reader.stats.events and "rejected" in reader.stats.events[0], what
        assert _tree(tmp_path, skip=(scratch, store)) == before, what
        assert not [p for p in tmp_path.rglob("escaped*") if store not in p.parents], what
        assert reader._read_pointer(key) is None, f"{what}: the bad pointer is dropped, so the entry is rebuilt"


@pytest.mark.storage_faults
def test_empty_or_malformed_manifest_is_rejected(tmp_path):
    """A `{}` manifest once passed (nothing to check) and the cycle was trusted with no files; a list,
    or an entry without sha256, crashed the reader."""
    paths = ChainPaths(tmp_path / "run")
    run_chain(build_config(FAULT_CHAIN), paths)
    cycle = paths.cycle(0)
    assert cycle.verify() is None and ChainState.load(cycle.path)
    manifest = cycle.path / "manifest.json"
    good = json.loads(manifest.read_text())
    some = next(iter(good))
    for what, data in {"{}": {}, "a list": list(good), "no sha256": {k: {"bytes": v["bytes"]} for k, v in good.items()},
                       "a path, not a name": {**good, "../x": good[some]},
                       "missing a cycle file": {k: v for k, v in good.items() if k != "sae.safetensors"}}.items():
        manifest.write_text(json.dumps(data))
        assert verify_dir(cycle.path, required=("metrics.json",)) is not None or what == "missing a cycle file", what
        with pytest.raises(CorruptCycleError):
            ChainState.load(cycle.path)
    # Checksums can match a crafted file: its content is still checked as it is read.
    manifest.write_text(json.dumps(good))
    cycle.metrics.write_text(json.dumps({"cycles": "not a list"}))
    seal_dir(cycle.path)
    with pytest.raises(CorruptCycleError, match="cycles"):
        ChainState.load(cycle.path)


@pytest.mark.storage_faults
def test_cache_entry_with_an_empty_manifest_is_rebuilt(tmp_path):
    cache = StageCache(tmp_path / "cache")
    first = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "a"), cache=cache)
    entry = cache.entry(stage_keys(FAULT_CHAIN)["sae"])
    (entry / "manifest.json").write_text("{}")
    again = StageCache(tmp_path / "cache")
    second = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "b"), cache=again)
    assert again.stats.hits == 2 and again.stats.misses == 1
    assert any("lists no files" in e for e in again.stats.events), again.stats.events
    assert second[0]["sae_u"] == first[0]["sae_u"] and verify_dir(entry) is None  # rebuilt and intact


@pytest.mark.storage_faults
def test_cache_entry_whose_content_cannot_be_used_is_rebuilt(tmp_path):
    """Checksums match (whoever wrote the files resealed them), the content does not: a crafted sae.json,
    or an entry.json naming another key (an entry copied under a key it does not belong to), is rejected
    with a warning and rebuilt, never a crash and never served."""
    cache = StageCache(tmp_path / "cache")
    first = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "a"), cache=cache)
    keys = stage_keys(FAULT_CHAIN)
    sae_entry, extract_entry = cache.entry(keys["sae"]), cache.entry(keys["extract"])
    (sae_entry / "sae.json").write_text("[]")
    meta = json.loads((extract_entry / "entry.json").read_text())
    (extract_entry / "entry.json").write_text(json.dumps({**meta, "key": keys["finetune"]}))
    for entry in (sae_entry, extract_entry):
        (entry / "manifest.json").unlink()
        seal_dir(entry)
    again = StageCache(tmp_path / "cache")
    second = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "b"), cache=again)
    assert again.stats.hits == 1 and again.stats.misses == 2, again.stats.events
    assert any("does not name key" in e for e in again.stats.events) and any("format_version" in e for e in again.stats.events)
    assert second[0]["sae_u"] == first[0]["sae_u"]


@pytest.mark.storage_faults
def test_cache_entry_that_is_a_file_is_rebuilt(tmp_path):
    """Something in the way at an entry's path (a file where the entry's directory goes) once failed the
    trial after a full build; now it is rejected with a warning and the entry is rebuilt."""
    keys = stage_keys(FAULT_CHAIN)
    cache = StageCache(tmp_path / "cache")
    for stage in ("finetune", "extract"):
        path = cache.entry(keys[stage])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not an entry")
    history = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "a"), cache=cache)
    plain = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "b"))
    assert history[0]["task_accuracy"] == plain[0]["task_accuracy"]
    assert sum("not a directory" in e for e in cache.stats.events) == 2, cache.stats.events
    assert cache.stats.write_errors == 0 and all(cache.entry(keys[s]).is_dir() for s in ("finetune", "extract"))


@pytest.mark.storage_faults
def test_failed_cache_write_does_not_fail_the_stage(tmp_path, monkeypatch):
    """A full disk (or an object store that refuses the upload) while storing an entry: the stage's
    result was computed and is used; the failure is logged and counted (cache/write_errors)."""
    def full_disk(self, key, write, build_seconds):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StageCache, "_store", full_disk)
    cache = StageCache(tmp_path / "cache")
    history = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "a"), cache=cache)
    plain = run_chain(build_config(FAULT_CHAIN), ChainPaths(tmp_path / "b"))
    assert history[0]["sae_u"] == plain[0]["sae_u"]
    metrics = cache.stats.as_metrics()
    assert metrics["cache/write_errors"] == 3 and metrics["cache/misses"] == 3
    assert all("No space left" in e for e in cache.stats.events)


# ---- DDP: one rank's NaN stops every rank at the same check -----------------------------------------


def _nan_on_rank1(rank: int, world: int, init: str, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    from saeception.config import DataConfig, FinetuneConfig, SAEConfig
    from saeception.data.tasks import load_task
    from saeception.method import train
    from saeception.method.errors import DivergedError
    from saeception.method.sae import train_sae
    from saeception.models.classifiers import MLP, TapModel

    # A short timeout: a rank left waiting in a collective fails the test in seconds, not 30 minutes.
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=20))
    seen = {}
    try:
        task = load_task(DataConfig(name="digits", max_examples=200))
        if rank == 1:
            task.train.inputs[:] = float("nan")  # this rank's batches alone give a NaN loss
        torch.manual_seed(0)
        tap = TapModel(MLP(task.input_dim, [16], task.n_classes), -1)
        train._CHECK_EVERY = 1  # check every step: the NaN lands in the last step before a check
        t0 = time.perf_counter()
        try:
            train.finetune(tap, task, FinetuneConfig(epochs=1, batch_size=16), torch.device("cpu"), seed=0)
        except DivergedError as e:
            seen["finetune"] = str(e)
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        if rank == 1:
            x[:] = float("nan")
        try:
            train_sae(x, SAEConfig(kind="topk", expansion_factor=2, k=2, steps=20), seed=0, check_every=1)
        except DivergedError as e:
            seen["sae"] = str(e)
        seen["seconds"] = time.perf_counter() - t0
        dist.barrier()  # both ranks are still in step: the group is usable after the divergence
    finally:
        Path(f"{out}.{rank}").write_text(json.dumps(seen))
        dist.destroy_process_group()
    # Leave without the interpreter's teardown. A few runs (2 of ~20, under load) saw a rank abort with
    # "terminate called without an active exception" (C++/gloo), most likely in that teardown; if it was
    # earlier, the rank's results file above is missing and the test still fails.
    os._exit(0)


@pytest.mark.divergence
def test_nan_on_one_rank_stops_every_rank_at_the_same_check(tmp_path):
    import re

    import torch.multiprocessing as mp

    mp.spawn(_nan_on_rank1, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "out")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]
    for stage, steps in (("finetune", "between steps 0 and 1"), ("sae", "between steps 0 and 0")):
        assert all(stage in r for r in ranks), ranks  # every rank raised DivergedError, none hung
        assert all(steps in r[stage] for r in ranks), ranks  # at the first check after the NaN
        assert "nan" in ranks[1][stage] and "on another rank" in ranks[0][stage], ranks
    assert all(r["seconds"] < 15 for r in ranks), ranks
    assert re.search(r"loss became", ranks[0]["sae"])


@pytest.mark.storage_faults
def test_an_sae_whose_shape_disagrees_with_its_json_is_a_corrupt_cycle(tmp_path):
    """Checksums sealed over an SAE whose JSON names another size: load_state_dict's RuntimeError escaped
    ChainState.load, so the trial failed on every retry instead of rebuilding the chain."""
    paths = ChainPaths(tmp_path / "run")
    run_chain(build_config(FAULT_CHAIN), paths)
    cycle = paths.cycle(0)
    meta = cycle.sae.with_suffix(".json")
    cfg = json.loads(meta.read_text())
    meta.write_text(json.dumps({**cfg, "n_latents": cfg["n_latents"] * 2}))
    seal_dir(cycle.path)
    with pytest.raises(CorruptCycleError, match="disagree"):
        ChainState.load(cycle.path)

