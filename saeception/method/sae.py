"""Sparse autoencoders: L1 ReLU, TopK (with the AuxK dead-latent loss), BatchTopK and JumpReLU.

Inputs are divided by one scalar (`input_scale`, set so that E||x||^2 = d on the training set) so
that `l1_coefficient` and learning rates mean the same thing on every layer; `decode` undoes it, so
codes decode back into the layer's own units. Decoder rows are kept at unit norm.

JumpReLU (Rajamanoharan et al. 2024, as SAELens trains it): a latent fires where its pre-activation exceeds
its own learned threshold; the threshold learns through a straight-through estimator with a rectangle
kernel of width `sae.jumprelu_bandwidth`, and the sparsity penalty is the L0 norm (`sae.l0_coefficient`),
differentiated the same way (the threshold itself is the parameter, kept >= 0, as SAELens 6 has it; AuxK also
applies, which SAELens' JumpReLU does not do). Optionally (`sae.resample_every`) dead latents are resampled as Anthropic
did (April 2023 update): toward inputs the SAE reconstructs worst.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from saeception.config import SAEConfig
from saeception.method.errors import DivergedError
from saeception.parallel.accel import autocast
from saeception.parallel.distributed import finite_everywhere
from saeception.parallel.distributed import rank as dist_rank
from saeception.parallel.distributed import world_size as dist_world_size
from saeception.store.artifacts import load_weights, save_weights

log = logging.getLogger(__name__)


@dataclass
class ForwardOutput:
    """Everything one SAE forward computes, for training and inference alike."""

    pre: Tensor  # (B, n_latents) ReLU pre-activations
    codes: Tensor  # (B, n_latents) sparse non-negative codes
    x_hat: Tensor  # (B, d) reconstruction in the layer's units
    mse: Tensor  # () sum of squared errors per example / d, in scaled units (E||x||^2 = d)
    l1: Tensor  # () mean L1 norm of the codes (the l1 kind's penalty)
    l0: Tensor  # () the jumprelu kind's penalty, its mean L0 (differentiable in the thresholds); 0 for other kinds
    auxk: Tensor  # () AuxK loss (0 when no latent is dead or `dead` was not given)


class SAE(nn.Module):
    def __init__(self, d: int, n_latents: int, kind: str = "topk", k: int = 16):
        super().__init__()
        self.d, self.n_latents, self.kind, self.k = d, n_latents, kind, k
        self.W_enc = nn.Parameter(torch.empty(d, n_latents))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(()))
        if kind == "jumprelu":  # one learned threshold per latent (set by init_sae)
            self.threshold = nn.Parameter(torch.zeros(n_latents))
        else:  # BatchTopK's inference threshold: a running mean of the smallest kept activation.
            self.register_buffer("threshold", torch.zeros(()))
        # The straight-through kernel's width (jumprelu): the config's default; init_sae sets the run's.
        self.bandwidth = SAEConfig().jumprelu_bandwidth
        # The share of its training activations each latent fires on, set at the end of train_sae (exported as
        # SAELens' sparsity.safetensors); -1 where unknown (an SAE saved before it existed, or not trained here).
        self.register_buffer("firing_density", torch.full((n_latents,), -1.0))

    def linear(self, x: Tensor) -> Tensor:
        """The encoder's affine map, before any nonlinearity."""
        # F.linear = one addmm with the bias: under autocast its output stays bf16 (no fp32 pass over the
        # (B, n_latents) pre-activations just to add the bias).
        x = x / self.input_scale
        return F.linear(x - self.b_dec, self.W_enc.t(), self.b_enc)

    def pre_activations(self, x: Tensor) -> Tensor:
        return torch.relu(self.linear(x))

    def activate(self, pre: Tensor, batch_topk: bool = False) -> Tensor:
        """Pre-activations -> codes. batch_topk: BatchTopK's training rule (top k·B over the batch)."""
        if self.kind == "l1":
            return pre
        if self.kind == "topk":
            values, index = topk_rows(pre, self.k)
            return torch.zeros_like(pre).scatter_(-1, index, values)
        if batch_topk:
            flat = pre.flatten()
            values, index = flat.topk(min(self.k * pre.shape[0], flat.numel()))
            return torch.zeros_like(flat).scatter_(0, index, values).view_as(pre)
        return pre * (pre > self.threshold)

    def encode(self, x: Tensor) -> Tensor:
        """(..., d) activations -> (..., n_latents) non-negative codes."""
        return self.activate(self.pre_activations(x))

    def decode(self, z: Tensor) -> Tensor:
        """(..., n_latents) codes -> (..., d) reconstructions in the layer's units."""
        return ((z @ self.W_dec).float() + self.b_dec) * self.input_scale

    def forward(self, x: Tensor, batch_topk: bool = False, dead: Tensor | None = None, auxk_k: int = 64) -> ForwardOutput:
        """One pass with every output and loss term: the training step and inference share it.
        dead: (n_latents,) bool mask of dead latents, to compute the AuxK term."""
        if self.kind == "jumprelu":
            # The jump sees the raw affine output (as SAELens'): a ReLU first would pile every negative
            # pre-activation at 0, inside the estimator's window around a small threshold.
            raw = self.linear(x)
            theta = self.threshold.to(raw.dtype)
            pre, codes = torch.relu(raw), JumpReLU.apply(raw, theta, self.bandwidth)
            l0 = Step.apply(raw, theta, self.bandwidth).float().sum(-1).mean()
        else:
            pre = self.pre_activations(x)
            codes = self.activate(pre, batch_topk)
            l0 = pre.new_zeros((), dtype=torch.float32)  # no L0 penalty: nothing computed on the hot path
        x_hat = self.decode(codes)
        residual = (x.float() - x_hat) / self.input_scale
        mse = residual.pow(2).sum(-1).mean() / self.d
        auxk = auxk_loss(self, pre, residual.detach(), dead, auxk_k) if dead is not None else mse.new_zeros(())
        return ForwardOutput(pre, codes, x_hat, mse, codes.float().sum(-1).mean(), l0, auxk)

    def decoder_directions(self) -> Tensor:
        """(n_latents, d) unit-norm decoder rows."""
        return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Projects out the gradient component along each unit decoder row (it would only change norms)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    def config(self) -> dict:
        return {"d": self.d, "n_latents": self.n_latents, "kind": self.kind, "k": self.k}

    def save(self, prefix: Path) -> None:
        save_weights(prefix, self.state_dict(), self.config())

    @classmethod
    def load(cls, prefix: Path, device: str | torch.device = "cpu") -> SAE:
        tensors, cfg = load_weights(prefix, device)
        sae = cls(cfg["d"], cfg["n_latents"], cfg["kind"], cfg["k"]).to(device)
        if "firing_density" not in tensors:  # saved before the density was kept: unknown (-1)
            tensors["firing_density"] = sae.firing_density
        expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:  # load_state_dict's RuntimeError was not an input error the chain recovers from
            wrong = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
            raise ValueError(f"{prefix.with_suffix('.safetensors')}: tensors disagree with {prefix.with_suffix('.json')} "
                             f"(d={cfg['d']}, n_latents={cfg['n_latents']}): "
                             + ", ".join(f"{k} {found.get(k, 'missing')} != {expected.get(k, 'unexpected')}" for k in wrong[:3]))
        sae.load_state_dict(tensors)
        return sae.eval().requires_grad_(False)


