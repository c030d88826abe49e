"""The confirmation driver: the chosen config and its control arms on fresh seeds, as Tune trials
outside the Optuna study, then the paired comparison and its verdicts logged on the parent run (core:
`saeception.eval.confirm`).

A confirmation is identified by its key: the winner's config and the confirmation settings. Its MLflow
runs carry the key, so a resumed sweep reuses the seeds already confirmed for the same winner, runs only
the missing ones (a larger --confirm-seeds), and confirms afresh when the winner changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import textwrap
import time
from typing import Any

from saeception.eval.confirm import (
    KEPT_METRICS,
    SUMMARY_METRICS,
    ConfirmSettings,
    average_saes,
    confirm_seeds,
    degenerate_controls,
    format_table,
    last_cycle,
    seeds_line,
    seeds_text,
    summarize,
    verdict_line,
)

from ..config import build_config
from .plan import Plan
from .plots import confirmation_plot
from .tracking import FAILURE
from .vocab import KEY_TAG, SAE_SEED_PREFIX, TRAIN_RUN_TAG, VERDICT_TAG

# The most metrics the sweep's run holds: a handful to find the answer by, not the confirmation's every number.
PARENT_METRICS = 60
# The confirmation run's key (its saeception.trial_id) under the sweep's run, from the confirmation's key.
CONFIRMATION_KEY = "confirmation-{}"


class ConfirmationInterrupted(Exception):
    """Ctrl-C during the confirmation: nothing is judged or exported; `--resume` runs the seeds that did not finish."""


def headline_of(objectives: list[str]) -> tuple[str, ...]:
    """The confirmation's headline metrics, its verdicts' family with the controls: the space's objectives as
    test-split metrics, then task_accuracy (declared by the space, not by what is printed)."""
    return tuple(dict.fromkeys((*(m.removeprefix("val_") for m in objectives), "task_accuracy")))


def confirm_key(values: dict[str, Any], settings) -> str:
    """What a confirmation is of: the winner's values and the settings (controls, margins, SAE seeds, alpha)."""
    payload = {"values": {k: values[k] for k in sorted(values)}, "settings": settings.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _gather(tracker, parent: str, key: str, arms: tuple[str, ...], seeds: list[int], metrics: tuple[str, ...]):
    """(results[arm][seed][cycle] of FINISHED runs (the last cycle averaged over the arm's SAEs), failed[arm][seed]
    = reason of FAILED ones, the train run of each arm of each seed, the SAE-seed groups)."""
    results: dict[str, dict[int, dict[int, dict[str, float]]]] = {a: {} for a in arms}
    failed: dict[str, dict[int, str]] = {a: {} for a in arms}
    train_runs: dict[tuple[str, int], str] = {}
    groups: list[list[dict[str, float]]] = []
    for run in tracker.children(parent):
        tags = run.data.tags
        arm, seed = tags.get("saeception.arm"), int(tags.get("saeception.seed", -1))
        if tags.get(KEY_TAG) != key or arm not in arms or seed not in seeds:
            continue
        train_runs[(arm, seed)] = tags.get(TRAIN_RUN_TAG, "")
        if run.info.status == "FINISHED":
            results[arm][seed], group = arm_results(tracker, run.info.run_id, metrics)
            if group:
                groups.append(group)
        elif run.info.status == "FAILED" and is_divergence(tags.get(FAILURE, "")):
            failed[arm][seed] = tags[FAILURE]
        # Any other FAILED arm (its trial or Train controller died: Ctrl-C, a lost node) did not finish: it is
        # neither a result nor a divergence that counts against the method, and --resume runs it again.
    return results, failed, train_runs, groups


def is_divergence(failure: str) -> bool:
    """Whether an arm's failure is its chain diverging (a result of the method, counted against it), not its
    trial or Train controller dying (an interruption, run again)."""
    return failure.startswith("DivergedError")


def by_cycle(tracker, run_id: str, metrics, prefix: str = "") -> dict[int, dict[str, float]]:
    """{step: {metric: value}} of a run's `metrics` (logged under `prefix` + metric), from MLflow."""
    out: dict[int, dict[str, float]] = {}
    for m, steps in tracker.histories(run_id, [prefix + m for m in metrics]).items():
        for step, value in steps.items():
            out.setdefault(step, {})[m.removeprefix(prefix)] = value
    return out


def arm_results(tracker, run_id: str, metrics) -> tuple[dict[int, dict[str, float]], list[dict[str, float]]]:
    """One confirmation arm run's metrics by cycle, its last cycle the mean over the arm's SAEs, and the SAE-seed
    group (the last cycle's metrics of its own SAE and of each extra one; empty without extra SAEs)."""
    own = by_cycle(tracker, run_id, metrics)
    extra = by_cycle(tracker, run_id, metrics, prefix=SAE_SEED_PREFIX)
    if not own or not extra:
        return own, []
    last = max(own)
    more = [extra[j] for j in sorted(extra)]
    group = [own[last], *more]
    own[last] = average_saes(own[last], more)
    return own, group


def _unfinished(seeds: list[int], arms: tuple[str, ...], results, failed) -> list[int]:
    """The seeds with an arm that neither finished nor failed: not run yet, or stopped mid-run."""
    return [s for s in seeds if not all(s in results[a] or s in failed[a] for a in arms)]


def _layer_width(values: dict[str, Any]) -> int | None:
    """The tapped layer's width for the winner's config, as the validation pass reads it (None: not readable now)."""
    from ..validate import Checker  # lazy: the validation pass loads torch and the model code

    cfg = build_config(values)
    checker = Checker()
    facts = checker.data(cfg.data)
    return checker.width(cfg.model, cfg.data.name, facts) if facts is not None else None


def confirm(p: Plan, tracker, parent: str, spec, values: dict[str, Any], concurrency: int,
            trial_resources) -> dict[str, Any] | None:
    """Runs the chosen config and its controls on fresh seeds (outside the Optuna study; seeds this
    winner was already confirmed on are reused), then logs and prints the arms, the paired comparisons
    and the verdicts. Returns where the first seed's arms were checkpointed ({"seed", "train_runs"}:
    saeception.sweep.best exports them), None when the best arm finished on no seed."""
    from ray import tune  # lazy: Ray is loaded only in the processes that use it

    from ..trainables.chain_trainable import confirm_trial  # lazy: the trainables import Ray at load

    settings = p.confirm.settings
    skipped = degenerate_controls(values, settings.controls, _layer_width(values))
    for c, why in skipped.items():
        print(f"confirmation: control {c} skipped: {why}", flush=True)
    if skipped:
        kept = tuple(c for c in settings.controls if c not in skipped)
        if not kept:
            line = "no verdict: every control's targets would equal the winner's"
            print(f"confirmation refused: {line.removeprefix('no verdict: ')}", flush=True)
            tracker.set_tags(parent, {VERDICT_TAG: line})
            return None
        settings = dataclasses.replace(settings, controls=kept)
    seeds = confirm_seeds(build_config(values).seed, p.confirm.seeds)
    key = confirm_key(values, settings)
    # One run holds the confirmation (its verdict, table and plot), its arms are its children: the sweep's own
    # children stay its trials. A resumed sweep gets the same run back by the key.
    run = tracker.child_run(parent, CONFIRMATION_KEY.format(key), role="confirmation", name=f"confirmation-{key}",
                            extra_tags={KEY_TAG: key})
    # The test-split twins of the objectives: the winner was selected on val_*, so val_* cannot confirm it.
    metrics = tuple(dict.fromkeys((*SUMMARY_METRICS, *headline_of(p.space.metrics), *KEPT_METRICS)))
    results, failed, train_runs, _ = _gather(tracker, run, key, settings.arms, seeds, metrics)
    missing = _unfinished(seeds, settings.arms, results, failed)
    done = len(seeds) - len(missing)
    print(f"\nconfirming the best config on seeds {seeds} with controls {', '.join(settings.controls)}"
          + (f" ({done} seeds already confirmed for this winner)" if done else ""), flush=True)
    if missing:
        # A fresh Tune experiment and fresh Train run names per attempt: nothing is restored from an attempt
        # for another winner or another seed set (the MLflow runs of an arm are reused by key).
        attempt = f"{key}-{int(time.time())}"
        name = f"{p.name}-confirm-{attempt}"
        groups = [missing[i::concurrency] for i in range(min(concurrency, len(missing)))]
        fixed = dataclasses.replace(spec, fixed=values, parent_run_id=run)
        trainable = tune.with_resources(tune.with_parameters(confirm_trial, spec=fixed), trial_resources)
        tuner = tune.Tuner(trainable, param_space={"seeds": tune.grid_search(groups), "export_seed": seeds[0],
                                                   "key": key, "attempt": attempt,
                                                   "arms": list(settings.arms), "sae_seeds": settings.sae_seeds},
                           tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
                           run_config=tune.RunConfig(name=name, storage_path=p.ray_dir, verbose=0,
                                                     callbacks=[arm_progress(len(missing) * len(settings.arms),
                                                                             build_config(values).chain.cycles)]))
        tuner.fit()
    results, failed, train_runs, groups = _gather(tracker, run, key, settings.arms, seeds, metrics)
    if stopped := _unfinished(missing, settings.arms, results, failed):
        # Ctrl-C: Tune stops its trials (TERMINATED, as if they had ended) and returns; the arms those trials had
        # not closed are still RUNNING. Nothing is judged on part of the seeds: they are KILLED, and a resumed
        # sweep runs those seeds again, reusing their runs by key.
        # An arm closed FAILED by its trial as the trial was stopped (its controller died with it) is stopped too.
        for arm in tracker.children(run):
            tags = arm.data.tags
            if (tags.get(KEY_TAG) == key and int(tags.get("saeception.seed", -1)) in stopped
                    and (arm.info.status == "RUNNING"
                         or (arm.info.status == "FAILED" and not is_divergence(tags.get(FAILURE, ""))))):
                tracker.client.set_terminated(arm.info.run_id, status="KILLED")
        tracker.client.set_terminated(run, status="KILLED")
        raise ConfirmationInterrupted(f"the confirmation stopped before seeds {stopped} finished")
    if not results["best"]:
        print("confirmation failed: the best arm finished on no seed; see the confirm runs in MLflow", flush=True)
        tracker.set_tags(parent, {VERDICT_TAG: "no verdict: the best arm finished on no seed"})
        tracker.finish(run, failed="the best arm finished on no seed")
        return None
    modes = {o.metric.removeprefix("val_"): o.mode for o in p.space.objectives}
    headline = headline_of(p.space.metrics)
    rows = summarize(results, metrics, settings, modes, failed, groups, headline)
    line = verdict_line(rows, headline, settings.controls)
    _write(p, tracker, parent, run, rows, settings, headline, line)
    n_arm = ", ".join(f"{a} {len(results[a])}/{len(seeds)}" + (f" ({len(failed[a])} diverged)" if failed[a] else "")
                      for a in settings.arms)
    print("\n" + textwrap.fill(f"confirmation at the last cycle ({len(seeds)} seeds; finished per arm: {n_arm}; "
                               "test split):", 118, subsequent_indent="    "))
    print(terminal_summary(rows, settings, headline), flush=True)
    print(f"every arm, metric and cycle: {p.sweep_dir / 'confirmation.md'} (and the confirmation run in MLflow)", flush=True)
    return {"seed": seeds[0], "arms": settings.arms,
            "train_runs": {a: train_runs.get((a, seeds[0]), "") for a in settings.arms},
            "key": key, "run": run, "rows": rows, "settings": settings, "headline": headline, "verdict": line,
            "n_seeds": len(seeds)}


def arm_progress(total: int, last_cycle: int):
    """A Tune callback printing a line as each confirmation arm of each seed finishes its last cycle (the
    confirmation is otherwise silent for minutes)."""
    from ray.tune import Callback  # lazy: Ray is loaded only in the processes that use it

    class ArmProgress(Callback):
        def __init__(self):
            self.t0, self.done = time.time(), set()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("cycle") != last_cycle or "arm" not in result:
                return
            self.done.add((result["arm"], result.get("seed")))
            elapsed = time.time() - self.t0
            print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] confirmation: {len(self.done)} of {total} "
                  f"arm-seeds finished | seed {result.get('seed')}, arm {result['arm']}", flush=True)

    return ArmProgress()


