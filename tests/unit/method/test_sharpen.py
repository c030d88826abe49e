import torch

from saeception.config import DataConfig, SAEConfig, SharpenConfig
from saeception.data.tasks import load_task, loader
from saeception.method.sae import train_sae
from saeception.method.sharpen import (
    build_targets,
    class_means,
    is_noop,
    kept_fraction,
    n_kept,
    random_directions,
    sharpen,
)
from saeception.method.train import extract
from saeception.models.classifiers import MLP, TapModel


def test_per_class_keeps_the_class_mean_top_latents():
    codes = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.0, 0.0, 0.0, 9.0], [5.0, 1.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    out = sharpen(codes, labels, SharpenConfig("per_class", top_k_pct=50))
    # class 0 mean = [3, 1.5, 1.5, 0] -> latents {0, 1 or 2}; class 1 mean = [1, 0, 0, 9] -> {3, 0}
    assert out[1].tolist() == [1.0, 0.0, 0.0, 9.0]
    assert out[0, 3] == 0 and out[2, 3] == 0 and out[0, 0] == 1.0 and out[2, 0] == 5.0
    assert ((out != 0).sum(1) <= 2).all()


def test_per_example_keeps_own_top_latents():
    codes = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    out = sharpen(codes, torch.tensor([0, 0]), SharpenConfig("per_example", top_k_pct=50))
    assert out.tolist() == [[0, 0, 3.0, 4.0], [4.0, 3.0, 0, 0]]


def test_n_kept_and_random_directions():
    assert n_kept(100, 10) == 10 and n_kept(100, 0.1) == 1 and n_kept(100, 100) == 100
    t = random_directions(5, 7, seed=3)
    assert torch.allclose(t.norm(dim=-1), torch.ones(5)) and torch.equal(t, random_directions(5, 7, seed=3))


def test_random_control_draws_only_among_active_latents_and_ignores_chunking():
    """Every latent active: the matched control keeps per_class's count per example, but not per_class's
    latents; its draw depends on (seed, example id, latent) only, not on which rows share a chunk."""
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(60, 50, generator=g) + 0.1
    labels = torch.arange(60) % 3
    cfg = SharpenConfig("random", top_k_pct=10)
    out = sharpen(codes, labels, cfg, seed=4)
    assert ((out > 0).sum(1) == n_kept(50, 10)).all()
    assert not torch.equal(out, sharpen(codes, labels, SharpenConfig("per_class", top_k_pct=10)))
    tail = sharpen(codes[20:], labels[20:], cfg, seed=4, rows=torch.arange(20, 60))
    assert torch.equal(tail, out[20:])


def test_kept_fraction_and_noop_detection():
    codes = torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    assert kept_fraction(codes, codes * torch.tensor([0.0, 1.0, 1.0])) == (0.75 + 0.5) / 2
    assert kept_fraction(codes, codes) == 1.0
    # 2% of 512 latents = 10 kept >= k = 8: per_example keeps every active latent.
    assert is_noop("per_example", "topk", 8, 512, 2.0) and not is_noop("per_example", "topk", 16, 512, 2.0)
    assert not is_noop("per_class", "topk", 8, 512, 2.0) and not is_noop("per_example", "l1", 8, 512, 2.0)


def test_class_means_single_process():
    codes = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    assert class_means(codes, torch.tensor([0, 0, 1]), 3).tolist() == [[2.0, 1.0], [5.0, 4.0], [0.0, 0.0]]


def test_targets_belong_to_their_examples_after_shuffling():
    """Each batch of a shuffled loader must read the target built from its own examples' codes."""
    task = load_task(DataConfig(name="digits"))
    tap = TapModel(MLP(task.input_dim, [32, 16], task.n_classes), -1).eval()
    acts, _ = extract(tap, task, "train", 64, torch.device("cpu"))
    sae = train_sae(acts, SAEConfig(kind="topk", expansion_factor=2, k=4, steps=100))
    cfg = SharpenConfig("per_example", top_k_pct=10)
    targets = build_targets(sae, acts, task.train.labels, cfg).targets
    seen = 0
    for batch in loader(task, "train", 50, shuffle=True, seed=1):
        with torch.no_grad():
            _, h = tap(batch)
        own = sae.decode(sharpen(sae.encode(h), batch["labels"], cfg))
        assert torch.allclose(targets[batch["ids"]], own, atol=1e-5)
        seen += len(batch["ids"])
    assert seen == len(task.train)
    # The shuffled order really differs from id order: position-based reading would have been wrong.
    first = next(iter(loader(task, "train", 50, shuffle=True, seed=1)))
    assert not torch.equal(first["ids"], torch.arange(50))


def test_targets_computed_a_chunk_of_rows_at_a_time_equal_the_whole_split_at_once(monkeypatch):
    """Sharpening works per row once the class means are known: chunking the split (what keeps a
    98,304-latent SAE's codes of a whole split out of memory) changes no target and no kept fraction."""
    import pytest

    from saeception.method import sae as sae_mod
    from saeception.method.sharpen import build_targets, encoded_class_means

    g = torch.Generator().manual_seed(0)
    acts, labels = torch.randn(203, 16, generator=g), torch.randint(0, 3, (203,), generator=g)
    sae = train_sae(acts, SAEConfig(kind="topk", expansion_factor=4, k=6, steps=50), seed=0)
    whole = {s: build_targets(sae, acts, labels, SharpenConfig(strategy=s, top_k_pct=10), seed=3)
             for s in ("per_class", "per_example", "random", "class_prototype")}
    means = encoded_class_means(sae, acts, labels, 3)
    monkeypatch.setattr(sae_mod, "CHUNK_ELEMENTS", 64 * 50)  # 50 rows per chunk: 5 chunks, the last short
    assert sae_mod.chunk_rows(sae.n_latents) == 50
    torch.testing.assert_close(encoded_class_means(sae, acts, labels, 3), means, rtol=0, atol=1e-6)
    for strategy, built in whole.items():
        chunked = build_targets(sae, acts, labels, SharpenConfig(strategy=strategy, top_k_pct=10), seed=3)
        torch.testing.assert_close(chunked.targets, built.targets, rtol=0, atol=1e-6)
        # float32 encodes of other row blocks may differ in the last bits: a kept ratio of a row is a float32
        # sum, so the means agree to float32 precision, not 1e-12 (a fresh clone once failed at 5e-10).
        assert chunked.kept_fraction == pytest.approx(built.kept_fraction, rel=1e-6, nan_ok=True), strategy
        assert chunked.kept_active == pytest.approx(built.kept_active, rel=1e-6, nan_ok=True), strategy


def test_codes_that_are_all_zero_are_counted_not_hidden():
    """An example whose code is all zero gets decode(0) as its target: the kept fraction cannot see it (it
    averages over codes with mass), so the share of such examples is reported beside it."""
    g = torch.Generator().manual_seed(0)
    acts, labels = torch.randn(120, 16, generator=g), torch.randint(0, 3, (120,), generator=g)
    sae = train_sae(acts, SAEConfig(kind="l1", expansion_factor=4, l1_coefficient=0.01, steps=50), seed=0)
    live = build_targets(sae, acts, labels, SharpenConfig("per_class", top_k_pct=10))
    assert live.empty_fraction == float(((sae.encode(acts) > 0).sum(1) == 0).double().mean())
    with torch.no_grad():
        sae.b_enc[:60] -= 1e4  # half the latents can no longer fire ...
        silent = acts[:60] * 0
    dead = build_targets(sae, torch.cat([silent + sae.b_dec, acts[60:]]), labels, SharpenConfig("per_class", top_k_pct=10))
    assert dead.empty_fraction > live.empty_fraction
    with torch.no_grad():
        sae.b_enc -= 1e4  # ... and now none
    none = build_targets(sae, acts, labels, SharpenConfig("per_class", top_k_pct=10))
    assert none.empty_fraction == 1.0 and none.kept_active == 0.0
    torch.testing.assert_close(none.targets, sae.decode(torch.zeros(120, sae.n_latents)))


def test_mask_keeps_exactly_what_top_zeroes_and_random_matches_its_count():
    """sharpen.keep mask (the original's "mask" targets) zeroes the chosen latents and keeps the rest: top and
    mask split every code in two; `random` matched to a mask strategy keeps as many active latents as mask does."""
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(60, 20, generator=g))
    labels = torch.randint(0, 3, (60,), generator=g)
    for strategy in ("per_class", "per_example"):
        top = sharpen(codes, labels, SharpenConfig(strategy, top_k_pct=25))
        mask = sharpen(codes, labels, SharpenConfig(strategy, top_k_pct=25, keep="mask"))
        torch.testing.assert_close(top + mask, codes, rtol=0, atol=0)
        assert ((top != 0) & (mask != 0)).sum() == 0 and (mask != 0).sum() > (top != 0).sum()
        matched = sharpen(codes, labels, SharpenConfig("random", top_k_pct=25, match=strategy, keep="mask"), seed=1)
        torch.testing.assert_close((matched != 0).sum(1), (mask != 0).sum(1), rtol=0, atol=0)


