"""The torch evaluation backend against scikit-learn: probes, k-means + ARI, silhouette, Davies-Bouldin,
Calinski-Harabasz, and evaluate() as a whole. CPU, small fixtures."""

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from saeception.config import ConfigError, EvalConfig, SAEConfig, build_config
from saeception.eval import clustering as C
from saeception.eval import metrics as M
from saeception.eval.evaluate import CPU_BACKEND, METRIC_NAMES, evaluate, resolve_backend
from saeception.eval.probe import fit_torch
from saeception.method.sae import train_sae


def sparse_codes(n: int, latents: int, k: int, classes: int, separation: float, seed: int):
    """TopK-like nonnegative codes with class-dependent firing (what an SAE's codes look like)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    pre = torch.randn(n, latents, generator=g) + separation * torch.randn(classes, latents, generator=g)[labels]
    values, index = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, index, values.relu()), labels


def sklearn_probe(x, y):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x.double().numpy(), y.numpy())


def accuracies(x, y, n_train):
    ours = fit_torch(x[:n_train], y[:n_train], 500)
    ref = sklearn_probe(x[:n_train], y[:n_train])
    test_x, test_y = x[n_train:], y[n_train:]
    return float((ours.predict(test_x) == test_y).double().mean()), ref.score(test_x.double().numpy(), test_y.numpy())


def test_probe_accuracy_matches_sklearn_on_digits():
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32), torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    ours, ref = accuracies(x[perm], y[perm], 1000)
    assert abs(ours - ref) <= 0.01, (ours, ref)


@pytest.mark.parametrize("classes, separation", [(3, 0.25), (10, 0.35)])
def test_probe_accuracy_matches_sklearn_on_sparse_codes(classes, separation):
    x, y = sparse_codes(1400, 256, 16, classes, separation, seed=classes)
    ours, ref = accuracies(x, y, 1000)
    assert 0.5 < ref < 0.97, ref  # not trivial: the probes can disagree
    assert abs(ours - ref) <= 0.01, (ours, ref)


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_solves_sklearns_objective(classes):
    # More features than examples: separable, so the L2 term alone decides how confident the probe is.
    # Probabilities pin the penalty's size (1 / (2N), doubled for the two-row binary softmax).
    g = torch.Generator().manual_seed(classes)
    y = torch.randint(0, classes, (140,), generator=g)
    x = torch.randn(140, 100, generator=g) + 0.3 * torch.randn(classes, 100, generator=g)[y]
    ours = fit_torch(x[:60], y[:60], 500)
    ref = sklearn_probe(x[:60], y[:60])
    p_ours, p_ref = ours.proba(x[60:]).double().numpy(), ref.predict_proba(x[60:].double().numpy())
    assert np.abs(p_ours - p_ref).max() < 0.01, np.abs(p_ours - p_ref).max()


def test_a_probe_fit_on_row_blocks_is_the_probe_fit_on_the_whole_set(monkeypatch):
    """Wide codes are standardised a block of rows at a time (no second full copy of x): the same
    objective and gradient, so the same probe up to float summation order."""
    from saeception.eval import probe as probe_mod

    x, y = sparse_codes(300, 64, 8, 3, 0.5, seed=2)
    whole = fit_torch(x, y, 100)
    monkeypatch.setattr(probe_mod, "STANDARDIZED_ELEMENTS", 64 * 70)  # 70 rows per block: 5 blocks
    blocked = fit_torch(x, y, 100)
    torch.testing.assert_close(blocked.weight, whole.weight, rtol=1e-3, atol=1e-4)
    assert torch.equal(blocked.predict(x), whole.predict(x))


def test_probe_standardises_like_standard_scaler():
    x, y = sparse_codes(300, 64, 8, 3, 0.5, seed=1)
    x[:, 3] = 0.0  # dead latent: zero variance, left unscaled
    x[:, 4] = 0.7  # constant: left unscaled
    ours = fit_torch(x, y, 50)
    scaler = StandardScaler().fit(x.double().numpy())
    assert np.allclose(ours.mean.double().numpy(), scaler.mean_, rtol=1e-6, atol=1e-7)
    assert np.allclose(ours.scale.double().numpy(), scaler.scale_, rtol=1e-6)


def test_probe_with_one_class_predicts_it():
    probe = fit_torch(torch.rand(20, 5), torch.full((20,), 2), 10)
    assert probe.predict(torch.rand(4, 5)).tolist() == [2, 2, 2, 2]


def test_adjusted_rand_equals_sklearn():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        a, b = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 6, (200,), generator=g)
        b[:120] = a[:120]
        assert abs(C.adjusted_rand(a, b) - skm.adjusted_rand_score(a.numpy(), b.numpy())) < 1e-12
    a = torch.tensor([0, 0, 1, 1, 2])
    assert C.adjusted_rand(a, torch.tensor([5, 5, 7, 7, 9])) == 1.0  # same partition, other names
    assert C.adjusted_rand(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)) == 1.0
    assert abs(C.adjusted_rand(a, torch.zeros(5, dtype=torch.long)) - skm.adjusted_rand_score(a, [0] * 5)) < 1e-12


@pytest.mark.parametrize("classes, separation", [(3, 0.7), (5, 0.6)])
def test_kmeans_ari_and_inertia_match_sklearn(classes, separation):
    x, y = sparse_codes(600, 128, 12, classes, separation, seed=classes)
    ours = C.kmeans(x, classes, seed=0)
    ref = KMeans(n_clusters=classes, n_init=3, random_state=0).fit(x.double().numpy())
    assert abs(C.adjusted_rand(y, ours) - skm.adjusted_rand_score(y.numpy(), ref.labels_)) <= 0.02
    x64 = x.double()
    inertia = sum(float((x64[ours == c] - x64[ours == c].mean(0)).pow(2).sum()) for c in range(classes))
    assert inertia <= ref.inertia_ * 1.005, (inertia, ref.inertia_)
    assert torch.equal(ours, C.kmeans(x, classes, seed=0))  # seeded: the same labels again


def test_kmeans_relocates_empty_clusters():
    # Two tight groups and k = 3: an init or update can leave a cluster empty; every id still ends used.
    x = torch.cat([torch.zeros(20, 4), torch.ones(20, 4), torch.full((1, 4), 0.5)])
    labels = C.kmeans(x + 0.01 * torch.randn(41, 4), 3, seed=0)
    assert len(torch.unique(labels)) == 3


def test_partition_scores_match_sklearn():
    x, y = sparse_codes(500, 96, 10, 4, 0.5, seed=3)
    xa, ya = x.double().numpy(), y.numpy()
    assert abs(C.silhouette(x, y) - skm.silhouette_score(xa, ya)) < 1e-5
    assert math.isclose(C.davies_bouldin(x, y), skm.davies_bouldin_score(xa, ya), rel_tol=1e-4)
    assert math.isclose(C.calinski_harabasz(x, y), skm.calinski_harabasz_score(xa, ya), rel_tol=1e-4)
    # Small row blocks, a singleton class and labels that are not 0..k-1.
    y2 = y * 10
    y2[7] = 99
    assert abs(C.silhouette(x, y2, block=1000) - skm.silhouette_score(xa, y2.numpy())) < 1e-5
    assert math.isclose(C.davies_bouldin(x, y2), skm.davies_bouldin_score(xa, y2.numpy()), rel_tol=1e-4)
    assert math.isclose(C.calinski_harabasz(x, y2), skm.calinski_harabasz_score(xa, y2.numpy()), rel_tol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_cluster_metrics_are_nan_when_undefined(backend):
    one_class = M.cluster_metrics(torch.rand(30, 8), torch.zeros(30, dtype=torch.long), 2, 100, 0, backend)
    x = torch.zeros(30, 8)
    x[:15, 0] = 1.0  # two distinct rows, three clusters asked for
    few_points = M.cluster_metrics(x, torch.arange(30) % 3, 3, 100, 0, backend)
    for out in (one_class, few_points):
        assert all(math.isnan(v) for v in out.values()), out


def eval_fixture(classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, 32, generator=g)
    acts, logits, labels = {}, {}, {}
    for split, n in (("train", 400), ("val", 200), ("test", 200)):
        y = torch.randint(0, classes, (n,), generator=g)
        acts[split] = centres[y] + torch.randn(n, 32, generator=g)
        logits[split] = torch.randn(n, classes, generator=g)
        labels[split] = y
    sae = train_sae(acts["train"], SAEConfig(kind="topk", expansion_factor=4, k=8, steps=100, batch_size=128), seed=seed)
    return sae, acts, logits, labels, classes


def test_evaluate_backends_agree():
    sae, acts, logits, labels, classes = eval_fixture()
    out = {b: evaluate(sae, acts, logits, labels, classes, EvalConfig(backend=b, cluster_max_examples=150), seed=0)
           for b in ("torch", "sklearn")}
    assert out["torch"].keys() == out["sklearn"].keys()
    assert set(out["torch"]) <= {*METRIC_NAMES, *(f"val_{m}" for m in METRIC_NAMES)}
    for name, ref in out["sklearn"].items():
        ours, base = out["torch"][name], name.removeprefix("val_")
        if "probe_accuracy" in base:
            assert abs(ours - ref) <= 0.01, (name, ours, ref)
        elif base in ("ari", "silhouette"):
            assert abs(ours - ref) <= 0.02, (name, ours, ref)
        elif base in ("davies_bouldin", "calinski_harabasz"):
            assert math.isclose(ours, ref, rel_tol=1e-4), (name, ours, ref)
        else:  # the same torch code on both backends
            assert ours == ref, (name, ours, ref)


def test_backend_choice_and_config():
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == CPU_BACKEND
    assert resolve_backend("sklearn", torch.device("cuda", 0)) == "sklearn"
    assert build_config({"eval.backend": "torch"}).eval.backend == "torch"
    with pytest.raises(ConfigError, match="eval.backend"):
        build_config({"eval.backend": "gpu"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluate_on_cuda_matches_cpu():
    sae, acts, logits, labels, classes = eval_fixture()
    cfg = EvalConfig(backend="auto", cluster_max_examples=150)
    cpu = evaluate(sae, acts, logits, labels, classes, cfg, seed=0)
    on = lambda d: {k: v.cuda() for k, v in d.items()}  # noqa: E731
    cuda = evaluate(sae.cuda(), on(acts), on(logits), on(labels), classes, cfg, seed=0)
    assert cuda.keys() == cpu.keys()
    for name, ref in cpu.items():
        base = name.removeprefix("val_")
        tol = 0.01 if "probe_accuracy" in base else 0.02 if base in ("ari", "silhouette") else 1e-4 * max(1, abs(ref))
        assert abs(cuda[name] - ref) <= tol, (name, cuda[name], ref)