def terminal_summary(rows: list[dict[str, Any]], settings, headline: tuple[str, ...]) -> str:
    """What the terminal shows of the confirmation (plain text, under 120 columns): the verdict, the seeds that
    would decide what is inconclusive, and per headline metric and control at the last cycle best − control with
    its interval and verdict. The full tables are in confirmation.md."""
    lines = [f"verdict: {verdict_line(rows, headline, settings.controls)}"]
    if more := seeds_line(rows, headline, settings.controls):
        lines.append(f"seeds to decide (if the differences and their spread stay as observed): {more}")
    table = [("metric", "control", "best - control", "interval", "verdict")]
    for r in last_cycle(rows):
        if r["metric"] in headline:
            for c in settings.controls:
                if f"verdict_{c}" in r:
                    lo, hi = r[f"ci_{c}"]
                    table.append((r["metric"], c, f"{r[f'diff_{c}_mean']:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]", r[f"verdict_{c}"]))
    if len(table) > 1:
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(textwrap.fill(line, 118, subsequent_indent="    ") if not line.startswith("  ") else line
                     for line in lines)


def comparison_stats(r: dict[str, Any], controls: tuple[str, ...], detail: bool = True) -> dict[str, float]:
    """One row's comparisons as metrics: per control `confirm_diff_<control>_<metric>` (mean best − control) and
    its anytime-valid interval `confirm_ci_low_…`/`confirm_ci_high_…`; with `detail`, also the family-adjusted
    anytime p and the seeds that would decide an inconclusive comparison."""
    m, out = r["metric"], {}
    for c in controls:
        if f"verdict_{c}" not in r:
            continue
        lo, hi = r[f"ci_{c}"]
        out.update({f"confirm_diff_{c}_{m}": r[f"diff_{c}_mean"], f"confirm_ci_low_{c}_{m}": lo,
                    f"confirm_ci_high_{c}_{m}": hi})
        if detail:
            out[f"confirm_p_family_{c}_{m}"] = r[f"p_family_{c}"]
            if math.isfinite(r.get(f"seeds_to_decide_{c}", math.nan)):
                out[f"confirm_seeds_to_decide_{c}_{m}"] = r[f"seeds_to_decide_{c}"]
    return out


