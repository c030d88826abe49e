"""A planted dictionary: activations that are sparse positive sums of known unit atoms, for SAE tests and
bench/sae_schedules.py (how well an SAE recovers the atoms)."""

from __future__ import annotations

import torch


def planted(n: int = 8192, d: int = 32, n_atoms: int = 128, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) activations, each the sum of k of the n_atoms unit atoms with coefficients in [0.5, 2.5]; the atoms."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms = atoms / atoms.norm(dim=-1, keepdim=True)
    index = torch.stack([torch.randperm(n_atoms, generator=g)[:k] for _ in range(n)])
    coef = torch.rand(n, k, generator=g) * 2 + 0.5
    return (coef[..., None] * atoms[index]).sum(1), atoms


def mean_max_cosine(atoms: torch.Tensor, sae) -> float:
    """Recovery of the planted atoms: each atom's best cosine with a decoder row, averaged (1 = all found)."""
    return float((atoms @ sae.decoder_directions().T).max(1).values.mean())
