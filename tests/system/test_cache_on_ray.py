import time

import pytest

from saeception.store.cache import ObjectStageCache

# ---- Object stores: the same contract through the pointer-last, blob-per-build layout -------------


def _object_builder(uri: str, key: str, scratch: str) -> str:
    from saeception.trainables.locks import lease_lock

    cache = ObjectStageCache(uri, scratch=scratch, lock=lease_lock)
    with cache.lock(key):
        if cache.lookup(key) is not None:
            return "reused"
        time.sleep(1.0)  # a slow build: the other builder must wait, not build too
        cache.publish(key, lambda d: (d / "x.json").write_text("{}"), 1.0)
        return "built"


@pytest.mark.ray
def test_two_concurrent_object_store_builders_on_ray_produce_one_entry(tmp_path, monkeypatch, ray_env):
    """Across processes the lock is a lease in a named Ray actor (local:// is fsspec's local disk,
    reached through the object-store code path)."""
    import os

    import ray

    for k in ("RAY_TMPDIR", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(k, ray_env[k])
    tests_dir = os.path.dirname(__file__)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")])}})
    try:
        build = ray.remote(num_cpus=1)(_object_builder)
        uri = f"local://{tmp_path}/store"
        results = ray.get([build.remote(uri, "feedbeef01", str(tmp_path / f"s{i}")) for i in range(2)])
    finally:
        ray.shutdown()
    assert sorted(results) == ["built", "reused"]
    cache = ObjectStageCache(uri)
    assert [p.name for p in (tmp_path / "store" / "fe" / "feedbeef01").iterdir()] == [cache._read_pointer("feedbeef01")["build"]]

