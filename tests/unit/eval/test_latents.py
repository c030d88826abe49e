"""The latent browser's data and page (saeception.eval.latents) on hand-made codes."""

import json

import pytest
import torch

from saeception.eval.latents import HIST_BINS, example_ids, latent_summary, match_previous, render_html
from saeception.export import read_latents


def codes_and_labels():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    codes = torch.zeros(6, 4)
    codes[:3, 0] = torch.tensor([1.0, 3.0, 2.0])  # fires on class 0 only: CSI 1
    codes[:, 1] = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 2.0])  # fires everywhere
    codes[4, 2] = 9.0  # fires once: CSI 1 as well, but not scored
    codes[[0, 3, 4], 3] = torch.tensor([0.5, 2.0, 1.0])  # mostly class 1
    return codes, labels


def test_the_top_latents_by_score_with_their_top_examples_and_class_firings():
    codes, labels = codes_and_labels()
    s = latent_summary(codes, labels, 2, n_latents=10, n_examples=2, score="csi", min_firing_rate=0.25)
    assert [d["latent"] for d in s["latents"]] == [0, 3, 1]  # latent 2 fires once (< ceil(0.25 * 6) = 2): never shown
    assert s["eligible"] == 3 and s["n_examples"] == 6 and s["n_latents_total"] == 4
    assert s["min_firings"] == 2 and s["min_firing_rate"] == 0.25
    first = s["latents"][0]
    assert first["csi"] == pytest.approx(1.0) and first["firings"] == 3 and first["density"] == pytest.approx(0.5)
    assert first["class_firings"] == [3, 0] and first["max"] == 3.0
    assert [(e["id"], e["activation"], e["label"]) for e in first["top"]] == [(1, 3.0, 0), (2, 2.0, 0)]
    assert s["latents"][1]["class_firings"] == [1, 2]
    # Across the range: one example per quartile of its 3 firings ranked by activation (the first quartile is empty).
    assert [(e["quartile"], e["id"]) for e in first["range"]] == [(2, 0), (3, 2), (4, 1)]
    # Activations 1, 2, 3 in 16 bins over (0, 3]: (5/16, 6/16], (10/16, 11/16], the last.
    assert first["hist"] == [1 if b in (5, 10, 15) else 0 for b in range(HIST_BINS)]
    assert example_ids(s) == [0, 1, 2, 3, 4, 5]
    # Every latent in the index, ranked or not (latent 2 fires once: no rank).
    assert s["index"]["firings"] == [3, 6, 1, 3] and s["index"]["rank"] == [1, 3, None, 2]
    dense = latent_summary(codes, labels, 2, n_latents=1, n_examples=8, score="density", min_firing_rate=0.25)
    assert [d["latent"] for d in dense["latents"]] == [1] and len(dense["latents"][0]["top"]) == 6
    # An example a latent does not fire on is never among its top examples.
    assert all(e["activation"] > 0 for d in s["latents"] for e in d["top"])
    with pytest.raises(ValueError, match="score must be one of"):
        latent_summary(codes, labels, 2, score="sharpness")
    with pytest.raises(ValueError, match="effect must be"):
        latent_summary(codes, labels, 2, score="csi", effect=torch.zeros(4, 3))


def rare_and_supported(n_rare: int = 5):
    """360 test examples of 10 classes (36 each, the digits' test split): latent 0 fires on `n_rare` examples of
    class 0 (CSI 1); latent 1 on all 36 of class 1 and on 4 others, weaker (CSI 0.994)."""
    labels = torch.arange(360) % 10
    codes = torch.zeros(360, 3)
    codes[torch.nonzero(labels == 0).squeeze(1)[:n_rare], 0] = 2.0
    codes[labels == 1, 1] = 2.0
    codes[torch.nonzero(labels == 2).squeeze(1)[:4], 1] = 0.5
    codes[:, 2] = 1.0  # fires everywhere: CSI 0
    return codes, labels


