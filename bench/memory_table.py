"""docs/large-models.md's table, generated from the estimator (saeception/parallel/memory.py) as the sweep's
plan uses it (sweep/memory_plan.py): for each model, the fewest workers per trial (1, 2, 4, 8; one GPU
each) whose largest estimate over every combination its space can sample fits an 80 GB GPU under the
plan's rule, and the command that runs it. Models are built from their `transformers` configs on the
meta device: no hub, no weights, no GPU. Estimates, not measurements.

    python bench/memory_table.py           # print the markdown
    python bench/memory_table.py --write   # and put it into docs/large-models.md between its markers
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- memory-table:start -->\n", "\n<!-- memory-table:end -->"
GPU_GB = 80
WORKERS = (1, 2, 4, 8)
# GLUE SST-2 as saeception splits it (both spaces below read it): 67,349 labelled train rows, about 20% of
# them carved as the test split (GLUE's test is unlabelled; the stratified split may round by a row), and
# its 872 validation rows. Not read from the hub here: the numbers are typed in.
SST2_SIZES = (53_879, 872, 13_470)


def _gpt2(n_layer: int, n_embd: int, n_head: int):
    from transformers import GPT2Config

    return GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=50257, n_positions=1024)


def _neox(layers: int, hidden: int, heads: int, intermediate: int):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                         intermediate_size=intermediate, vocab_size=50432)


@dataclass
class Row:
    model: str
    config: Any  # () -> a transformers config, the hub model's shape
    space: str  # a shipped space
    sets: dict[str, Any] = field(default_factory=dict)  # --set, beyond the space's fixed values


ROWS = [
    Row("GPT-2 small", lambda: _gpt2(12, 768, 12), "gpt2_sst2"),
    Row("GPT-2 XL", lambda: _gpt2(48, 1600, 25), "gpt2_sst2", {"model.name": "gpt2-xl"}),
    Row("Pythia-6.9B", lambda: _neox(32, 4096, 32, 16384), "gpt2_sst2",
        {"model.name": "EleutherAI/pythia-6.9b", "train.strategy": "fsdp",
         "model.dtype": "bfloat16", "model.gradient_checkpointing": True}),
    Row("GPT-NeoX-20B", lambda: _neox(44, 6144, 64, 24576), "neox20b_sst2"),
]


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def plan_row(row: Row):
    """(workers, the largest estimate, its config) for the fewest workers that fit."""
    from saeception.parallel.memory import facts_from_config
    from saeception.sweep.memory_plan import Planner, budget
    from saeception.sweep.space import load_space, resolve_space
    from saeception.validate import Checker

    space = load_space(resolve_space(row.space), row.sets)
    facts = facts_from_config(row.config(), n_classes=2, name=space.config({}).model.name)
    cap = space.config({}).data.max_examples
    sizes = tuple(min(n, cap) for n in SST2_SIZES) if cap else SST2_SIZES

    class Known(Planner):
        def facts(self, cfg):
            return facts, sizes

    for workers in WORKERS:
        args = argparse.Namespace(gpu_memory_gb=GPU_GB, gpus_per_worker=1, workers_per_trial=workers)
        worst = Known(Checker(), workers).largest(space)
        if worst.estimate.total <= budget(args):
            return workers, worst, facts
    raise SystemExit(f"{row.model}: no worker count in {WORKERS} fits a {GPU_GB} GB GPU")


def command(row: Row, workers: int) -> str:
    sets = "".join(f" --set {k}={_fmt(v)}" for k, v in row.sets.items())
    return (f"python -m saeception.sweep --space {row.space}{sets} --workers-per-trial {workers} --gpus-per-worker 1 "
            f"--gpu-memory-gb {GPU_GB}")


def markdown() -> str:
    from saeception.parallel.memory import gib

    lines = ["| model | parameters | `train.strategy` | `model.dtype` | checkpointing | workers (GPUs) per trial | "
             "estimated peak per GPU | peak stage | training step: weights / grads / AdamW / activations / working |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | --- | --- |"]
    commands = []
    for row in ROWS:
        workers, worst, facts = plan_row(row)
        e, cfg = worst.estimate, worst.cfg
        parts = " / ".join(gib(x) for x in (e.weights, e.grads, e.optimizer, e.activations, e.working))
        size = f"{facts.params / 1e6:.0f} M" if facts.params < 1e9 else f"{facts.params / 1e9:.2f} B"
        lines.append(f"| {row.model} | {size} | {cfg.train.strategy} | {cfg.model.dtype} | "
                     f"{'yes' if cfg.model.gradient_checkpointing else 'no'} | {workers} | {gib(e.total)} GiB | "
                     f"{e.peak_stage} | {parts} GiB |")
        commands += [f"    # {row.model}", f"    {command(row, workers)}"]
    return "\n".join([*lines, "", *commands])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="replace the table in docs/large-models.md")
    args = p.parse_args(argv)
    table = markdown()
    print(table)
    if args.write:
        readme = REPO / "docs" / "large-models.md"
        text = readme.read_text()
        start, end = text.index(START) + len(START), text.index(END.lstrip("\n"))
        readme.write_text(text[:start] + table + "\n" + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
