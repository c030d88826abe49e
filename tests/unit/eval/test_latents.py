"""The latent browser's data and page (saeception.eval.latents) on hand-made codes."""

import pytest
import torch

from saeception.eval.latents import example_ids, latent_summary, render_html


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
    s = latent_summary(codes, labels, 2, n_latents=10, n_examples=2, score="csi", min_firings=2)
    assert [d["latent"] for d in s["latents"]] == [0, 3, 1]  # latent 2 fires once (< min_firings): never shown
    assert s["eligible"] == 3 and s["n_examples"] == 6 and s["n_latents_total"] == 4
    first = s["latents"][0]
    assert first["csi"] == pytest.approx(1.0) and first["firings"] == 3 and first["density"] == pytest.approx(0.5)
    assert first["class_firings"] == [3, 0] and first["max"] == 3.0
    assert [(e["id"], e["activation"], e["label"]) for e in first["top"]] == [(1, 3.0, 0), (2, 2.0, 0)]
    assert s["latents"][1]["class_firings"] == [1, 2]
    assert example_ids(s) == [1, 2, 3, 4, 5]
    dense = latent_summary(codes, labels, 2, n_latents=1, n_examples=8, score="density", min_firings=2)
    assert [d["latent"] for d in dense["latents"]] == [1] and len(dense["latents"][0]["top"]) == 6
    # An example a latent does not fire on is never among its top examples.
    assert all(e["activation"] > 0 for d in s["latents"] for e in d["top"])
    with pytest.raises(ValueError, match="score must be one of"):
        latent_summary(codes, labels, 2, score="sharpness")


def test_the_page_shows_texts_escaped_and_square_features_as_images():
    codes, labels = codes_and_labels()
    s = latent_summary(codes, labels, 2, n_examples=3, min_firings=2)
    texts = {str(i): f"<script>alert({i})</script> & text {i}" for i in example_ids(s)}
    page = render_html({**s, "kind": "text", "examples": texts}, "Latents <of> a run")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; text 1" in page
    assert "<title>Latents &lt;of&gt; a run</title>" in page
    assert page.count('<section class="latent"') == 3 and page.count('<li class="example"') == 3 + 3 + 3
    images = render_html({**s, "kind": "features", "examples": {i: [0.1] * 63 + [1.0] for i in texts}}, "t")
    assert images.count('src="data:image/png;base64,') == 9
    wide = render_html({**s, "kind": "features", "examples": {i: [0.5] * 20 for i in texts}}, "t")
    assert "data:image/png" not in wide and "[0.5, 0.5" in wide
