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


def _run_chain(rank: int, values: dict, root: str, resume: str | None, cache_dir: str | None) -> None:
    from saeception.method.chain import run_chain
    from saeception.store.cache import StageCache

    cache = StageCache(cache_dir) if cache_dir else None
    history = run_chain(build_config(values), ChainPaths(root), device=torch.device("cpu"), resume_from=resume or None,
                        cache=cache)
    if cache is not None and rank == 0:
        history[-1]["hits"] = cache.stats.hits
    with open(f"{root}/history.{rank}.json", "w") as f:
        json.dump(history, f)


def _chain_worker(rank: int, world: int, init: str, values: dict, root: str, resume: str | None,
                  cache_dir: str | None = None) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        _run_chain(rank, values, root, resume, cache_dir)
        dist.barrier()  # both ranks done before either tears the group down (see _extract)
    finally:
        dist.destroy_process_group()


def _group_worker(rank: int, world: int, init: str, chains: list[tuple], models: dict, text_csv: str, out: str) -> None:
    """Every 2-rank run the tests below read, one after another in one process group: a spawned process spends
    ~5 s importing transformers' model code, more than a tiny chain takes, so the runs share two processes.
    One intra-op thread per rank: two ranks of two threads each oversubscribed the 2-core machine."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        for values, root, cache_dir in chains:
            _run_chain(rank, values, root, None, cache_dir)
            dist.barrier()
        _extract(rank, models, text_csv, out)
        # Both ranks done before either tears the group down: a rank that exited first once left the other
        # aborting in gloo ("terminate called without an active exception", SIGABRT) on a clean-clone run.
        dist.barrier()
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


def _models(neox_dir, llama_dir) -> dict:
    """The model families extraction is checked on: transformers (sharded per block) and the MLP."""
    return {"neox": str(neox_dir), "llama": str(llama_dir), "mlp": "mlp"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, neox_dir, llama_dir, text_csv):
    """The 2-rank runs, spawned once: 1-cycle chains on the tiny GPT-NeoX (fsdp with a fresh stage cache, ddp,
    fsdp with cpu_offload, then fsdp again on the cache the first one filled) and the tiny LLaMA (ddp, fsdp),
    and extraction under fsdp for every model family. Their histories, cycle directories and cache entries
    serve the tests below."""
    tmp = tmp_path_factory.mktemp("fsdp")
    cache = str(tmp / "cache")

    def neox(strategy):
        return fsdp_chain_values(neox_dir, text_csv, strategy)

    def llama(strategy):
        return fsdp_chain_values(llama_dir, text_csv, strategy)

    chains = [(neox("fsdp"), "neox-fsdp", cache), (neox("ddp"), "neox-ddp", None),
              ({**neox("fsdp"), "train.cpu_offload": True}, "neox-offload", None), (neox("fsdp"), "neox-cached", cache),
              (llama("ddp"), "llama-ddp", None), (llama("fsdp"), "llama-fsdp", None)]
    _spawn(_group_worker, 2, tmp, [(v, str(tmp / root), c) for v, root, c in chains], _models(neox_dir, llama_dir), str(text_csv),
           str(tmp / "extracted"))
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


def test_fsdp_chain_gives_ddp_metrics_neox(runs):
    _same_as_ddp(runs / "neox-ddp", runs / "neox-fsdp")
    # train.cpu_offload: the same numbers (on the CPU, only the code path differs)
    assert _numbers(_history(runs / "neox-offload")) == _numbers(_history(runs / "neox-fsdp"))


def test_fsdp_chain_gives_ddp_metrics_llama(runs):
    _same_as_ddp(runs / "llama-ddp", runs / "llama-fsdp")


def _extract(rank: int, models: dict, text_csv: str, out: str) -> None:
    from saeception.method.chain import setup
    from saeception.method.train import extract
    from saeception.parallel.sharding import is_sharded, shard

    for family, model_dir in models.items():
        cfg = build_config(fsdp_chain_values(model_dir, text_csv, "fsdp"))
        s = setup(cfg)  # a transformer: on the meta device on rank 1, its shards from rank 0
        shard(s.tap, cfg.train, torch.device("cpu"))
        assert is_sharded(s.tap.model)
        pooled, logits = extract(s.tap, s.task, "train", 16, torch.device("cpu"))
        tokens, _ = extract(s.tap, s.task, "train", 16, torch.device("cpu"), tokens=True)
        torch.save({"pooled": pooled, "logits": logits, "tokens": tokens}, f"{out}.{family}.{rank}")


def test_extraction_under_fsdp_equals_extraction_without_it_row_for_row(runs, neox_dir, llama_dir, text_csv):
    from saeception.method.chain import setup
    from saeception.method.train import extract

    for family, model_dir in _models(neox_dir, llama_dir).items():
        s = setup(build_config(fsdp_chain_values(model_dir, text_csv, "ddp")))  # same init stage: the same weights
        pooled, logits = extract(s.tap, s.task, "train", 16, torch.device("cpu"))
        tokens, _ = extract(s.tap, s.task, "train", 16, torch.device("cpu"), tokens=True)
        for r in range(2):
            got = torch.load(runs / f"extracted.{family}.{r}", weights_only=True)
            # Every rank holds every row, in example-id order (tokens: (id, position) order).
            assert got["pooled"].shape == pooled.shape and got["tokens"].shape == tokens.shape, family
            torch.testing.assert_close(got["pooled"], pooled, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["logits"], logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got["tokens"], tokens, atol=1e-5, rtol=1e-5)


def test_a_cycle_written_by_two_fsdp_workers_resumes_on_one(runs, neox_dir, text_csv, tmp_path):
    from safetensors.torch import load_file

    from saeception.method.chain import ChainState, run_chain, setup

    written = ChainPaths(runs / "neox-fsdp").cycle(0)
    # Full tensors, not shards: the same names and shapes as a plain model's state dict.
    s_plain = load_file(str(written.path / "model.safetensors"))
    plain = setup(build_config(fsdp_chain_values(neox_dir, text_csv, "ddp")))
    assert {k: v.shape for k, v in s_plain.items()} == {k: v.shape for k, v in plain.tap.model.state_dict().items()}

    # One fsdp worker (a process group of one, in this process) resumes after cycle 0 and runs cycle 1.
    one = tmp_path / "one"
    _chain_worker(0, 1, f"file://{tmp_path / 'rendezvous'}", fsdp_chain_values(neox_dir, text_csv, "fsdp", cycles=1), str(one),
                  str(written.path))
    resumed = _history(one)
    assert [h["cycle"] for h in resumed] == [0, 1]
    assert _numbers(resumed)[0] == _numbers(_history(runs / "neox-fsdp"))[0]  # cycle 0 carried over, not re-run
    # ... and a plain process (ddp, no group) loads the same cycle: what it loads is what was written.
    state = ChainState.load(written.path)
    history = run_chain(build_config(fsdp_chain_values(neox_dir, text_csv, "ddp", cycles=1)), ChainPaths(tmp_path / "plain"),
                        device=torch.device("cpu"), resume_from=state.copy())
    assert [h["cycle"] for h in history] == [0, 1]
    for k, v in s_plain.items():
        assert torch.equal(state.model_state[k], v)


def test_fsdp_workers_reuse_cycle_0_from_the_stage_cache(runs):
    """A hit loads the fine-tuned weights into the sharded model on every rank together (a collective:
    done after the lookup, never by rank 0 alone inside it) and gives the computed chain's numbers."""
    computed, cached = _history(runs / "neox-fsdp"), _history(runs / "neox-cached")
    assert cached[-1]["hits"] == 3 and computed[-1]["hits"] == 0
    for a, b in zip(_numbers(computed), _numbers(cached)):
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=1e-6, nan_ok=True), (a["cycle"], k)
