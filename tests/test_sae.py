import pytest
import torch

from saeception.config import ConfigError, SAEConfig
from saeception.sae import SAE, geometric_median, train_sae


def planted(n: int = 8192, d: int = 32, n_atoms: int = 128, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms = atoms / atoms.norm(dim=-1, keepdim=True)
    index = torch.stack([torch.randperm(n_atoms, generator=g)[:k] for _ in range(n)])
    coef = torch.rand(n, k, generator=g) * 2 + 0.5
    return (coef[..., None] * atoms[index]).sum(1), atoms


def test_topk_recovers_planted_dictionary():
    x, atoms = planted()
    sae = train_sae(x, SAEConfig(kind="topk", expansion_factor=4, k=4))
    mmcs = (atoms @ sae.decoder_directions().T).max(1).values.mean()
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
    ev = 1 - (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
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