def test_the_default_ranking_puts_a_well_supported_latent_before_one_firing_on_5_of_360():
    """Issue #37: ranking by CSI put a latent firing on 5 of 360 examples first; the default score shrinks CSI
    by the firing count (csi_shrunk = CSI x f / (f + 20))."""
    codes, labels = rare_and_supported()
    plain = latent_summary(codes, labels, 10, score="csi", min_firing_rate=0.0125)
    assert plain["min_firings"] == 5 and [d["latent"] for d in plain["latents"]] == [0, 1, 2]  # the defect, by CSI
    s = latent_summary(codes, labels, 10, min_firing_rate=0.0125)
    assert s["score"] == "csi_shrunk" and [d["latent"] for d in s["latents"]] == [1, 0, 2]
    rare, supported = s["latents"][1], s["latents"][0]
    assert rare["csi"] == pytest.approx(1.0) and rare["score"] == pytest.approx(5 / 25)
    assert supported["score"] == pytest.approx(supported["csi"] * 40 / 60)
    # The shrinkage fades with support: a latent firing on all 36 of its class keeps 36/56 of its CSI.
    whole = latent_summary(*rare_and_supported(36), 10, min_firing_rate=0.0125)
    assert whole["latents"][1]["score"] == pytest.approx(36 / 56)
    with pytest.raises(ValueError, match="prior_firings must be > 0"):
        latent_summary(codes, labels, 10, prior_firings=0)


def test_examples_across_the_activation_quartiles():
    """A latent firing on 100 examples with activations 1..100: two examples from each quarter, in order."""
    labels = torch.arange(200) % 2
    codes = torch.zeros(200, 1)
    codes[torch.randperm(200)[:100], 0] = torch.arange(1.0, 101.0)[torch.randperm(100)]
    d = latent_summary(codes, labels, 2, n_examples=8)["latents"][0]
    assert [round(e["activation"]) for e in d["top"]] == list(range(100, 92, -1))
    assert [(e["quartile"], round(e["activation"])) for e in d["range"]] == [
        (1, 7), (1, 19), (2, 32), (2, 44), (3, 57), (3, 69), (4, 82), (4, 94)]
    assert all(codes[e["id"], 0] == e["activation"] for e in d["range"])
    assert sum(d["hist"]) == 100 and d["hist"][0] == 6 and d["hist"][-1] == 7  # 1..6 in (0, 6.25], 94..100 in (93.75, 100]


def test_each_latent_is_matched_to_the_previous_decoder_row_closest_in_direction():
    prev = torch.randn(48, 16)
    perm = torch.randperm(48)
    now = prev[perm] * torch.rand(48, 1).add(0.5) + 0.01 * torch.randn(48, 16)  # rescaled, slightly moved
    match, cos = match_previous(now, prev, block=7)
    assert match.tolist() == perm.tolist() and (cos > 0.99).all()
    assert torch.allclose(cos, torch.nn.functional.cosine_similarity(now, prev[match]), atol=1e-6)
    with pytest.raises(ValueError, match="same d"):
        match_previous(now, torch.randn(48, 8))


def test_the_page_shows_texts_escaped_and_square_features_as_images():
    codes, labels = codes_and_labels()
    s = latent_summary(codes, labels, 2, n_examples=3, min_firing_rate=0.25)
    texts = {str(i): f"<script>alert({i})</script> & text {i}" for i in example_ids(s)}
    page = render_html({**s, "kind": "text", "examples": texts}, "Latents <of> a run")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; text 1" in page
    assert "<title>Latents &lt;of&gt; a run</title>" in page
    shown = sum(len(d["top"]) + len(d["range"]) for d in s["latents"])
    assert page.count('<section class="latent"') == 3 and page.count('<li class="example"') == shown == 3 + 3 + 3 + 10
    images = render_html({**s, "kind": "features", "examples": {i: [0.1] * 63 + [1.0] for i in texts}}, "t")
    assert images.count('src="data:image/png;base64,') == shown
    wide = render_html({**s, "kind": "features", "examples": {i: [0.5] * 20 for i in texts}}, "t")
    assert "data:image/png" not in wide and "[0.5, 0.5" in wide


def test_a_latents_file_from_before_min_firing_rate_still_reads_and_renders(tmp_path):
    """Files written with eval.min_firings hold the count alone; export reads them and the page shows it."""
    codes, labels = codes_and_labels()
    s = latent_summary(codes, labels, 2, n_examples=3, min_firing_rate=0.25)
    s.update(kind="text", examples={str(i): f"text {i}" for i in example_ids(s)})
    assert "on at least 2 of the 6 test examples (a share of 0.25, rounded up), ordered by" in render_html(s, "t")
    path = tmp_path / "latents.json"
    path.write_text(json.dumps({k: v for k, v in s.items() if k != "min_firing_rate"}))
    page = render_html(read_latents(path), "t")
    assert "on at least 2 of the 6 test examples, ordered by" in page and page.count('<section class="latent"') == 3


