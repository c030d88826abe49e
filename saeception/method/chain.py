"""The SAE-ception cycle chain: cycles 0..N, each handing its metrics to a callback.

Cycle 0: fine-tune (or use the model as loaded), extract the target layer, train an SAE, evaluate.
Cycle c >= 1: encode the train split with cycle c-1's SAE, sharpen, decode into per-example targets,
retrain with CE + lambda * (1 - cos(h, target)), extract, train a new SAE, evaluate.

Every stage runs through `do_stage` with its declaration (`STAGES`, saeception.method.stages): the cache key
is built from it, the stage's code reads the config through it, and its random numbers come from its
own generator. Runs unchanged in one process or under torch.distributed: every rank runs every cycle,
rank 0 evaluates and broadcasts the metrics, writes the files, and every rank calls the callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from saeception.config import Config, to_dict
from saeception.data.tasks import TaskData, load_task
from saeception.eval import metrics as M
from saeception.eval.evaluate import evaluate
from saeception.eval.latents import example_ids, latent_summary, match_previous
from saeception.method.errors import CorruptCycleError
from saeception.method.sae import SAE, encode_all, train_sae
from saeception.method.sharpen import (
    build_targets,
    code_source,
    encoded_class_means,
    is_noop,
    needs_class_means,
)
from saeception.method.stages import ConfigView, Stage, model_fingerprint, stage_key, stage_rng
from saeception.method.train import extract, finetune, retrain
from saeception.models.classifiers import TapModel, build_model, load_tokenizer, model_source, splice
from saeception.parallel.accel import precision
from saeception.parallel.distributed import (
    barrier,
    broadcast_,
    broadcast_object,
    is_distributed,
    is_main,
    rank,
    world_size,
)
from saeception.parallel.sharding import full_state, is_sharded, load_state, loads_on_rank0, shard
from saeception.store.artifacts import (
    ChainPaths,
    CycleDir,
    load_weights,
    save_tensors,
    save_weights,
    write_json,
)
from saeception.store.cache import EntryError, StageCache

log = logging.getLogger(__name__)

# on_cycle(cycle, metrics, cycle_dir): cycle_dir holds that cycle's complete, loadable artifacts.
CycleCallback = Callable[[int, dict, Path], None]

SPLITS = ("train", "val", "test")

# What each stage reads. Cycle 0's finetune, extract and sae stages are cached under keys built from
# exactly these declarations; later cycles' stages are not cached but draw their random numbers the same way.
INIT = Stage("init", reads=("seed", "model.name", "model.hidden_sizes", "model.dtype", "model.revision"),
             env=("data", "model_source"))
FINETUNE = Stage("finetune", reads=("seed", "model.name", "model.hidden_sizes", "model.dtype", "model.revision",
                                    "model.gradient_checkpointing", "train", "finetune"), inputs=("init",),
                 env=("data", "model_source", "world_size", "precision"))
EXTRACT = Stage("extract", reads=("model.layer", "model.pooling", "sae.tokens", "finetune.batch_size", "train"),
                inputs=("finetune",), env=("data", "precision"))
SAE_STAGE = Stage("sae", reads=("seed", "sae"), inputs=("extract",), env=("world_size", "precision"))
SHARPEN = Stage("sharpen", reads=("seed", "sharpen", "aux.batch_size", "aux.center"), env=("data",))
RETRAIN = Stage("retrain", reads=("seed", "model.freeze", "model.gradient_checkpointing", "train", "aux",
                                  "chain.fresh_model", "model.name", "model.hidden_sizes", "model.dtype", "model.revision"),
                env=("data", "world_size", "precision"))
EVALUATE = Stage("evaluate", reads=("seed", "eval"), env=("data",))
STAGES = (INIT, FINETUNE, EXTRACT, SAE_STAGE, SHARPEN, RETRAIN, EVALUATE)


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
    def load(cls, cycle_dir: str | Path, device: torch.device | str = "cpu", model: torch.nn.Module | None = None) -> ChainState:
        """From a cycle directory (a run's, or a restored checkpoint), after checking every file
        against the cycle's manifest and, given `model` (unsharded; on the meta device will do), that its weights
        fit that model. Raises CorruptCycleError rather than load a damaged or unfitting file."""
        files = CycleDir(cycle_dir)
        problem = files.verify()
        if problem:
            raise CorruptCycleError(problem)
        try:  # checksums match what the manifest says; the content is still input, checked as it is read
            tensors, _ = load_weights(files.model)
            unfit = None if model is None else weights_unfit(tensors, model)
            if unfit:
                raise ValueError(f"{files.model}: {unfit}")
            history = json.loads(files.metrics.read_text())["cycles"]
            if not isinstance(history, list) or not history or not all(isinstance(h, dict) and isinstance(h.get("cycle"), int)
                                                                         for h in history):
                raise ValueError(f"{files.metrics}: 'cycles' must be a non-empty list of per-cycle metrics")
            return cls(history, tensors, SAE.load(files.sae, device))
        except (ValueError, KeyError, TypeError, OSError, SafetensorError) as e:
            raise CorruptCycleError(f"{cycle_dir}: {type(e).__name__}: {e}") from e


def weights_unfit(tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> str | None:
    """None when `tensors` are `model`'s full state (every name, each of its shape); else what does not fit.
    load_state_dict's size mismatch is a RuntimeError the trial met again on every retry."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    wrong = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
    if not wrong:
        return None
    return ("weights do not fit the model: "
            + ", ".join(f"{k} {found.get(k, 'missing')} != {expected.get(k, 'unexpected')}" for k in wrong[:3]))


@dataclass
class Setup:
    """What every cycle needs: data and a tapped model, and the facts of the run stage keys depend on.
    Built once per chain."""

    task: TaskData
    tap: TapModel
    model_source: str  # saeception.method.stages.model_fingerprint of the loaded model
    tokenizer: Any = None  # text models: turns the latent browser's token ids back into text


def setup(cfg: Config) -> Setup:
    """Loads data and model and checks everything that depends on them (layer, SAE size), before any
    training. The model's initial weights come from the init stage's generator. Raises ConfigError."""
    tokenizer = None if cfg.model.name == "mlp" else load_tokenizer(cfg.model, cfg.data.padding_side)
    task = load_task(cfg.data, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer is not None else None
    with stage_rng(cfg.seed, 0, INIT.name):
        model = build_model(cfg.model, task.n_classes, task.input_dim, pad, on_meta=loads_on_rank0(cfg.train, cfg.model) and rank() != 0)
    tap = TapModel(model, cfg.model.layer, cfg.model.pooling)
    cfg.sae.check_width(tap.width())
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    source = "mlp" if cfg.model.name == "mlp" else model_source(cfg.model.name)
    return Setup(task, tap, model_fingerprint(source, commit), tokenizer)


@dataclass
class ChainContext:
    """One chain's fixed context: what do_stage and the cycle steps share."""

    cfg: Config
    task: TaskData
    tap: TapModel
    device: torch.device
    cache: StageCache | None
    env: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)  # cycle 0's stage keys, filled as stages run
    tokenizer: Any = None  # Setup.tokenizer


def _env(s: Setup, device: torch.device) -> dict[str, str]:
    splits = json.dumps(s.task.splits_identity(), sort_keys=True)
    return {"data": f"{s.task.fingerprint}/{splits}", "model_source": s.model_source,
            "world_size": str(world_size()), "precision": precision(device)}


def cycle0_keys(cfg: Config, env: dict[str, str]) -> dict[str, str]:
    """The cache keys of cycle 0's stages for `cfg` under the run facts `env`, in the order they run."""
    keys: dict[str, str] = {}
    for stage in (INIT, FINETUNE, EXTRACT, SAE_STAGE):
        keys[stage.name] = stage_key(stage, cfg, env, keys)
    if cfg.finetune.epochs == 0:
        keys[FINETUNE.name] = keys[INIT.name]
        for stage in (EXTRACT, SAE_STAGE):
            keys[stage.name] = stage_key(stage, cfg, env, keys)
    return keys


def do_stage(r: ChainContext, stage: Stage, cycle: int, build: Callable[[ConfigView, int], Any],
              save: Callable[[Any, Path], None] | None = None, load: Callable[[Path], Any] | None = None) -> Any:
    """Runs build(view, seed) under the stage's own generator: the view reads only the declared keys,
    the seed seeds the stage's explicit generators. In cycle 0 with a cache (and save/load given),
    rank 0 looks the stage's key up under its lock, and all ranks load or build together; an entry
    that does not hold what the stage needs is rejected and rebuilt, never used partly."""
    view = ConfigView(r.cfg, stage)
    with stage_rng(r.cfg.seed, cycle, stage.name, r.device) as seed:
        if r.cache is None or cycle > 0 or save is None or load is None:
            return build(view, seed)
        key = r.keys[stage.name] = stage_key(stage, r.cfg, r.env, r.keys)
        return _cached(r, key, lambda: build(view, seed), save, load)


def _cached(r: ChainContext, key: str, build: Callable[[], Any], save: Callable[[Any, Path], None], load: Callable[[Path], Any]) -> Any:
    cache = r.cache
    with cache.lock(key) if is_main() else contextlib.nullcontext():
        path = cache.lookup(key) if is_main() else None
        value = None
        if path is not None:
            try:
                value = load(path)
            except Exception as e:  # checksums matched, the content did not: a cached file is input, never trusted
                cache.reject(key, str(e) if isinstance(e, EntryError) else f"{type(e).__name__}: {e}")
                path = None
        hit = broadcast_(torch.tensor([int(path is not None)], device=r.device if is_distributed() and r.device.type == "cuda" else "cpu"))
        if int(hit.item()):
            if is_main():
                cache.record_hit(path)
                return value
            return load(cache.entry(key))
        t0 = time.perf_counter()
        value = build()
        if is_main():
            cache.publish(key, lambda d: save(value, d), time.perf_counter() - t0)
        barrier()
        return value


# --------------------------------------------------------------------------------------------------
# The cycle's steps


def train_model0(r: ChainContext) -> None:
    """Cycle 0's fine-tuning (skipped with finetune.epochs 0: the model as loaded)."""
    if r.cfg.finetune.epochs == 0:
        # The model as loaded: what later stages' keys name as their input is its init.
        r.keys[FINETUNE.name] = r.keys[INIT.name]
        return

    # Built: the fine-tuned weights (every rank gathers them together; rank 0's are saved). Loaded: the
    # entry's weights, applied after the lookup, when every rank has its copy (loading a sharded model is
    # a collective: no rank may do it alone inside the lookup).
    def build(view: ConfigView, seed: int) -> tuple[str, dict]:
        finetune(r.tap, r.task, view.finetune, r.device, seed)
        return "built", full_state(r.tap.model)

    def save(value: tuple[str, dict], d: Path) -> None:
        save_weights(d / "model", value[1], {"name": r.cfg.model.name})

    def load(d: Path) -> tuple[str, dict]:
        if is_sharded(r.tap.model):  # load_state broadcasts rank 0's: the others need not read the file
            return "loaded", load_weights(d / "model", "cpu")[0] if is_main() else {}
        return "loaded", load_weights(d / "model", r.device)[0]

    how, state = do_stage(r, FINETUNE, 0, build, save, load)
    if how == "loaded":
        load_state(r.tap.model, state)


@dataclass
class Retrained:
    """What sharpening and retraining leave for the cycle's aux metrics."""

    acts_before: torch.Tensor  # (N_train, d) before retraining
    targets: torch.Tensor  # (N_train, d), row = example id
    mu: torch.Tensor  # (d,) the cycle's mean train activation before retraining
    kept: float  # sharpen_kept_fraction
    kept_active: float  # sharpen_kept_active
    empty: float  # sharpen_empty_fraction

    def metrics(self, acts_after: torch.Tensor) -> dict[str, float]:
        t, mu = self.targets, self.mu
        return {"aux_cosine_before": M.cosine(self.acts_before, t), "aux_cosine": M.cosine(acts_after, t),
                "aux_cosine_centered_before": M.cosine(self.acts_before, t, mu),
                "aux_cosine_centered": M.cosine(acts_after, t, mu), "sharpen_kept_fraction": self.kept,
                "sharpen_kept_active": self.kept_active, "sharpen_empty_fraction": self.empty}


def sharpen_and_retrain(r: ChainContext, cycle: int, sae: SAE) -> Retrained:
    """Encodes the train split with the previous SAE, sharpens, decodes into one target per example,
    and retrains the model toward them."""
    task, device = r.task, r.device

    def targets_for(view: ConfigView, seed: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        acts, _ = extract(r.tap, task, "train", view.aux.batch_size, device)
        labels = task.train.labels.to(device)
        source = code_source(acts.to(device), view.sharpen, seed)  # sharpen.pairing
        means = None
        if needs_class_means(view.sharpen):
            # Each rank contributes its shard of the class sums; the all-reduce makes them global.
            shard = slice(rank(), None, world_size())
            means = encoded_class_means(sae, source[shard], labels[shard], task.n_classes)
        built = build_targets(sae, source, labels, view.sharpen, seed, means, task.n_classes)
        return acts, built.targets.cpu(), built.kept_fraction, built.kept_active, built.empty_fraction

    acts_before, targets, kept, kept_active, empty = do_stage(r, SHARPEN, cycle, targets_for)
    mu = acts_before.mean(0)  # the cycle's mean train activation (every rank holds all rows)

    def retrain_stage(view: ConfigView, seed: int) -> None:
        if view.chain.fresh_model:
            # Cycle 0's initial weights again (the init stage's generator), retrained from scratch.
            with stage_rng(view.seed, 0, INIT.name):
                fresh = build_model(view.model, task.n_classes, task.input_dim, None)
            r.tap.model.load_state_dict(fresh.state_dict())
        if view.model.freeze == "before":
            r.tap.freeze_before_target()
        retrain(r.tap, task, targets, view.aux, device, seed, mu if view.aux.center else None, cycle)

    do_stage(r, RETRAIN, cycle, retrain_stage)
    return Retrained(acts_before, targets, mu, kept, kept_active, empty)


def activation_dtype(tap: TapModel) -> torch.dtype:
    """What activations are kept (and cached) in: the weights' dtype (model.dtype), so a bf16 model's
    activations take half the memory and disk; consumers compute in fp32."""
    return next(tap.model.parameters()).dtype


def extract_all(r: ChainContext, cycle: int) -> dict[str, torch.Tensor]:
    """Pooled activations and logits per split (row = example id), plus every real token of the train
    split when the SAE trains on them (sae.tokens: all)."""

    dtype = activation_dtype(r.tap)

    def build(view: ConfigView, seed: int) -> dict[str, torch.Tensor]:
        out = {}
        for split in SPLITS:
            h, logits = extract(r.tap, r.task, split, view.finetune.batch_size, r.device)
            out[f"{split}.acts"], out[f"{split}.logits"] = h.to(dtype).contiguous(), logits.contiguous()
        if view.sae.tokens == "all":
            tokens = extract(r.tap, r.task, "train", view.finetune.batch_size, r.device, tokens=True)[0]
            out["train.tokens"] = tokens.to(dtype).contiguous()
        return out

    def save(t: dict[str, torch.Tensor], d: Path) -> None:
        save_tensors(t, d / "activations.safetensors")

    def load(d: Path) -> dict[str, torch.Tensor]:
        tensors = load_file(str(d / "activations.safetensors"))
        needed = [f"{s}.{k}" for s in SPLITS for k in ("acts", "logits")] + (["train.tokens"] if r.cfg.sae.tokens == "all" else [])
        missing = [n for n in needed if n not in tensors]
        if missing:
            raise EntryError(f"activations entry lacks {', '.join(missing)}")
        return tensors

    return do_stage(r, EXTRACT, cycle, build, save, load)


def train_cycle_sae(r: ChainContext, cycle: int, extracted: dict[str, torch.Tensor]) -> SAE:
    """The cycle's SAE, on the pooled train activations or every real token (sae.tokens)."""

    def build(view: ConfigView, seed: int) -> SAE:
        x = extracted["train.tokens"] if view.sae.tokens == "all" else extracted["train.acts"]
        return train_sae(x.to(r.device).float(), view.sae, seed=seed).cpu()

    return do_stage(r, SAE_STAGE, cycle, build, lambda v, d: v.save(d / "sae"), lambda d: SAE.load(d / "sae"))


def splice_fidelity(r: ChainContext, sae: SAE, extracted: dict[str, torch.Tensor]) -> dict[str, float]:
    """Spliced-in fidelity on test and val (M.fidelity_metrics): the model run again with the target layer's
    output replaced by the SAE's reconstruction, and by zero, where the SAE reads it (classifiers.splice:
    every token for an all-token SAE or the MLP's layer, else the pooled value). Every rank runs the forwards
    (a sharded model needs them all) and gets the same numbers."""
    sae = sae.to(r.device)
    how = None if not r.tap.is_text or r.cfg.sae.tokens == "all" else r.tap.pooling

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        # In fp32 as the evaluation encodes (extract's bf16 autocast would change which latents TopK keeps).
        with torch.autocast(x.device.type, enabled=False):
            return sae.decode(sae.encode(x.float())).to(x.dtype)

    out = {}
    for split, prefix in (("test", ""), ("val", "val_")):
        logits = {}
        for name, replace in (("spliced", reconstruct), ("ablated", torch.zeros_like)):
            def edit(batch: dict[str, torch.Tensor], replace=replace) -> Callable[[torch.Tensor], torch.Tensor]:
                return lambda h: splice(h, batch.get("attention_mask"), replace, how)

            logits[name] = extract(r.tap, r.task, split, r.cfg.finetune.batch_size, r.device, edit=edit)[1]
        row = M.fidelity_metrics(extracted[f"{split}.logits"], logits["spliced"], logits["ablated"], r.task.split(split).labels)
        out.update({prefix + k: v for k, v in row.items()})
    return out


def evaluate_cycle(r: ChainContext, cycle: int, sae: SAE, extracted: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The metric set, computed on the chain's device (rank 0 computes it; every rank gets the same dict),
    and the spliced-in fidelity (every rank)."""

    def build(view: ConfigView, seed: int) -> dict[str, Any]:
        # On the chain's device: the probes and cluster metrics run where the codes are (eval.backend).
        acts = {s: extracted[f"{s}.acts"].to(r.device).float() for s in SPLITS}
        logits = {s: extracted[f"{s}.logits"] for s in SPLITS}
        labels = {s: r.task.split(s).labels for s in SPLITS}
        return evaluate(sae.to(r.device), acts, logits, labels, r.task.n_classes, view.eval, seed)

    fidelity = splice_fidelity(r, sae, extracted)
    return {**broadcast_object(do_stage(r, EVALUATE, cycle, build) if is_main() else None), **fidelity}


def example_contents(task: TaskData, tokenizer: Any, ids: list[int], max_chars: int = 600) -> dict[str, Any]:
    """{id: what the test example is}: its text (decoded, at most `max_chars`) or its feature vector."""
    split = task.split("test")
    if task.kind == "text":
        return {str(i): tokenizer.decode(split.inputs[i], skip_special_tokens=True)[:max_chars] for i in ids}
    return {str(i): [round(float(v), 4) for v in split.inputs[i]] for i in ids}


def browse_latents(r: ChainContext, sae: SAE, extracted: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                   previous: tuple[int, SAE] | None = None) -> dict[str, Any]:
    """The latent browser's data (saeception.eval.latents) for this cycle's SAE on the test split, with the
    examples it shows. state: the classifier's full state dict (its head's weight gives the class effect
    where the tapped layer feeds a linear head); previous: (cycle, SAE) of the previous cycle, whose
    decoder each latent is matched against."""
    b = r.cfg.browser
    codes = encode_all(sae, extracted["test.acts"].to(r.device).float())
    head, why = r.tap.linear_head()
    effect, effect_doc = None, f"the layer does not feed a linear head ({why})"
    if head is not None:
        # A latent's code z adds z · input_scale · W_dec[i] to the layer's output, so z · effect[i] to the logits.
        effect = (sae.input_scale * sae.W_dec).detach().double().cpu() @ state[head].double().cpu().t()
        effect_doc = (f"W_head · (input_scale · W_dec[i]) with W_head `{head}`, the change in each class's logit per "
                      f"unit of the latent's code ({why}; a shift shared by every class changes no prediction)")
    match = None if previous is None else (previous[0], *match_previous(sae.W_dec.detach(), previous[1].W_dec.detach()))
    summary = latent_summary(codes, r.task.test.labels.to(codes.device), r.task.n_classes, b.latents, b.examples,
                             b.score, r.cfg.eval.min_firing_rate, b.prior_firings, effect, effect_doc, match,
                             sae.firing_density)
    summary.update(kind=r.task.kind, examples=example_contents(r.task, r.tokenizer, example_ids(summary)))
    return summary


def write_cycle(r: ChainContext, paths: ChainPaths, cycle: int, history: list[dict], sae: SAE,
                extracted: dict[str, torch.Tensor], previous: SAE | None = None) -> CycleDir:
    """Rank 0 writes the cycle's model, SAE, metrics and latent browser data (sealed by a manifest) and
    results.json. previous: the previous cycle's SAE (the browser matches each latent to its latents)."""
    files = paths.cycle(cycle)
    state = full_state(r.tap.model)  # every rank: a sharded model's weights are gathered together
    if is_main():
        save_weights(files.model, state, {"name": r.cfg.model.name})
        sae.save(files.sae)
        if r.cfg.browser.latents:
            write_json(files.latents, browse_latents(r, sae, extracted, state,
                                                     None if previous is None else (cycle - 1, previous)))
        # Written last: a cycle directory with metrics.json is complete.
        write_json(files.metrics, {"cycles": history})
        files.seal()
        write_json(paths.results(), {"config": to_dict(r.cfg), "splits": r.task.splits_identity(), "cycles": history})
    return files


def _jsonable(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def _restore(r: ChainContext, resume_from: Path | ChainState | None) -> tuple[list[dict], SAE | None]:
    if resume_from is None:
        return [], None
    state = resume_from if isinstance(resume_from, ChainState) else ChainState.load(resume_from, r.device)
    unfit = None if is_sharded(r.tap.model) else weights_unfit(state.model_state, r.tap.model)
    if unfit:  # a sharded model's ranks other than 0 hold no weights here: load_state checks those
        raise CorruptCycleError(f"resuming after cycle {state.history[-1]['cycle']}: {unfit}")
    load_state(r.tap.model, state.model_state)
    if not is_sharded(r.tap.model):
        r.tap.to(r.device)
    log.info("resuming after cycle %d", state.history[-1]["cycle"])
    return [dict(h) for h in state.history], state.sae.to(r.device)


def _warn_noop(cfg: Config, tap: TapModel) -> None:
    n = cfg.sae.n_latents(tap.width())
    if cfg.sharpen.keep == "top" and is_noop(cfg.sharpen.strategy, cfg.sae.kind, cfg.sae.k, n, cfg.sharpen.top_k_pct):
        log.warning("sharpen.top_k_pct %g keeps >= sae.k (%d) of %d latents: per_example sharpening keeps every "
                    "active latent, so the targets are plain reconstructions (see sharpen_kept_fraction)",
                    cfg.sharpen.top_k_pct, cfg.sae.k, n)


def _place(s: Setup, cfg: Config, device: torch.device) -> None:
    if cfg.train.strategy == "fsdp":
        if not is_sharded(s.tap.model):  # each rank's shard goes to the device, never the whole model
            shard(s.tap, cfg.train, device)
    else:
        s.tap.to(device)


def reopen(cfg: Config, state: ChainState, device: torch.device | None = None) -> tuple[ChainContext, dict[str, torch.Tensor]]:
    """A chain's context at `state`'s last cycle, with that cycle's extracted activations: what the SAE
    stage and the evaluation of that cycle read (no cache; every rank under torch.distributed)."""
    device = device or resolve_device(cfg.device)
    s = setup(cfg)
    _place(s, cfg, device)
    r = ChainContext(cfg, s.task, s.tap, device, None, _env(s, device), tokenizer=s.tokenizer)
    _restore(r, state)
    return r, extract_all(r, state.history[-1]["cycle"])


def resampled_sae(r: ChainContext, cycle: int, extracted: dict[str, torch.Tensor], j: int) -> SAE:
    """The cycle's SAE trained again with the j-th other seed of the SAE stage (same activations)."""
    x = extracted["train.tokens"] if r.cfg.sae.tokens == "all" else extracted["train.acts"]
    with stage_rng(r.cfg.seed, cycle, f"{SAE_STAGE.name}-resample-{j}", r.device) as seed:
        return train_sae(x.to(r.device).float(), r.cfg.sae, seed=seed).cpu()


def sae_seed_spread(cfg: Config, state: ChainState, n: int, device: torch.device | None = None) -> list[dict]:
    """The SAE-seed noise floor of a chain's last cycle: `n` more SAEs trained on that cycle's activations
    (the same model and data, the same evaluation seed; only the SAE stage's seed differs), each evaluated
    as the cycle was. Returns their metric dicts. Runs on every rank under torch.distributed."""
    r, extracted = reopen(cfg, state, device)
    cycle = state.history[-1]["cycle"]
    return [{"cycle": cycle, **evaluate_cycle(r, cycle, resampled_sae(r, cycle, extracted, j), extracted)}
            for j in range(1, n + 1)]


def run_chain(cfg: Config, paths: ChainPaths | str | Path, on_cycle: CycleCallback | None = None,
              device: torch.device | None = None, resume_from: Path | ChainState | None = None,
              prepared: Setup | None = None,
              on_state: Callable[[int, ChainState], None] | None = None,
              cache: StageCache | None = None) -> list[dict]:
    """Runs cycles 0..cfg.chain.cycles and returns one metrics dict per cycle.

    resume_from: a ChainState, or a cycle directory (CycleDir layout) written by an earlier run or
    restored from a checkpoint; the chain continues with the next cycle and gives the numbers an
    uninterrupted run gives. paths: where this run writes (rank 0 only). on_state(cycle, state): called
    on every rank after each cycle (the state is live: copy it to keep it). cache: a StageCache for
    cycle 0's model, activations and SAE."""
    paths = paths if isinstance(paths, ChainPaths) else ChainPaths(paths)
    device = device or resolve_device(cfg.device)
    s = prepared or setup(cfg)
    _place(s, cfg, device)
    r = ChainContext(cfg, s.task, s.tap, device, cache, _env(s, device), tokenizer=s.tokenizer)
    r.keys[INIT.name] = stage_key(INIT, cfg, r.env, {})
    history, sae = _restore(r, resume_from)
    start = history[-1]["cycle"] + 1 if history else 0
    if start <= cfg.chain.cycles and cfg.chain.cycles > 0:
        _warn_noop(cfg, s.tap)
    for cycle in range(start, cfg.chain.cycles + 1):
        t0 = time.perf_counter()
        retrained = None
        if cycle == 0:
            train_model0(r)
        else:
            retrained = sharpen_and_retrain(r, cycle, sae)
        extracted = extract_all(r, cycle)
        previous, sae = sae, train_cycle_sae(r, cycle, extracted)
        metrics = {"cycle": cycle, **evaluate_cycle(r, cycle, sae, extracted)}
        if retrained is not None:
            metrics.update(retrained.metrics(extracted["train.acts"].float()))
        metrics["cycle_seconds"] = time.perf_counter() - t0
        history.append(_jsonable(metrics))
        files = write_cycle(r, paths, cycle, history, sae, extracted, previous)
        if on_cycle is not None:
            on_cycle(cycle, metrics, files.path)
        sae = sae.to(device)
        if on_state is not None:
            # Sharded: every rank gathers; rank 0 holds the weights (load_state reads rank 0's alone).
            on_state(cycle, ChainState(history, full_state(s.tap.model), sae))
        barrier()
    return history
