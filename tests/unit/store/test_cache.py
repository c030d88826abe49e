import multiprocessing as mp
import time

import pytest
import torch

from saeception.config import build_config
from saeception.method.chain import cycle0_keys, run_chain
from saeception.store.artifacts import ChainPaths
from saeception.store.cache import ObjectStageCache, StageCache

TINY = {"data.max_examples": 300, "model.hidden_sizes": [32, 16], "finetune.epochs": 2, "sae.steps": 60, "sae.k": 4,
        "aux.epochs": 1, "eval.probe_max_iter": 50, "chain.cycles": 1}


ENV = {"data": "fp", "model_source": "mlp", "world_size": "1", "precision": "cpu:fp32"}


def keys(env=None, **over):
    return cycle0_keys(build_config({**TINY, **over}), {**ENV, **(env or {})})


def test_same_inputs_same_keys_and_every_read_field_changes_them():
    base = keys()
    assert keys() == base
    # The fine-tuned model reads seed, data, model and fine-tuning settings: every one changes every key.
    for over in ({"seed": 1}, {"finetune.lr": 0.01}, {"finetune.epochs": 3}, {"model.hidden_sizes": [32, 8]}):
        changed = keys(**over)
        assert all(changed[s] != base[s] for s in base if s != "init" or "finetune" not in str(over)), over
    # Facts of the run: the data as split, the model's content, the world size (the effective batch),
    # the resolved precision.
    for env in ({"data": "other"}, {"model_source": "dir:abc"}, {"world_size": "2"}, {"precision": "cuda:bf16-autocast"}):
        changed = keys(env=env)
        assert changed["finetune"] != base["finetune"] and changed["sae"] != base["sae"], env
    # Layer, pooling and which tokens the SAE trains on change the activations (and the SAE), not the model.
    for over in ({"model.layer": 0}, {"model.pooling": "mean"}, {"sae.tokens": "all"}):
        changed = keys(**over)
        assert changed["finetune"] == base["finetune"] and changed["extract"] != base["extract"] and changed["sae"] != base["sae"], over
    # SAE settings change only the SAE; sharpening and aux settings change nothing cached.
    for over in ({"sae.k": 8}, {"sae.kind": "l1"}, {"sae.expansion_factor": 8}, {"sae.l1_coefficient": 0.1}):
        changed = keys(**over)
        assert changed["extract"] == base["extract"] and changed["sae"] != base["sae"]
    for over in ({"sharpen.top_k_pct": 5}, {"aux.weight": 0.0}, {"chain.cycles": 3}, {"device": "cpu"}):
        assert keys(**over) == base


def test_loading_and_sharding_settings_change_the_keys_of_what_they_shape():
    """The weights' dtype and hub revision shape every stage; how the model is sharded shapes what it
    computes (bf16 compute under fsdp on CUDA); checkpointing shapes the fine-tuned model only."""
    text = {**TINY, "data.name": "glue/sst2", "model.name": "gpt2"}
    base = keys(**text)
    for over in ({"model.dtype": "bfloat16"}, {"model.revision": "v1"}):
        changed = keys(**text, **over)
        assert all(changed[s] != base[s] for s in base), over
    for over in ({"train.strategy": "fsdp"}, {"train.strategy": "fsdp", "train.cpu_offload": True}):
        changed = keys(**text, **over)
        assert changed["init"] == base["init"] and all(changed[s] != base[s] for s in ("finetune", "extract", "sae")), over
    changed = keys(**text, **{"model.gradient_checkpointing": True})
    assert changed["init"] == base["init"] and changed["finetune"] != base["finetune"]
    # With the model used as loaded (finetune.epochs 0) the extraction's own read carries the strategy.
    as_loaded = {**text, "finetune.epochs": 0}
    assert keys(**as_loaded, **{"train.strategy": "fsdp"})["extract"] != keys(**as_loaded)["extract"]


