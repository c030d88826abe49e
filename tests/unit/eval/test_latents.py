"""The latent browser's data and page (saeception.eval.latents) on hand-made codes."""

import json

import pytest
import torch

from saeception.eval.latents import example_ids, latent_summary, render_html
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
    assert example_ids(s) == [1, 2, 3, 4, 5]
    dense = latent_summary(codes, labels, 2, n_latents=1, n_examples=8, score="density", min_firing_rate=0.25)
    assert [d["latent"] for d in dense["latents"]] == [1] and len(dense["latents"][0]["top"]) == 6
    # An example a latent does not fire on is never among its top examples.
    assert all(e["activation"] > 0 for d in s["latents"] for e in d["top"])
    with pytest.raises(ValueError, match="score must be one of"):
        latent_summary(codes, labels, 2, score="sharpness")


def test_the_page_shows_texts_escaped_and_square_features_as_images():
    codes, labels = codes_and_labels()
    s = latent_summary(codes, labels, 2, n_examples=3, min_firing_rate=0.25)
    texts = {str(i): f"<script>alert({i})</script> & text {i}" for i in example_ids(s)}
    page = render_html({**s, "kind": "text", "examples": texts}, "Latents <of> a run")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; text 1" in page
    assert "<title>Latents &lt;of&gt; a run</title>" in page
    assert page.count('<section class="latent"') == 3 and page.count('<li class="example"') == 3 + 3 + 3
    images = render_html({**s, "kind": "features", "examples": {i: [0.1] * 63 + [1.0] for i in texts}}, "t")
    assert images.count('src="data:image/png;base64,') == 9
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
