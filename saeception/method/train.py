"""Training and extraction stages: fine-tuning, auxiliary retraining, activation extraction.

All three work unchanged under torch.distributed: the model is wrapped in DDP (or already sharded by
FSDP, saeception.parallel.sharding), each rank reads its shard through a DistributedSampler, and extraction
gathers every rank's rows back into one tensor ordered by example id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from saeception.config import AuxConfig, FinetuneConfig
from saeception.data.tasks import TaskData, loader
from saeception.method.errors import DivergedError
from saeception.models.classifiers import TapModel
from saeception.parallel.accel import autocast
from saeception.parallel.distributed import all_gather_rows, finite_everywhere, is_distributed
from saeception.parallel.sharding import is_sharded, reshard

log = logging.getLogger(__name__)


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _wrap(tap: TapModel, device: torch.device) -> nn.Module:
    """DDP around the tap under torch.distributed; a model FSDP already shards (train.strategy: fsdp) syncs
    its own gradients (reduce-scatter, averaged over ranks as DDP's all-reduce is)."""
    if not is_distributed() or is_sharded(tap.model):
        return tap
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(tap, device_ids=ids)


def aux_loss(h: Tensor, targets: Tensor, center: Tensor | None = None) -> Tensor:
    """Mean of 1 - cos(h - center, target - center) over the batch (center None: 0); differentiable in h."""
    if center is not None:
        h, targets = h - center, targets - center
    return (1 - F.cosine_similarity(h, targets, dim=-1)).mean()


_CHECK_EVERY = 25


def _check_finite(loss_sum: Tensor, checked: int, step: int, epoch: int, lr: float) -> int:
    """Every rank checks together (finite_everywhere): a divergence on one rank stops them all here."""
    if not finite_everywhere(loss_sum):
        value = loss_sum.item() if not torch.isfinite(loss_sum) else "non-finite (on another rank)"
        raise DivergedError(f"loss became {value} between steps {checked} and {step} (epoch {epoch}, lr {lr})")
    return step


def _val_accuracy(tap: TapModel, task: TaskData, batch_size: int, device: torch.device) -> float:
    """Accuracy on the val split (every rank gets the same number: extract gathers every row)."""
    _, logits = extract(tap, task, "val", batch_size, device)
    return float((logits.argmax(1) == task.val.labels).double().mean())


def _fit(tap: TapModel, task: TaskData, epochs: int, lr: float, batch_size: int, weight_decay: float,
         device: torch.device, seed: int, targets: Tensor | None = None, weight: float = 0.0,
         center: Tensor | None = None, select_epoch: str = "last") -> None:
    """Trains for `epochs`; select_epoch `best_val` keeps the weights of the epoch with the best val accuracy
    (the first of equals), checked after each epoch; `last` those after the last epoch."""
    reshard(tap.model)  # FSDP: training starts from the sharded weights, as they are frozen now
    params = [p for p in tap.parameters() if p.requires_grad]
    if not params:
        return
    model = _wrap(tap, device)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    # NaN/inf is checked on a running sum every `_CHECK_EVERY` steps and at each epoch's end, not per
    # step, so a CUDA step never waits on the host; a divergence still fails the stage.
    loss_sum, checked, step = torch.zeros((), device=device), 0, 0
    best_acc, best_state = -1.0, None
    for epoch in range(epochs):
        for batch in loader(task, "train", batch_size, shuffle=True, seed=seed, epoch=epoch, distributed=is_distributed(),
                            pin_memory=device.type == "cuda"):
            batch = _to(batch, device)
            opt.zero_grad(set_to_none=True)  # before the forward: the last step's gradients are not held through it
            with autocast(device):
                logits, h = model(batch)
            loss = F.cross_entropy(logits.float(), batch["labels"])
            if targets is not None:
                # Targets are looked up by example id: row i of `targets` belongs to example i.
                loss = loss + weight * aux_loss(h.float(), targets[batch["ids"]], center)
            loss_sum += loss.detach()
            step += 1
            if step % _CHECK_EVERY == 0:
                checked = _check_finite(loss_sum, checked, step, epoch, lr)
            loss.backward()
            opt.step()
        checked = _check_finite(loss_sum, checked, step, epoch, lr)
        if select_epoch == "best_val":
            acc = _val_accuracy(tap, task, batch_size, device)
            if acc > best_acc:  # each rank keeps its own part of the weights (its FSDP shards)
                best_acc, best_state = acc, {k: v.detach().clone() for k, v in tap.model.state_dict().items()}
            model.train()
    if best_state is not None:
        tap.model.load_state_dict(best_state)
        log.info("kept the weights of the epoch with the best val accuracy (%.4f)", best_acc)
    opt.zero_grad(set_to_none=True)  # no gradient outlives training (the SAE and evaluation stages follow)
    tap.eval()


def finetune(tap: TapModel, task: TaskData, cfg: FinetuneConfig, device: torch.device, seed: int) -> None:
    """Cycle-0 fine-tuning on the task with cross-entropy (all parameters)."""
    _fit(tap, task, cfg.epochs, cfg.lr, cfg.batch_size, cfg.weight_decay, device, seed, select_epoch=cfg.select_epoch)


def retrain(tap: TapModel, task: TaskData, targets: Tensor, cfg: AuxConfig, device: torch.device, seed: int,
            center: Tensor | None = None, cycle: int = 1) -> None:
    """Retrains with  CE + λ * (1 - cos(h - μ, target - μ))  on the train split, λ = cfg.weight_at(cycle);
    `targets` is (N_train, d) indexed by example id; μ = `center` (aux.center) or 0. Freezing is the
    caller's choice (TapModel.freeze_before_target)."""
    mu = center.to(device) if center is not None else None
    _fit(tap, task, cfg.epochs, cfg.lr, cfg.batch_size, 0.0, device, seed, targets.to(device), cfg.weight_at(cycle), mu,
         cfg.select_epoch)


@torch.no_grad()
def extract(tap: TapModel, task: TaskData, split: str, batch_size: int, device: torch.device,
            tokens: bool = False, edit: Callable[[dict[str, Tensor]], Callable[[Tensor], Tensor]] | None = None
            ) -> tuple[Tensor, Tensor]:
    """Pooled target-layer activations (N, d) and logits (N, C) for a split, row i = example id i.
    With tokens=True the first tensor instead holds every real token's activation once, ordered by
    (example id, position) whatever the world size (DDP shards repeat a few examples: dropped here).
    edit(batch): the replacement of the target layer's output in that batch's forward (TapModel.editing),
    e.g. the SAE spliced in; the activations returned are then the replaced ones."""
    tap.eval()
    ids, hs, logits_all, positions = [], [], [], []
    for batch in loader(task, split, batch_size, shuffle=False, distributed=is_distributed(), pin_memory=device.type == "cuda"):
        batch = _to(batch, device)
        with autocast(device), tap.editing(edit(batch) if edit else None):
            if tokens:
                hs.append(tap.tokens(batch).float())
            else:
                logits, h = tap(batch)
                hs.append(h.float())
                logits_all.append(logits.float())
        if tokens and "attention_mask" in batch:
            mask = batch["attention_mask"].bool()
            ids.append(batch["ids"].repeat_interleave(mask.sum(1)))
            positions.append((mask.long().cumsum(1) - 1)[mask])
        else:
            ids.append(batch["ids"])
            positions.append(torch.zeros_like(batch["ids"]))
    reshard(tap.model)
    order = all_gather_rows(torch.cat(ids)).cpu()
    h_all = all_gather_rows(torch.cat(hs)).cpu()
    if tokens:
        pos = all_gather_rows(torch.cat(positions)).cpu()
        key = order * (int(pos.max()) + 1 if len(pos) else 1) + pos
        key, index = key.sort(stable=True)
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        return h_all[index[first]], torch.empty(0)
    n = len(task.split(split))
    l_all = all_gather_rows(torch.cat(logits_all)).cpu()
    # DistributedSampler repeats a few examples to even out shards; writing by id makes that harmless.
    out_h = torch.empty(n, h_all.shape[1])
    out_l = torch.empty(n, l_all.shape[1])
    out_h[order], out_l[order] = h_all, l_all
    return out_h, out_l
