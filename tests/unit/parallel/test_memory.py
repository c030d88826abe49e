"""The GPU-memory estimate (saeception.parallel.memory): facts read from known shapes, a total computed by hand, the
rules per strategy, and, on the CPU, the training step against what torch's MemTracker measures."""

import dataclasses

import pytest
import torch

from saeception.config import ModelConfig, build_config
from saeception.parallel.memory import estimate, facts_from_config, facts_from_model, model_facts


def gpt2_small():
    from transformers import GPT2Config

    return GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def cfg(**values):
    return build_config({"model.name": "x", "model.layer": 0, **values})


def test_gpt2_small_facts_from_its_config():
    f = facts_from_config(gpt2_small(), n_classes=2, name="gpt2")
    assert f.params == 124_441_344  # GPT-2 small's 124M plus a 768 x 2 head
    assert f.root_params == 50257 * 768 + 1024 * 768 + 2 * 768 + 768 * 2  # wte, wpe, ln_f, score
    assert f.block_params * 12 == f.params - f.root_params
    assert (f.layers, f.hidden, f.intermediate, f.heads, f.vocab) == (12, 768, 3072, 12, 50257)
    # what autocast casts: every 2-D weight but the embedding tables (c_attn, c_proj, c_fc, mlp c_proj; score)
    assert f.matmul_params == 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 768 * 2
    assert (f.activation, f.norms, f.block_dropouts, f.outer_dropouts) == ("gelu_new", 2, 2, 1)


def test_gpt_neox_facts_one_norm_input_and_no_dropout():
    from transformers import GPTNeoXConfig

    f = facts_from_config(GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=256,
                                        vocab_size=1000), n_classes=3)
    assert (f.norms, f.block_dropouts, f.outer_dropouts, f.activation, f.intermediate) == (1, 0, 0, "gelu", 256)


def test_mlp_facts_from_its_widths():
    f = model_facts(ModelConfig(), n_classes=10, input_dim=64)
    assert f.params == (64 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)
    assert f.widths == (64, 256, 128, 10) and f.width(-1) == 128 and f.width("hidden.0") == 256
    assert f.block_params == 256 * 128 + 128 and f.root_params == 128 * 10 + 10  # the largest hidden layer; the head


def test_an_unreachable_hub_model_has_no_facts():
    assert model_facts(ModelConfig(name="no-such-org/no-such-model")) is None  # the tests run with HF_HUB_OFFLINE=1


def test_a_local_model_directory_gives_its_facts(tmp_path):
    gpt2_small().save_pretrained(tmp_path)
    assert model_facts(ModelConfig(name=str(tmp_path)), n_classes=2).params == 124_441_344


def hand_facts():
    """A made-up transformer, so every number below can be checked with pencil and paper."""
    from saeception.parallel.memory import ModelFacts

    return ModelFacts("hand", "transformer", params=1000, root_params=200, block_params=400, matmul_params=600,
                      layers=2, hidden=8, intermediate=32, heads=2, vocab=50, activation="gelu", norms=2)