def test_a_stage_cannot_read_what_it_does_not_declare(monkeypatch, tmp_path):
    """The key is built from the declaration the stage's code reads through: drop `sae.tokens` from the
    extraction's declaration (the first version's missing key field) and the stage fails loudly."""
    from saeception.method import chain
    from saeception.method.stages import Stage, UndeclaredRead

    narrowed = Stage("extract", reads=tuple(r for r in chain.EXTRACT.reads if r != "sae.tokens"),
                     inputs=chain.EXTRACT.inputs, env=chain.EXTRACT.env)
    monkeypatch.setattr(chain, "EXTRACT", narrowed)
    with pytest.raises(UndeclaredRead, match="sae.tokens"):
        run_chain(build_config({**TINY, "chain.cycles": 0}), ChainPaths(tmp_path / "a"), cache=StageCache(tmp_path / "c"))


def test_an_all_tokens_trial_never_reuses_pooled_activations(tmp_path):
    cache = StageCache(tmp_path / "cache")
    run_chain(build_config({**TINY, "chain.cycles": 0}), ChainPaths(tmp_path / "pooled"), cache=cache)
    all_tokens = build_config({**TINY, "chain.cycles": 0, "sae.tokens": "all"})
    again = StageCache(tmp_path / "cache")
    cached = run_chain(all_tokens, ChainPaths(tmp_path / "all"), cache=again)
    assert again.stats.hits == 1 and again.stats.misses == 2  # the model is shared; activations and SAE are not
    fresh = run_chain(all_tokens, ChainPaths(tmp_path / "fresh"))
    assert cached[0]["explained_variance"] == fresh[0]["explained_variance"]


def test_an_entry_missing_what_the_stage_needs_is_rebuilt_not_used(tmp_path):
    """An intact activations entry without the all-token tensor is rejected, never a silent fallback."""
    from safetensors.torch import load_file, save_file

    from saeception.store.artifacts import seal_dir

    cfg = build_config({**TINY, "chain.cycles": 0, "sae.tokens": "all"})
    cache = StageCache(tmp_path / "cache")
    fresh = run_chain(cfg, ChainPaths(tmp_path / "a"), cache=cache)
    entry = cache.entry(cache_keys_of(cfg)["extract"])
    tensors = load_file(str(entry / "activations.safetensors"))
    del tensors["train.tokens"]
    save_file(tensors, str(entry / "activations.safetensors"))
    (entry / "manifest.json").unlink()
    seal_dir(entry)  # checksums match: only the content is wrong
    again = StageCache(tmp_path / "cache")
    rebuilt = run_chain(cfg, ChainPaths(tmp_path / "b"), cache=again)
    assert any("lacks train.tokens" in e for e in again.stats.events)
    assert rebuilt[0]["explained_variance"] == fresh[0]["explained_variance"]


def cache_keys_of(cfg):
    from saeception.method.chain import _env, setup

    return cycle0_keys(cfg, _env(setup(cfg), torch.device("cpu")))


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
    entry = cache.entry(cache_keys_of(cfg)["sae"])
    weights = entry / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    again = StageCache(tmp_path / "cache")
    run_chain(cfg, ChainPaths(tmp_path / "b"), cache=again)
    assert again.stats.hits == 2 and again.stats.misses == 1 and any("sae" in e for e in again.stats.events)
    assert (entry / "manifest.json").exists() and again.lookup(entry.name) is not None  # rebuilt, intact


def test_no_cache_bypasses_it(tmp_path):
    run_chain(build_config(TINY), ChainPaths(tmp_path / "a"), cache=None)
    assert not (tmp_path / "cache").exists()


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


