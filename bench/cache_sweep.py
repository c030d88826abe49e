"""Benchmark 1: a sweep with the stage cache vs --no-cache, same trials, same seed, side by side.

    python bench/cache_sweep.py [--trials 4]

Workload: offline text, a small random-init GPT-2 (4 layers, d=128) on generated 3-class text, with
cycle-0 fine-tuning long enough to be most of a no-cache trial (the situation the cache is for). The
searched parameters are SAE and sharpening settings only, so every trial shares cycle 0's model and
activations. Reports the measured wall-time ratio and the ideal ratio computed from this run's own
stage timings: no-cache wall / (no-cache wall - seconds of shareable stage work that the cached sweep
did not repeat), i.e. what perfect sharing of the unique work would give.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import run_sweep, trial_runs  # noqa: E402

SPACE = """
name: {name}
fixed:
  data.name: {data}
  model.name: {model}
  model.layer: -1
  finetune.epochs: 12
  finetune.lr: 0.003
  finetune.batch_size: 32
  aux.epochs: 1
  aux.batch_size: 32
  sae.steps: 200
  eval.probe_max_iter: 100
  chain.cycles: 1
params:
  sae.k: {{type: int, low: 4, high: 32, log: true}}
  sae.expansion_factor: {{choices: [2, 4]}}
  sharpen.top_k_pct: {{type: float, low: 1, high: 20, log: true}}
  aux.weight: {{type: float, low: 0.1, high: 2.0, log: true}}
objectives:
  - {{metric: val_sae_u, mode: max}}
"""


def build_workload(root: Path) -> tuple[Path, Path]:
    from helpers import make_text_csv, train_tokenizer
    from transformers import GPT2Config, GPT2ForSequenceClassification

    data = make_text_csv(root / "text.csv", n=900)
    model_dir = root / "gpt2"
    tok = train_tokenizer(model_dir)
    eos = tok.eos_token_id
    cfg = GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=64, vocab_size=len(tok), pad_token_id=eos,
                     bos_token_id=eos, eos_token_id=eos, num_labels=3)
    GPT2ForSequenceClassification(cfg).save_pretrained(model_dir)
    return data, model_dir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=4)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    data, model = build_workload(root)
    walls, saved = {}, {}
    for mode in ("no-cache", "cache"):
        space = root / f"space-{mode}.yaml"
        space.write_text(SPACE.format(name=f"bench-{mode}", data=data, model=model))
        extra = ["--no-cache"] if mode == "no-cache" else []
        storage = root / mode
        walls[mode] = run_sweep(["--space", str(space), "--trials", str(args.trials), "--num-cpus", "2", "--seed", "7",
                                 "--confirm-seeds", "0", *extra], storage)
        _, parent, runs = trial_runs(storage)
        saved[mode] = parent.data.metrics.get("cache/seconds_saved", 0.0)
        hits = parent.data.metrics.get("cache/hits", 0.0)
        print(f"{mode:>8}: wall {walls[mode]:.1f} s, {len(runs)} trials, cache hits {hits:.0f}, stage seconds saved {saved[mode]:.1f}")
    measured = walls["no-cache"] / walls["cache"]
    ideal = walls["no-cache"] / (walls["no-cache"] - saved["cache"])
    print(f"measured speed-up {measured:.2f}x, ideal {ideal:.2f}x -> {100 * (measured - 1) / (ideal - 1) if ideal > 1 else 0:.0f}% "
          f"of the ideal gain ({100 * measured / ideal:.0f}% of the ideal ratio); cached sweep slower: {walls['cache'] > walls['no-cache']}")


if __name__ == "__main__":
    main()
