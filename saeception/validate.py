"""One validation pass before any work: a config checked against the data and the model it names.

`check_run(cfg)` (before `python -m saeception.run` trains anything) and `check_space(space)` (every
combination of values a sweep's space can sample, before Ray starts) raise `ConfigError` naming the key
and what is allowed. What they check:

- the data: read once per data config (labels and texts; nothing is tokenized) and split by the code a
  run splits it with (`saeception.data.tasks.load_splits`), so labels, missing rows, empty texts, header rows
  and split sizes are judged exactly as a run would meet them;
- the model: built on the meta device (no weights read) to resolve `model.layer` and the layer width,
  and the width against `sae.k` for every expansion factor and k the space can sample; its tokenizer
  must have a pad or EOS token;
- hub datasets and models are checked when they are in the local cache or reachable; otherwise a run
  checks them when it loads them (the same rules: they live in saeception.data.tasks and saeception.models.classifiers).

`check_dir` tells whether a path can be used as an output directory without writing anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeception.data.tasks import encode_labels, is_local, load_splits
from saeception.models.classifiers import MLP, TapModel, load_tokenizer, model_source

from .config import Config, ConfigError, DataConfig, ModelConfig, build_config

log = logging.getLogger(__name__)

# Keys whose sampled values change what the data and model checks see.
_RELEVANT = ("data.", "model.", "sae.kind", "sae.k", "sae.expansion_factor")
# At most this many combinations of a space's relevant values are checked (the product is tiny in practice).
MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class DataFacts:
    kind: str  # "features" or "text"
    n_classes: int
    input_dim: int  # features only
    sizes: tuple[int, int, int] = (0, 0, 0)  # examples in train, val, test as a run splits them


def _key(section: Any) -> str:
    return json.dumps(dataclasses.asdict(section), sort_keys=True, default=str)


class Checker:
    """Checks configs, reading each data config and building each model config once."""

    def __init__(self) -> None:
        self._data: dict[str, DataFacts | None] = {}
        self._width: dict[str, int | None] = {}
        self._hf: dict[tuple[str, str], Any] = {}

    def data(self, cfg: DataConfig) -> DataFacts | None:
        """Facts of the data as a run splits it; None for a hub dataset that cannot be read now."""
        key = _key(cfg)
        if key not in self._data:
            self._data[key] = _data_facts(cfg)
        return self._data[key]

    def width(self, cfg: ModelConfig, data_name: str, facts: DataFacts) -> int | None:
        """The target layer's width; None for a hub model that cannot be read now."""
        key = _key(cfg) + facts.kind + str(facts.input_dim)
        if key not in self._width:
            self._width[key] = _layer_width(cfg, data_name, facts, self.hf_config)
        return self._width[key]

    def hf_config(self, cfg: ModelConfig):
        """The transformer's config (config.json only), read once; None for a hub model that cannot be
        read now."""
        key = (cfg.name, cfg.revision)
        if key not in self._hf:
            self._hf[key] = _hf_config(cfg.name, cfg.revision)
        return self._hf[key]

    def config(self, cfg: Config, searched: dict[str, Any] | None = None) -> None:
        """Every check for one config. `searched`: the sampled values it was built with, named in errors
        that come from them."""
        searched = searched or {}
        facts = _attributed(lambda: self.data(cfg.data), searched, ("data.",))
        if facts is None:
            return
        width = _attributed(lambda: self.width(cfg.model, cfg.data.name, facts), searched, ("data.", "model."))
        if width is not None:
            _attributed(lambda: cfg.sae.check_width(width), searched, ("model.", "sae."))


def _attributed(check: Callable[[], Any], searched: dict[str, Any], prefixes: tuple[str, ...]) -> Any:
    """Runs a check; an error caused by searched values names them (`params.<key>` when the key itself
    was searched), one from fixed values is raised as it is."""
    try:
        return check()
    except ConfigError as e:
        involved = {k: v for k, v in searched.items() if k.startswith(prefixes)}
        if not involved:
            raise
        raise _with_values(e, involved) from None


def _with_values(e: ConfigError, values: dict[str, Any]) -> ConfigError:
    key, _, rest = str(e).partition(": ")
    where = f"params.{key}" if key in values else key
    return ConfigError(f"{where}: {rest} (when {', '.join(f'{k}={v!r}' for k, v in values.items())})")


# --------------------------------------------------------------------------------------------------
# Data and model