def test_the_page_shows_the_index_densities_histograms_class_effect_and_previous_match():
    codes, labels = codes_and_labels()
    effect = torch.tensor([[1.0, -2.0], [0.5, 0.5], [0.0, 0.0], [-3.0, 4.0]])
    previous = (4, torch.tensor([7, 1, 2, 0]), torch.tensor([0.91, 0.5, 0.25, 0.125]))
    s = latent_summary(codes, labels, 2, n_examples=3, min_firing_rate=0.25, effect=effect, effect_doc="through `head`",
                       previous=previous, train_density=torch.tensor([0.5, 0.9, 0.0, 0.01]))
    s.update(kind="text", examples={str(i): f"text {i}" for i in example_ids(s)})
    assert [d["effect"] for d in s["latents"]] == [[1.0, -2.0], [-3.0, 4.0], [0.5, 0.5]]
    assert s["latents"][0]["match"] == 7 and s["latents"][0]["match_cos"] == pytest.approx(0.91)
    page = render_html(s, "t")
    # Every latent has its row and anchor; the ranked ones link to their cards, which link back.
    for i in range(4):
        assert f'<tr id="i-{i}">' in page and page.count(f'href="#latent-{i}"') == (2 if i != 2 else 0)
    assert '<a href="#i-0">' in page and "<td>7</td><td>0.910</td>" in page
    assert 'Best match in cycle 4: latent 7, decoder cosine 0.910' in page
    assert "raises class 1 most (+4)" in page and "Class effect: through `head`" in page
    assert page.count('class="plot acts"') == 3 and page.count('class="plot effect"') == 3
    assert page.count('class="plot density"') == 2 and "the grey bar: 0 never fire" in page  # test split
    assert "the grey bar: 1 never fire" in page  # training densities: latent 2 never fired
    assert page.count('<ol class="examples range') == 3 + 3 + 4  # non-empty quartiles only (3, 3 and 4)
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # static and offline
    none = latent_summary(codes, labels, 2, min_firing_rate=0.25, effect_doc="the layer does not feed a linear head")
    none.update(kind="text", examples={str(i): "x" for i in example_ids(none)})
    page = render_html(none, "t")
    assert "Class effect: not shown: the layer does not feed a linear head" in page and "Previous cycle: none (cycle 0)" in page
    assert 'class="plot effect"' not in page and 'class="prev"' not in page


def test_every_latent_of_a_wide_sae_is_reachable_in_a_page_of_sane_size():
    """6,144 latents (a 768-wide layer, 8x): each gets a compact index row; only the ranked ones get cards."""
    labels = torch.arange(360) % 10
    codes = torch.rand(360, 6144) * (torch.rand(360, 6144) < 0.01)
    s = latent_summary(codes, labels, 10, min_firing_rate=0.0125, previous=(0, torch.arange(6144), torch.rand(6144)),
                       train_density=torch.rand(6144) / 100)
    s.update(kind="text", examples={str(i): "an example text of a few words" for i in example_ids(s)})
    page = render_html(s, "t")
    assert page.count('<tr id="i-') == 6144 and page.count('<section class="latent"') == 32
    assert len(page) < 1_500_000 and len(json.dumps(s)) < 600_000


def test_a_latents_file_lacking_an_example_it_shows_is_refused(tmp_path):
    """Every example a card shows, top or across the range, must be in the file: one ExportError, not a KeyError."""
    from saeception.export import ExportError

    codes, labels = codes_and_labels()
    s = latent_summary(codes, labels, 2, n_examples=1, min_firing_rate=0.25)
    top = {e["id"] for d in s["latents"] for e in d["top"]}
    only_range = sorted(set(example_ids(s)) - top)
    assert top == {1, 3, 5} and only_range == [0, 2, 4]
    s.update(kind="text", examples={str(i): "x" for i in example_ids(s) if i not in only_range})
    path = tmp_path / "latents.json"
    path.write_text(json.dumps(s))
    with pytest.raises(ExportError, match=r"lacks examples \[0, 2"):
        read_latents(path)
