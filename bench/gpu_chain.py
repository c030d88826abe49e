"""Benchmark 6 (for a CUDA GPU; --small runs anywhere): where one whole chain's time goes, per stage.

    PYTHONPATH=. python bench/gpu_chain.py [--lengths sst2|long|both] [--small] [--no-profile]
                                           [--eval-on device|chain|both] [--eval-backend auto|torch|sklearn]

One chain at GPT-2-small shape (12 layers, d = 768, 12 heads, vocabulary 50,257, random init from
GPT2Config) with a BPE tokenizer trained in-process (tests/support/helpers.py::train_tokenizer), on 20,000
generated 3-class sentences written to a CSV (train 12,000 / val 4,000 / test 4,000, carved by the
data loader), config: finetune.epochs 1, aux.epochs 1, batch 64, sae.expansion_factor 8 (6,144
latents), sae.k 32, chain.cycles 1, everything else default (model.layer -1, sae.steps 1500, ...).

Token lengths: "sst2" draws each sentence's target length in tokens from a gamma distribution with
mean 25 (shape 4: right-skewed, as sentence lengths are; SST-2 averages ~25 GPT-2 tokens), clipped to
[3, 66]; "long" from a gamma with mean 64 clipped to [8, 128] (data.max_length 128). Words are added
until the target is reached, so a sentence can overshoot it by one word; the printed statistics are of
the real tokenized lengths. Both runs by default.

Stages are timed by wrapping the functions the chain calls, in saeception.method.chain's namespace (the
chain's code is not changed): finetune (cycle 0) / retrain (cycle 1), extract (every split, plus the
train split before retraining), train_sae, evaluate. Each wrapper synchronises the device before and
after, and (on CUDA, unless --no-profile) runs torch.profiler with CUDA activity over the call: GPU
busy = the union of kernel and memcpy/memset intervals. "other" = the cycle's wall minus its stages
(sharpening, artifact writes). The device name and the sentence length statistics are printed too.

evaluate: the chain hands it CPU tensors (extract returns CPU activations; the SAE is moved to the CPU
after training), so as called it runs on the CPU. --eval-on device (default) moves its inputs and a
copy of the SAE to the chain's device first (transfer included in its time), which is what a chain
keeping activations on the device would do; chain: times it where the chain calls it; both: also
runs the previous path first (eval.backend sklearn on the CPU tensors, as the chain called it before
the torch backend), prints its time and the share of the cycle it would take, and hands the device
result on.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import saeception.method.chain as chain
from saeception.config import build_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import FILLER, WORDS, train_tokenizer  # noqa: E402

STAGES = ("finetune", "retrain", "extract", "train_sae", "evaluate")
LENGTHS = {"sst2": (25.0, 3, 66), "long": (64.0, 8, 128)}  # (mean, min, max) tokens


def make_sentences(path: Path, tok, n: int, lengths: str, seed: int = 0) -> np.ndarray:
    """Writes n labelled sentences (label i % 3) to a CSV; returns their token lengths."""
    mean, lo, hi = LENGTHS[lengths]
    rng = np.random.default_rng(seed)
    targets = np.clip(np.rint(rng.gamma(4.0, mean / 4.0, n)), lo, hi).astype(int)
    cost = {w: len(tok(" " + w)["input_ids"]) for ws in (*WORDS.values(), FILLER) for w in ws}
    rows, got = ["text,label"], []
    for i, target in enumerate(targets):
        label, words, used = i % 3, [], 0
        while used < target:
            w = rng.choice(WORDS[label]) if rng.random() < 0.5 else rng.choice(FILLER)
            words.append(str(w))
            used += cost[w]
        text = " ".join(words)
        rows.append(f"{text},{label}")
        got.append(len(tok(text)["input_ids"]))
    path.write_text("\n".join(rows) + "\n")
    return np.array(got)


def make_model(out_dir: Path, small: bool) -> Path:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = train_tokenizer(out_dir)
    eos = tok.eos_token_id
    shape = dict(n_layer=2, n_embd=64, n_head=2, vocab_size=len(tok)) if small else \
        dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)  # GPT-2 small; ids >= 300 never occur
    cfg = GPT2Config(**shape, n_positions=1024, pad_token_id=eos, bos_token_id=eos, eos_token_id=eos, num_labels=3)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(cfg).save_pretrained(out_dir)
    return out_dir


class Clock:
    """Per-(cycle, stage) wall and GPU-busy seconds, filled by the wrappers."""

    def __init__(self, device: torch.device, profile: bool):
        self.cuda = device.type == "cuda"
        self.profile = profile and self.cuda
        self.cycle = 0
        self.wall: dict[tuple[int, str], float] = defaultdict(float)
        self.busy: dict[tuple[int, str], float] = defaultdict(float)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def run(self, stage: str, fn, *args, **kwargs):
        self.sync()
        t0 = time.perf_counter()
        if self.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                out = fn(*args, **kwargs)
                self.sync()
                t1 = time.perf_counter()  # before the profiler stops and collects its trace
            self.busy[self.cycle, stage] += busy_seconds(prof)
        else:
            out = fn(*args, **kwargs)
            self.sync()
            t1 = time.perf_counter()
        self.wall[self.cycle, stage] += t1 - t0
        return out


def busy_seconds(prof) -> float:
    """Union of the device intervals (kernels, memcpy, memset) in the profiler's trace, in seconds."""
    from torch.autograd import DeviceType

    spans = sorted((e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()
                   if e.device_type() == DeviceType.CUDA)
    total, end = 0, -1
    for s, e in spans:
        if e > end:
            total += e - max(s, end)
            end = e
    return total / 1e9


PREVIOUS = "evaluate, previous path"


def install(clock: Clock, device: torch.device, eval_on: str) -> dict:
    """Replaces the stage functions in saeception.method.chain's namespace with timed ones; returns the
    originals (to put back)."""
    originals = {name: getattr(chain, name) for name in ("finetune", "retrain", "extract", "train_sae", "evaluate")}

    def timed(stage):
        return lambda *args, **kwargs: clock.run(stage, originals[stage], *args, **kwargs)

    for stage in ("finetune", "retrain", "extract", "train_sae"):
        setattr(chain, stage, timed(stage))
    evaluate = originals["evaluate"]

    def on_device(sae, acts, logits, labels, *rest):
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return evaluate(copy.deepcopy(sae).to(device), move(acts), move(logits), move(labels), *rest)

    def timed_evaluate(*args):
        if eval_on == "chain":
            return clock.run("evaluate", evaluate, *args)
        if eval_on == "both":  # args[5] is the EvalConfig
            clock.run(PREVIOUS, evaluate, *args[:5], dataclasses.replace(args[5], backend="sklearn"), *args[6:])
        return clock.run("evaluate", on_device, *args)

    chain.evaluate = timed_evaluate
    return originals


def run(lengths: str, args) -> None:
    device = chain.resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="gpu_chain") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model_dir = make_model(tmp / "model", args.small)
        from transformers import AutoTokenizer

        n = 600 if args.small else args.sentences
        token_lengths = make_sentences(tmp / "text.csv", AutoTokenizer.from_pretrained(model_dir), n, lengths)
        values = {"data.name": str(tmp / "text.csv"), "model.name": str(model_dir), "data.max_length": 128,
                  "finetune.epochs": 1, "finetune.batch_size": 64, "aux.epochs": 1, "aux.batch_size": 64,
                  "sae.expansion_factor": 8, "sae.k": 32, "chain.cycles": 1, "eval.backend": args.eval_backend,
                  "device": args.device}
        if args.small:
            values.update({"sae.expansion_factor": 2, "sae.k": 8, "sae.steps": 50, "eval.probe_max_iter": 50})
        cfg = build_config(values)
        prepared = chain.setup(cfg)
        setup_s = time.perf_counter() - t0

        clock = Clock(device, not args.no_profile)
        originals = install(clock, device, args.eval_on)
        ends = []

        def on_cycle(cycle, metrics, _dir):
            clock.sync()
            ends.append(time.perf_counter())
            clock.cycle = cycle + 1

        start = time.perf_counter()
        try:
            history = chain.run_chain(cfg, tmp / "run", on_cycle=on_cycle, device=device, prepared=prepared)
        finally:
            for name, fn in originals.items():
                setattr(chain, name, fn)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    task = prepared.task
    print(f"\n=== lengths {lengths}: device {name}, torch {torch.__version__}, {'--small, ' if args.small else ''}"
          f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test sentences")
    print(f"tokens per sentence: mean {token_lengths.mean():.1f}, median {np.median(token_lengths):.0f}, "
          f"p95 {np.percentile(token_lengths, 95):.0f}, max {token_lengths.max()} (truncated at 128); "
          f"set-up (tokenizer, data, model) {setup_s:.1f} s")
    starts = [start, *ends[:-1]]
    for cycle, (t_start, t_end) in enumerate(zip(starts, ends)):
        # With --eval-on both the previous path's evaluation is extra work: left out of the cycle's wall.
        extra = clock.wall.get((cycle, PREVIOUS), 0.0)
        wall = t_end - t_start - extra
        print(f"cycle {cycle}: {wall:.2f} s wall (chain's cycle_seconds {history[cycle]['cycle_seconds'] - extra:.2f} s)")
        print(f"  {'stage':28s} {'seconds':>9s} {'share':>7s} {'GPU busy s':>11s} {'busy/wall':>10s}")
        stages = sorted({s for c, s in clock.wall if c == cycle and s != PREVIOUS}, key=STAGES.index)
        for stage in stages:
            w, b = clock.wall[cycle, stage], clock.busy[cycle, stage]
            busy = f"{b:11.2f} {b / w:10.0%}" if clock.profile else f"{'-':>11s} {'-':>10s}"
            print(f"  {stage:28s} {w:9.2f} {w / wall:7.1%} {busy}")
        other = wall - sum(clock.wall[cycle, s] for s in stages)
        print(f"  {'other (sharpen, writes)':28s} {other:9.2f} {other / wall:7.1%}")
        if clock.profile:
            busy_total = sum(clock.busy[cycle, s] for s in stages)
            print(f"  GPU busy in stages: {busy_total:.2f} s of {wall:.2f} s wall ({busy_total / wall:.0%})")
        if extra:
            ours = clock.wall[cycle, "evaluate"]
            print(f"  not counted above: the previous path (scikit-learn on the CPU tensors the chain passes) "
                  f"{extra:.2f} s = {extra / (wall - ours + extra):.1%} of the cycle it would make, vs {ours:.2f} s here")
    last = history[-1]
    print("last cycle's metrics: " + ", ".join(f"{k} {last[k]:.4g}" for k in ("task_accuracy", "probe_accuracy", "ari",
                                                                         "silhouette", "sae_u", "l0") if last.get(k) is not None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[4:]))
    ap.add_argument("--lengths", choices=("sst2", "long", "both"), default="both",
                    help="token-length distribution: sst2 (mean ~25), long (up to 128), or both runs (default)")
    ap.add_argument("--small", action="store_true",
                    help="tiny sizes (2-layer d=64 GPT-2, 600 sentences, 50 SAE steps): a smoke test that runs on CPU")
    ap.add_argument("--sentences", type=int, default=20_000, help="sentences generated (default 20000; 60/20/20 split)")
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu (default auto)")
    ap.add_argument("--no-profile", action="store_true", help="no torch.profiler (no GPU busy times; walls unperturbed)")
    ap.add_argument("--eval-on", choices=("device", "chain", "both"), default="device",
                    help="where evaluate runs: on the chain's device (default), where the chain calls it (CPU tensors), "
                         "or both: the device plus the previous path (scikit-learn on the CPU) for comparison")
    ap.add_argument("--eval-backend", choices=("auto", "torch", "sklearn"), default="auto", help="eval.backend (default auto)")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not args.small and args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --small (tiny sizes) or --device cpu")
    for lengths in (("sst2", "long") if args.lengths == "both" else (args.lengths,)):
        run(lengths, args)


if __name__ == "__main__":
    main()
