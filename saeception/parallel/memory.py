"""GPU memory of one worker of a trial, estimated from the model's shape and the config: no GPU, no weights.

`model_facts` reads what the estimate needs from a model built on the meta device (parameter counts,
the largest block, widths, the activation function); `estimate(cfg, workers, facts=...)` returns a
`MemoryEstimate` in bytes per worker: the peak of the chain's three stages, each modelled on what the
chain's code holds (train.py, sharding.py, sae.py, evaluate.py). Estimates, not measurements: the rules
below are what the code keeps alive, counted by hand. Rules (N workers; w the bytes of `model.dtype`:
4 float32, 2 bfloat16/float16; c the bytes the layers compute in: 2 on CUDA, where DDP runs under bf16
autocast and FSDP with bf16 compute, else w):

Training step (cycle-0 fine-tuning; later cycles' aux retraining is counted the same way with every
parameter trainable, the upper bound, at the larger of the two batch sizes):
- weights: w per parameter. ddp: a full replica per worker; fsdp: 1/N per worker.
- grads: as the weights, in their dtype (sharded under fsdp). train._fit frees them before each forward
  and after the last step; backward allocates them while most activations are still alive, and the step's
  peak is the sum of weights, grads, AdamW states and activations (on the CPU MemTracker measures within 6%
  of that sum, tests/unit/parallel/test_memory.py).
- optimizer: AdamW's two states per trainable parameter, in the parameter's dtype (bf16 weights: bf16
  states); sharded under fsdp. On CUDA the foreach step allocates one more state-sized buffer
  (`OPTIMIZER_STEP_BUFFERS`), when the activations are gone: it counts only if it is the larger.
- activations, for `finetune.batch_size` (or `aux.batch_size`) sequences of `data.max_length` tokens per
  worker (an upper bound: batches are padded to their longest member). Per token and block, what
  backward keeps (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", count tensor by tensor: their 34·s·b·h bytes per layer at 16 bits, without the 5·a·s²·b
  attention-score terms since `ATTENTION_KEEPS_SCORES` is false, refined to what Hugging Face's blocks
  keep; on the CPU, with `distributed=False`, it is within 12% of what torch's MemTracker measures,
  tests/unit/parallel/test_memory.py): the norms' inputs (fp32 under CUDA autocast, which runs layer_norm in fp32; one
  under GPT-NeoX's parallel residual), the QKV projection's input, Q, K and V, the attention output and
  the output projection's input (6·h at c), the MLP's input, what its activation keeps
  (`ACTIVATION_KEEPS`: a fused kernel its input; GPT-2's `gelu_new` is written in Python and keeps four
  tensors) and the second linear's input (intermediate size at c; a gated MLP one more), and a mask per
  dropout with p > 0 (1 byte per element on CUDA). Outside the blocks: the final norm's input and the
  head's input (the embedding output is the first norm's input). With `model.gradient_checkpointing`:
  each block's input (its residual stream) plus one block recomputed in full. MLP: the first layer's
  input and each hidden layer's output, per example.
- working: ddp: DDP's gradient buckets (one more gradient-sized buffer: `gradient_as_bucket_view` is
  off) and, on CUDA with float32/float16 weights, autocast's bf16 copy of every matmul weight (kept for
  backward). fsdp: the root unit (embeddings, final norm, head) unsharded in the compute dtype (FSDP2 keeps
  the root gathered from forward to backward) plus `FSDP_UNITS_IN_FLIGHT` blocks unsharded with their
  all-gather buffers, and the block in backward's unsharded gradients and reduce-scatter input (fp32 on
  CUDA, `reduce_dtype`).
- `train.cpu_offload`: the sharded weights, grads and AdamW states live in host memory: 0 on the GPU but
  the working set; `host` is the host memory they take per worker.

SAE stage: the model's weights stay resident (sharded under fsdp; its gradients were freed), the train split's activations in fp32 (every real token's
with `sae.tokens: all`, at most `data.max_length` per example), the SAE (latents n = expansion_factor·d:
2·d·n + n + d fp32 parameters) with its gradients and two Adam states, on CUDA `SAE_WEIGHT_CASTS` bf16
casts of a d×n matrix (the step runs under autocast without a weight cache), and `SAE_BATCH_COPIES`
(batch × n) tensors of codes, pre-activations and their gradients, for each worker's share of
`sae.batch_size`. In cycles >= 1 the previous cycle's SAE is still on the device.

Evaluation stage (rank 0 only, every cycle): the model resident, the SAE, every split's activations
(fp32) and the dense codes of every split (N × n fp32), held once (encode_all fills one tensor), plus the
probe's standardised train codes (a full copy up to `probe.STANDARDIZED_ELEMENTS`, a block of rows above)
and `EVAL_BLOCK_COPIES` float64 blocks of at most `clustering.BLOCK_ELEMENTS` (the per-latent statistics by
column blocks, the partition scores by row blocks). It grows with the data, so it needs the split sizes
(or `data.max_examples`, their bound); without them it is unknown. Sharpening (cycles >= 1) works a chunk
of rows at a time (`sae.CHUNK_ELEMENTS`): fewer code-sized buffers than evaluation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from saeception.config import Config, ModelConfig
from saeception.eval.clustering import BLOCK_ELEMENTS
from saeception.eval.probe import STANDARDIZED_ELEMENTS
from saeception.models.classifiers import MLP, block_list
from saeception.validate import _hf_config

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# What CUDA computes the layers in: DDP under bf16 autocast, FSDP with bf16 mixed precision.
CUDA_COMPUTE_BYTES = 2
FP32 = 4
# SDPA (the default attention of transformers 5, flash or memory-efficient on CUDA) keeps Q, K, V, its
# output and the log-sum-exp for backward, never the a·s² score matrix. True would add Korthikanti's
# 5·a·s²·b bytes per layer (the eager attention's scores, softmax and dropout mask).
ATTENTION_KEEPS_SCORES = False
# Tensors of the MLP's intermediate size an activation keeps for backward: (at the compute dtype, at fp32
# under CUDA autocast). Fused kernels keep their input; GPT-2's `gelu_new` is Python,
# 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))): pow's input (promoted to fp32 by autocast), tanh's output
# and 1 + tanh (fp32 by promotion), 0.5·x. Without autocast all four are at the compute dtype.
ACTIVATION_KEEPS = {"gelu_new": (1, 3)}
FUSED_ACTIVATION = (1, 0)
# CUDA's fused dropout keeps a bool mask; the CPU's keeps its noise tensor in the compute dtype.
DROPOUT_MASK_BYTES = 1
# FSDP2 all-gathers one block while the previous one computes (forward and backward prefetch).
FSDP_UNITS_IN_FLIGHT = 2
# The foreach AdamW step (CUDA's default) allocates one state-sized buffer (sqrt of the second moment).
OPTIMIZER_STEP_BUFFERS = 1
# The SAE step on CUDA: bf16 casts of W_enc and W_dec (encoder, decoder, the AuxK decoder) and the bf16
# gradient of one, each d×n; the (batch × n) tensors: pre-activations, codes, AuxK's masked
# pre-activations and its scattered top-k, and two gradients.
SAE_WEIGHT_CASTS = 4
SAE_BATCH_COPIES = 6
# Float64 blocks alive at once in the per-latent statistics (a block, its square or one-hot products).
EVAL_BLOCK_COPIES = 3


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs to know about a model: counts and widths, read once from its shape."""

    name: str
    kind: str  # "transformer" | "mlp"
    params: int
    root_params: int  # outside the blocks (embeddings, final norm, head): FSDP's root unit
    block_params: int  # the largest block (or MLP hidden layer): one FSDP unit
    matmul_params: int  # in 2-D weights outside embedding tables: what autocast casts to bf16
    layers: int
    hidden: int  # the residual stream's width (the tapped width); MLP: the widest hidden layer
    intermediate: int = 0
    heads: int = 0
    vocab: int = 0
    activation: str = ""
    gated: bool = False  # a gated MLP (LLaMA's SwiGLU) keeps one more intermediate-sized tensor
    norms: int = 2  # norm inputs a block keeps (GPT-NeoX's parallel residual feeds both norms one input)
    block_dropouts: int = 0  # dropouts with p > 0 per block that keep a mask (SDPA's own keeps none)
    outer_dropouts: int = 0  # the same outside the blocks (GPT-2's embedding dropout)
    widths: tuple[int, ...] = field(default=())  # MLP: input, hidden..., classes

    def width(self, layer: int | str) -> int:
        """The tapped layer's width (the SAE's d)."""
        if self.kind == "transformer":
            return self.hidden
        hidden = self.widths[1:-1]
        index = int(str(layer).rsplit(".", 1)[-1]) if isinstance(layer, str) else layer
        return hidden[index]


