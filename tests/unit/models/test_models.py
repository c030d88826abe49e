import pytest
import torch

from saeception.config import ModelConfig
from saeception.data.tasks import collate
from saeception.method.train import aux_loss
from saeception.models.classifiers import MLP, TapModel, build_model, load_tokenizer, pool, splice


def test_pool_last_is_last_real_token_under_both_paddings():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, left, "first").flatten().tolist() == [2.0, 4.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]


@pytest.mark.parametrize("side", ["right", "left"])
def test_gpt2_pooling_equals_what_the_hf_head_reads(gpt2_dir, side):
    cfg = ModelConfig(name=str(gpt2_dir), layer="transformer.ln_f")
    tok = load_tokenizer(cfg, side)
    model = build_model(cfg, 3, pad_token_id=tok.pad_token_id).eval()
    tap = TapModel(model, cfg.layer, "auto")
    assert tap.pooling == "last"
    seqs = [tok("apple engine")["input_ids"], tok("the violin and the drum and the harp organ")["input_ids"]]
    batch = collate([(s, 0, i) for i, s in enumerate(seqs)], tok.pad_token_id, side)
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    with torch.no_grad():
        logits, h = tap(batch)
        # The head applied to our pooled final hidden state gives exactly the model's own logits.
        assert torch.allclose(model.score(h), logits, atol=1e-5)
        # ...and differs from reading position -1 (a pad under right padding).
        if side == "right":
            full = model.transformer(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            assert not torch.allclose(model.score(full[:, -1]), logits, atol=1e-3)


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_sequence_pools_the_same_alone_and_in_a_padded_batch(gpt2_dir, side):
    """Under left padding GPT-2 needs position ids from the mask, or its positions shift with the padding."""
    cfg = ModelConfig(name=str(gpt2_dir), layer=-1)
    tok = load_tokenizer(cfg, side)
    tap = TapModel(build_model(cfg, 3, pad_token_id=tok.pad_token_id).eval(), cfg.layer)
    short, long_ = tok("pear plum")["input_ids"], tok("pear plum and the gear and the axle")["input_ids"]
    with torch.no_grad():
        _, alone = tap(collate([(short, 0, 0)], tok.pad_token_id, side))
        batch = collate([(short, 0, 0), (long_, 0, 1)], tok.pad_token_id, side)
        assert (batch["attention_mask"][0] == 0).any()
        _, batched = tap(batch)
    assert torch.allclose(alone[0], batched[0], atol=1e-5), (alone[0] - batched[0]).abs().max()


def test_head_and_tap_use_one_pad_id(tmp_path, gpt2_dir):
    """A checkpoint whose config names a pad id its tokenizer lacks (the tokenizer pads with EOS): the
    head must skip the same pads the tap skips, so logits equal score(h) on a padded row."""
    import shutil

    from transformers import AutoConfig

    ckpt = tmp_path / "gpt2"
    shutil.copytree(gpt2_dir, ckpt)
    conf = AutoConfig.from_pretrained(ckpt)
    conf.pad_token_id = 5  # an ordinary token id, never used for padding here
    conf.save_pretrained(ckpt)
    cfg = ModelConfig(name=str(ckpt), layer="transformer.ln_f")
    tok = load_tokenizer(cfg, "right")
    model = build_model(cfg, 3, pad_token_id=tok.pad_token_id).eval()
    assert model.config.pad_token_id == tok.pad_token_id
    tap = TapModel(model, cfg.layer, "auto")
    seqs = [tok("apple engine")["input_ids"], tok("the violin and the drum and the harp")["input_ids"]]
    batch = collate([(s, 0, i) for i, s in enumerate(seqs)], tok.pad_token_id, "right")
    with torch.no_grad():
        logits, h = tap(batch)
    assert torch.allclose(model.score(h), logits, atol=1e-5)


def test_bert_pools_first_token(bert_dir):
    cfg = ModelConfig(name=str(bert_dir), layer=-1)
    tok = load_tokenizer(cfg)
    tap = TapModel(build_model(cfg, 3, pad_token_id=tok.pad_token_id).eval(), cfg.layer)
    assert tap.pooling == "first"
    assert tap.width() == 32


def _mlp_tap(layer=-1):
    return TapModel(MLP(8, [16, 12], 3), layer)


def test_aux_loss_has_gradient_at_target_layer():
    tap = _mlp_tap()
    batch = {"features": torch.randn(5, 8)}
    _, h = tap(batch)
    assert h.requires_grad, "the tapped activation must stay in the graph (no detach)"
    aux_loss(h, torch.randn(5, 12)).backward()
    target_linear = tap.model.hidden[1][0]
    assert target_linear.weight.grad is not None and target_linear.weight.grad.abs().sum() > 0
    assert tap.model.head.weight.grad is None  # the head is not on the aux path


def test_freeze_before_target_mlp_and_gpt2(gpt2_dir):
    tap = _mlp_tap(layer=1)
    tap.freeze_before_target()
    assert not any(p.requires_grad for p in tap.model.hidden[0].parameters())
    assert all(p.requires_grad for p in tap.model.hidden[1].parameters())
    assert all(p.requires_grad for p in tap.model.head.parameters())

    cfg = ModelConfig(name=str(gpt2_dir), layer=1)
    tok = load_tokenizer(cfg)
    tap = TapModel(build_model(cfg, 3, pad_token_id=tok.pad_token_id), cfg.layer)
    tap.freeze_before_target()
    trainable = {n for n, p in tap.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0.")) for n in trainable)
    assert any(n.startswith("transformer.h.1.") for n in trainable)
    assert "transformer.ln_f.weight" in trainable and "score.weight" in trainable


def test_layer_by_negative_index_and_name():
    tap = _mlp_tap(layer=-2)
    assert tap.target_name == "hidden.0"
    tap = TapModel(MLP(8, [16, 12], 3), "hidden.1")
    assert tap.width() == 12


@pytest.mark.parametrize("family", ["neox", "llama"])
def test_gradient_checkpointing_keeps_the_target_blocks_gradients_with_earlier_blocks_frozen(family, request):
    """With the blocks before the target frozen (model.freeze before), checkpointing recomputes the target
    block in the backward pass and the aux loss's gradients are the plain backward's."""
    model_dir = request.getfixturevalue(f"{family}_dir")
    grads = {}
    for checkpointing in (False, True):
        cfg = ModelConfig(name=str(model_dir), layer=-1, gradient_checkpointing=checkpointing)
        tok = load_tokenizer(cfg)
        torch.manual_seed(0)
        tap = TapModel(build_model(cfg, 3, pad_token_id=tok.pad_token_id), cfg.layer)
        tap.freeze_before_target()
        tap.train()
        inner = [m for m in tap.target.children() if any(p.requires_grad for p in m.parameters())][0]
        calls = []
        inner.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        seqs = [tok("apple engine piano")["input_ids"], tok("the violin and the drum")["input_ids"]]
        batch = collate([(s, 0, i) for i, s in enumerate(seqs)], tok.pad_token_id, "right")
        _, h = tap(batch)
        aux_loss(h, torch.ones_like(h)).backward()
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward pass
        grads[checkpointing] = {n: p.grad.clone() for n, p in tap.target.named_parameters() if p.grad is not None}
    assert grads[False], "the plain backward reaches the target block"
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-6, rtol=1e-5)


def test_model_dtype_loads_the_weights_in_it(neox_dir):
    cfg = ModelConfig(name=str(neox_dir), dtype="bfloat16")
    model = build_model(cfg, 3)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("how", ["last", "first", "mean"])
def test_splice_replaces_exactly_what_the_pool_reads(how):
    """The SAE sees the pooled value: after the splice the pool reads replace(pooled) exactly, and for last/first
    every other token is untouched; with no pooling every row is replaced."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])  # padding on both sides: the pool must find the real tokens

    def replace(x):
        return 2 * x + 1

    out = splice(hidden, mask, replace, how)
    assert torch.allclose(pool(out, mask, how), replace(pool(hidden, mask, how)), atol=1e-6)
    changed = (out != hidden).any(-1)
    if how == "mean":
        assert torch.equal(changed, mask.bool())
    else:
        assert changed.sum(1).tolist() == [1, 1]
    assert torch.equal(splice(hidden, None, replace, None), replace(hidden))


def test_an_edit_of_the_target_layer_runs_through_the_rest_of_the_model(gpt2_dir):
    cfg = ModelConfig(name=str(gpt2_dir), layer=0)
    tok = load_tokenizer(cfg)
    tap = TapModel(build_model(cfg, 3, pad_token_id=tok.pad_token_id).eval(), cfg.layer)
    batch = collate([(tok("apple engine the drum")["input_ids"], 0, 0), (tok("pear")["input_ids"], 1, 1)],
                    tok.pad_token_id, "right")
    with torch.no_grad():
        clean, h = tap(batch)
        with tap.editing(lambda x: x):
            same, _ = tap(batch)
        with tap.editing(lambda x: splice(x, batch["attention_mask"], torch.zeros_like, "last")):
            edited, h_edited = tap(batch)
        again, _ = tap(batch)  # the edit ends with its block
    assert torch.equal(same, clean) and torch.equal(again, clean)
    assert not torch.allclose(edited, clean) and torch.equal(h_edited, torch.zeros_like(h))
