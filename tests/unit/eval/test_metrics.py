import math

import pytest
import torch
from helpers import per_latent_reference as brute_force
from sklearn.metrics import f1_score

from saeception.eval import metrics as M


def test_monosemanticity_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (300,), generator=g)
    codes = torch.relu(torch.randn(300, 64, generator=g) + 0.3 * labels[:, None] * torch.randn(1, 64, generator=g))
    codes[:, 5] = 0  # dead: excluded
    codes[:, 6] = 1.0  # always fires: U = 0, CSI = 0
    codes[:, 7] = (labels == 2).float()  # perfectly selective
    ours, ref = M.monosemanticity(codes, labels), brute_force(codes, labels)
    assert abs(ours["csi"] - ref["csi"]) < 1e-6
    assert abs(ours["u"] - ref["u"]) < 1e-6
    u = M.u_per_latent(codes, labels)
    assert abs(float(u[6])) < 1e-12 and float(M.csi_per_latent(codes, labels)[7]) == 1.0


def test_u_is_in_one_log_base():
    # A latent that fires exactly on one of two equiprobable classes carries all of H(y): U = 1.
    labels = torch.tensor([0, 1] * 50)
    codes = (labels == 1).float()[:, None]
    assert abs(float(M.u_per_latent(codes, labels)[0]) - 1.0) < 1e-9


def test_explained_variance_is_over_the_whole_set():
    x = torch.tensor([[0.0], [0.0], [10.0], [10.0]])
    x_hat = torch.tensor([[1.0], [1.0], [10.0], [10.0]])
    # Whole set: 1 - 2 / 100; a per-batch average over [first two] and [last two] would be undefined/different.
    assert abs(M.explained_variance(x, x_hat) - 0.98) < 1e-12


def test_task_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (200,), generator=g)
    logits = torch.randn(200, 5, generator=g) + 2 * torch.nn.functional.one_hot(labels, 5)
    ours = M.task_metrics(logits, labels, 5)
    pred = logits.argmax(-1).numpy()
    assert abs(ours["task_f1_macro"] - f1_score(labels.numpy(), pred, average="macro")) < 1e-12
    assert abs(ours["task_accuracy"] - (pred == labels.numpy()).mean()) < 1e-12


def test_f_scores_rank_the_informative_feature_first():
    labels = torch.randint(0, 3, (300,))
    x = torch.randn(300, 10)
    x[:, 3] += 5 * labels
    assert int(M.f_scores(x, labels, 3).argmax()) == 3


def test_l0_and_dead():
    codes = torch.tensor([[1.0, 0, 0], [2.0, 3.0, 0]])
    assert M.l0(codes) == 1.5
    assert abs(M.dead_pct(codes) - 100 / 3) < 1e-9


def test_wide_codes_give_the_same_metrics_in_blocks(monkeypatch):
    """Per-latent statistics by column blocks and the partition scores by row blocks (what keeps a
    98,304-latent code matrix from being copied whole to float64) change no number."""
    import pytest

    from saeception.eval import clustering as C
    from saeception.eval.metrics import csi_per_latent, f_scores, u_per_latent

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (150,), generator=g)
    codes = torch.relu(torch.randn(150, 96, generator=g) + 0.5 * torch.randn(4, 96, generator=g)[labels])
    whole = (csi_per_latent(codes, labels, 4), u_per_latent(codes, labels, 4), f_scores(codes, labels, 4),
             C.partition_scores(codes, labels))
    monkeypatch.setattr(C, "BLOCK_ELEMENTS", 150 * 10)  # 10 columns, or 15 rows, per block
    blocked = (csi_per_latent(codes, labels, 4), u_per_latent(codes, labels, 4), f_scores(codes, labels, 4),
               C.partition_scores(codes, labels))
    for a, b in zip(whole[:3], blocked[:3]):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)  # float64; BLAS may sum a block differently
    for k, v in whole[3].items():
        assert blocked[3][k] == pytest.approx(v, rel=1e-12), k