def rectangle(x: Tensor) -> Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x)


class JumpReLU(torch.autograd.Function):
    """x · 1[x > θ]. Gradient to x through the kept entries; to θ the straight-through estimate
    -(θ/ε)·rect((x-θ)/ε) (the pseudo-derivative of the jump, Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return x * (x > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, threshold = ctx.saved_tensors
        ste = threshold / ctx.bandwidth * rectangle((x - threshold) / ctx.bandwidth) * grad
        return (x > threshold) * grad, -ste.reshape(-1, x.shape[-1]).sum(0), None


class Step(torch.autograd.Function):
    """1[x > θ], with the straight-through gradient -(1/ε)·rect((x-θ)/ε) to θ only (the L0 penalty)."""

    @staticmethod
    def forward(ctx, x: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(x, threshold)
        ctx.bandwidth = bandwidth
        return (x > threshold).to(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        x, threshold = ctx.saved_tensors
        ste = rectangle((x - threshold) / ctx.bandwidth) * grad / ctx.bandwidth
        return None, -ste.reshape(-1, x.shape[-1]).sum(0), None


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 50, eps: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to the rows of x."""
    median = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - median).norm(dim=-1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - median).norm() < eps * (1 + median.norm()):
            return new
        median = new
    return median


def topk_rows(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest entries of each row, in no particular order (unsorted is
    faster; a chunked two-stage selection was slower at every chunk size on an H200: BENCHMARKS.md)."""
    return x.topk(k, dim=-1, sorted=False)


def decode_topk(sae: SAE, values: Tensor, index: Tensor, sparse: bool = False) -> Tensor:
    """sum_j values[:, j] * W_dec[index[:, j]] (without b_dec, in scaled units): the decoder product of a
    code with k nonzeros per row. Dense (scatter, then one matmul) by default; sparse=True gathers k
    decoder rows per example instead, O(B·k·d) rather than O(B·n_latents·d) but memory-bound: on an
    H200 at d=768, 6144 latents, k=64 the dense product was faster (BENCHMARKS.md). Same sum either way."""
    if sparse:
        return F.embedding_bag(index, sae.W_dec, per_sample_weights=values.to(sae.W_dec.dtype), mode="sum")
    z = torch.zeros(index.shape[0], sae.n_latents, dtype=values.dtype, device=index.device).scatter(-1, index, values)
    return z @ sae.W_dec


def auxk_loss(sae: SAE, pre: Tensor, residual: Tensor, dead: Tensor, k_aux: int) -> Tensor:
    """OpenAI's AuxK: reconstruct the residual from the top dead latents, normalised by its variance.
    Zero when no latent is dead; no host sync (masked and zero entries decode to nothing)."""
    dead_pre = torch.where(dead, pre, torch.zeros_like(pre))
    values, index = topk_rows(dead_pre, min(k_aux, pre.shape[-1]))
    residual_hat = decode_topk(sae, values, index).float()
    denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
    return (residual_hat - residual).pow(2).sum(-1).mean() / denom * dead.any()


@torch.no_grad()
def init_sae(x_all: Tensor, cfg: SAEConfig, gen: torch.Generator) -> SAE:
    """A new SAE for (N, d) activations: input scale so that E||x||^2 = d, random unit decoder rows,
    encoder = decoder transposed, decoder bias at the geometric median of a sample."""
    n, d = x_all.shape
    device = x_all.device
    sae = SAE(d, cfg.n_latents(d), cfg.kind, cfg.k).to(device)
    sample = x_all[torch.randperm(n, generator=gen)[:4096].to(device)]
    sae.input_scale.fill_(float(sample.pow(2).sum(-1).mean().div(d).sqrt().clamp_min(1e-8)))
    sae.W_dec.copy_(torch.randn(sae.n_latents, d, generator=gen).to(device))
    sae.normalize_decoder()
    sae.W_enc.copy_(sae.W_dec.t())
    sae.b_dec.copy_(geometric_median(sample / sae.input_scale))
    sae.threshold.fill_(cfg.jumprelu_init_threshold if cfg.kind == "jumprelu" else 0.0)
    sae.bandwidth = cfg.jumprelu_bandwidth
    return sae


@torch.no_grad()
def resample_dead(sae: SAE, opt: torch.optim.Optimizer, x_all: Tensor, dead: Tensor, gen: torch.Generator,
                  init_threshold: float = 0.0, sample: int = 8192) -> int:
    """Anthropic's resampling of dead latents (April 2023 update): on a sample of the training rows, each
    dead latent takes the direction of one row (drawn without replacement, with probability proportional to
    its squared reconstruction error), after b_dec: that unit vector as its decoder row, the mean alive
    encoder norm along it (0.2 × for L1, as Anthropic) as its encoder column, encoder bias 0 (a JumpReLU
    threshold back to its init), and Adam's moments for those entries reset. Identical on every rank (one generator, one sample; under
    torch.distributed rank 0's result is broadcast). Returns the number resampled."""
    index = dead.nonzero().squeeze(-1)
    if len(index) == 0:
        return 0
    rows = x_all[torch.randperm(len(x_all), generator=gen)[:sample].to(x_all.device)]
    scaled = rows / sae.input_scale
    error = (scaled - sae.decode(sae.encode(rows)) / sae.input_scale).float().pow(2).sum(-1)
    weights = error.double().cpu() + 1e-12  # every row stays drawable when the SAE reconstructs all exactly
    chosen = torch.multinomial(weights, len(index), replacement=len(index) > len(rows), generator=gen)
    direction = scaled[chosen.to(rows.device)] - sae.b_dec
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    encoder_norm = sae.W_enc[:, alive].norm(dim=0).mean() if bool(alive.any()) else sae.W_enc.new_ones(())
    sae.W_dec[index] = direction.to(sae.W_dec.dtype)
    # Anthropic's 0.2 is for L1 SAEs; where latents compete for selection (TopK, BatchTopK, a JumpReLU threshold)
    # a latent at a fifth of the alive norm is never selected and stays dead (63 of 64 did, on a planted dictionary).
    gain = 0.2 if sae.kind == "l1" else 1.0
    sae.W_enc[:, index] = (direction.t() * gain * encoder_norm).to(sae.W_enc.dtype)
    sae.b_enc[index] = 0
    touched = [(sae.W_dec, (index,)), (sae.W_enc, (slice(None), index)), (sae.b_enc, (index,))]
    if sae.kind == "jumprelu":
        sae.threshold[index] = init_threshold
        touched.append((sae.threshold, (index,)))
    for param, where in touched:
        for key in ("exp_avg", "exp_avg_sq"):
            if key in opt.state.get(param, {}):
                opt.state[param][key][where] = 0
    if dist_world_size() > 1:
        for param, _ in touched:
            dist.broadcast(param.data, 0)
    return len(index)


@dataclass
class StepState:
    """Device tensors a training step reads and updates in place (so a captured graph can replay it)."""

    index: Tensor  # (batch,) example rows of this step
    since_fired: Tensor  # (n_latents,) examples seen since each latent last fired
    loss_sum: Tensor  # () running loss, checked for NaN/inf every few steps
    l1_scale: Tensor | None = None  # () the share of the L1 weight applied this step (sae.l1_warmup_steps)


def sae_step(sae: SAE, opt: torch.optim.Optimizer, x_all: Tensor, state: StepState, cfg: SAEConfig,
             aux_on: bool, first: bool) -> tuple[Tensor, Tensor]:
    """One optimiser step on the rows `state.index` (this rank's share under torch.distributed): the
    SAE's forward, the kind's loss, gradients averaged across ranks, Adam, decoder rows renormalised,
    dead-latent bookkeeping. Returns (loss, mse) as device tensors (no host sync)."""
    rank, world = dist_rank(), dist_world_size()
    x = x_all[state.index[rank::world]]
    # Matmuls in bf16 on CUDA (no weight-cast cache: it must not outlive a captured step).
    with autocast(x.device, cache_enabled=False):
        dead = state.since_fired >= cfg.dead_after if aux_on else None
        out = sae(x, batch_topk=cfg.kind == "batchtopk", dead=dead, auxk_k=cfg.auxk_k)
        if cfg.kind == "l1":
            l1 = cfg.l1_coefficient * out.l1
            loss = out.mse + (l1 if state.l1_scale is None else state.l1_scale * l1)
        else:
            loss = out.mse + cfg.auxk_coefficient * out.auxk
            if cfg.kind == "jumprelu":
                l0 = cfg.l0_coefficient * out.l0
                loss = loss + (l0 if state.l1_scale is None else state.l1_scale * l0)
    state.loss_sum.add_(loss.detach())
    opt.zero_grad(set_to_none=False)
    loss.backward()
    if world > 1:
        for p in sae.parameters():
            dist.all_reduce(p.grad)
            p.grad.div_(world)
    sae.remove_parallel_grad()
    opt.step()
    sae.normalize_decoder()
    with torch.no_grad():
        if cfg.kind == "jumprelu":  # kept >= 0 by projection (a clamp in the graph would stop its gradient at 0)
            sae.threshold.clamp_(min=0)
        fired = (out.codes.detach() > 0).any(0).float()
        if cfg.kind == "batchtopk":
            z = out.codes.detach()
            kept = torch.where(z > 0, z, torch.full_like(z, float("inf"))).amin().float()
            smallest = torch.where(torch.isfinite(kept), kept, sae.threshold)
            if world > 1:
                dist.all_reduce(smallest)
                smallest = smallest / world
            sae.threshold.lerp_(smallest, 1.0 if first else 0.01)
        if world > 1:
            dist.all_reduce(fired)
        state.since_fired.copy_(torch.where(fired > 0, torch.zeros_like(state.since_fired),
                                            state.since_fired + len(state.index)))
    return loss, out.mse


def train_sae(activations: Tensor, cfg: SAEConfig | None = None, seed: int = 0,
              check_every: int = 50) -> SAE:
    """Trains an SAE on (N, d) activations. Under torch.distributed every rank passes the same full
    tensor; each rank steps on its share of every batch and gradients are averaged, so all ranks end
    with the same SAE.

    The loop never waits on the host: batch indices are drawn on the device, and every `check_every`
    steps (and at the end) one sync checks the running loss sum for NaN/inf (a divergence fails the
    stage, naming the steps) and refreshes whether any latent is dead (AuxK runs only while one is).
    On CUDA the matmuls run under bf16 autocast (parameters and fused-Adam state stay fp32), and for
    a TopK SAE in one process the step (`sae_step`: forward, backward, Adam, decoder renormalisation)
    is captured once as a CUDA graph and replayed (`sae.cuda_graphs`); other kinds and DDP run the
    same step eagerly."""
    cfg = cfg or SAEConfig()
    x_all = activations.detach().float()
    n, d = x_all.shape
    cfg.check_width(d)
    device = x_all.device
    sae = init_sae(x_all, cfg, torch.Generator(device="cpu").manual_seed(seed))
    cuda = device.type == "cuda"
    # Captured only where it was checked on a GPU (graph == eager, BENCHMARKS.md): TopK in one process.
    # Not with a schedule: a captured step would replay the learning rate it was captured with.
    # Nor with resampling, which rewrites parameters and optimiser state between steps (not checked on a GPU).
    graphs = (cuda and cfg.cuda_graphs and dist_world_size() == 1 and cfg.kind == "topk" and not cfg.scheduled
              and cfg.resample_every == 0)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), **({"fused": True, "capturable": graphs} if cuda else {}))
    batch = min(cfg.batch_size, n)
    state = StepState(torch.zeros(batch, dtype=torch.long, device=device), torch.zeros(sae.n_latents, device=device),
                      torch.zeros((), device=device), torch.ones((), device=device) if cfg.scheduled else None)
    index_gen = torch.Generator(device=device).manual_seed(seed)

    def step(aux_on: bool, first: bool) -> tuple[Tensor, Tensor]:
        return sae_step(sae, opt, x_all, state, cfg, aux_on, first)

    captured: dict[bool, tuple[torch.cuda.CUDAGraph, tuple[Tensor, Tensor]]] = {}
    side = torch.cuda.Stream() if graphs else None
    aux_on, checked = False, 0
    resample_gen = torch.Generator().manual_seed(seed)
    for i in range(cfg.steps):
        state.index.copy_(torch.randint(0, n, (batch,), generator=index_gen, device=device))
        if cfg.scheduled:
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(i)
            state.l1_scale.fill_(cfg.l1_scale_at(i))
        if not graphs:
            loss, mse = step(aux_on, i == 0)
        elif i < 3:  # warm-up steps (real steps) on a side stream, as graph capture requires
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss, mse = step(aux_on, i == 0)
            torch.cuda.current_stream().wait_stream(side)
        else:
            if aux_on not in captured:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outputs = step(aux_on, False)
                captured[aux_on] = (graph, outputs)
            graph, (loss, mse) = captured[aux_on]
            graph.replay()
        if i + 1 == cfg.steps or (i + 1) % check_every == 0:
            if not finite_everywhere(state.loss_sum):  # all ranks together: one rank's NaN stops every rank here
                value = state.loss_sum.item() if not torch.isfinite(state.loss_sum) else "non-finite (on another rank)"
                raise DivergedError(f"SAE loss became {value} between steps {checked} and {i} (sae.lr {cfg.lr})")
            checked = i + 1
            aux_on = cfg.kind != "l1" and cfg.auxk_coefficient > 0 and bool((state.since_fired >= cfg.dead_after).any())
        if cfg.resample_every and (i + 1) % cfg.resample_every == 0 and i + 1 < cfg.steps:
            dead = state.since_fired >= cfg.dead_after
            n_dead = resample_dead(sae, opt, x_all, dead, resample_gen, cfg.jumprelu_init_threshold)
            state.since_fired.masked_fill_(dead, 0)
            log.debug("sae step %d: resampled %d dead latents", i, n_dead)
        if i % 500 == 0 and log.isEnabledFor(logging.DEBUG):
            log.debug("sae step %d loss %.4f mse %.4f", i, loss.item(), mse.item())
    sae.eval().requires_grad_(False)
    sae.firing_density.copy_(firing_density(sae, x_all))
    return sae


