"""Two gloo processes must compute what one process computes."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from saeception.config import DataConfig, SAEConfig
from saeception.data import load_task
from saeception.models import MLP, TapModel
from saeception.sae import train_sae
from saeception.sharpen import class_means
from saeception.train import extract


def _inputs():
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(101, 16, generator=g))
    labels = torch.randint(0, 4, (101,), generator=g)
    return codes, labels


def _tap(task):
    torch.manual_seed(0)
    return TapModel(MLP(task.input_dim, [32, 16], task.n_classes), -1).eval()


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        codes, labels = _inputs()
        shard = slice(rank, None, world)
        means = class_means(codes[shard], labels[shard], 4)
        task = load_task(DataConfig(name="digits", max_examples=200), seed=0)
        acts, logits = extract(_tap(task), task, "train", 32, torch.device("cpu"))
        sae = train_sae(acts, SAEConfig(kind="topk", expansion_factor=2, k=4, steps=30), seed=0)
        torch.save({"means": means, "acts": acts, "logits": logits, "W_dec": sae.W_dec.detach()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path / "out")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"out.{r}", weights_only=True) for r in range(2)]

    codes, labels = _inputs()
    single_means = class_means(codes, labels, 4)
    task = load_task(DataConfig(name="digits", max_examples=200), seed=0)
    single_acts, single_logits = extract(_tap(task), task, "train", 32, torch.device("cpu"))
    single_sae = train_sae(single_acts, SAEConfig(kind="topk", expansion_factor=2, k=4, steps=30), seed=0)

    for r in ranks:
        assert torch.allclose(r["means"], single_means, atol=1e-6)
        # Extraction gathers every shard back into id order (the sampler's padding repeats are harmless).
        assert torch.allclose(r["acts"], single_acts, atol=1e-6)
        assert torch.allclose(r["logits"], single_logits, atol=1e-6)
    # Data-parallel SAE training: both ranks hold one model, the same as one process up to float error
    # (rare top-k ties flip on reduction-order differences, so compare on average).
    assert torch.equal(ranks[0]["W_dec"], ranks[1]["W_dec"])
    assert (ranks[0]["W_dec"] - single_sae.W_dec).abs().mean() < 1e-3