def test_fp32_ddp_on_cuda_by_hand():
    c = cfg(**{"data.max_length": 4, "finetune.batch_size": 2, "aux.batch_size": 2, "sae.expansion_factor": 2,
               "sae.batch_size": 4, "data.max_examples": 10, "chain.cycles": 1})
    e = estimate(c, 1, facts=hand_facts())
    assert (e.weights, e.grads, e.optimizer) == (4000, 4000, 8000)
    assert e.working == 4000 + 600 * 2  # DDP's buckets + autocast's bf16 copies of the matmul weights
    # per token and block: 2 fp32 norm inputs (2*4*8) + attention 6*8*2 + MLP (8*2 + 32*2 + 32*2) = 304 bytes;
    # 8 tokens x 2 blocks, plus the final norm's (4*8) and the head's (2*8) inputs per token
    assert e.activations == 8 * 2 * 304 + 8 * (32 + 16)
    assert e.training == 4000 + 4000 + 8000 + 5200 + e.activations
    # SAE stage: d=8, n=16, 280 parameters; the model's weights (training freed its gradients), 10 rows of
    # fp32 activations, SAE weights/grads/2 Adam states, 4 bf16 d×n casts, 6 (4 × 16) bf16 batch tensors,
    # the previous SAE
    assert e.sae == 4000 + 10 * 8 * 4 + 280 * 4 * 4 + 4 * 8 * 16 * 2 + 6 * 4 * 16 * 2 + 280 * 4
    # evaluation: model, SAE, activations and codes of 3 x 10 rows, the probe's standardised train codes
    # (fp32) and 3 float64 blocks (each the whole train codes, this small)
    assert e.evaluation == 4000 + 280 * 4 + 30 * 8 * 4 + 30 * 16 * 4 + 10 * 16 * 4 + 3 * 10 * 16 * 8
    assert e.total == e.training == max(e.training, e.sae, e.evaluation) and e.peak_stage == "training step"


def test_fsdp_over_two_workers_halves_the_sharded_state():
    f = facts_from_config(gpt2_small(), name="gpt2")
    ddp = estimate(cfg(), 2, facts=f)
    fsdp = estimate(cfg(**{"train.strategy": "fsdp"}), 2, facts=f)
    for part in ("weights", "grads", "optimizer"):
        assert abs(getattr(fsdp, part) * 2 - getattr(ddp, part)) <= 2 * 4 * 2, part
    assert fsdp.total < ddp.total
    assert estimate(cfg(**{"train.strategy": "fsdp"}), 8, facts=f).weights * 8 == pytest.approx(ddp.weights, abs=64)
    assert estimate(cfg(), 8, facts=f).weights == ddp.weights  # ddp: a full replica per worker, however many


def test_cpu_offload_moves_the_sharded_state_to_the_host():
    f = facts_from_config(gpt2_small(), name="gpt2")
    on = estimate(cfg(**{"train.strategy": "fsdp"}), 2, facts=f)
    off = estimate(cfg(**{"train.strategy": "fsdp", "train.cpu_offload": True}), 2, facts=f)
    assert off.weights == off.grads == off.optimizer == 0
    assert off.host == on.weights + on.grads + on.optimizer and on.host == 0
    assert off.working == on.working and off.training < on.training
    assert any("host memory" in line for line in off.lines())


def test_gradient_checkpointing_shrinks_activations():
    f = facts_from_config(gpt2_small(), name="gpt2")
    plain = estimate(cfg(**{"data.max_length": 128}), 1, facts=f)
    ckpt = estimate(cfg(**{"data.max_length": 128, "model.gradient_checkpointing": True}), 1, facts=f)
    assert ckpt.activations < plain.activations / 5
    assert ckpt.weights == plain.weights


def test_bf16_halves_weights_grads_and_optimizer_states():
    f = facts_from_config(gpt2_small(), name="gpt2")
    fp32 = estimate(cfg(), 1, facts=f)
    bf16 = estimate(cfg(**{"model.dtype": "bfloat16"}), 1, facts=f)
    assert (bf16.weights * 2, bf16.grads * 2, bf16.optimizer * 2) == (fp32.weights, fp32.grads, fp32.optimizer)
    assert bf16.working < fp32.working  # no autocast copies of bf16 weights, half-size buckets


def test_activations_grow_with_batch_and_sequence():
    f = facts_from_config(gpt2_small(), name="gpt2")
    a = estimate(cfg(**{"data.max_length": 64, "finetune.batch_size": 8, "aux.batch_size": 8}), 1, facts=f).activations
    assert estimate(cfg(**{"data.max_length": 128, "finetune.batch_size": 8, "aux.batch_size": 8}), 1, facts=f).activations == 2 * a
    assert estimate(cfg(**{"data.max_length": 64, "finetune.batch_size": 16, "aux.batch_size": 8}), 1, facts=f).activations == 2 * a