def test_a_killed_builders_half_written_entry_is_removed_by_the_next_build(tmp_path):
    """A builder killed while writing left `.tmp-<key>-*` beside the entry for good (its `finally` never ran)."""
    cache = StageCache(tmp_path / "cache")
    key = "ab" + "0" * 62
    stale = cache.entry(key).parent / f".tmp-{key}-deadbeef"
    (stale / "part").mkdir(parents=True)
    (stale / "part" / "acts.safetensors").write_bytes(b"x" * 1000)
    with cache.lock(key):
        assert cache.publish(key, lambda d: (d / "x.txt").write_text("x"), 1.0) == cache.entry(key)
    assert not stale.exists() and sorted(p.name for p in cache.entry(key).parent.iterdir()) == [key, f"{key}.lock"]


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


# ---- Object stores: the same contract through the pointer-last, blob-per-build layout -------------


def test_object_store_cache_hits_and_matches_uncached(tmp_path):
    """memory:// is fsspec's in-process object store: no rename, no flock, as on S3/GCS."""
    from saeception.store.cache import open_cache

    uri = f"memory://bucket-{tmp_path.name}/cache"
    cfg = build_config(TINY)
    plain = run_chain(cfg, ChainPaths(tmp_path / "plain"))
    first_cache = open_cache(uri)
    assert type(first_cache).__name__ == "ObjectStageCache"
    first = run_chain(cfg, ChainPaths(tmp_path / "a"), cache=first_cache)
    assert first_cache.stats.misses == 3 and first_cache.stats.bytes_written > 0
    second = ObjectStageCache(uri, scratch=tmp_path / "scratch2")  # another node: its own local copies
    other = run_chain(build_config({**TINY, "sharpen.top_k_pct": 7.0}), ChainPaths(tmp_path / "b"), cache=second)
    assert second.stats.hits == 3 and second.stats.misses == 0
    for key in ("task_accuracy", "sae_u", "explained_variance"):
        assert first[0][key] == plain[0][key] == other[0][key], key


def test_object_store_entry_is_invisible_until_its_pointer_and_corruption_is_rebuilt(tmp_path):
    cache = ObjectStageCache(f"memory://bucket-{tmp_path.name}/c")
    key = "abcdef0123456789"
    # A builder that died after uploading its blob but before the pointer: no entry.
    cache.fs.create_dir(cache._blob(key, "dead"), recursive=True)
    with cache.fs.open_output_stream(cache._blob(key, "dead") + "/x.json") as f:
        f.write(b"{}")
    assert cache.lookup(key) is None
    cache.publish(key, lambda d: (d / "x.json").write_text('{"v": 1}'), 1.5)
    reader = ObjectStageCache(cache.uri, scratch=tmp_path / "r1")
    path = reader.lookup(key)
    assert path is not None and (path / "x.json").read_text() == '{"v": 1}'
    reader.record_hit(path)
    assert reader.stats.hits == 1 and reader.stats.seconds_saved == 1.5
    # Corrupt the stored blob: a fresh reader rejects it, drops the pointer, and reports a miss.
    build = cache._read_pointer(key)["build"]
    with cache.fs.open_output_stream(cache._blob(key, build) + "/x.json") as f:
        f.write(b'{"v": 2}')
    damaged = ObjectStageCache(cache.uri, scratch=tmp_path / "r2")
    assert damaged.lookup(key) is None and damaged.stats.events
    assert cache._read_pointer(key) is None


def test_object_store_cache_removes_the_scratch_folder_it_made(tmp_path):
    """A cache opened without a scratch folder downloads into one of its own and removes it when it goes
    (unit and cluster test runs left a /tmp/saeception-cache-* folder each); a caller's folder stays."""
    import gc

    from saeception.store.cache import open_cache

    cache = open_cache(f"memory://bucket-{tmp_path.name}/own")
    cache.publish("abcdef0123456789", lambda d: (d / "x.json").write_text("{}"), 1.0)
    own = cache.scratch
    assert cache.lookup("abcdef0123456789") is not None and any(own.iterdir())
    del cache
    gc.collect()
    assert not own.exists()
    mine = ObjectStageCache(f"memory://bucket-{tmp_path.name}/own", scratch=tmp_path / "mine")
    assert mine.lookup("abcdef0123456789") is not None
    del mine
    gc.collect()
    assert (tmp_path / "mine").is_dir()


