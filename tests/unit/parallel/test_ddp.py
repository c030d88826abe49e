"""Two gloo processes must compute what one process computes."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from saeception.config import DataConfig, ModelConfig, SAEConfig
from saeception.data.tasks import load_task, shard_batches
from saeception.method.sae import train_sae
from saeception.method.sharpen import class_means
from saeception.method.train import extract
from saeception.models.classifiers import MLP, TapModel, build_model, load_tokenizer


def _inputs():
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(101, 16, generator=g))
    labels = torch.randint(0, 4, (101,), generator=g)
    return codes, labels


def _tap(task):
    torch.manual_seed(0)
    return TapModel(MLP(task.input_dim, [32, 16], task.n_classes), -1).eval()


def _digits(rank: int, world: int, out: str) -> None:
    codes, labels = _inputs()
    shard = slice(rank, None, world)
    means = class_means(codes[shard], labels[shard], 4)
    task = load_task(DataConfig(name="digits", max_examples=200))
    acts, logits = extract(_tap(task), task, "train", 32, torch.device("cpu"))
    sae = train_sae(acts, SAEConfig(kind="topk", expansion_factor=2, k=4, steps=30), seed=0)
    torch.save({"means": means, "acts": acts, "logits": logits, "W_dec": sae.W_dec.detach()}, f"{out}.{rank}")


def _worker(rank: int, world: int, init: str, out: str, gpt2_dir: str, text_csv: str) -> None:
    """Both tests' work in one process group: a spawned process spends seconds importing, more than the work."""
    torch.set_num_threads(1)  # two ranks of two threads each oversubscribe 2 cores
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        _digits(rank, world, f"{out}/digits")
        _text_extraction(rank, f"{out}/text", gpt2_dir, text_csv)
        dist.barrier()  # both ranks done before either tears the group down
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def out(tmp_path_factory, gpt2_dir, text_csv):
    """What each of two gloo ranks computed, spawned once for the tests below."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, f"file://{tmp / 'rendezvous'}", str(tmp), str(gpt2_dir), str(text_csv)), nprocs=2, join=True)
    return tmp


def test_two_gloo_processes_match_one(out):
    ranks = [torch.load(out / f"digits.{r}", weights_only=True) for r in range(2)]

    codes, labels = _inputs()
    single_means = class_means(codes, labels, 4)
    task = load_task(DataConfig(name="digits", max_examples=200))
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


def test_shard_batches_gives_every_rank_the_same_count_and_covers_all():
    batches = [[i] for i in range(7)]
    for world in (1, 2, 3, 8):
        shards = [shard_batches(batches, r, world) for r in range(world)]
        assert len({len(s) for s in shards}) == 1
        assert sorted({b[0] for s in shards for b in s}) == list(range(7))


def _text(gpt2_dir, text_csv):
    cfg = ModelConfig(name=str(gpt2_dir), layer=-1)
    tok = load_tokenizer(cfg)
    task = load_task(DataConfig(name=str(text_csv)), tokenizer=tok)
    torch.manual_seed(0)
    return TapModel(build_model(cfg, task.n_classes, pad_token_id=tok.pad_token_id).eval(), cfg.layer), task


def _text_extraction(rank: int, out: str, gpt2_dir: str, text_csv: str) -> None:
    tap, task = _text(gpt2_dir, text_csv)
    acts, logits = extract(tap, task, "train", 16, torch.device("cpu"))
    tokens, _ = extract(tap, task, "train", 16, torch.device("cpu"), tokens=True)
    torch.save({"acts": acts, "logits": logits, "tokens": tokens}, f"{out}.{rank}")


def test_text_extraction_under_two_processes_is_row_aligned(out, gpt2_dir, text_csv):
    """Length-grouped text batches are sharded across ranks; rows still come back in example-id order."""
    tap, task = _text(gpt2_dir, text_csv)
    single_acts, single_logits = extract(tap, task, "train", 16, torch.device("cpu"))
    single_tokens, _ = extract(tap, task, "train", 16, torch.device("cpu"), tokens=True)
    assert len(task.train) % 16 != 0 or (len(task.train) // 16) % 2 == 1, "shards must need padding for this test"
    for r in range(2):
        got = torch.load(out / f"text.{r}", weights_only=True)
        assert torch.allclose(got["acts"], single_acts, atol=1e-5)
        assert torch.allclose(got["logits"], single_logits, atol=1e-5)
        # sae.tokens: all — every real token exactly once (the shards' padding repeats are dropped), in
        # (example, position) order whatever the world size.
        n_real = sum(len(seq) for seq in task.train.inputs)
        assert got["tokens"].shape[0] == n_real
        assert torch.allclose(got["tokens"], single_tokens, atol=1e-5)
