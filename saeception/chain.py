"""The SAE-ception cycle chain: cycles 0..N, each handing its metrics to a callback.

Cycle 0: fine-tune (or use the model as loaded), extract the target layer, train an SAE, evaluate.
Cycle c >= 1: encode the train split with cycle c-1's SAE, sharpen, decode into per-example targets,
retrain with CE + lambda * (1 - cos(h, target)), extract, train a new SAE, evaluate.

Runs unchanged in one process or under torch.distributed (every rank calls run_chain; rank 0 writes
the artifacts and calls the callback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import metrics as M
from .artifacts import ChainPaths, CycleDir, load_state_strict, load_weights, save_module, write_json
from .cache import StageCache, stage_keys
from .config import Config, to_dict
from .data import TaskData, load_task
from .distributed import barrier, broadcast_, is_distributed, is_main, rank, world_size
from .errors import CorruptCycleError
from .evaluate import evaluate
from .models import TapModel, build_model, load_tokenizer
from .sae import SAE, encode_all, train_sae
from .sharpen import build_targets, class_means
from .train import extract, finetune, retrain

log = logging.getLogger(__name__)

# on_cycle(cycle, metrics, cycle_dir): cycle_dir holds that cycle's complete, loadable artifacts.
CycleCallback = Callable[[int, dict, Path], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class ChainState:
    """Where a chain stands after a cycle: enough to continue with the next one."""

    history: list[dict]
    model_state: dict[str, torch.Tensor]
    sae: SAE

    def copy(self) -> ChainState:
        sae = SAE(self.sae.d, self.sae.n_latents, self.sae.kind, self.sae.k)
        sae.load_state_dict(self.sae.state_dict())
        return ChainState([dict(h) for h in self.history],
                          {k: v.detach().clone() for k, v in self.model_state.items()}, sae.requires_grad_(False))

    @classmethod
    def load(cls, cycle_dir: str | Path, device: torch.device | str = "cpu") -> ChainState:
        """From a cycle directory (a run's, or a restored checkpoint), after checking every file
        against the cycle's manifest. Raises CorruptCycleError rather than load a damaged file."""
        files = CycleDir(cycle_dir)
        problem = files.verify()
        if problem:
            raise CorruptCycleError(problem)
        tensors, _ = load_weights(files.model)
        return cls(json.loads(files.metrics.read_text())["cycles"], tensors, SAE.load(files.sae, device))


@dataclass
class Setup:
    """What every cycle needs: data and a tapped model. Built once per chain."""

    task: TaskData
    tap: TapModel


def setup(cfg: Config) -> Setup:
    """Loads data and model and checks everything that depends on them (layer, SAE size), before any
    training. Raises ConfigError naming the key."""
    seed_everything(cfg.seed)
    tokenizer = None if cfg.model.name == "mlp" else load_tokenizer(cfg.model, cfg.data.padding_side)
    task = load_task(cfg.data, cfg.seed, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer is not None else None
    model = build_model(cfg.model, task.n_classes, task.input_dim, pad)
    tap = TapModel(model, cfg.model.layer, cfg.model.pooling)
    cfg.sae.check_width(tap.width())
    return Setup(task, tap)


def _extract_all(tap: TapModel, task: TaskData, cfg: Config, device: torch.device) -> dict[str, torch.Tensor]:
    """Pooled activations and logits per split (contiguous, row = example id), plus all real tokens
    of the train split when the SAE trains on them."""
    out = {}
    for split in ("train", "val", "test"):
        h, logits = extract(tap, task, split, cfg.finetune.batch_size, device)
        out[f"{split}.acts"], out[f"{split}.logits"] = h.contiguous(), logits.contiguous()
    if cfg.sae.tokens == "all":
        out["train.tokens"] = extract(tap, task, "train", cfg.finetune.batch_size, device, tokens=True)[0].contiguous()
    return out


def _stage(cache: StageCache | None, key: str | None, device: torch.device, build, save, load):
    """Runs `build()` (on every rank), or loads a cached result. Rank 0 looks up and publishes under the
    key's lock, so concurrent trials build an entry once; the other ranks follow its decision."""
    if cache is None or key is None:
        return build()
    with cache.lock(key) if is_main() else contextlib.nullcontext():
        path = cache.lookup(key) if is_main() else None
        hit = broadcast_(torch.tensor([int(path is not None)], device=device if is_distributed() and device.type == "cuda" else "cpu"))
        if int(hit.item()):
            path = cache.entry(key)
            if is_main():
                cache.record_hit(path)
            return load(path)
        t0 = time.perf_counter()
        value = build()
        if is_main():
            cache.publish(key, lambda d: save(value, d), time.perf_counter() - t0)
        barrier()
        return value


def _jsonable(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def run_chain(cfg: Config, paths: ChainPaths | str | Path, on_cycle: CycleCallback | None = None,
              device: torch.device | None = None, resume_from: Path | ChainState | None = None,
              prepared: Setup | None = None,
              on_state: Callable[[int, ChainState], None] | None = None,
              cache: StageCache | None = None) -> list[dict]:
    """Runs cycles 0..cfg.chain.cycles and returns one metrics dict per cycle.

    resume_from: a ChainState, or a cycle directory (CycleDir layout) written by an earlier run or
    restored from a checkpoint; the chain continues with the next cycle. paths: where this run writes
    (rank 0 only). on_state(cycle, state): called on every rank after each cycle (the state is live:
    copy it to keep it). cache: a StageCache for cycle 0's model, activations and SAE."""
    paths = paths if isinstance(paths, ChainPaths) else ChainPaths(paths)
    device = device or resolve_device(cfg.device)
    seed_everything(cfg.seed)
    s = prepared or setup(cfg)
    task, tap = s.task, s.tap
    tap.to(device)
    history: list[dict] = []
    sae: SAE | None = None
    start = 0
    if resume_from is not None:
        state = resume_from if isinstance(resume_from, ChainState) else ChainState.load(resume_from, device)
        history = [dict(h) for h in state.history]
        load_state_strict(tap.model, state.model_state)
        tap.to(device)
        sae = state.sae.to(device)
        start = history[-1]["cycle"] + 1
        log.info("resuming after cycle %d", start - 1)

    for cycle in range(start, cfg.chain.cycles + 1):
        t0 = time.perf_counter()
        cycle_seed = cfg.seed + 1000 * cycle
        aux: dict[str, float] = {}
        keys = stage_keys(cfg, task.fingerprint) if cache is not None and cycle == 0 else {}
        if cycle == 0:
            if cfg.finetune.epochs > 0:
                _stage(cache, keys.get("model0"), device,
                       build=lambda seed=cycle_seed: finetune(tap, task, cfg.finetune, device, seed),
                       save=lambda _, d: save_module(d / "model", tap.model, {"name": cfg.model.name}),
                       load=lambda d: load_state_strict(tap.model, load_weights(d / "model", device)[0]))
        else:
            assert sae is not None
            acts_before, _ = extract(tap, task, "train", cfg.aux.batch_size, device)
            labels = task.train.labels
            means = None
            if cfg.sharpen.strategy == "per_class":
                # Each rank contributes its shard of the class sums; the all-reduce makes them global.
                shard = slice(rank(), None, world_size())
                means = class_means(encode_all(sae, acts_before.to(device))[shard], labels.to(device)[shard], task.n_classes)
            targets = build_targets(sae, acts_before.to(device), labels.to(device), cfg.sharpen, cycle_seed, means).cpu()
            aux["aux_cosine_before"] = M.cosine(acts_before, targets)
            if cfg.model.freeze == "before":
                tap.freeze_before_target()
            retrain(tap, task, targets, cfg.aux, device, cycle_seed)
        extracted = _stage(cache, keys.get("acts0"), device,
                           build=lambda: _extract_all(tap, task, cfg, device),
                           save=lambda t, d: save_file(t, str(d / "activations.safetensors")),
                           load=lambda d: load_file(str(d / "activations.safetensors")))
        acts = {sp: extracted[f"{sp}.acts"] for sp in ("train", "val", "test")}
        logits = {sp: extracted[f"{sp}.logits"] for sp in ("train", "val", "test")}
        if cycle > 0:
            aux["aux_cosine"] = M.cosine(acts["train"], targets)
        sae_input = extracted.get("train.tokens", acts["train"])
        sae = _stage(cache, keys.get("sae0"), device,
                     build=lambda x=sae_input, seed=cycle_seed: train_sae(x.to(device), cfg.sae, seed=seed).cpu(),
                     save=lambda v, d: v.save(d / "sae"),
                     load=lambda d: SAE.load(d / "sae"))
        metrics: dict = {"cycle": cycle}
        if is_main():
            labels_by_split = {sp: task.split(sp).labels for sp in ("train", "val", "test")}
            metrics.update(evaluate(sae, acts, logits, labels_by_split, task.n_classes, cfg.eval, cycle_seed))
            metrics.update(aux)
            metrics["cycle_seconds"] = time.perf_counter() - t0
            history.append(_jsonable(metrics))
            files = paths.cycle(cycle)
            save_module(files.model, tap.model, {"name": cfg.model.name})
            sae.save(files.sae)
            # Written last: a cycle directory with metrics.json is complete.
            write_json(files.metrics, {"cycles": history})
            files.seal()
            write_json(paths.results(), {"config": to_dict(cfg), "cycles": history})
            if on_cycle is not None:
                on_cycle(cycle, metrics, files.path)
        else:
            history.append(metrics)
            if on_cycle is not None:
                on_cycle(cycle, metrics, paths.cycle(cycle).path)
        sae = sae.to(device)
        if on_state is not None:
            on_state(cycle, ChainState(history, tap.model.state_dict(), sae))
        barrier()
    return history
