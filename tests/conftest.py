import fcntl
import os
import random
import sys
import tempfile
from contextlib import ExitStack, contextmanager
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

# A Ray test's seconds when no `@pytest.mark.ray(seconds=...)` says: the short ones take about 10.
RAY_TEST_SECONDS = 10


def ray_seconds(item) -> float:
    """What a Ray test took in a whole run (`@pytest.mark.ray(seconds=...)`, measured beside another test on the
    2-core machine): only the order of the tests depends on it."""
    return item.get_closest_marker("ray").kwargs.get("seconds", RAY_TEST_SECONDS)


def pytest_collection_modifyitems(config, items):
    """The order the two test processes take the tests in. pytest-xdist's `worksteal` (pyproject) gives the first
    half of this list to one process and the rest to the other; a process with fewer than two tests left takes
    half of the other's queue, from its end. So the list is two halves, each a process's plan:
    - one: `ray_up` (which runs beside no other Ray test), then its share of the Ray tests, longest first, then
      Ray-free tests;
    - the other: Ray-free tests while `ray_up` runs, then the other share of the Ray tests, longest first.
    The Ray tests are shared between the two by their `seconds`, longest first, each to the process with less
    planned, so neither is left with a long one at the end; the Ray-free tests at the end of the first half are
    what the process that finishes first takes over. Any other run (`-n 0`, another `-n`, a selection without
    `ray_up`): `ray_up`, the Ray tests longest first, the Ray-free ones."""
    ray_up = [i for i in items if i.get_closest_marker("ray_up")]
    ray = sorted((i for i in items if i.get_closest_marker("ray") and i not in ray_up), key=ray_seconds, reverse=True)
    free = [i for i in items if not i.get_closest_marker("ray")]
    # The order that counts is the workers' (each collects; xdist schedules by index into their list), and a
    # worker knows how many there are, not the `--dist` mode: pyproject's is worksteal.
    two_halves = (os.environ.get("PYTEST_XDIST_WORKER_COUNT") == "2" and len(ray_up) == 1
                  and len(free) >= len(items) // 2)
    if not two_halves:
        items[:] = [*ray_up, *ray, *free]
        return
    first, second = [], []
    # Each process's plan: `ray_up` against about half of the Ray-free tests (the other half is the first
    # half's tail), then the Ray tests.
    planned = [ray_seconds(ray_up[0]), ray_seconds(ray_up[0])]
    for item in ray:
        share = 0 if planned[0] <= planned[1] else 1
        (first, second)[share].append(item)
        planned[share] += ray_seconds(item)
    head = len(items) // 2 - 1 - len(first)  # Ray-free tests ending the first half, whose size worksteal fixes
    items[:] = [*ray_up, *first, *free[:head], *free[head:], *second]
    # (xdist sends the first len(items) // 2 to one process: ray_up, `first`, free[:head]; the rest to the other.)


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
    """Ray tests run beside each other (pytest-xdist), except `ray_up`, which runs beside no Ray test. Yields the
    test's turn (None for a Ray-free test): `close()` ends it early, once the test can no longer stop another's Ray."""
    if request.node.get_closest_marker("ray") is None:
        yield None
        return
    with ExitStack() as turn:
        turn.enter_context(ray_turn(exclusive=request.node.get_closest_marker("ray_up") is not None))
        yield turn


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