def _write(p: Plan, tracker, parent: str, run: str, rows, settings, headline, line: str) -> None:
    """The confirmation's files on its own run and on the sweep's; its headline numbers per cycle (arm means,
    best − control with its interval, p, seeds to decide) and a verdict tag per comparison on its run; the
    verdict line and the last cycle's headline differences with their intervals on the sweep's run (a handful of
    metrics: every other number is in the table)."""
    (p.sweep_dir / "confirmation.md").write_text(format_table(rows, settings, headline, last_cycle_only=False) + "\n")
    (p.sweep_dir / "confirmation.json").write_text(json.dumps(_jsonable(rows), indent=1))
    confirmation_plot(rows, headline, settings.controls, p.sweep_dir / "confirmation.png")
    for target in (run, parent):
        for f in ("confirmation.md", "confirmation.json", "confirmation.png"):
            tracker.log_artifact(target, p.sweep_dir / f)
        tracker.log_table(target, table_rows(rows, settings, headline), CONFIRMATION_TABLE)
    tags = {VERDICT_TAG: line}
    last = max(r["cycle"] for r in rows)
    # At most PARENT_METRICS on the sweep's run with its best_<objective> ones: the intervals go too while they fit.
    intervals = len(p.space.metrics) + 3 * len(headline) * len(settings.controls) <= PARENT_METRICS
    for r in rows:
        if r["metric"] not in headline:
            continue
        stats = {f"confirm_{a}_{r['metric']}_mean": r[f"{a}_mean"] for a in settings.arms}
        tracker.log_metrics(run, {**stats, **comparison_stats(r, settings.controls)}, step=r["cycle"])
        if r["cycle"] == last:
            on_parent = comparison_stats(r, settings.controls, detail=False)
            if not intervals:
                on_parent = {k: v for k, v in on_parent.items() if k.startswith("confirm_diff_")}
            tracker.log_metrics(parent, on_parent, step=last)
            tags.update({f"{VERDICT_TAG}.{c}.{r['metric']}": r[f"verdict_{c}"] for c in settings.controls
                         if f"verdict_{c}" in r})
    tracker.set_tags(run, tags)
    tracker.set_tags(parent, {VERDICT_TAG: line})
    tracker.finish(run)