def _dropouts(module: nn.Module) -> int:
    return sum(1 for name, m in module.named_modules()
               if isinstance(m, nn.Dropout) and m.p > 0 and "attn_dropout" not in name and "attention_dropout" not in name)


def facts_from_model(model: nn.Module, name: str = "") -> ModelFacts:
    """Facts of a built model (on the meta device is enough: only shapes are read)."""
    params = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False))
    matmul = sum(p.numel() for p in model.parameters() if p.dim() >= 2) - embedding
    if isinstance(model, MLP):
        units = list(model.hidden)
        widths = (units[0][0].in_features, *(u[0].out_features for u in units), model.head.out_features)
        block = max(sum(p.numel() for p in u.parameters()) for u in units)
        return ModelFacts(name or "mlp", "mlp", params, params - sum(sum(p.numel() for p in u.parameters()) for u in units),
                          block, matmul, len(units), max(widths[1:-1]), widths=widths)
    cfg = model.config
    blocks = list(block_list(model))
    sizes = [sum(p.numel() for p in b.parameters()) for b in blocks]
    hidden = int(cfg.hidden_size)
    intermediate = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    activation = str(getattr(cfg, "hidden_act", None) or getattr(cfg, "activation_function", None) or "")
    norms = sum(1 for m in blocks[0].modules() if "norm" in type(m).__name__.lower())
    if getattr(cfg, "use_parallel_residual", False):
        norms = min(norms, 1)
    gated = any(n.endswith(("gate_proj", "gate_up_proj", "w1")) for n, _ in blocks[0].named_modules())
    return ModelFacts(name or getattr(cfg, "_name_or_path", "") or cfg.model_type, "transformer", params,
                      params - sum(sizes), max(sizes), matmul, len(blocks), hidden, int(intermediate),
                      int(cfg.num_attention_heads), int(getattr(cfg, "vocab_size", 0) or 0), activation, gated, norms,
                      _dropouts(blocks[0]), _dropouts(model) - sum(_dropouts(b) for b in blocks))


