"""The SAE-seed noise floor and the rare-latent effect, on the offline default chain.

    python bench/noise_floor.py [--chain-seeds 3] [--sae-seeds 5] [--set KEY=VALUE ...] [--config PATH]

For each chain seed: run the default space's base chain (digits + MLP, cycles 0..2, aux.center true), then
train `--sae-seeds` SAEs on its last cycle's activations (the same model; only the SAE stage's seed
differs) and evaluate each as the cycle is evaluated. Prints (1) per metric the SAE-seed sd (pooled over
chain seeds: the root of the mean variance), the number the confirmation's equivalence margins come from
(DEFAULT_MARGINS ~ 2 x this sd); (2) test-split sae_u / sae_csi over latents firing on >= m examples, for
m in 1, 2, 5, 10, 20, with the count of such latents and the SAE-seed sd at each m (what
eval.min_firing_rate's default comes from: m of the test split's n examples is the rate m / n).
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch

from saeception.config import build_config, flatten, parse_override, read_yaml
from saeception.eval import metrics as M
from saeception.method.chain import ChainState, evaluate_cycle, reopen, resampled_sae, run_chain
from saeception.method.sae import encode_all
from saeception.sweep.space import load_space, resolve_space

METRICS = ("task_accuracy", "sae_u", "sae_csi", "probe_accuracy", "k_sparse_probe_accuracy_k1", "explained_variance")
MIN_FIRINGS = (1, 2, 5, 10, 20)


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain-seeds", type=int, default=3)
    ap.add_argument("--sae-seeds", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--config", help="a run config (e.g. configs/bbc_minilm.yaml) instead of the default space's fixed values")
    ap.add_argument("--per-arm", type=int, default=3, help="SAEs averaged per arm (1 + confirm.sae_seeds) for the 'after' column")
    args = ap.parse_args()
    fixed = flatten(read_yaml(args.config)) if args.config else load_space(resolve_space("default")).fixed
    variances = {m: [] for m in METRICS}
    by_m = {mf: {"u": [], "csi": [], "n": [], "u_var": [], "csi_var": []} for mf in MIN_FIRINGS}
    for chain_seed in range(1, args.chain_seeds + 1):
        cfg = build_config({**fixed, **dict(parse_override(o) for o in args.overrides), "seed": chain_seed})
        kept: list[ChainState] = []
        with tempfile.TemporaryDirectory() as d:
            run_chain(cfg, d, on_state=lambda c, st, kept=kept: kept.append(st.copy()))
        state = kept[-1]
        r, extracted = reopen(cfg, state, torch.device("cpu"))
        cycle = state.history[-1]["cycle"]
        rows, mono = [], {mf: [] for mf in MIN_FIRINGS}
        for j in range(args.sae_seeds):
            sae = resampled_sae(r, cycle, extracted, j)
            rows.append(evaluate_cycle(r, cycle, sae, extracted))
            codes = encode_all(sae, extracted["test.acts"].float())
            for mf in MIN_FIRINGS:
                labels = r.task.test.labels
                mono[mf].append(M.monosemanticity(codes, labels, mf / len(labels)))  # min_firings_for: exactly mf
        for m in METRICS:
            variances[m].append(_sd([x[m] for x in rows]) ** 2)
        for mf in MIN_FIRINGS:
            for k in ("u", "csi", "n"):
                by_m[mf][k] += [x[k] for x in mono[mf]]
            by_m[mf]["u_var"].append(_sd([x["u"] for x in mono[mf]]) ** 2)
            by_m[mf]["csi_var"].append(_sd([x["csi"] for x in mono[mf]]) ** 2)
        print(f"chain seed {chain_seed}: " + ", ".join(f"{m} {sum(x[m] for x in rows) / len(rows):.4f}" for m in METRICS),
              flush=True)
    print(f"\nSAE-seed sd at the last cycle (test split; {args.sae_seeds} SAEs x {args.chain_seeds} chain seeds, pooled):\n")
    k = args.per_arm
    print(f"| metric | SAE-seed sd (one SAE per arm) | 2 x sd | sd of an arm's mean over {k} SAEs (sd / sqrt({k})) |\n"
          "|---|---|---|---|")
    for m in METRICS:
        sd = math.sqrt(sum(variances[m]) / len(variances[m]))
        print(f"| {m} | {sd:.4f} | {2 * sd:.4f} | {sd / math.sqrt(k):.4f} |")
    print("\nper-latent means over latents firing on >= m test examples (mean over every SAE):\n")
    print("| m | latents counted | sae_u | SAE-seed sd of sae_u | sae_csi | SAE-seed sd of sae_csi |\n|---|---|---|---|---|---|")
    for mf in MIN_FIRINGS:
        b = by_m[mf]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"| {mf} | {mean(b['n']):.1f} | {mean(b['u']):.4f} | {math.sqrt(mean(b['u_var'])):.4f} | "
              f"{mean(b['csi']):.4f} | {math.sqrt(mean(b['csi_var'])):.4f} |")


if __name__ == "__main__":
    main()