def _jsonable(rows):
    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, tuple):
            return [fix(x) for x in v]
        return v

    return [{k: fix(v) for k, v in r.items()} for r in rows]


# The confirmation as an MLflow table artifact (the UI shows it as a table).
CONFIRMATION_TABLE = "confirmation_table.json"


def _seeds_cell(v: float) -> int | str | None:
    """seeds_to_decide for the MLflow table: a count, the tables' text past the search's end, None where it does not apply."""
    if math.isnan(v):
        return None
    return int(v) if math.isfinite(v) else seeds_text(v)


def table_rows(rows: list[dict[str, Any]], settings=None, headline: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """summarize()'s rows with readable, fixed columns: one row per (cycle, metric, control) with the arm
    means, the paired difference and its interval, wins/ties/losses, the p-values and the verdict. The last
    cycle comes first (the one the verdict is on), its `headline` metrics first."""
    settings = settings or ConfirmSettings()
    out = []
    order = {m: i for i, m in enumerate(headline)}
    for r in sorted(rows, key=lambda r: (-r["cycle"], order.get(r["metric"], len(order)))):
        for c in settings.controls:
            if f"n_{c}" not in r:
                continue
            lo, hi = r.get(f"ci_{c}", (math.nan, math.nan))
            row = {"cycle": r["cycle"], "metric": r["metric"], "control": c, "seeds": r[f"n_{c}"],
                   "best mean": r["best_mean"], "control mean": r[f"{c}_mean"], "best - control": r[f"diff_{c}_mean"],
                   "interval low": lo, "interval high": hi,
                   "wins/ties/losses": f"{r[f'wins_{c}']}/{r[f'ties_{c}']}/{r[f'losses_{c}']}",
                   "p (t)": r[f"p_{c}"], "p (sign)": r[f"p_sign_{c}"], "p (family, anytime)": r.get(f"p_family_{c}"),
                   "margin": r["margin"], "SAE-seed sd": r["sae_seed_sd"], "verdict": r.get(f"verdict_{c}"),
                   "why": r.get(f"why_{c}") or None,
                   "seeds to decide": _seeds_cell(r.get(f"seeds_to_decide_{c}", math.nan))}
            out.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    return out
