"""Benchmark 2: the metric set, vectorised over latents, vs a straightforward per-latent loop.

    python bench/metrics_vs_loop.py

Shape: 6144 latents x 872 examples (SST-2 validation size), 2 classes, TopK-like sparse codes. The
loop is the earlier implementation's approach: per latent, class means with boolean masks and
scikit-learn's mutual_info_score (nats) / entropy. Both must agree; the ratio is measured in one run.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

from saeception.eval.metrics import monosemanticity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import per_latent_reference as per_latent_loop  # noqa: E402


def codes_and_labels(n: int = 872, latents: int = 6144, k: int = 64, classes: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    pre = torch.randn(n, latents, generator=g) + 0.5 * torch.randn(classes, latents, generator=g)[labels]
    values, index = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, index, values.relu()), labels


def main() -> None:
    codes, labels = codes_and_labels()
    monosemanticity(codes, labels)  # warm-up
    t0 = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        fast = monosemanticity(codes, labels)
    t_fast = (time.perf_counter() - t0) / repeats
    t0 = time.perf_counter()
    slow = per_latent_loop(codes, labels)
    t_slow = time.perf_counter() - t0
    assert abs(fast["csi"] - slow["csi"]) < 1e-6 and abs(fast["u"] - slow["u"]) < 1e-6, (fast, slow)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    print(f"shape: {codes.shape[1]} latents x {codes.shape[0]} examples")
    print(f"vectorised monosemanticity: {t_fast * 1000:.1f} ms   per-latent loop: {t_slow:.2f} s")
    print(f"speed-up: {t_slow / t_fast:.0f}x  (results agree to 1e-6: csi {fast['csi']:.6f}, u {fast['u']:.6f})")


if __name__ == "__main__":
    main()
