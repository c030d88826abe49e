"""GPU memory in the sweep's plan: the estimate (saeception.parallel.memory) of every combination the space can
sample, checked against `--gpu-memory-gb` before Ray starts, and the dry run's lines.

A worker's budget is `--gpu-memory-gb` × min(1, `--gpus-per-worker`) (workers sharing a GPU share its
memory; a worker uses one device however many it holds) × `HEADROOM`. Checked only where workers have
GPUs: `--gpu-memory-gb` with `--gpus-per-worker 0` is an error. There is no default: reading the GPU's
size would initialise CUDA in the driver, which takes GPU memory from the trials on that machine.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from saeception.parallel.memory import (
    MemoryEstimate,
    ModelFacts,
    estimate,
    facts_from_config,
    gib,
    model_facts,
)

from ..config import Config, ConfigError, build_config
from ..validate import Checker, combinations
from .plan import Resources
from .space import SearchSpace

# Of a worker's share of the GPU, what the estimate may take: the CUDA context (~0.5 GiB) and the caching
# allocator's fragmentation (reserved above allocated) take the rest.
HEADROOM = 0.9
# Sampled keys that change the estimate (prefixes end in "."): every combination of their values is
# estimated (choices, both ends of ranges; memory grows with each).
MEMORY_KEYS = ("data.", "model.", "train.", "finetune.batch_size", "finetune.epochs", "aux.batch_size",
               "chain.cycles", "sae.expansion_factor", "sae.batch_size", "sae.tokens")
# Named in the refusal: the settings that decide a trial's memory.
_NAMED = ("model.name", "model.dtype", "train.strategy", "model.gradient_checkpointing", "train.cpu_offload")
# ... and per peak stage, the settings it grows with (sampled values of other keys did not make it the peak).
_STAGE_KEYS = {"training step": ("finetune.batch_size", "aux.batch_size", "data.max_length"),
               "SAE stage": ("sae.expansion_factor", "sae.batch_size", "sae.tokens"),
               "evaluation": ("sae.expansion_factor", "data.max_examples")}
_STAGE_PREFIXES = {"training step": ("model.", "train.", "finetune.", "aux.", "data.", "chain."),
                   "SAE stage": ("model.", "train.", "sae.", "data."), "evaluation": ("model.", "train.", "sae.", "data.")}


def check_flags(res: Resources) -> None:
    gb = res.gpu_memory_gb
    if gb is None:
        return
    if gb <= 0:
        raise ConfigError(f"--gpu-memory-gb: must be > 0 (the memory of one GPU in GB), got {gb:g}")
    if res.gpus_per_worker <= 0:
        raise ConfigError("--gpu-memory-gb: the workers have no GPU (--gpus-per-worker is 0); pass "
                          "--gpus-per-worker > 0, or drop --gpu-memory-gb")


def budget(res: Resources) -> float | None:
    """Bytes a worker's estimate may take; None without --gpu-memory-gb."""
    gb = res.gpu_memory_gb
    return None if gb is None else gb * 1e9 * min(1.0, res.gpus_per_worker) * HEADROOM


@dataclass
class Estimated:
    sampled: dict[str, Any]
    cfg: Config
    estimate: MemoryEstimate | None  # None: the model cannot be read now


class Planner:
    """Estimates configs per worker, reading each model's shape and each data config once (through the
    plan's Checker, which has read them for the validation pass already)."""

    def __init__(self, checker: Checker, workers: int):
        self.checker, self.workers = checker, workers
        self._facts: dict[tuple, ModelFacts | None] = {}
        self.unknown: set[str] = set()  # notes: what could not be estimated now

    def facts(self, cfg: Config) -> tuple[ModelFacts | None, tuple[int, int, int] | None]:
        data = self.checker.data(cfg.data)
        n_classes, input_dim = (data.n_classes, data.input_dim) if data else (2, 0)
        key = (cfg.model.name, cfg.model.revision, tuple(cfg.model.hidden_sizes), n_classes, input_dim)
        if key not in self._facts:
            if cfg.model.name == "mlp":
                self._facts[key] = model_facts(cfg.model, n_classes, input_dim)
            else:
                hf = self.checker.hf_config(cfg.model)
                self._facts[key] = None if hf is None else facts_from_config(hf, n_classes, cfg.model.name)
        facts = self._facts[key]
        if facts is None:
            self.unknown.add(f"model.name {cfg.model.name} cannot be read now, so its memory is not estimated")
        if data is None and not cfg.data.max_examples:
            self.unknown.add(f"the evaluation stage grows with the data, and data.name {cfg.data.name} cannot be read now: "
                             "set data.max_examples to bound it")
        return facts, (data.sizes if data else None)

    def estimate(self, cfg: Config, sampled: dict[str, Any] | None = None) -> Estimated:
        facts, sizes = self.facts(cfg)
        e = None if facts is None else estimate(cfg, self.workers, facts=facts, sizes=sizes)
        return Estimated(sampled or {}, cfg, e)

    def largest(self, space: SearchSpace) -> Estimated | None:
        """The combination of sampled values with the largest estimate (None: nothing could be estimated)."""
        best = None
        for combo in combinations(space, MEMORY_KEYS):
            e = self.estimate(build_config({**space.fixed, **combo}), combo)
            if e.estimate is not None and (best is None or e.estimate.total > best.estimate.total):
                best = e
        return best


