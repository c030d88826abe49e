"""FSDP2 for the chain's model (train.strategy: fsdp), and the two state-dict operations that work on a
sharded and a plain model alike.

`shard` applies PyTorch's `fully_shard` once, when the chain starts: one unit per transformer block (found
as the tap finds them, `models.block_list`) or MLP hidden layer, and the root over the rest (embeddings,
final norm, head). Every stage then runs the sharded model as it runs a plain one. FSDP shards weights,
not activations: the tapped block's output is the full activation of the rank's own examples, so
extraction gathers rows by example id exactly as under DDP.

Checkpoints stay one safetensors file of full tensors, gathered to rank 0 (`full_state`) and broadcast
from it on load (`load_state`): a cycle written by N workers loads on any number, and the export and every
tool that reads the unsharded format read it as is. The cost is that rank 0 holds one full copy of the
weights in host memory while it writes (docs/large-models.md).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from saeception.config import ConfigError, ModelConfig, TrainConfig
from saeception.models.classifiers import MLP, TapModel, block_list
from saeception.parallel.distributed import broadcast_, is_distributed, rank, world_size
from saeception.store.artifacts import load_state_strict

log = logging.getLogger(__name__)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule  # lazy: FSDP2 (torch >= 2.6) only under train.strategy fsdp

    return isinstance(module, FSDPModule)


def units(model: nn.Module) -> list[nn.Module]:
    """The modules that become one FSDP unit each (the root is the model itself)."""
    return list(model.hidden) if isinstance(model, MLP) else list(block_list(model))


def loads_on_rank0(train: TrainConfig, model: ModelConfig) -> bool:
    """Whether only rank 0 loads the weights (fsdp over a transformer under torch.distributed): the other
    ranks build the architecture on the meta device and receive their shards from rank 0 (`shard`), so a
    node holds one copy of the weights in host memory, not one per worker."""
    return train.strategy == "fsdp" and model.name != "mlp" and is_distributed()


def shard(tap: TapModel, cfg: TrainConfig, device: torch.device) -> None:
    """Shards `tap.model` in place over every rank (train.strategy: fsdp); nothing for ddp. The model may
    still be on the CPU: each rank's shard moves to `device` (or stays in host memory with cpu_offload).
    A transformer's weights come from rank 0 (`loads_on_rank0`: the other ranks may hold a meta-device
    model): every rank gets its shard, and every buffer, from rank 0."""
    if cfg.strategy != "fsdp":
        return
    if not is_distributed():
        raise ConfigError("train.strategy: fsdp needs a torch.distributed process group (a sweep's TorchTrainer "
                          "workers, `python -m saeception.run`, or torchrun); use ddp in a plain process")
    from torch.distributed.device_mesh import (
        init_device_mesh,  # lazy: FSDP2 (torch >= 2.6) only under train.strategy fsdp
    )
    from torch.distributed.fsdp import (  # lazy: FSDP2 (torch >= 2.6) only under train.strategy fsdp
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        fully_shard,
    )

    kwargs: dict = {"mesh": init_device_mesh(device.type, (world_size(),))}
    if device.type == "cuda":
        # bf16 compute for fp32 weights (bf16/fp16 weights compute in their own dtype); gradients are
        # reduced in fp32, where summing N ranks' bf16 gradients would lose precision.
        stored = next(tap.model.parameters()).dtype
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if stored == torch.float32 else None,
                                                   reduce_dtype=torch.float32)
    if cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    from_rank0 = tap.is_text  # loads_on_rank0's case: fsdp (here) over a transformer under torch.distributed
    weights = tap.model.state_dict() if from_rank0 and rank() == 0 else {}
    blocks = units(tap.model)
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(tap.model, **kwargs)
    if from_rank0:
        # Meta tensors get storage (the sharded state where cpu_offload keeps it, buffers on the device),
        # then rank 0's values: the weights by load_state's broadcast, every buffer (non-persistent ones
        # such as rotary frequencies are in no state dict) by its own broadcast.
        if any(_local(p).is_meta for p in tap.model.parameters()):
            tap.model.to_empty(device="cpu" if cfg.cpu_offload else device)
            if cfg.cpu_offload:  # FSDP keeps buffers on the device; only the sharded state is offloaded
                for module in tap.model.modules():
                    for name, buf in module.named_buffers(recurse=False):
                        setattr(module, name, buf.to(device))
        load_state(tap.model, weights)
        for buf in tap.model.buffers():
            broadcast_(buf)
        del weights
    log.info("fsdp: %d units + root over %d ranks (%s)", len(blocks), world_size(),
             ", ".join(k for k in kwargs if k != "mesh") or "fp32, on device")


def _local(t: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor  # lazy: FSDP2 (torch >= 2.6) only under train.strategy fsdp

    return t.to_local() if isinstance(t, DTensor) else t


def reshard(model: nn.Module) -> None:
    """Frees the full weights FSDP keeps after a forward without backward (the root unit stays gathered
    after an inference forward). A stage that changes which weights train (freezing) or leaves the model
    for a while (extraction) calls it: FSDP2 builds its gradient bookkeeping from the gathered copy, so a
    copy from before a freeze would train with the freeze ignored on that unit (the head stopped learning;
    tests/unit/parallel/test_fsdp.py pins it)."""
    if not is_sharded(model):
        return
    for module in model.modules():
        if is_sharded(module):
            module.reshard()


def full_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's full state dict. Plain model: its own state_dict (every rank). Sharded: every rank
    must call it (it all-gathers); rank 0 gets full tensors in host memory, the others an empty dict."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import (  # lazy: FSDP2 (torch >= 2.6) only under train.strategy fsdp
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_state(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Loads a full state dict (as `full_state` or `artifacts.save_module` wrote it); nothing may be missing
    and nothing extra. Sharded: every rank must call it; rank 0's tensors are broadcast (the others' are
    not read, so they may pass an empty dict)."""
    if not is_sharded(model):
        load_state_strict(model, tensors)
        return
    from torch.distributed.checkpoint.state_dict import (  # lazy: FSDP2 (torch >= 2.6) only under train.strategy fsdp
        StateDictOptions,
        set_model_state_dict,
    )

    set_model_state_dict(model, dict(tensors),
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True))
