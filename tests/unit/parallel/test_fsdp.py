"""train.strategy fsdp (FSDP2) on two gloo processes: the same chain as DDP, extraction row for row, and
checkpoints (full tensors gathered to rank 0) that any world size resumes from."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import fsdp_chain_values

from saeception.config import build_config
from saeception.store.artifacts import ChainPaths

# fsdp and ddp differ on the CPU only in how gradients are reduced (a reduce-scatter of sharded gradients
# vs an all-reduce of whole ones): on this machine (torch 2.13, gloo, 2 ranks) a 1-cycle chain's metrics came
# out identical; the tolerance leaves room for float rounding in another reduction order, and is small
# enough that one flipped prediction (1/48 in accuracy) fails.
METRIC_TOL = 1e-4
COMPARED = ("task_accuracy", "val_task_accuracy", "probe_accuracy", "explained_variance", "l0", "aux_cosine",
            "aux_cosine_before", "sae_csi")


def _spawn(fn, world: int, tmp_path, *args) -> None:
    init = f"file://{tmp_path / f'rendezvous-{fn.__name__}-{len(os.listdir(tmp_path))}'}"
    mp.spawn(fn, args=(world, init, *args), nprocs=world, join=True)


def _chain_worker(rank: int, world: int, init: str, values: dict, root: str, resume: str | None,
                  cache_dir: str | None = None) -> None:
    from saeception.method.chain import run_chain
    from saeception.store.cache import StageCache

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cache = StageCache(cache_dir) if cache_dir else None
        history = run_chain(build_config(values), ChainPaths(root), device=torch.device("cpu"),
                            resume_from=resume or None, cache=cache)
        if cache is not None and rank == 0:
            history[-1]["hits"] = cache.stats.hits
        with open(f"{root}/history.{rank}.json", "w") as f:
            json.dump(history, f)
        dist.barrier()  # both ranks done before either tears the group down (see _extract_worker)
    finally:
        dist.destroy_process_group()


def _history(root, rank: int = 0) -> list[dict]:
    return json.loads((root / f"history.{rank}.json").read_text())


def _numbers(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("cycle_seconds", "hits")} for h in history]


def _moved(root) -> set[str]:
    """The model tensors aux retraining changed (cycle 0 -> 1)."""
    from safetensors.torch import load_file

    before, after = (load_file(str(ChainPaths(root).cycle(c).path / "model.safetensors")) for c in (0, 1))
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def fsdp_neox(tmp_path_factory, neox_dir, text_csv):
    """One 1-cycle chain of 2 fsdp workers on the tiny GPT-NeoX, with a fresh stage cache: its history,
    cycle directories and cache entries serve the tests below."""
    tmp = tmp_path_factory.mktemp("fsdp_neox")
    _spawn(_chain_worker, 2, tmp, fsdp_chain_values(neox_dir, text_csv, "fsdp"), str(tmp / "run"), None, str(tmp / "cache"))
    return tmp


def _same_as_ddp(ddp_root, fsdp_root) -> None:
    ddp, fsdp = _history(ddp_root), _history(fsdp_root)
    assert _numbers(_history(fsdp_root, 1)) == _numbers(fsdp)  # every rank has rank 0's metrics
    assert [h["cycle"] for h in fsdp] == [0, 1]
    for a, b in zip(ddp, fsdp):
        for name in COMPARED:
            if name in a:
                assert b[name] == pytest.approx(a[name], abs=METRIC_TOL), (a["cycle"], name)
    # Aux retraining trains the same weights (everything from the target block on, model.freeze before):
    # a unit gathered before the freeze once kept the head from learning under fsdp.
    assert _moved(fsdp_root) == _moved(ddp_root)
    assert any(".norm." in k or k.startswith(("score.", "classifier.")) for k in _moved(fsdp_root))


def test_fsdp_chain_gives_ddp_metrics_neox(fsdp_neox, neox_dir, text_csv, tmp_path):
    _spawn(_chain_worker, 2, tmp_path, fsdp_chain_values(neox_dir, text_csv, "ddp"), str(tmp_path / "ddp"), None)
    _same_as_ddp(tmp_path / "ddp", fsdp_neox / "run")
    # train.cpu_offload: the same numbers (on the CPU, only the code path differs)
    _spawn(_chain_worker, 2, tmp_path, {**fsdp_chain_values(neox_dir, text_csv, "fsdp"), "train.cpu_offload": True},
           str(tmp_path / "offload"), None)
    assert _numbers(_history(tmp_path / "offload")) == _numbers(_history(fsdp_neox / "run"))


def test_fsdp_chain_gives_ddp_metrics_llama(llama_dir, text_csv, tmp_path):
    for strategy in ("ddp", "fsdp"):
        _spawn(_chain_worker, 2, tmp_path, fsdp_chain_values(llama_dir, text_csv, strategy), str(tmp_path / strategy), None)
    _same_as_ddp(tmp_path / "ddp", tmp_path / "fsdp")


def _extract_worker(rank: int, world: int, init: str, models: dict, text_csv: str, out: str) -> None:
    from saeception.method.chain import setup
    from saeception.method.train import extract
    from saeception.parallel.sharding import is_sharded, shard

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for family, model_dir in models.items():
            cfg = build_config(fsdp_chain_values(model_dir, text_csv, "fsdp"))
            s = setup(cfg)  # a transformer: on the meta device on rank 1, its shards from rank 0
            shard(s.tap, cfg.train, torch.device("cpu"))
            assert is_sharded(s.tap.model)
            pooled, logits = extract(s.tap, s.task, "train", 16, torch.device("cpu"))
            tokens, _ = extract(s.tap, s.task, "train", 16, torch.device("cpu"), tokens=True)
            torch.save({"pooled": pooled, "logits": logits, "tokens": tokens}, f"{out}.{family}.{rank}")
        # Both ranks done before either tears the group down: a rank that exited first once left the other
        # aborting in gloo ("terminate called without an active exception", SIGABRT) on a clean-clone run.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_extraction_under_fsdp_equals_extraction_without_it_row_for_row(neox_dir, llama_dir, text_csv, tmp_path):
    from saeception.method.chain import setup
    from saeception.method.train import extract

    models = {"neox": str(neox_dir), "llama": str(llama_dir), "mlp": "mlp"}
    _spawn(_extract_worker, 2, tmp_path, models, str(text_csv), str(tmp_path / "out"))
    for family, model_dir in models.items():
        s = setup(build_config(fsdp_chain_values(model_dir, text_csv, "ddp")))  # same init stage: the same weights
        pooled, logits = extract(s.tap, s.task, "train", 16, torch.device("cpu"))
        tokens, _ = extract(s.tap, s.task, "train", 16, torch.device("cpu"), tokens=True)
        for r in range(2):
            got = torch.load(tmp_path / f"out.{family}.{r}", weights_only=True)
            # Every rank holds every row, in example-id order (tokens: (id, position) order).
            assert got["pooled"].shape == pooled.shape and got["tokens"].shape == tokens.shape, family
            torch.testing.assert_close(got["pooled"], pooled, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["logits"], logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["tokens"], tokens, atol=1e-5, rtol=1e-5)


def test_a_cycle_written_by_two_fsdp_workers_resumes_on_one(fsdp_neox, neox_dir, text_csv, tmp_path):
    from safetensors.torch import load_file

    from saeception.method.chain import ChainState, run_chain, setup

    written = ChainPaths(fsdp_neox / "run").cycle(0)
    # Full tensors, not shards: the same names and shapes as a plain model's state dict.
    s_plain = load_file(str(written.path / "model.safetensors"))
    plain = setup(build_config(fsdp_chain_values(neox_dir, text_csv, "ddp")))
    assert {k: v.shape for k, v in s_plain.items()} == {k: v.shape for k, v in plain.tap.model.state_dict().items()}

    # One fsdp worker (a process group of one) resumes after cycle 0 and runs cycle 1.
    one = tmp_path / "one"
    _spawn(_chain_worker, 1, tmp_path, fsdp_chain_values(neox_dir, text_csv, "fsdp", cycles=1), str(one), str(written.path))
    resumed = _history(one)
    assert [h["cycle"] for h in resumed] == [0, 1]
    assert _numbers(resumed)[0] == _numbers(_history(fsdp_neox / "run"))[0]  # cycle 0 carried over, not re-run
    # ... and a plain process (ddp, no group) loads the same cycle: what it loads is what was written.
    state = ChainState.load(written.path)
    history = run_chain(build_config(fsdp_chain_values(neox_dir, text_csv, "ddp", cycles=1)), ChainPaths(tmp_path / "plain"),
                        device=torch.device("cpu"), resume_from=state.copy())
    assert [h["cycle"] for h in history] == [0, 1]
    for k, v in s_plain.items():
        assert torch.equal(state.model_state[k], v)


def test_fsdp_workers_reuse_cycle_0_from_the_stage_cache(fsdp_neox, neox_dir, text_csv, tmp_path):
    """A hit loads the fine-tuned weights into the sharded model on every rank together (a collective:
    done after the lookup, never by rank 0 alone inside it) and gives the computed chain's numbers."""
    _spawn(_chain_worker, 2, tmp_path, fsdp_chain_values(neox_dir, text_csv, "fsdp"), str(tmp_path / "cached"), None,
           str(fsdp_neox / "cache"))
    computed, cached = _history(fsdp_neox / "run"), _history(tmp_path / "cached")
    assert cached[-1]["hits"] == 3 and computed[-1]["hits"] == 0
    for a, b in zip(_numbers(computed), _numbers(cached)):
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=1e-6, nan_ok=True), (a["cycle"], k)