# Rows per chunk when codes are computed piecewise: about 2^28 code elements (1 GiB in fp32) per chunk,
# so a 98,304-latent SAE encodes ~2,700 rows at a time and a small one everything at once.
CHUNK_ELEMENTS = 1 << 28


def chunk_rows(n_latents: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(n_latents, 1))


@torch.no_grad()
def firing_density(sae: SAE, x: Tensor) -> Tensor:
    """(n_latents,) the share of the rows of `x` on which each latent fires, counted a chunk of rows at a time
    (the codes are never held whole)."""
    fired = torch.zeros(sae.n_latents, device=x.device)
    step = chunk_rows(sae.n_latents)
    for i in range(0, len(x), step):
        fired += (sae.encode(x[i:i + step]) > 0).sum(0)
    return fired / max(len(x), 1)


@torch.no_grad()
def encode_all(sae: SAE, x: Tensor, batch_size: int = 8192) -> Tensor:
    """(N, n_latents) codes, encoded `batch_size` rows at a time into one preallocated tensor (the
    codes are held once: no list of chunks beside their concatenation)."""
    out = torch.empty(len(x), sae.n_latents, dtype=sae.W_enc.dtype, device=x.device)
    for i in range(0, len(x), batch_size):
        out[i:i + batch_size] = sae.encode(x[i:i + batch_size])
    return out
