import fcntl
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent / "support"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per test process: pytest-xdist runs two of them on the 2 cores, and two torch processes
    # with two threads each oversubscribe them (OpenMP's waiting threads spin), which made the planted-dictionary
    # SAE test ~10x slower than alone. Their subprocesses (DDP ranks, sweep drivers) inherit OMP_NUM_THREADS.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

from helpers import make_text_csv, tiny_bert, tiny_gpt2, tiny_llama, tiny_neox  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """`ray_up` first, then the other Ray tests, then the Ray-free ones; otherwise the collection's order. With
    pytest-xdist's `worksteal` (pyproject), the first worker starts on the first half of this list and the second
    on the rest: `ray_up`, which runs beside no other Ray test, runs beside Ray-free tests, and the Ray tests,
    whose trials leave a core idle at times, mostly run beside Ray-free tests too; a worker out of tests takes
    half of the other's remaining queue, from its end."""
    def rank(item) -> int:
        if item.get_closest_marker("ray") is None:
            return 2
        return 0 if item.get_closest_marker("ray_up") else 1

    items.sort(key=rank)  # stable


# Shared by the pytest-xdist workers of every session of this user on this machine.
RAY_LOCKS = Path(tempfile.gettempdir()) / f"saeception-tests-ray-{os.getuid()}"


@contextmanager
def ray_turn(exclusive: bool):
    """A Ray test's turn: shared with the other Ray tests, or alone (`ray_up`, whose `ray stop` stops every Ray
    process of the user). A turnstile lets a waiting exclusive turn in before later shared ones (flock alone
    would let a stream of shared turns starve it)."""
    RAY_LOCKS.mkdir(exist_ok=True)
    with open(RAY_LOCKS / "turnstile", "a") as turnstile, open(RAY_LOCKS / "ray", "a") as ray:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(ray, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(ray, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def ray_alone_when_needed(request):
    """Ray tests run beside each other (pytest-xdist), except `ray_up`, which runs beside no Ray test."""
    if request.node.get_closest_marker("ray") is None:
        yield
        return
    with ray_turn(exclusive=request.node.get_closest_marker("ray_up") is not None):
        yield


@pytest.fixture(autouse=True)
def seeded():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def ray_env():
    """Environment for a subprocess that starts Ray: its own short RAY_TMPDIR (unix socket paths must
    stay under 108 bytes; runs must not collide). Every process left under it is killed afterwards."""
    import shutil
    import tempfile

    from raytools import kill_all

    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    yield env
    kill_all(str(ray_tmp))
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return tiny_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def neox_dir(tmp_path_factory) -> Path:
    return tiny_neox(tmp_path_factory.mktemp("neox"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> Path:
    return make_text_csv(tmp_path_factory.mktemp("data") / "text.csv")


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 and a port bound for it, SQLite backend and served artifacts under tmp_path;
    its URL. Stopped afterwards and its port released, nothing of it left running."""
    from mlflowserver import MlflowServer

    server = MlflowServer(tmp_path / "mlflow-server").start()
    try:
        yield server.url
    finally:
        server.close()
