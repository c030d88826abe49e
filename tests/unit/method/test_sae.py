import pytest
import torch
from planted import mean_max_cosine, planted

from saeception.config import ConfigError, SAEConfig
from saeception.method.errors import DivergedError
from saeception.method.sae import SAE, auxk_loss, decode_topk, geometric_median, topk_rows, train_sae


def test_topk_recovers_planted_dictionary():
    x, atoms = planted()
    sae = train_sae(x, SAEConfig(kind="topk", expansion_factor=4, k=4))
    mmcs = mean_max_cosine(atoms, sae)
    assert mmcs >= 0.9, f"mean max cosine {mmcs:.3f}"


@pytest.mark.parametrize("kind", ["l1", "topk", "batchtopk"])
def test_every_kind_trains_and_reconstructs(kind):
    x, _ = planted(n=2048)
    sae = train_sae(x, SAEConfig(kind=kind, expansion_factor=2, k=4, steps=300))
    z = sae.encode(x)
    assert (z >= 0).all()
    ev = 1 - (sae.decode(z) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.3
    assert torch.allclose(sae.decoder_directions().norm(dim=-1), torch.ones(sae.n_latents), atol=1e-5)
    if kind == "topk":
        assert ((z > 0).sum(1) <= 4).all()
    if kind == "batchtopk":
        assert sae.threshold > 0
        assert (z > 0).sum(1).float().mean() < 12


def test_input_scale_makes_codes_decode_in_layer_units():
    x, _ = planted(n=2048)
    x = 100 * x + 5
    sae = train_sae(x, SAEConfig(kind="topk", expansion_factor=2, k=4, steps=400))
    ev = 1 - (sae(x).x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert ev > 0.5


def test_save_load_roundtrip_without_pickle(tmp_path):
    x, _ = planted(n=512)
    sae = train_sae(x, SAEConfig(kind="batchtopk", expansion_factor=2, k=4, steps=50))
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae.json", "sae.safetensors"]
    again = SAE.load(tmp_path / "sae")
    assert torch.equal(again.encode(x), sae.encode(x))


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.zeros(99, 3), torch.full((1, 3), 1000.0)])
    assert geometric_median(x).norm() < 1.0


def test_k_not_below_latents_is_rejected():
    with pytest.raises(ConfigError, match="sae.k"):
        train_sae(torch.randn(64, 4), SAEConfig(kind="topk", expansion_factor=2, k=8))


def _sae(d=12, n=48, k=4, seed=0):
    torch.manual_seed(seed)
    sae = SAE(d, n, "topk", k)
    torch.nn.init.normal_(sae.W_enc)
    torch.nn.init.normal_(sae.W_dec)
    return sae


def test_sparse_topk_decode_matches_dense_in_value_and_gradient():
    sae = _sae()
    pre = torch.relu(torch.randn(10, 48))
    grads = []
    for sparse in (True, False):
        sae.zero_grad()
        p = pre.clone().requires_grad_(True)
        values, index = p.topk(4, dim=-1)
        out = decode_topk(sae, values, index, sparse=sparse)
        out.pow(2).sum().backward()
        grads.append((out.detach(), sae.W_dec.grad.clone(), p.grad.clone()))
    dense_reference = sae.activate(pre) @ sae.W_dec
    assert torch.allclose(grads[0][0], dense_reference.detach(), atol=1e-5)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_auxk_is_zero_without_dead_latents_and_matches_brute_force_with_them():
    sae = _sae()
    pre = torch.relu(torch.randn(10, 48)).requires_grad_(True)
    residual = torch.randn(10, 12)
    none_dead = torch.zeros(48, dtype=torch.bool)
    assert auxk_loss(sae, pre, residual, none_dead, 8).detach().item() == 0.0
    dead = torch.zeros(48, dtype=torch.bool)
    dead[:5] = True  # fewer dead latents than k_aux
    loss = auxk_loss(sae, pre, residual, dead, 8)
    z = torch.where(dead, pre, torch.zeros_like(pre))  # all dead latents (5 < 8) reconstruct the residual
    brute = (z @ sae.W_dec - residual).pow(2).sum(-1).mean() / (residual - residual.mean(0)).pow(2).sum(-1).mean()
    assert torch.allclose(loss, brute, atol=1e-5)
    loss.backward()
    assert pre.grad[:, 5:].abs().sum() == 0 and pre.grad[:, :5].abs().sum() > 0


def test_divergence_fails_the_sae_stage_naming_the_steps():
    x = torch.randn(200, 8)
    x[7] = float("nan")
    with pytest.raises(DivergedError, match=r"between steps \d+ and \d+"):
        train_sae(x, SAEConfig(expansion_factor=2, k=2, steps=120, batch_size=64), check_every=50)


