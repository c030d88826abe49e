"""The confirmation driver: the chosen config and its control arms on fresh seeds, as Tune trials
outside the Optuna study, then the paired comparison logged on the parent run (core: `saeception.confirm`)."""

from __future__ import annotations

import json
import os
from typing import Any

from .cli import Plan, tune_experiment_exists


def confirm(p: Plan, tracker, parent: str, spec, values: dict[str, Any], concurrency: int,
             trial_resources) -> dict[str, Any] | None:
    """Runs the chosen config and its controls on fresh seeds (outside the Optuna study), then logs
    and prints mean ± sd per arm and the paired differences. Returns where the export seed's arms
    were checkpointed ({"seed", "run"}: saeception.sweep.best exports them), None when an arm failed."""
    import dataclasses

    from ray import tune

    from ..config import build_config
    from ..confirm import ARMS, SUMMARY_METRICS, confirm_seeds, format_table, summarize
    from ..trainables.chain_trainable import confirm_run_name, confirm_trial
    from .plots import confirmation_plot

    seeds = confirm_seeds(build_config(values).seed, p.args.confirm_seeds)
    print(f"\nconfirming the best config on seeds {seeds} with controls aux.weight=0 and sharpen.strategy=random", flush=True)
    name = f"{p.name}-confirm"
    trainable = tune.with_resources(tune.with_parameters(confirm_trial, spec=dataclasses.replace(spec, fixed=values)),
                                    trial_resources)
    path = os.path.join(p.ray_dir, name)
    groups = [seeds[i::concurrency] for i in range(min(concurrency, len(seeds)))]
    if p.args.resume and tune_experiment_exists(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        # The first seed's arms are checkpointed at their last cycle, for the export of the winner.
        tuner = tune.Tuner(trainable, param_space={"seeds": tune.grid_search(groups), "export_seed": seeds[0]},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
                           run_config=tune.RunConfig(name=name, storage_path=p.ray_dir, verbose=0))
    tuner.fit()
    results: dict[str, dict[int, dict[int, dict[str, float]]]] = {a: {} for a in ARMS}
    metrics = tuple(dict.fromkeys((*SUMMARY_METRICS, *p.space.metrics)))
    for run in tracker.children(parent):
        tags = run.data.tags
        if tags.get("saeception.arm") not in ARMS or run.info.status != "FINISHED":
            continue
        per_cycle: dict[int, dict[str, float]] = {}
        for m, steps in tracker.histories(run.info.run_id, metrics).items():
            for step, value in steps.items():
                per_cycle.setdefault(step, {})[m] = value
        results[tags["saeception.arm"]][int(tags["saeception.seed"])] = per_cycle
    if not all(results[a] for a in ARMS):
        print("confirmation incomplete: some arms failed; see the control/confirm runs in MLflow", flush=True)
        return None
    rows = summarize(results, metrics)
    table = format_table(rows)
    (p.local_dir / "confirmation.md").write_text(format_table(rows, last_cycle_only=False) + "\n")
    (p.local_dir / "confirmation.json").write_text(json.dumps(rows, indent=1))
    confirmation_plot(rows, p.local_dir / "confirmation.png")
    for f in ("confirmation.md", "confirmation.json", "confirmation.png"):
        tracker.log_artifact(parent, p.local_dir / f)
    tracker.log_table(parent, table_rows(rows), CONFIRMATION_TABLE)
    for r in rows:
        stats = {f"confirm_{a}_{r['metric']}_{s}": r[f"{a}_{s}"] for a in ARMS for s in ("mean", "sd")}
        for c in ("aux0", "random"):
            if f"diff_{c}_mean" in r:
                stats.update({f"confirm_diff_{c}_{r['metric']}": r[f"diff_{c}_mean"], f"confirm_p_{c}_{r['metric']}": r[f"p_{c}"]})
        tracker.log_metrics(parent, stats, step=r["cycle"])
    print(f"\nconfirmation at the last cycle ({len(seeds)} seeds; mean ± sd; test split unless val_):")
    print(table, flush=True)
    return {"seed": seeds[0], "run": confirm_run_name(groups[0])}


# The confirmation as an MLflow table artifact (the UI shows it as a table).
CONFIRMATION_TABLE = "confirmation_table.json"


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """summarize()'s rows with readable, fixed columns (cycle, metric, each arm's mean and sd, each
    control's paired difference, wins and p); absent values as None."""
    from ..confirm import ARMS, CONTROLS

    out = []
    for r in rows:
        row = {"cycle": r["cycle"], "metric": r["metric"], "seeds": r["n_seeds"]}
        for a in ARMS:
            row[f"{a} mean"], row[f"{a} sd"] = r[f"{a}_mean"], r[f"{a}_sd"]
        for c in CONTROLS:
            row[f"best - {c}"], row[f"wins vs {c}"], row[f"p vs {c}"] = (r.get(f"diff_{c}_mean"), r.get(f"wins_{c}"),
                                                                        r.get(f"p_{c}"))
        out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()})
    return out
