"""Parallel and device code: torch.distributed helpers, FSDP sharding, device switches, GPU memory estimates."""