def test_topk_rows_selects_exactly_the_row_top_k():
    x = torch.randn(9, 100, requires_grad=True)
    values, index = topk_rows(x, 7)
    ref_values, ref_index = x.topk(7, dim=-1)
    assert torch.equal(values.sort(-1).values, ref_values.sort(-1).values)
    assert torch.equal(index.sort(-1).values, ref_index.sort(-1).values)
    assert torch.equal(x.gather(-1, index), values)
    values.sum().backward()  # gradient flows to exactly the selected entries
    assert torch.equal(x.grad, torch.zeros_like(x).scatter(-1, ref_index, 1.0))


@pytest.mark.parametrize("kind", ["topk", "l1", "batchtopk"])
def test_a_trained_sae_keeps_each_latents_firing_density_on_its_training_rows(kind, tmp_path):
    """What SAELens' sparsity.safetensors (and SAEBench, Neuronpedia) read; saved and loaded with the SAE.
    An SAE file written before the density was kept loads with it unknown (-1)."""
    from safetensors.torch import load_file, save_file

    from saeception.method.sae import encode_all

    x = torch.randn(300, 8)
    sae = train_sae(x, SAEConfig(kind=kind, expansion_factor=4, k=3, steps=60, batch_size=64), seed=0)
    fired = (encode_all(sae, x) > 0).float().mean(0)
    assert torch.equal(sae.firing_density, fired) and fired.max() > 0
    if kind == "topk":
        assert float(fired.sum()) <= sae.k + 1e-6  # at most k latents per row
    sae.save(tmp_path / "sae")
    assert torch.equal(SAE.load(tmp_path / "sae").firing_density, fired)
    older = {k: v for k, v in load_file(str(tmp_path / "sae.safetensors")).items() if k != "firing_density"}
    save_file(older, str(tmp_path / "sae.safetensors"))
    assert (SAE.load(tmp_path / "sae").firing_density == -1).all()


def test_the_lr_and_l1_schedules():
    warm = SAEConfig(steps=100, lr=1e-3, lr_warmup_steps=10)
    assert warm.lr_at(0) == pytest.approx(1e-4) and warm.lr_at(9) == pytest.approx(1e-3) and warm.lr_at(99) == 1e-3
    for decay in ("linear", "cosine"):
        cfg = SAEConfig(steps=100, lr=1e-3, lr_warmup_steps=10, lr_decay=decay)
        lrs = [cfg.lr_at(i) for i in range(100)]
        assert lrs[10] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)  # SAELens' end: lr / 10
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    l1 = SAEConfig(kind="l1", steps=100, l1_warmup_steps=4)
    assert [l1.l1_scale_at(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert not SAEConfig().scheduled and l1.scheduled and not SAEConfig(kind="topk", l1_warmup_steps=4).scheduled
    with pytest.raises(ConfigError, match="sae.lr_decay"):
        SAEConfig(lr_decay="exp")
    with pytest.raises(ConfigError, match="sae.l1_warmup_steps"):
        SAEConfig(steps=10, l1_warmup_steps=11)


@pytest.mark.parametrize("kind,extra,recovered", [
    ("topk", {"lr_warmup_steps": 150, "lr_decay": "cosine"}, 0.7),
    ("l1", {"l1_warmup_steps": 150}, 0.6),
])
def test_training_follows_its_schedule_and_recovers_a_planted_dictionary(kind, extra, recovered, monkeypatch):
    """Each step runs at the schedule's learning rate and L1 weight; the planted atoms are still found
    (bench/sae_schedules.py, BENCHMARKS.md: the constant schedule recovers them best at the default 1500 steps)."""
    from saeception.method import sae as sae_module

    seen, step = [], sae_module.sae_step

    def spy(sae, opt, x_all, state, cfg, aux_on, first):
        seen.append((opt.param_groups[0]["lr"], None if state.l1_scale is None else float(state.l1_scale)))
        return step(sae, opt, x_all, state, cfg, aux_on, first)

    monkeypatch.setattr(sae_module, "sae_step", spy)
    x, atoms = planted()
    cfg = SAEConfig(kind=kind, expansion_factor=4, k=4, **extra)
    sae = train_sae(x, cfg)
    lrs, scales = zip(*seen)
    assert list(lrs) == [cfg.lr_at(i) for i in range(cfg.steps)]
    if kind == "l1":  # held in a float32 tensor on the device
        assert list(scales) == pytest.approx([cfg.l1_scale_at(i) for i in range(cfg.steps)], rel=1e-6)
    assert mean_max_cosine(atoms, sae) >= recovered
