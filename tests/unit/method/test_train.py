"""Training and extraction stages: retraining pairs each example with its own target; extraction
returns rows in example-id order however the batches were grouped."""

import torch

from saeception.config import DataConfig
from saeception.data.tasks import load_task, loader
from saeception.method.train import extract
from saeception.models.classifiers import TapModel


def test_retraining_on_the_aux_term_alone_moves_each_h_toward_its_own_target(tmp_path, monkeypatch):
    """Targets are a teacher network's activations of the same examples: each one differs, and only the
    right pairing (targets[ids]) can be learned. With the task loss switched off, what moves h is the aux
    term alone: a detached tap or targets read by loader position both fail here."""
    import torch.nn.functional as F

    from saeception.config import AuxConfig, DataConfig
    from saeception.data.tasks import load_task
    from saeception.eval.metrics import cosine
    from saeception.method import train as train_mod
    from saeception.method.train import extract, retrain
    from saeception.models.classifiers import MLP, TapModel

    task = load_task(DataConfig(name="digits", max_examples=400))
    torch.manual_seed(1)
    teacher = TapModel(MLP(task.input_dim, [32, 16], task.n_classes), -1)
    torch.manual_seed(2)
    student = TapModel(MLP(task.input_dim, [32, 16], task.n_classes), -1)
    cpu = torch.device("cpu")
    targets, _ = extract(teacher, task, "train", 64, cpu)
    before, _ = extract(student, task, "train", 64, cpu)
    cross_entropy = F.cross_entropy
    monkeypatch.setattr(train_mod.F, "cross_entropy", lambda logits, y: 0.0 * cross_entropy(logits, y))
    retrain(student, task, targets, AuxConfig(weight=1.0, epochs=30, lr=3e-3, batch_size=32), cpu, seed=0)
    after, _ = extract(student, task, "train", 64, cpu)
    wrong = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))]
    own_gain = cosine(after, targets) - cosine(before, targets)
    wrong_gain = cosine(after, wrong) - cosine(before, wrong)
    assert own_gain > 0.05 and own_gain > wrong_gain + 0.03, (own_gain, wrong_gain)


def test_text_extraction_stays_aligned_with_length_grouping(gpt2_dir, text_csv):
    from saeception.config import ModelConfig
    from saeception.models.classifiers import build_model, load_tokenizer

    mcfg = ModelConfig(name=str(gpt2_dir), layer=-1)
    tok = load_tokenizer(mcfg)
    task = load_task(DataConfig(name=str(text_csv)), tokenizer=tok)
    tap = TapModel(build_model(mcfg, task.n_classes, pad_token_id=tok.pad_token_id).eval(), -1)
    acts, _ = extract(tap, task, "train", 16, torch.device("cpu"))
    for batch in loader(task, "train", 16, shuffle=True, seed=2):
        with torch.no_grad():
            _, h = tap(batch)
        assert torch.allclose(acts[batch["ids"]], h, atol=1e-4)


def test_centered_aux_loss_is_the_cosine_around_the_cycle_mean():
    from saeception.method.train import aux_loss

    g = torch.Generator().manual_seed(0)
    h, t = torch.randn(6, 4, generator=g) + 5, torch.randn(6, 4, generator=g) + 5  # a shared mean direction
    mu = torch.full((4,), 5.0)
    plain, centered = aux_loss(h, t), aux_loss(h, t, mu)
    expected = (1 - torch.nn.functional.cosine_similarity(h - mu, t - mu, dim=-1)).mean()
    assert torch.allclose(centered, expected) and plain < 0.1 < centered  # the mean saturates the plain cosine


def test_no_gradient_outlives_training():
    """The model's gradients are freed when training ends (the SAE and evaluation stages that follow
    would otherwise hold a gradient-sized buffer: saeception.parallel.memory counts on it)."""
    from saeception.config import DataConfig, FinetuneConfig
    from saeception.data.tasks import load_task
    from saeception.method.train import finetune
    from saeception.models.classifiers import MLP, TapModel

    task = load_task(DataConfig(name="digits", max_examples=200))
    tap = TapModel(MLP(task.input_dim, [16], task.n_classes), -1)
    finetune(tap, task, FinetuneConfig(epochs=1, batch_size=32), torch.device("cpu"), seed=0)
    assert all(p.grad is None for p in tap.parameters())


def test_best_val_keeps_the_weights_of_the_epoch_with_the_best_validation_accuracy(monkeypatch):
    """select_epoch best_val (the original SAE-ception's model selection) keeps the epoch whose val accuracy was
    best, the first of equals; last keeps the last epoch's and never evaluates val; aux retraining alike."""
    from saeception.config import AuxConfig, FinetuneConfig
    from saeception.method import train as train_mod
    from saeception.method.train import finetune, retrain
    from saeception.models.classifiers import MLP

    task = load_task(DataConfig(name="digits", max_examples=200))
    scripted, seen = iter([0.5, 0.9, 0.7, 0.9]), []

    def val_accuracy(tap, *args):
        seen.append({k: v.clone() for k, v in tap.model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(train_mod, "_val_accuracy", val_accuracy)
    tap = TapModel(MLP(task.input_dim, [16], task.n_classes), -1)
    finetune(tap, task, FinetuneConfig(epochs=4, batch_size=32, select_epoch="best_val"), torch.device("cpu"), seed=0)
    assert len(seen) == 4 and not torch.equal(seen[1]["head.weight"], seen[3]["head.weight"])
    assert all(torch.equal(v, seen[1][k]) for k, v in tap.model.state_dict().items())  # epoch 1: 0.9 first
    seen.clear()
    finetune(tap, task, FinetuneConfig(epochs=2, batch_size=32), torch.device("cpu"), seed=0)
    assert seen == []
    scripted = iter([0.2, 0.1])
    targets = torch.randn(len(task.train), 16)
    retrain(tap, task, targets, AuxConfig(epochs=2, select_epoch="best_val"), torch.device("cpu"), seed=0)
    assert len(seen) == 2 and all(torch.equal(v, seen[0][k]) for k, v in tap.model.state_dict().items())
    import pytest

    from saeception.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="finetune.select_epoch: best_val is not supported with train.strategy fsdp"):
        build_config({"train.strategy": "fsdp", "finetune.select_epoch": "best_val"})