def facts_from_config(hf_config, n_classes: int = 2, name: str = "") -> ModelFacts:
    """Facts of a `transformers` config's sequence classifier, built on the meta device (no weights)."""
    from transformers import (
        AutoModelForSequenceClassification,  # lazy: transformers only for Hugging Face models
    )

    hf_config = copy.deepcopy(hf_config)
    hf_config.num_labels = n_classes
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(hf_config)
    return facts_from_model(model, name)


def model_facts(cfg: ModelConfig, n_classes: int = 2, input_dim: int = 64, hf_config=None) -> ModelFacts | None:
    """Facts of `model.name`: the MLP from its widths (`input_dim` features, `n_classes` outputs; the digits
    data has 64 and 10), a transformer from its config (a local directory, `package:` or a hub id: only
    config.json is read). None for a hub model that is neither cached nor reachable now."""
    if cfg.name == "mlp":
        with torch.device("meta"):
            return facts_from_model(MLP(input_dim, cfg.hidden_sizes, n_classes), "mlp")
    if hf_config is None:
        hf_config = _hf_config(cfg.name, cfg.revision)
        if hf_config is None:
            return None
    return facts_from_config(hf_config, n_classes, cfg.name)


# --------------------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per worker. The first five are the training step's parts; `sae` and `evaluation` are those
    stages' totals (evaluation None when the data's size is unknown); `total` the largest stage."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    working: int
    training: int  # the training step's peak (its parts summed, or the optimizer step if larger)
    sae: int
    evaluation: int | None
    host: int  # host memory per worker for what cpu_offload keeps there (0 without it)
    workers: int
    strategy: str

    @property
    def total(self) -> int:
        return max(self.training, self.sae, self.evaluation or 0)

    @property
    def peak_stage(self) -> str:
        stages = {"training step": self.training, "SAE stage": self.sae, "evaluation": self.evaluation or 0}
        return max(stages, key=stages.__getitem__)

    def lines(self) -> list[str]:
        """One human line per item, in GiB."""
        out = [f"weights      {gib(self.weights)} GiB", f"grads        {gib(self.grads)} GiB",
               f"optimizer    {gib(self.optimizer)} GiB (AdamW, 2 states)",
               f"activations  {gib(self.activations)} GiB",
               f"working      {gib(self.working)} GiB ({_working_what(self.strategy)})",
               f"training     {gib(self.training)} GiB (the step's peak)",
               f"SAE stage    {gib(self.sae)} GiB",
               f"evaluation   {gib(self.evaluation) + ' GiB' if self.evaluation is not None else 'unknown (the data size is not known now)'}"]
        if self.host:
            out.append(f"host memory  {gib(self.host)} GiB per worker (train.cpu_offload)")
        out.append(f"total        {gib(self.total)} GiB per worker (peak: {self.peak_stage})")
        return out

    def summary(self) -> str:
        """The dry run's line."""
        evaluation = f"{gib(self.evaluation)}" if self.evaluation is not None else "unknown"
        host = f"; host {gib(self.host)} GiB (cpu_offload)" if self.host else ""
        return (f"estimated GPU memory per worker: {gib(self.total)} GiB (training step {gib(self.training)}: weights "
                f"{gib(self.weights)}, grads {gib(self.grads)}, optimizer {gib(self.optimizer)}, activations "
                f"{gib(self.activations)}, working {gib(self.working)}; SAE stage {gib(self.sae)}; evaluation "
                f"{evaluation}{host}; peak: {self.peak_stage})")