def test_shuffled_pairing_builds_each_target_from_another_example_s_code():
    """sharpen.pairing shuffled (the original code's pairing): example i's target is sharpened from row perm[i]'s
    code with example i's label, class means from those mispaired codes; the same seed gives the same
    permutation, aligned pairing and the code-free strategies read the rows as they are."""
    from saeception.method.sharpen import code_source, encoded_class_means

    g = torch.Generator().manual_seed(0)
    acts, labels = torch.randn(90, 8, generator=g), torch.arange(90) % 3
    acts[:, 0] += 6 * labels  # classes far apart along one direction
    sae = train_sae(acts, SAEConfig(kind="topk", expansion_factor=4, k=4, steps=100), seed=0)
    aligned, shuffled = SharpenConfig("per_class", top_k_pct=10), SharpenConfig("per_class", top_k_pct=10, pairing="shuffled")
    source = code_source(acts, shuffled, seed=5)
    perm = [int(((acts - row).abs().sum(1) == 0).nonzero()[0]) for row in source]
    assert sorted(perm) == list(range(90)) and perm != list(range(90))
    assert torch.equal(code_source(acts, shuffled, seed=5), source) and code_source(acts, aligned, seed=5) is acts
    assert code_source(acts, SharpenConfig("class_prototype", pairing="shuffled"), seed=5) is acts
    means = encoded_class_means(sae, source, labels, 3)
    built = build_targets(sae, source, labels, shuffled, seed=5, means=means).targets
    own = sae.decode(sharpen(sae.encode(acts[perm]), labels, shuffled, means))
    torch.testing.assert_close(built, own, rtol=0, atol=1e-5)
    # The class means lose the classes: mispaired codes average to about the same mean in every class.
    true = encoded_class_means(sae, acts, labels, 3)
    assert (means - means.mean(0)).abs().sum() < 0.5 * (true - true.mean(0)).abs().sum()


def test_the_nosharpen_control_keeps_every_latent_whatever_the_winner_keeps():
    from saeception.config import build_config
    from saeception.eval.confirm import arm_values

    values = {"sharpen.strategy": "per_class", "sharpen.top_k_pct": 10.0, "sharpen.keep": "mask"}
    nosharpen = build_config(arm_values(values, "nosharpen")).sharpen
    assert (nosharpen.top_k_pct, nosharpen.keep) == (100.0, "top")
    assert build_config(arm_values(values, "random")).sharpen.keep == "mask"
