"""Sparse autoencoders: L1 ReLU, TopK (with the AuxK dead-latent loss) and BatchTopK.

Inputs are divided by one scalar (`input_scale`, set so that E||x||^2 = d on the training set) so
that `l1_coefficient` and learning rates mean the same thing on every layer; `decode` undoes it, so
codes decode back into the layer's own units. Decoder rows are kept at unit norm.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .accel import autocast
from .artifacts import load_weights, save_weights
from .config import SAEConfig
from .errors import DivergedError

log = logging.getLogger(__name__)


class SAE(nn.Module):
    def __init__(self, d: int, n_latents: int, kind: str = "topk", k: int = 16):
        super().__init__()
        self.d, self.n_latents, self.kind, self.k = d, n_latents, kind, k
        self.W_enc = nn.Parameter(torch.empty(d, n_latents))
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.register_buffer("input_scale", torch.ones(()))
        # BatchTopK's inference threshold: a running mean of the smallest kept activation.
        self.register_buffer("threshold", torch.zeros(()))

    def pre_activations(self, x: Tensor) -> Tensor:
        x = x / self.input_scale
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def activate(self, pre: Tensor, batch_topk: bool = False) -> Tensor:
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
        return (z @ self.W_dec + self.b_dec) * self.input_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

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
        sae.load_state_dict(tensors)
        return sae.eval().requires_grad_(False)


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


def _distributed() -> tuple[bool, int, int]:
    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


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


def train_sae(activations: Tensor, cfg: SAEConfig | None = None, seed: int = 0,
              check_every: int = 50) -> SAE:
    """Trains an SAE on (N, d) activations. Under torch.distributed every rank passes the same full
    tensor; each rank steps on its share of every batch and gradients are averaged, so all ranks end
    with the same SAE.

    The step never waits on the host: batch indices are drawn on the device, and every `check_every`
    steps (and at the end) one sync checks the running loss sum for NaN/inf (a divergence fails the
    stage, naming the steps) and refreshes whether any latent is dead (AuxK runs only while one is).
    On CUDA the matmuls run under bf16 autocast (parameters and fused-Adam state stay fp32), and for
    a TopK SAE in one process the whole step (forward, backward, Adam, decoder renormalisation) is
    captured once as a CUDA graph and replayed (`sae.cuda_graphs`), so the host's launch overhead
    leaves the loop; other kinds and DDP run the same step eagerly."""
    cfg = cfg or SAEConfig()
    x_all = activations.detach().float()
    n, d = x_all.shape
    cfg.check_width(d)
    device = x_all.device
    is_dist, rank, world = _distributed()
    gen = torch.Generator(device="cpu").manual_seed(seed)

    sae = SAE(d, cfg.n_latents(d), cfg.kind, cfg.k).to(device)
    with torch.no_grad():
        sample = x_all[torch.randperm(n, generator=gen)[:4096].to(device)]
        sae.input_scale.fill_(float(sample.pow(2).sum(-1).mean().div(d).sqrt().clamp_min(1e-8)))
        sample = sample / sae.input_scale
        sae.W_dec.copy_(torch.randn(sae.n_latents, d, generator=gen).to(device))
        sae.normalize_decoder()
        sae.W_enc.copy_(sae.W_dec.t())
        sae.b_dec.copy_(geometric_median(sample))
        sae.threshold.zero_()

    cuda = device.type == "cuda"
    # Captured only where it was checked on a GPU (graph == eager, BENCHMARKS.md): TopK in one process.
    graphs = cuda and cfg.cuda_graphs and not is_dist and cfg.kind == "topk"
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), **({"fused": True, "capturable": graphs} if cuda else {}))
    since_fired = torch.zeros(sae.n_latents, device=device)
    batch = min(cfg.batch_size, n)
    index_gen = torch.Generator(device=device).manual_seed(seed)
    index = torch.zeros(batch, dtype=torch.long, device=device)  # static: a captured step reads it
    loss_sum = torch.zeros((), device=device)

    def step_fn(aux_on: bool, first: bool) -> tuple[Tensor, Tensor]:
        x = x_all[index[rank::world]] / sae.input_scale
        fired = torch.zeros(sae.n_latents, device=device)
        # Matmuls in bf16 on CUDA (no weight-cast cache: it must not outlive a captured step).
        with autocast(device, cache_enabled=False):
            pre = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
            if cfg.kind == "topk":
                values, top = topk_rows(pre, cfg.k)
                x_hat = decode_topk(sae, values, top).float() + sae.b_dec
                fired.scatter_add_(0, top.flatten(), (values.detach() > 0).flatten().float())
            else:
                z = sae.activate(pre.float(), batch_topk=True)
                x_hat = (z @ sae.W_dec).float() + sae.b_dec
                fired += (z.detach() > 0).any(0).float()
            mse = (x_hat - x).pow(2).sum(-1).mean() / d
            if cfg.kind == "l1":
                loss = mse + cfg.l1_coefficient * z.float().sum(-1).mean()
            else:
                loss = mse
                if aux_on:
                    dead = since_fired >= cfg.dead_after
                    loss = loss + cfg.auxk_coefficient * auxk_loss(sae, pre, (x - x_hat).detach(), dead, cfg.auxk_k)
        loss_sum.add_(loss.detach())
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if is_dist:
            for p in sae.parameters():
                dist.all_reduce(p.grad)
                p.grad.div_(world)
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
        with torch.no_grad():
            if cfg.kind == "batchtopk":
                kept = torch.where(z > 0, z, torch.full_like(z, float("inf"))).amin()
                smallest = torch.where(torch.isfinite(kept), kept, sae.threshold)
                if is_dist:
                    dist.all_reduce(smallest)
                    smallest = smallest / world
                sae.threshold.lerp_(smallest, 1.0 if first else 0.01)
            if is_dist:
                dist.all_reduce(fired)
            since_fired.copy_(torch.where(fired > 0, torch.zeros_like(since_fired), since_fired + batch))
        return loss, mse

    captured: dict[bool, tuple[torch.cuda.CUDAGraph, tuple[Tensor, Tensor]]] = {}
    side = torch.cuda.Stream() if graphs else None
    aux_on, checked = False, 0
    for step in range(cfg.steps):
        index.copy_(torch.randint(0, n, (batch,), generator=index_gen, device=device))
        if not graphs:
            loss, mse = step_fn(aux_on, step == 0)
        elif step < 3:  # warm-up steps (real steps) on a side stream, as graph capture requires
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss, mse = step_fn(aux_on, step == 0)
            torch.cuda.current_stream().wait_stream(side)
        else:
            if aux_on not in captured:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outputs = step_fn(aux_on, False)
                captured[aux_on] = (graph, outputs)
            graph, (loss, mse) = captured[aux_on]
            graph.replay()
        if step + 1 == cfg.steps or (step + 1) % check_every == 0:
            if not torch.isfinite(loss_sum):
                raise DivergedError(f"SAE loss became {loss_sum.item()} between steps {checked} and {step} (sae.lr {cfg.lr})")
            checked = step + 1
            aux_on = cfg.kind != "l1" and cfg.auxk_coefficient > 0 and bool((since_fired >= cfg.dead_after).any())
        if step % 500 == 0 and log.isEnabledFor(logging.DEBUG):
            log.debug("sae step %d loss %.4f mse %.4f", step, loss.item(), mse.item())
    sae.eval()
    return sae.requires_grad_(False)


@torch.no_grad()
def encode_all(sae: SAE, x: Tensor, batch_size: int = 8192) -> Tensor:
    return torch.cat([sae.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else x.new_zeros(0, sae.n_latents)