def gib(n: int | float) -> str:
    """Bytes in GiB for people: 2 decimals below 10 GiB, 1 above."""
    if 0 < n < 0.005 * GIB:
        return "<0.01"
    return f"{n / GIB:.2f}" if n < 10 * GIB else f"{n / GIB:.1f}"


def _working_what(strategy: str) -> str:
    return ("FSDP's unsharded root and blocks in flight" if strategy == "fsdp"
            else "DDP's gradient buckets, autocast's bf16 weight copies")


def estimate(cfg: Config, workers: int = 1, *, facts: ModelFacts | None = None, hf_config=None,
             sizes: tuple[int, int, int] | None = None, device: str = "cuda", distributed: bool = True,
             n_classes: int = 2, input_dim: int = 64) -> MemoryEstimate:
    """Bytes per worker for `cfg` run by `workers` workers. `facts`: the model's (from `model_facts` when
    None, with `hf_config` if given). `sizes`: the (train, val, test) example counts, for the evaluation
    stage; None uses `data.max_examples` as their bound when set, else the evaluation is unknown.
    `distributed`: the workers run in a process group (a sweep's always do, even one: DDP wraps the model).
    Raises ValueError when the model's facts cannot be read (a hub model not reachable now)."""
    if facts is None:
        facts = model_facts(cfg.model, n_classes, input_dim, hf_config)
        if facts is None:
            raise ValueError(f"model.name: {cfg.model.name} cannot be read now (not cached, hub not reachable)")
    cuda = device == "cuda"
    n = max(1, workers)
    fsdp = cfg.train.strategy == "fsdp"
    w = DTYPE_BYTES[cfg.model.dtype]
    c = CUDA_COMPUTE_BYTES if cuda else w
    p = facts.params
    shard = math.ceil(p / n) if fsdp else p

    weights, grads, optimizer = shard * w, shard * w, 2 * shard * w
    host = 0
    if cfg.train.cpu_offload:  # fsdp only (TrainConfig checks)
        host, weights, grads, optimizer = weights + grads + optimizer, 0, 0, 0
    # What FSDP all-gathers in (bf16 on CUDA for fp32 weights: MixedPrecisionPolicy param_dtype).
    gathered = c if cuda else w
    buckets = p * w if distributed and not fsdp else 0  # DDP's gradient buckets
    casts = facts.matmul_params * CUDA_COMPUTE_BYTES if cuda and not fsdp and cfg.model.dtype != "bfloat16" else 0
    units = 0
    if fsdp:
        reduce = FP32 if cuda else w
        units = (facts.root_params * gathered
                 + facts.block_params * (FSDP_UNITS_IN_FLIGHT * 2 * gathered + gathered + reduce))
    working = buckets + casts + units
    batch = max(cfg.finetune.batch_size if cfg.finetune.epochs > 0 else 0,
                cfg.aux.batch_size if cfg.chain.cycles > 0 else 0)
    activations = _activations(facts, cfg, batch, cuda, fsdp) if batch else 0
    persistent = weights + grads + optimizer
    # The optimizer step comes after backward freed the activations and the unsharded units. On the CPU
    # AdamW loops over parameters: its temporaries are one parameter's size (not counted).
    step = persistent + buckets + (OPTIMIZER_STEP_BUFFERS * optimizer // 2 if cuda else 0)
    training = max(persistent + working + activations, step)
    resident = weights  # the model after training (train._fit frees its gradients)

    d = facts.width(cfg.model.layer)
    latents = cfg.sae.n_latents(d)
    sae_params = 2 * d * latents + latents + d
    per_example = cfg.data.max_length if cfg.sae.tokens == "all" and facts.kind == "transformer" else 1
    sizes = sizes or ((cfg.data.max_examples,) * 3 if cfg.data.max_examples else None)
    x_all = sizes[0] * per_example * d * FP32 if sizes else 0
    sae_batch = math.ceil(min(cfg.sae.batch_size, sizes[0] * per_example if sizes else cfg.sae.batch_size) / (n if distributed else 1))
    sae = (resident + x_all + sae_params * FP32 * 4
           + (SAE_WEIGHT_CASTS * d * latents * CUDA_COMPUTE_BYTES if cuda else 0)
           + SAE_BATCH_COPIES * sae_batch * latents * c
           + (sae_params * FP32 if cfg.chain.cycles > 0 else 0))  # the previous cycle's SAE

    evaluation = None
    if sizes is not None:
        codes = sum(sizes) * latents * FP32
        train_codes = sizes[0] * latents
        evaluation = (resident + sae_params * FP32 + sum(sizes) * d * FP32 + codes
                      + min(train_codes, STANDARDIZED_ELEMENTS) * FP32
                      + EVAL_BLOCK_COPIES * min(train_codes, BLOCK_ELEMENTS) * 8)
    return MemoryEstimate(weights, grads, optimizer, activations, working, training, sae, evaluation, host, n,
                          cfg.train.strategy)


def _activations(facts: ModelFacts, cfg: Config, batch: int, cuda: bool, fsdp: bool) -> int:
    """Bytes backward keeps for one batch per worker (module docstring)."""
    w = DTYPE_BYTES[cfg.model.dtype]
    c = CUDA_COMPUTE_BYTES if cuda else w
    if facts.kind == "mlp":
        return batch * (facts.widths[0] + sum(facts.widths[1:-1])) * c
    tokens = batch * cfg.data.max_length
    h, i = facts.hidden, facts.intermediate
    # The residual stream: the weights' dtype under DDP's autocast (fp32 weights: fp32 sums), the compute
    # dtype under FSDP's mixed precision (it casts the forward's inputs).
    residual = c if fsdp and cuda else w
    norm = FP32 if cuda else residual  # autocast runs layer_norm in fp32: it keeps an fp32 input
    attention = 6 * h * c
    low, high = ACTIVATION_KEEPS.get(facts.activation, FUSED_ACTIVATION)
    act = (low * c + high * (FP32 if cuda else c)) * i
    mlp = h * c + act + i * c + (i * c if facts.gated else 0)
    mask = DROPOUT_MASK_BYTES if cuda else c
    per_token = facts.norms * norm * h + attention + mlp + facts.block_dropouts * h * mask
    scores = 5 * facts.heads * cfg.data.max_length * c // 2 if ATTENTION_KEEPS_SCORES else 0
    layer = tokens * (per_token + scores)
    # The embedding output is the first block's norm input (counted there); the final norm's input and
    # the head's input (Hugging Face's classifier scores every token, then picks one) are not.
    outside = tokens * h * (norm + c + facts.outer_dropouts * mask)
    if cfg.model.gradient_checkpointing:
        return facts.layers * tokens * h * residual + layer + outside
    return facts.layers * layer + outside
