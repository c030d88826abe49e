"""TapModel.linear_head: the head's weight where the tapped layer feeds a linear head directly (the latent
browser's class effect), checked against the model's own logits; None with the reason everywhere else."""

import pytest
import torch

from saeception.config import ModelConfig
from saeception.data.tasks import collate
from saeception.models.classifiers import MLP, TapModel, build_model, load_tokenizer


def test_the_mlps_last_hidden_layer_feeds_its_head_and_no_other_layer_does():
    model = MLP(64, [32, 16], 10).eval()
    x = torch.rand(5, 64)
    tap = TapModel(model, -1)
    name, why = tap.linear_head()
    assert name == "head.weight" and "hidden.1" in why
    with torch.no_grad():
        logits, h = tap({"features": x})
        weight = model.state_dict()[name]
        assert torch.allclose(h @ weight.t() + model.head.bias, logits, atol=1e-6)
    name, why = TapModel(model, 0).linear_head()
    assert name is None and "not the head" in why


@pytest.mark.parametrize("which,final", [("gpt2", "transformer.ln_f"), ("neox", "gpt_neox.final_layer_norm"),
                                         ("llama", "model.norm")])
def test_a_decoders_final_norm_at_the_last_token_feeds_score(which, final, request):
    path = request.getfixturevalue(f"{which}_dir")
    cfg = ModelConfig(name=str(path), layer=final)
    tok = load_tokenizer(cfg, "right")
    model = build_model(cfg, 3, pad_token_id=tok.pad_token_id).eval()
    tap = TapModel(model, final)
    name, why = tap.linear_head()
    assert name == "score.weight" and final in why
    seqs = [tok("apple engine")["input_ids"], tok("the violin and the drum and the harp")["input_ids"]]
    batch = collate([(s, 0, i) for i, s in enumerate(seqs)], tok.pad_token_id, "right")
    with torch.no_grad():
        logits, h = tap(batch)
    assert torch.allclose(h @ model.state_dict()[name].t(), logits, atol=1e-5)
    # A block's output passes through more blocks and the final norm; mean pooling is not what the head reads.
    assert TapModel(model, 1).linear_head() == (None, f"`{TapModel(model, 1).target_name}` passes through more "
                                                       "layers before the classification head")
    assert TapModel(model, final, "mean").linear_head()[0] is None


def test_an_encoders_block_does_not_feed_a_linear_head(bert_dir):
    cfg = ModelConfig(name=str(bert_dir), layer=-1)
    model = build_model(cfg, 3)
    assert TapModel(model, -1).linear_head()[0] is None
