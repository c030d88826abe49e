"""The confirmation table of a sweep whose confirmation has not ended (still running, or stopped), over the
seeds whose every arm has reported its last cycle to MLflow.

    python bench/confirmation_so_far.py --storage sweeps/bbc-study --name verdict-bbc

A confirmation trial runs its seeds one after another and closes their MLflow runs when its last seed ends,
so while it runs (or after it was stopped) the sweep judges nothing (`saeception.sweep.confirmation`); each
arm's metrics are logged as soon as the arm ends, though. This reads them, keeps the seeds complete in every
arm, and prints what the sweep would print for those seeds (`summarize`, `format_table`: the same code).
For a long study on a machine that cannot finish it in one sitting; `--resume` finishes the real one.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from saeception.eval.confirm import KEPT_METRICS, SUMMARY_METRICS, ConfirmSettings, format_table, summarize
from saeception.sweep.confirmation import arm_results, headline_of
from saeception.sweep.tracking import Tracker
from saeception.sweep.vocab import KEY_TAG


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    storage = Path(args.storage).resolve()
    identity = json.loads((storage / args.name / "sweep.json").read_text())
    settings = ConfirmSettings(**{**identity["confirm"], "controls": tuple(identity["confirm"]["controls"])})
    objectives = dict(o.split(":") for o in identity["objectives"])
    modes = {m.removeprefix("val_"): mode for m, mode in objectives.items()}
    metrics = tuple(dict.fromkeys((*SUMMARY_METRICS, *modes, *KEPT_METRICS)))

    tracker = Tracker(f"sqlite:///{storage / 'mlflow.db'}")
    exp = tracker.client.get_experiment_by_name("saeception")
    parent = next(r for r in tracker.client.search_runs([exp.experiment_id])
                  if r.data.tags.get("saeception.role") == "sweep" and r.info.run_name == args.name)
    arms_runs = [r for r in tracker.children(parent.info.run_id) if r.data.tags.get(KEY_TAG)]
    key = Counter(r.data.tags[KEY_TAG] for r in arms_runs).most_common(1)[0][0]  # the key with the most arm runs
    results: dict[str, dict[int, dict[int, dict[str, float]]]] = {a: {} for a in settings.arms}
    groups: dict[tuple[str, int], list[dict[str, float]]] = {}
    for run in arms_runs:
        tags = run.data.tags
        arm, seed = tags.get("saeception.arm"), int(tags["saeception.seed"])
        if tags[KEY_TAG] != key or arm not in results:
            continue
        results[arm][seed], groups[(arm, seed)] = arm_results(tracker, run.info.run_id, metrics)
    last = int(identity["fixed"].get("chain.cycles", 1))
    complete = sorted(s for s in results["best"] if all(last in results[a].get(s, {}) for a in settings.arms))
    results = {a: {s: results[a][s] for s in complete} for a in settings.arms}
    spread = [g for (a, s), g in groups.items() if s in complete and g]
    headline = headline_of(list(objectives))
    rows = summarize(results, metrics, settings, modes, {}, spread, headline)
    print(f"confirmation {key} of sweep {args.name}: seeds complete in every arm: {complete} "
          f"(SAE-seed spread from {len(spread)} arm runs)\n")
    print(format_table(rows, settings, headline))


if __name__ == "__main__":
    main()