def test_object_store_readonly_never_writes(tmp_path):
    uri = f"memory://bucket-{tmp_path.name}/ro"
    cache = ObjectStageCache(uri, readonly=True)
    run_chain(build_config(TINY), ChainPaths(tmp_path / "a"), cache=cache)
    assert cache.stats.misses == 3 and not cache.fs.get_file_info(cache.base).type.name == "Directory"


@pytest.fixture
def s3_uri(monkeypatch, tmp_path):
    """A real S3 endpoint on loopback (moto's server) and a bucket on it, as a pyarrow S3 URI."""
    moto_server = pytest.importorskip("moto.server")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        import pyarrow.fs as pafs

        bucket = f"b-{tmp_path.name.lower().replace('_', '-')}"[:60]
        fs, _ = pafs.FileSystem.from_uri(f"s3://{bucket}?endpoint_override={host}:{port}&scheme=http&allow_bucket_creation=true")
        fs.create_dir(bucket)
        yield f"s3://{bucket}/cache?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


def test_s3_cache_round_trip_and_rejects_a_corrupted_blob(tmp_path, s3_uri):
    cfg = build_config(TINY)
    first = ObjectStageCache(s3_uri, scratch=tmp_path / "n1")
    a = run_chain(cfg, ChainPaths(tmp_path / "a"), cache=first)
    assert first.stats.misses == 3
    second = ObjectStageCache(s3_uri, scratch=tmp_path / "n2")
    b = run_chain(cfg, ChainPaths(tmp_path / "b"), cache=second)
    assert second.stats.hits == 3 and a[0]["sae_u"] == b[0]["sae_u"]
    key = cache_keys_of(cfg)["sae"]
    build = first._read_pointer(key)["build"]
    with first.fs.open_output_stream(first._blob(key, build) + "/sae.safetensors") as f:
        f.write(b"truncated")
    third = ObjectStageCache(s3_uri, scratch=tmp_path / "n3")
    run_chain(cfg, ChainPaths(tmp_path / "c"), cache=third)
    assert third.stats.hits == 2 and third.stats.misses == 1 and any("sae" in e for e in third.stats.events)
    assert first._read_pointer(key)["build"] != build  # rebuilt under a new blob


def test_what_shapes_the_token_ids_changes_every_key(text_csv, gpt2_dir):
    """The data env fact is a digest of the tokenized splits: max_length or padding side change the keys."""
    from saeception.method.chain import _env, setup


    keys = {}
    for name, over in (("base", {}), ("max_length", {"data.max_length": 4}), ("padding", {"data.padding_side": "left"})):
        cfg = build_config({"data.name": str(text_csv), "model.name": str(gpt2_dir), **over})
        keys[name] = cycle0_keys(cfg, _env(setup(cfg), torch.device("cpu")))
    for name in ("max_length", "padding"):
        assert all(keys[name][s] != keys["base"][s] for s in ("finetune", "extract", "sae")), name


def test_each_test_draw_has_its_own_cycle0_entries():
    """The data env fact is the data as split: a test split drawn with another data.test_draw (the train split
    changes with it) gives every cycle-0 key anew, so no draw is served another draw's model or activations."""
    from saeception.method.chain import _env, setup

    keys = {}
    for draw in (None, 0, 1):
        cfg = build_config({**TINY, "data.test_draw": draw})
        keys[draw] = cycle0_keys(cfg, _env(setup(cfg), torch.device("cpu")))
    for stage in ("init", "finetune", "extract", "sae"):
        assert len({k[stage] for k in keys.values()}) == 3, stage


