"""Benchmark 5: one cycle's evaluation, eval.backend torch vs sklearn, side by side on the same codes.

    PYTHONPATH=. python bench/eval_backends.py [--shape default|large|all] [--repeats N] [--threads N]
                                               [--device cpu|cuda]

Shapes:
- default: the default chain's cycle 0 as the CLI runs it (digits, MLP [256, 128], layer -1 so
  d = 128, 10 fine-tuning epochs, a TopK SAE of k = 16 trained for sae.steps), at expansion 4
  (512 latents, the default) and 2 (256 latents); ~1,078 train / 359 val / 360 test examples.
- large: 12,000 train / 4,000 val / 4,000 test examples of d = 768 activations with 3 planted classes,
  a TopK SAE of 6,144 latents (expansion 8), k = 32, trained for 200 steps.

Per backend: wall seconds of `evaluate()` over --repeats runs, backends alternating after one warm-up
call: the least disturbed run (min, with its CPU seconds and its split between the probes, all 4 fits
and scores, and the cluster metrics, both splits) and the median, since the 2-core machine is shared;
then both backends' values of every metric they compute differently, and k-means' ARI over 3 seeds
per backend (its own seed-to-seed spread, the scale on which the two k-means can differ).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import saeception.eval.evaluate as E
import saeception.eval.metrics as M
from saeception.config import Config, EvalConfig, SAEConfig, build_config
from saeception.method.sae import encode_all, train_sae

BACKENDS = ("torch", "sklearn")
# Metrics the backends compute differently (the rest are the same torch code on both).
TOLERANT = ("probe_accuracy", *(f"k_sparse_probe_accuracy_k{k}" for k in E.SPARSE_PROBE_KS), "ari", "silhouette",
            "davies_bouldin", "calinski_harabasz")


def default_chain_inputs(expansion: int, seed: int = 0):
    """Cycle 0 of the default chain: fine-tuned MLP activations and an SAE trained on them."""
    from saeception.method.chain import _extract_all, resolve_device, setup
    from saeception.method.train import finetune

    cfg: Config = build_config({"sae.expansion_factor": expansion, "seed": seed})
    device = resolve_device("cpu")
    s = setup(cfg)
    finetune(s.tap, s.task, cfg.finetune, device, seed)
    ex = _extract_all(s.tap, s.task, cfg, device)
    acts = {sp: ex[f"{sp}.acts"] for sp in ("train", "val", "test")}
    logits = {sp: ex[f"{sp}.logits"] for sp in ("train", "val", "test")}
    labels = {sp: s.task.split(sp).labels for sp in ("train", "val", "test")}
    sae = train_sae(acts["train"], cfg.sae, seed=seed)
    return sae, acts, logits, labels, s.task.n_classes


def large_inputs(seed: int = 0, n_train: int = 12_000, n_eval: int = 4_000, d: int = 768, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    acts, logits, labels = {}, {}, {}
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        y = torch.randint(0, classes, (n,), generator=g)
        acts[split] = 0.5 * centres[y] + torch.randn(n, d, generator=g) @ mix
        logits[split] = torch.randn(n, classes, generator=g) + 2 * torch.nn.functional.one_hot(y, classes)
        labels[split] = y
    sae = train_sae(acts["train"], SAEConfig(kind="topk", expansion_factor=8, k=32, steps=200), seed=seed)
    return sae, acts, logits, labels, classes


def timed_evaluate(backend: str, inputs, device: str) -> tuple[dict, float, float, float, float]:
    """evaluate() with `backend`; returns (metrics, wall s, probe s, cluster s, process CPU s)."""
    sae, acts, logits, labels, n_classes = inputs
    sae = sae.to(device)
    acts = {k: v.to(device) for k, v in acts.items()}
    spent = {"probe": 0.0, "cluster": 0.0}

    def clock(name, fn):
        def wrapped(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync()
            spent[name] += time.perf_counter() - t0
            return out
        return wrapped

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fit, score, cluster = E.fit_probe, E.accuracy, M.cluster_metrics
    E.fit_probe, E.accuracy, M.cluster_metrics = clock("probe", fit), clock("probe", score), clock("cluster", cluster)
    try:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = E.evaluate(sae, acts, logits, labels, n_classes, EvalConfig(backend=backend), seed=0)
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        E.fit_probe, E.accuracy, M.cluster_metrics = fit, score, cluster
    return out, wall, spent["probe"], spent["cluster"], cpu


def compare(name: str, inputs, repeats: int, device: str) -> None:
    timing = {b: [] for b in BACKENDS}
    results = {}
    timed_evaluate("torch", inputs, device)  # warm-up: first-call costs of torch ops and L-BFGS
    for _ in range(repeats):
        for b in BACKENDS:
            out, *times = timed_evaluate(b, inputs, device)
            timing[b].append(times)
            results[b] = out
    z = inputs[0].n_latents
    print(f"\n{name}: {len(inputs[1]['train'])} train x {z} latents, {inputs[4]} classes, "
          f"{len(inputs[1]['test'])} test / {len(inputs[1]['val'])} val; median of {repeats}")
    for b in BACKENDS:
        best = min(timing[b])  # the run least disturbed by other processes
        wall, probe, cluster, cpu = best
        print(f"  {b:7s}: evaluate min {wall:6.2f} s wall ({cpu:6.2f} s CPU; probes {probe:6.2f} s, cluster metrics "
              f"{cluster:6.2f} s, rest {wall - probe - cluster:5.2f} s), median {statistics.median(t[0] for t in timing[b]):6.2f} s;"
              f" walls: {', '.join(f'{t[0]:.2f}' for t in timing[b])}")
    for stat, f in (("min", min), ("median", statistics.median)):
        t, s = f(t[0] for t in timing["torch"]), f(t[0] for t in timing["sklearn"])
        print(f"  sklearn / torch wall ({stat}): {s / t:.2f}x  -> faster: {'torch' if t < s else 'sklearn'}")
    diffs = {k: abs(results["torch"][k] - results["sklearn"][k]) for k in results["torch"]
             if k.removeprefix("val_") in TOLERANT}
    for k, v in diffs.items():
        print(f"    {k:36s} torch {results['torch'][k]:10.4f}  sklearn {results['sklearn'][k]:10.4f}  |diff| {v:.4f}")
    z_test, y_test = encode_all(inputs[0].to(device), inputs[1]["test"].to(device)), inputs[3]["test"]
    spread = {b: [M.cluster_metrics(z_test, y_test.to(device), inputs[4], 10, seed, b)["ari"] for seed in range(3)]
              for b in BACKENDS}
    print("  k-means ARI on test, seeds 0-2 (how much k-means itself moves): "
          + "; ".join(f"{b} {', '.join(f'{a:.3f}' for a in v)}" for b, v in spread.items()))
    same = [k for k in results["torch"] if k not in diffs and abs(results["torch"][k] - results["sklearn"][k]) > 1e-9]
    print(f"  other metrics identical between backends: {not same} {same or ''}; load average now {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("default", "large", "all"), default="all", help="which inputs (default: all)")
    ap.add_argument("--repeats", type=int, default=5, help="timed evaluations per backend (default 5)")
    ap.add_argument("--device", default="cpu", help="where the codes live for the torch backend (default cpu)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for torch and for scikit-learn's BLAS/OpenMP pools (default 0: as installed); "
                         "1 compares the backends' work with no thread waiting on a core another process holds")
    args = ap.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, device {args.device}")
    if args.shape in ("default", "all"):
        for expansion in (4, 2):
            compare(f"default chain, expansion {expansion}", default_chain_inputs(expansion), args.repeats, args.device)
    if args.shape in ("large", "all"):
        compare("large", large_inputs(), args.repeats, args.device)


if __name__ == "__main__":
    main()