def test_evaluation_needs_the_data_size_and_grows_with_latents():
    f = facts_from_config(gpt2_small(), name="gpt2")
    assert estimate(cfg(), 1, facts=f).evaluation is None  # no sizes, no data.max_examples
    small = estimate(cfg(), 1, facts=f, sizes=(50_000, 1_000, 10_000))
    big = estimate(cfg(**{"sae.expansion_factor": 16}), 1, facts=f, sizes=(50_000, 1_000, 10_000))
    assert big.evaluation - small.evaluation > 12 * 768 * 61_000 * 4  # dense codes: N x n fp32
    # ... held once: the probe's copy and the float64 blocks are bounded, whatever the width
    wider = estimate(cfg(**{"sae.expansion_factor": 32}), 1, facts=f, sizes=(50_000, 1_000, 10_000))
    more = 16 * 768  # latents
    assert wider.evaluation - big.evaluation == more * 61_000 * 4 + (2 * 768 * more + more) * 4  # codes + the SAE
    widest = estimate(cfg(**{"sae.expansion_factor": 64}), 1, facts=f, sizes=(50_000, 1_000, 10_000))
    assert widest.peak_stage == "evaluation" and "evaluation" in widest.summary()
    capped = estimate(cfg(**{"data.max_examples": 1000}), 1, facts=f)
    assert capped.evaluation == estimate(cfg(), 1, facts=f, sizes=(1000, 1000, 1000)).evaluation


def test_summary_names_every_part():
    e = estimate(cfg(**{"data.max_examples": 100}), 1, facts=facts_from_config(gpt2_small(), name="gpt2"))
    line = e.summary()
    assert line.startswith("estimated GPU memory per worker: ")
    for part in ("weights", "grads", "optimizer", "activations", "working", "SAE stage", "evaluation", "peak:"):
        assert part in line, part


# --------------------------------------------------------------------------------------------------
# The training step on the CPU, against what torch measures


def _measured_step(hf, batch, length, checkpointing, dtype):
    """Peak bytes of the chain's training step order (zero_grad, forward, backward, AdamW step) on the
    CPU, from torch's MemTracker, after the first step (AdamW states exist)."""
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import AutoModelForSequenceClassification

    hf.num_labels, hf.pad_token_id = 2, 0
    model = AutoModelForSequenceClassification.from_config(hf).to(dtype)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.randint(1, hf.vocab_size, (batch, length))
    labels = torch.randint(0, 2, (batch,))
    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            loss.backward()
            opt.step()
            tracker.reset_mod_stats()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"], model


def _tiny(kind):
    from transformers import GPT2Config, GPTNeoXConfig

    if kind == "gpt2":  # attention dropout 0: the CPU's SDPA would fall back to the math kernel, which keeps scores
        return GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128, attn_pdrop=0.0)
    return GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=256, vocab_size=1000)


@pytest.mark.parametrize("kind,batch,length,checkpointing,dtype", [
    ("gpt2", 16, 64, False, torch.float32), ("gpt2", 16, 64, True, torch.float32),
    ("neox", 16, 64, False, torch.float32), ("neox", 16, 64, True, torch.float32), ("neox", 16, 64, False, torch.bfloat16)])
def test_training_step_matches_memtracker_on_the_cpu(kind, batch, length, checkpointing, dtype):
    measured, model = _measured_step(_tiny(kind), batch, length, checkpointing, dtype)
    c = cfg(**{"model.dtype": str(dtype).removeprefix("torch."), "data.max_length": length, "finetune.batch_size": batch,
               "aux.batch_size": batch, "model.gradient_checkpointing": checkpointing})
    e = estimate(c, 1, facts=facts_from_model(model), device="cpu", distributed=False)
    assert 0.88 <= e.training / measured <= 1.12, (e.training, measured)
    # The activations are most of it here: an estimate without them would be far off.
    assert (e.training - e.activations) / measured < 0.7


def test_facts_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        hand_facts().params = 1