def fake_lock_actor(monkeypatch, acquire) -> list:
    """The cluster-wide lock's actor replaced by one whose acquire is `acquire(key, owner, lease_s)` (release does
    nothing), and ray.get by one that passes the value through; returns the timeouts ray.get was given."""
    from types import SimpleNamespace

    import ray
    from saeception.trainables import locks

    timeouts = []

    def get(value, timeout=None):
        timeouts.append(timeout)
        return value

    actor = SimpleNamespace(acquire=SimpleNamespace(remote=acquire), release=SimpleNamespace(remote=lambda key, owner: None))
    monkeypatch.setattr(locks, "lock_actor", lambda: actor)
    monkeypatch.setattr(ray, "get", get)
    return timeouts


def test_a_waiter_gives_up_on_a_build_lock_held_too_long_naming_the_key(monkeypatch):
    """The object-store cache's cluster-wide lock: every call to the lock actor has a timeout, and a trial
    waiting for another's build stops after WAIT_S with an error naming the key (before: it waited forever)."""
    from saeception.trainables import locks

    # The key is held by another trial that keeps renewing it.
    calls = fake_lock_actor(monkeypatch, lambda key, owner, lease_s: False)
    monkeypatch.setattr(locks, "WAIT_S", 0.6)
    with pytest.raises(TimeoutError, match="build lock of " + "k" * 64):
        with locks.lease_lock("k" * 64):
            pass
    assert calls and all(t == locks.RPC_TIMEOUT_S for t in calls)


def test_the_lease_renewer_survives_a_failed_renewal(monkeypatch, caplog):
    """While a trial builds, a thread renews its lease every LEASE_S / 4; one renewal that fails (the lock actor
    timed out) is logged and retried, not the end of the renewals (before: the thread died, the lease lapsed
    and a second trial could start the same build)."""
    import threading

    import ray
    from saeception.trainables import locks

    renewals, done = [], threading.Event()

    def acquire(key, owner, lease_s):
        renewals.append(owner)
        if len(renewals) == 2:
            raise ray.exceptions.GetTimeoutError("the lock actor did not answer")
        if len(renewals) >= 4:
            done.set()
        return True

    timeouts = fake_lock_actor(monkeypatch, acquire)
    monkeypatch.setattr(locks, "LEASE_S", 0.2)
    with caplog.at_level("WARNING", logger=locks.__name__):
        with locks.lease_lock("k" * 64):
            assert done.wait(10), f"renewals stopped after {len(renewals)} calls"
    assert "renewing the build lock of " + "k" * 64 + " failed (GetTimeoutError" in caplog.text
    # A renewal waits one tick at most: one that waited the whole RPC timeout (60 s) would outlast the lease.
    assert max(timeouts[1:-1]) <= locks.LEASE_S / 4


def test_no_error_or_warning_of_an_object_store_cache_carries_its_uri_s_secret(tmp_path, caplog):
    """`cache entry … is not in s3://KEY:SECRET@…` reached Ray's error.txt from a rank other than 0 (its
    exception text is filtered nowhere); a failed store's and a damaged entry's texts quote the path too."""
    from saeception.store.cache import open_cache

    uri = f"memory://AKIAX:pw-s3cr3t@cache-secrets/{time.time_ns()}?token=tok-s3cr3t"
    cache = open_cache(uri, scratch=tmp_path / "scratch")
    with pytest.raises(FileNotFoundError) as missing:
        cache.entry("ab" * 32)
    assert "is not in memory://AKIAX:***@" in str(missing.value)

    def unwritable(path):
        raise OSError(f"cannot write {uri}/{path.name}")

    cache.publish("cd" * 32, unwritable, 1.0)
    cache.reject("ef" * 32, f"missing blob file ({uri})")  # no pointer: nothing to reject, nothing said
    cache._reject_blob("ef" * 32, "b1", f"missing blob file ({uri})")
    said = [str(missing.value), caplog.text, *cache.stats.events]
    assert cache.stats.write_errors == 1 and len(cache.stats.events) == 2
    assert not [s for s in said if "s3cr3t" in s], said
