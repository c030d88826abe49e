import pytest
import torch
from planted import mean_max_cosine, planted

from saeception.config import SAE_KINDS, ConfigError, SAEConfig
from saeception.method.errors import DivergedError
from saeception.method.sae import (
    SAE,
    JumpReLU,
    Step,
    auxk_loss,
    decode_topk,
    geometric_median,
    resample_dead,
    topk_rows,
    train_sae,
)


def test_topk_recovers_planted_dictionary():
    x, atoms = planted()
    sae = train_sae(x, SAEConfig(kind="topk", expansion_factor=4, k=4))
    mmcs = mean_max_cosine(atoms, sae)
    assert mmcs >= 0.9, f"mean max cosine {mmcs:.3f}"


@pytest.mark.parametrize("kind", SAE_KINDS)
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
    if kind == "jumprelu":  # one threshold per latent, each learned from the init, never negative
        assert sae.threshold.shape == (sae.n_latents,) and (sae.threshold >= 0).all()
        assert sae.threshold.std() > 0 and sae.threshold.mean() > 2 * SAEConfig().jumprelu_init_threshold


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


@pytest.mark.parametrize("kind", SAE_KINDS)
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


def test_jumprelu_gradients_are_the_straight_through_estimates():
    """Rajamanoharan et al. 2024 (and SAELens' JumpReLU): d/dx of x·1[x>θ] is 1[x>θ]; d/dθ is -(θ/ε)·rect((x-θ)/ε),
    and for the L0 step -(1/ε)·rect((x-θ)/ε), summed over the batch; a plain mask would give θ no gradient."""
    x = torch.tensor([[0.30, 0.52, 0.10], [0.49, 0.70, -0.2]], requires_grad=True)
    theta = torch.tensor([0.5, 0.5, 0.1], requires_grad=True)
    eps = 0.05
    out = JumpReLU.apply(x, theta, eps)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 0.52, 0.0], [0.0, 0.70, 0.0]]))
    out.sum().backward()
    window = ((x.detach() - theta.detach()).abs() < eps / 2).float()  # 0.52 and 0.49 near 0.5; 0.10 at 0.1
    assert torch.equal(x.grad, (x.detach() > theta.detach()).float())
    assert torch.allclose(theta.grad, -(theta.detach() / eps * window).sum(0))
    theta.grad = None
    Step.apply(x, theta, eps).sum().backward()
    assert torch.allclose(theta.grad, -(window / eps).sum(0))


def test_jumprelu_recovers_a_planted_dictionary_at_about_its_sparsity():
    """The thresholds learn (through the estimator) to cut the planted codes to about their 4 atoms per row
    (bench/sae_kinds.py, BENCHMARKS.md, for the coefficient and learning rate)."""
    x, atoms = planted()
    sae = train_sae(x, SAEConfig(kind="jumprelu", expansion_factor=4, l0_coefficient=0.03, lr=3e-3))
    l0 = float((sae.encode(x) > 0).sum(1).float().mean())
    assert 2 <= l0 <= 8, f"L0 {l0:.1f}"
    assert mean_max_cosine(atoms, sae) >= 0.85


@pytest.mark.parametrize("kind,gain", [("l1", 0.2), ("topk", 1.0), ("jumprelu", 1.0)])
def test_resampling_points_dead_latents_at_the_worst_reconstructed_rows(kind, gain):
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    sae = SAE(6, 10, kind, 2)
    if kind == "jumprelu":
        sae.threshold.data.fill_(0.05)
    torch.nn.init.normal_(sae.W_enc)
    sae.W_dec.data = torch.randn(10, 6)
    sae.normalize_decoder()
    opt = torch.optim.Adam(sae.parameters())
    sae(x).mse.backward()
    opt.step()
    if kind == "jumprelu":  # the thresholds got no gradient here (nothing in the estimator's window): give them moments
        opt.state[sae.threshold]["exp_avg"].fill_(1.0)
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 7]] = True
    # Two rows the SAE cannot reconstruct at all: they hold nearly all the error mass, so the two dead latents
    # take them, one each (rows are drawn without replacement).
    x[[5, 9]] = 1000 * torch.randn(2, 6)
    assert resample_dead(sae, opt, x, dead, torch.Generator().manual_seed(0), init_threshold=0.01) == 2
    directions = (x[[5, 9]] - sae.b_dec) / (x[[5, 9]] - sae.b_dec).norm(dim=-1, keepdim=True)
    found = sae.W_dec[[1, 7]]
    assert torch.allclose(found, directions, atol=1e-6) or torch.allclose(found, directions.flip(0), atol=1e-6)
    alive_norm = before["W_enc"][:, ~dead].norm(dim=0).mean()
    assert torch.allclose(sae.W_enc[:, [1, 7]].norm(dim=0), gain * alive_norm.expand(2))
    assert (sae.b_enc[[1, 7]] == 0).all()
    for name in ("W_enc", "W_dec", "b_enc"):  # the live latents are untouched
        keep = (slice(None), ~dead) if name == "W_enc" else (~dead,)
        assert torch.equal(getattr(sae, name)[keep], before[name][keep])
    touched = [(sae.W_dec, (dead,)), (sae.W_enc, (slice(None), dead))]
    if kind == "jumprelu":  # a dead latent's threshold starts again from the init, its Adam moments with it
        assert torch.allclose(sae.threshold[dead], torch.full((2,), 0.01)) and (sae.threshold[~dead] == 0.05).all()
        touched.append((sae.threshold, (dead,)))
    for param, where in touched:
        assert (opt.state[param]["exp_avg"][where] == 0).all() and (opt.state[param]["exp_avg_sq"][where] == 0).all()
        assert (opt.state[param]["exp_avg"] != 0).any()
    assert resample_dead(sae, opt, x, torch.zeros(10, dtype=torch.bool), torch.Generator()) == 0


@pytest.mark.parametrize("kind", ["l1", "topk"])
def test_resampling_revives_latents_that_start_dead(kind, monkeypatch):
    """Half the latents start with an encoder bias no input overcomes (and TopK has no AuxK here): only
    resampling brings them back, and with them more of the planted atoms (bench/sae_kinds.py, BENCHMARKS.md 15
    for the default, off)."""
    from saeception.method import sae as sae_module

    init = sae_module.init_sae

    def half_dead(x_all, cfg, gen):
        sae = init(x_all, cfg, gen)
        sae.b_enc.data[sae.n_latents // 2:] = -1e3
        return sae

    monkeypatch.setattr(sae_module, "init_sae", half_dead)
    x, atoms = planted()
    found = {}
    for every in (0, 100):
        sae = train_sae(x, SAEConfig(kind=kind, expansion_factor=4, k=4, auxk_coefficient=0, steps=800, resample_every=every))
        found[every] = int((sae.firing_density == 0).sum()), mean_max_cosine(atoms, sae)
    assert found[0][0] >= sae.n_latents // 2 and found[100][0] < sae.n_latents // 8, found
    assert found[100][1] >= found[0][1] + 0.05, found