def test_a_latent_that_fires_once_does_not_move_the_per_latent_means():
    """A latent firing on one example has CSI 1 and U ~ 0 whatever it encodes; with eval.min_firing_rate it
    is left out of the means (and counted apart), while the *_all means still see it."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    codes = torch.rand(200, 12, generator=g) * (torch.rand(200, 12, generator=g) < 0.4)
    once = torch.zeros(200, 1)
    once[7, 0] = 3.0
    base, more = M.monosemanticity(codes, labels, 0.025), M.monosemanticity(torch.cat([codes, once], 1), labels, 0.025)
    assert more["csi"] == base["csi"] and more["u"] == base["u"] and more["n"] == base["n"] == 12
    assert more["csi_all"] != base["csi_all"] and more["u_all"] != base["u_all"]
    assert M.csi_per_latent(once, labels)[0] == 1.0


def test_which_latents_are_scored_does_not_depend_on_the_split_size():
    """The same examples twice over: every mean, and which latents are scored, stay as they were. With an
    absolute count (eval.min_firings, before) the latents firing on 3 or 4 of 200 examples were left out, and
    counted at 6 or 8 of 400."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    codes = torch.rand(200, 40, generator=g) * (torch.rand(200, 40, generator=g) < 0.3)
    for j, firing in enumerate((1, 2, 3, 4, 5, 6, 9)):  # rare latents on both sides of ceil(0.025 * 200) = 5
        codes[:, j] = 0
        codes[torch.randperm(200, generator=g)[:firing], j] = 1.0 + j
    once, twice = M.monosemanticity(codes, labels, 0.025), M.monosemanticity(codes.repeat(2, 1), labels.repeat(2), 0.025)
    assert once["n"] == twice["n"] == 40 - 4
    for k in ("csi", "u", "csi_all", "u_all"):
        assert twice[k] == pytest.approx(once[k], rel=1e-12, abs=1e-12), k


@pytest.mark.parametrize("n,rate,expected", [
    (360, 0.0125, 5),  # the default: ceil(4.5)
    (400, 0.0125, 5),  # exactly 5: not 6
    (100, 0.07, 7),  # 0.07 * 100 is 7.000000000000001 in floating point: still 7
    (10_000, 0.0125, 125),
    (30, 0.0125, 1),  # ceil(0.375)
    (10, 0.0, 1),  # 0: every latent that fires
    (0, 0.5, 1),  # at least 1, even on an empty set
    (7, 0.5, 4),
])
def test_the_threshold_is_the_rate_of_the_split_rounded_up_and_at_least_one(n, rate, expected):
    assert M.min_firings_for(n, rate) == expected


def test_the_threshold_rejects_a_rate_outside_zero_to_one():
    for rate in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="min_firing_rate"):
            M.min_firings_for(100, rate)


def test_fidelity_metrics_span_zero_ablation_to_a_perfect_splice():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (50,))
    clean = torch.randn(50, 3) + 4 * torch.nn.functional.one_hot(labels, 3)
    ablated = torch.zeros(50, 3)
    perfect = M.fidelity_metrics(clean, clean, ablated, labels)
    assert set(perfect) == set(M.FIDELITY_METRICS)
    assert perfect["loss_recovered"] == pytest.approx(1.0) and perfect["spliced_kl"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["task_accuracy_drop"] == 0.0
    assert M.fidelity_metrics(clean, ablated, ablated, labels)["loss_recovered"] == pytest.approx(0.0, abs=1e-12)
    half = M.fidelity_metrics(clean, clean / 2, ablated, labels)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(ablated.double(), labels) - ce(clean.double() / 2, labels)) / (ce(ablated.double(), labels) - ce(clean.double(), labels))
    assert half["loss_recovered"] == pytest.approx(float(expected)) and 0 < half["loss_recovered"] < 1
    p, q = clean.double().softmax(-1), (clean.double() / 2).softmax(-1)
    assert half["spliced_kl"] == pytest.approx(float((p * (p / q).log()).sum(-1).mean()))
    assert math.isnan(M.fidelity_metrics(clean, ablated, clean, labels)["loss_recovered"])  # ablation costs nothing


def test_argmax_ari_clusters_each_example_by_its_most_active_latent():
    """The original SAE-ception's ARI: one latent per class -> 1; the argmax ignoring the classes -> about 0;
    an all-zero code is latent 0 (numpy's argmax)."""
    import torch

    from saeception.eval.metrics import argmax_ari

    labels = torch.arange(60) % 3
    codes = torch.zeros(60, 8)
    codes[torch.arange(60), labels + 2] = 1.0 + torch.rand(60)
    assert argmax_ari(codes, labels) == 1.0
    codes[:, 7] = 5.0  # one latent wins everywhere: one cluster
    assert abs(argmax_ari(codes, labels)) < 1e-12
    zero = torch.zeros(4, 5)
    zero[2, 3] = 1.0
    assert argmax_ari(zero, torch.tensor([0, 0, 1, 0])) == 1.0  # the zero codes share latent 0
