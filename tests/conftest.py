import os
import random
import sys
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

from helpers import make_text_csv, tiny_bert, tiny_gpt2, tiny_llama, tiny_neox  # noqa: E402


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
    """`mlflow server` on 127.0.0.1 and a free port, SQLite backend and served artifacts under tmp_path;
    its URL. Stopped afterwards, nothing of it left running."""
    from mlflowserver import MlflowServer

    server = MlflowServer(tmp_path / "mlflow-server").start()
    try:
        yield server.url
    finally:
        server.stop()