def _data_facts(cfg: DataConfig) -> DataFacts | None:
    if is_local(cfg):
        splits = load_splits(cfg)
    else:
        try:
            splits = load_splits(cfg)
        except ConfigError:
            raise
        except Exception as e:  # not cached and not reachable now: a run checks it when it loads it
            log.warning("data.name: hub dataset %r not checked now (%s: %s); a run checks it when it loads it",
                        cfg.name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None
    _, n_classes = encode_labels(splits)
    first = splits["train"][0]
    sizes = (len(splits["train"][1]), len(splits["val"][1]), len(splits["test"][1]))
    if isinstance(first, np.ndarray):
        return DataFacts("features", n_classes, int(first.shape[1]), sizes)
    return DataFacts("text", n_classes, 0, sizes)


def _layer_width(cfg: ModelConfig, data_name: str, facts: DataFacts, hf_config_of: Callable[[ModelConfig], Any]) -> int | None:
    if cfg.name == "mlp":
        if facts.kind != "features":
            raise ConfigError(f"model.name: text data ({data_name}) needs a transformer model, not 'mlp'")
        with torch.device("meta"):
            model = MLP(facts.input_dim, cfg.hidden_sizes, facts.n_classes)
        return TapModel(model, cfg.layer, cfg.pooling).width()
    if facts.kind == "features":
        raise ConfigError(f"model.name: {data_name} is feature data; it needs model.name: mlp")
    hf_config = hf_config_of(cfg)
    if hf_config is None:
        return None
    from transformers import (
        AutoModelForSequenceClassification,  # lazy: transformers only for Hugging Face models
    )


    hf_config.num_labels = facts.n_classes
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(hf_config)
    width = TapModel(model, cfg.layer, cfg.pooling).width()
    load_tokenizer(cfg)  # a tokenizer with neither a pad nor an EOS token is an error
    return width


def _hf_config(name: str, revision: str = ""):
    """The model's config (config.json only); None for a hub id that is neither cached nor reachable."""
    from transformers import AutoConfig  # lazy: transformers only for Hugging Face models


    source = model_source(name)
    if not Path(source).exists() and (Path(source).is_absolute() or source.startswith((".", "~"))):
        raise ConfigError(f"model.name: {source} does not exist (a model is a local directory, a hub id or 'mlp')")
    try:
        return AutoConfig.from_pretrained(source, **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if Path(source).exists():
            raise ConfigError(f"model.name: {source} is not a model directory Hugging Face can load ({first})") from None
        log.warning("model.name: %r not checked now (%s); a run checks it when it loads it", name, first)
        return None


# --------------------------------------------------------------------------------------------------
# Entry points


def check_device(cfg: Config) -> None:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda, but no CUDA GPU is visible here (torch.cuda.is_available() is false); "
                          "use auto or cpu")


def check_run(cfg: Config) -> None:
    """Everything a single chain can be checked for before it starts."""
    check_device(cfg)
    Checker().config(cfg)


def combinations(space, keys: tuple[str, ...] = _RELEVANT) -> Iterator[dict[str, Any]]:
    """Every combination of the values a space can sample for `keys` (dotted keys or prefixes ending in
    "."; by default those the data and model checks read): choices, and both ends of ranges, honouring
    `when` conditions; at most MAX_COMBINATIONS."""
    needed = {p.key for p in space.params if p.key.startswith(keys)}
    grew = True
    while grew:  # conditions name earlier params: keep those the relevant ones depend on
        grew = False
        for p in space.params:
            if p.key in needed and not set(p.when) <= needed:
                needed |= set(p.when)
                grew = True
    params = [p for p in space.params if p.key in needed]
    count = 0

    def walk(i: int, sampled: dict[str, Any]) -> Iterator[dict[str, Any]]:
        nonlocal count
        if count >= MAX_COMBINATIONS:
            return
        if i == len(params):
            count += 1
            yield dict(sampled)
            return
        p = params[i]
        if not p.active(sampled):
            yield from walk(i + 1, sampled)
            return
        for v in _values(p):
            sampled[p.key] = v
            yield from walk(i + 1, sampled)
            del sampled[p.key]

    yield from walk(0, {})


def _values(p) -> list[Any]:
    if p.kind == "categorical":
        return list(p.choices)
    if p.kind == "int":
        low, high = int(p.low), int(p.high)
        step = p.step or 1
        return [low, low + (high - low) // step * step]
    return [p.low, p.high]


def check_space(space, checker: Checker | None = None) -> None:
    """Every combination a sweep's space can sample, checked against its data and model."""
    checker = checker or Checker()
    for combo in combinations(space):
        try:
            cfg = build_config({**space.fixed, **combo})
        except ConfigError as e:
            raise _with_values(e, combo) if combo else e from None
        checker.config(cfg, combo)


def check_dir(path: str | Path, flag: str) -> None:
    """`path` is a writable directory, or one that can be created: every missing part of it lies under
    an existing writable directory. Writes nothing."""
    path = Path(path)
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a directory"
        where = f"{existing} is {what}" if existing == path else f"{existing} (a parent of {path}) is {what}"
        raise ConfigError(f"{flag}: {where}, so it is not writable as a directory: {flag} must name a directory "
                          "(existing or new)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: {existing} is not writable")