def check(space: SearchSpace, res: Resources, checker: Checker) -> Planner:
    """Refuses (ConfigError naming the flags) a space whose largest estimate exceeds a worker's budget."""
    planner = Planner(checker, res.workers_per_trial)
    limit = budget(res)
    if limit is None:
        return planner
    worst = planner.largest(space)
    for note in sorted(planner.unknown):
        print(f"note: --gpu-memory-gb: {note}", file=sys.stderr)
    if worst is not None and worst.estimate.total > limit:
        raise ConfigError(refusal(worst, res, limit))
    return planner


def refusal(worst: Estimated, res: Resources, limit: float) -> str:
    e, cfg = worst.estimate, worst.cfg
    keys = [*_NAMED, *_STAGE_KEYS[e.peak_stage]]
    named = {k: _value(cfg, k) for k in keys}
    named = {k: v for k, v in named.items() if v is not False}  # checkpointing / offload only when on
    named.update(_relevant(worst))
    values = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in named.items()]
    share = min(1.0, res.gpus_per_worker)
    gpu = f"{res.gpu_memory_gb:g} GB GPUs" + (f" shared by {1 / share:g} workers" if share < 1 else "")
    return (f"--gpu-memory-gb: a trial needs an estimated {gib(e.total)} GiB per worker in its {e.peak_stage} "
            f"({', '.join(values)}, --workers-per-trial {res.workers_per_trial}) but {gpu} leave {gib(limit)} GiB "
            f"for it ({HEADROOM:.0%}); {_advice(e, cfg)}")


def _relevant(worst: Estimated) -> dict[str, Any]:
    """The sampled values that can have made the largest estimate's peak stage what it is."""
    return {k: v for k, v in worst.sampled.items() if k.startswith(_STAGE_PREFIXES[worst.estimate.peak_stage])}


def _value(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def _advice(e: MemoryEstimate, cfg: Config) -> str:
    if e.peak_stage == "evaluation":
        return ("lower sae.expansion_factor or cap data.max_examples (rank 0 evaluates on the dense SAE codes of every "
                "split), or raise --workers-per-trial with train.strategy=fsdp to shrink the resident model")
    if e.peak_stage == "SAE stage":
        return ("lower sae.expansion_factor or sae.batch_size" + (" or data.max_examples (sae.tokens: all)" if cfg.sae.tokens == "all" else "")
                + ", or raise --workers-per-trial with train.strategy=fsdp to shrink the resident model")
    steps = ["raise --workers-per-trial" + ("" if cfg.train.strategy == "fsdp" else " with --set train.strategy=fsdp")]
    if not cfg.model.gradient_checkpointing and cfg.model.name != "mlp":
        steps.append("--set model.gradient_checkpointing=true")
    if cfg.model.dtype == "float32" and cfg.model.name != "mlp":
        steps.append("--set model.dtype=bfloat16")
    if cfg.train.strategy == "fsdp" and not cfg.train.cpu_offload:
        steps.append("--set train.cpu_offload=true")
    steps.append("lower finetune.batch_size / aux.batch_size")
    return ", ".join(steps[:-1]) + ", or " + steps[-1]


def describe(planner: Planner, space: SearchSpace, res: Resources, trials: list[dict[str, Any]]) -> list[str]:
    """The dry run's memory section: the base config, each shown trial, the space's largest, the budget."""
    lines = [f"GPU memory per worker (estimates, saeception/parallel/memory.py; {res.workers_per_trial} worker(s) per trial"
             + ("; these workers have no GPU: the figures are for GPU workers" if res.gpus_per_worker <= 0 else "") + "):"]
    rows = [("base config", planner.estimate(space.config({})))]
    rows += [(f"trial {i}", planner.estimate(space.config(s), s)) for i, s in enumerate(trials)]
    worst = planner.largest(space)
    for name, e in rows:
        lines.append(f"  {name}: " + (e.estimate.summary() if e.estimate else "not estimated (the model cannot be read now)"))
    if worst is not None:
        values = " ".join(f"{k}={v}" for k, v in _relevant(worst).items()) or "whatever is sampled"
        lines.append(f"  largest the space can sample: {gib(worst.estimate.total)} GiB per worker ({values}; peak: "
                     f"{worst.estimate.peak_stage})")
    limit = budget(res)
    if limit is not None:  # the plan refused a space whose largest does not fit
        verdict = "the largest fits" if worst is not None else "not checked: nothing could be estimated now"
        lines.append(f"  --gpu-memory-gb {res.gpu_memory_gb:g}: {gib(limit)} GiB per worker ({HEADROOM:.0%} of its share); {verdict}")
    lines += [f"  note: {n}" for n in sorted(planner.unknown)]
    return lines

