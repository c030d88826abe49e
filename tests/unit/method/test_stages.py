"""Stage declarations: what a stage reads is what it may read and what its key holds; each stage draws
its random numbers from its own generator."""

import pytest
import torch

from saeception.config import build_config
from saeception.method.stages import ConfigView, Stage, UndeclaredRead, stage_key, stage_rng, stage_seed

ENV = {"data": "d", "model_source": "m", "world_size": "1", "precision": "cpu:fp32"}


def test_a_view_reads_declared_keys_and_refuses_the_rest():
    cfg = build_config({"sae.k": 8})
    view = ConfigView(cfg, Stage("s", reads=("seed", "sae.k", "finetune")))
    assert view.seed == 0 and view.sae.k == 8 and view.finetune.lr == cfg.finetune.lr
    with pytest.raises(UndeclaredRead, match="'sae.kind'"):
        _ = view.sae.kind
    with pytest.raises(UndeclaredRead, match="'aux.weight'"):
        _ = view.aux.weight
    # Methods of the config classes read through the view too.
    whole = ConfigView(cfg, Stage("s", reads=("sae",)))
    assert whole.sae.n_latents(10) == cfg.sae.n_latents(10)
    with pytest.raises(UndeclaredRead):
        ConfigView(cfg, Stage("s", reads=("sae.k",))).sae.n_latents(10)


def test_the_key_holds_exactly_the_declared_reads_inputs_and_env():
    stage = Stage("s", reads=("sae.k",), inputs=("up",), env=("precision",))
    base = stage_key(stage, build_config({}), ENV, {"up": "u"})
    assert stage_key(stage, build_config({"sae.k": 8}), ENV, {"up": "u"}) != base
    assert stage_key(stage, build_config({}), ENV, {"up": "v"}) != base
    assert stage_key(stage, build_config({}), {**ENV, "precision": "cuda:bf16-autocast"}, {"up": "u"}) != base
    assert stage_key(stage, build_config({"sae.lr": 0.1, "seed": 3}), {**ENV, "data": "x"}, {"up": "u"}) == base
    with pytest.raises(ValueError, match="env fact"):
        Stage("bad", reads=(), env=("gpu",))


def test_each_stage_has_its_own_generator_and_leaves_the_global_one_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with stage_rng(0, 1, "retrain") as seed:
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before), "the global generator is restored"
    with stage_rng(0, 1, "retrain"):
        assert torch.equal(torch.rand(3), a), "same (seed, cycle, stage): same numbers"
    with stage_rng(0, 2, "retrain"):
        assert not torch.equal(torch.rand(3), a)
    assert seed == stage_seed(0, 1, "retrain") != stage_seed(0, 1, "sharpen") and 0 <= seed < 2**31
