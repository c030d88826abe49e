"""What a sweep shows and keeps: live progress lines, the best trial or Pareto front, the summary, the
sweep-level plots and the stage cache's totals on the parent run."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from saeception.store.cache import CACHE_COUNTERS
from saeception.store.uris import redact

from .plan import Plan
from .plots import optuna_plots
from .space import SearchSpace
from .tracking import TIMING, TRIAL_ID, counter_tags
from .vocab import STOPPED_AT, stopped_early

log = logging.getLogger(__name__)


def progress_callback(p: Plan, total: int, tracker, parent: str):
    """A Tune callback printing one line per event; it also marks trials a scheduler stopped early
    (their MLflow run: status KILLED, tag saeception.stopped_at_cycle)."""
    from ray.tune import Callback  # lazy: Ray is loaded only in the processes that use it


    metric, mode = p.space.metrics[0], p.space.modes[0]

    class Progress(Callback):
        def __init__(self):
            self.t0 = time.time()
            self.done, self.stopped, self.failed, self.running = set(), set(), set(), set()
            self.best: tuple[float, str] | None = None
            self.last: dict[str, dict] = {}

        def _line(self, what: str) -> None:
            elapsed = time.time() - self.t0
            best = f"best {metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -"
            print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {len(self.done)} done, {len(self.stopped)} stopped early, "
                  f"{len(self.running)} running, {len(self.failed)} failed of {total} | {best} | {what}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.running.add(trial.trial_id)
            self._line(f"started {trial.trial_id}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.last[trial.trial_id] = result
            self._line(f"{trial.trial_id} finished cycle {result.get('cycle')}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            last = self.last.get(trial.trial_id, {})
            if stopped_early(last):
                self.stopped.add(trial.trial_id)
                mark_stopped(tracker, parent, trial.trial_id, int(last["cycle"]))
                self._line(f"stopped {trial.trial_id} early at cycle {last['cycle']} (pruned: it cannot win)")
                return
            self.done.add(trial.trial_id)
            # The objective is the last cycle's value, so "best" only moves when a trial completes.
            value = last.get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                if self.best is None or (value > self.best[0] if mode == "max" else value < self.best[0]):
                    self.best = (float(value), trial.trial_id)
            self._line(f"completed {trial.trial_id}")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.running.discard(trial.trial_id)
            self.failed.add(trial.trial_id)
            self._line(f"FAILED {trial.trial_id}")

    def mark_stopped(tracker, parent: str, trial_id: str, cycle: int) -> None:
        for run in tracker.children(parent):
            if run.data.tags.get(TRIAL_ID) == trial_id:
                tracker.set_tags(run.info.run_id, {STOPPED_AT: cycle})
                tracker.clear_failure(run.info.run_id)  # the trial may have closed itself first, as FAILED
                tracker.client.set_terminated(run.info.run_id, status="KILLED")

    return Progress()




def pareto_front(rows: list[dict[str, Any]], metrics: list[str], modes: list[str]) -> list[dict[str, Any]]:
    """Rows not dominated by any other row (>= in every objective, > in one, after mode signs)."""
    signs = [1 if m == "max" else -1 for m in modes]
    vals = [[s * r[m] for m, s in zip(metrics, signs)] for r in rows]
    front = []
    for i, a in enumerate(vals):
        dominated = any(all(b_j >= a_j for a_j, b_j in zip(a, b)) and any(b_j > a_j for a_j, b_j in zip(a, b))
                        for j, b in enumerate(vals) if j != i)
        if not dominated:
            front.append(rows[i])
    return front


def best_trials(rows: list[dict[str, Any]], space: SearchSpace) -> list[dict[str, Any]]:
    """The best trial (single objective) or the Pareto front (several), among trials that ran to their
    last cycle with finite values and meet the space's constraints; the front is ordered best-first by the
    first objective (its mode), and its first point is the one confirmation re-runs."""
    usable = [r for r in rows if not r["error"] and r.get("stopped_at") is None and space.feasible(r)
              and all(isinstance(r.get(m), (int, float)) and math.isfinite(r[m]) for m in space.metrics)]
    if not usable:
        return []
    m, sign = space.metrics[0], (1 if space.modes[0] == "max" else -1)
    if len(space.objectives) == 1:
        return [max(usable, key=lambda r: sign * r[m])]
    return sorted(pareto_front(usable, space.metrics, space.modes), key=lambda r: -sign * r[m])


def fit_interrupted(results, expected: int, scheduled: bool = False) -> bool:
    """Whether a Tune run returned before its `expected` trials all ended. On Ctrl-C `tuner.fit()` returns
    instead of raising, with the trials it stopped TERMINATED as if they had ended; so a trial it never
    started shows the interruption, and, without a scheduler (`scheduled` False), so does a trial that ended
    before its last cycle or before Tune had any cycle of it (its first report may be in MLflow already: the
    relay logs before it forwards): nothing else stops one. (With a scheduler such a trial may have been
    stopped early; the confirmation checks its MLflow runs instead.)"""
    if len(results) < expected or results.num_terminated + results.num_errors < len(results):
        return True
    return not scheduled and any(r.error is None and ("cycle" not in (r.metrics or {}) or stopped_early(r.metrics))
                                 for r in results)


def trial_rows(results, space: SearchSpace) -> list[dict[str, Any]]:

    rows = []
    for r in results:
        if r.metrics is None:
            continue
        config = {k: v for k, v in (r.config or {}).items() if not k.startswith("__")}
        row = {"trial_id": r.metrics.get("trial_id"), "error": r.error is not None, "config": config,
               "cycle": r.metrics.get("cycle"), "stopped_at": r.metrics.get("cycle") if stopped_early(r.metrics) else None}
        for m in ("task_accuracy", "sae_u", *space.metrics, *(c.metric for c in space.constraints)):
            row[m] = r.metrics.get(m)
        rows.append(row)
    return rows


def print_summary(p: Plan, rows: list[dict], best: list[dict]) -> None:
    print()
    stopped = sum(r["stopped_at"] is not None for r in rows)
    finished = sum(not r["error"] for r in rows) - stopped
    print(f"sweep {p.name}: {finished} trials finished, {stopped} stopped early, {sum(r['error'] for r in rows)} failed")
    title = "best trial" if len(p.space.objectives) == 1 else "Pareto front"
    print(f"{title} (objectives at the last cycle, validation split; test metrics for reporting):")
    for r in best:
        objs = ", ".join(f"{m} {r[m]:.4f}" for m in p.space.metrics)
        test = ", ".join(f"{m} {r[m]:.4f}" for m in ("task_accuracy", "sae_u") if isinstance(r.get(m), float))
        print(f"  trial {r['trial_id']}: {objs} | test: {test}")
        print(f"    {' '.join(f'{k}={_fmt(v)}' for k, v in sorted(r['config'].items()))}")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)



def log_cache_totals(p: Plan, tracker, parent: str) -> None:
    """Sums the final cache/* counters of each trial and confirmation arm into the parent run's tags (and prints
    them). Tags, not metrics: they are bookkeeping, not a chart to compare trials on."""
    if p.cache_dir is None:
        return
    keys = CACHE_COUNTERS
    totals = dict.fromkeys(keys, 0.0)
    for run in tracker.descendants(parent):
        for k in keys:
            totals[k] += float(run.data.tags.get(k, 0.0))
    tracker.set_tags(parent, {**counter_tags(totals), "saeception.cache_dir": redact(p.cache_dir)})
    hits, misses, saved = (totals[k] for k in ("cache/hits", "cache/misses", "cache/seconds_saved"))
    print(f"stage cache {redact(p.cache_dir)}: {int(hits)} hits, {int(misses)} misses, {saved:.0f} s of stage work saved",
          flush=True)


def log_sweep_plots(p: Plan, tracker, parent: str, rows: list[dict], best: list[dict]) -> None:
    """Optuna's own views of the study (saeception.sweep.plots.optuna_plots) as PNGs on the parent run;
    a view that cannot be drawn yet (e.g. importances from too few trials) is named in a tag."""
    import optuna  # lazy: Optuna only where the study is opened


    if not p.plots:
        tracker.set_tags(parent, {"saeception.plots_skipped": "--no-plots"})
        return
    started = time.time()
    study = optuna.load_study(study_name=p.name, storage=p.optuna_uri)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        tracker.set_tags(parent, {"saeception.plots_skipped": "no complete trial"})
        return
    files, skipped = optuna_plots(study, p.space.metrics, p.space.modes, p.sweep_dir)
    tracker.set_tags(parent, {f"{TIMING}plots_started_at": f"{started:.3f}", f"{TIMING}plots_finished_at": f"{time.time():.3f}"})
    for view, why in skipped.items():
        log.warning("%s skipped: %s", view, why)
        tracker.set_tags(parent, {f"saeception.plot_skipped.{view}": why})
    for f in files:
        tracker.log_artifact(parent, f)


NOTE = "mlflow.note.content"  # a run's description in the MLflow UI (Markdown), shown above its details
STALE_BEST = "saeception.best_params_stale"


def log_winner(tracker, parent: str, top: dict[str, Any]) -> None:
    """The winner's sampled values as params `best.<key>` on the parent run. MLflow never changes a logged param:
    when a resumed sweep's winner differs from the one logged first, the params stay the first winner's and the
    tag saeception.best_params_stale says so (best_trial_id and the description name the current one)."""
    values = {f"best.{k}": v for k, v in top["config"].items()}
    logged = tracker.client.get_run(parent).data.params
    changed = sorted(k for k, v in values.items() if k in logged and logged[k] != str(v))
    tracker.log_params(parent, values)
    if changed:
        tracker.set_tags(parent, {STALE_BEST: f"the winner changed on --resume ({', '.join(changed)}); these params "
                                              f"are the first winner's: see best_trial_id and the description"})


def _cell(v: Any) -> str:
    """A value in a Markdown table cell: a float to 4 significant digits ("-" when not finite), a pipe escaped."""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"
    return str(v).replace("|", "\\|")


def sweep_note(p: Plan, rows: list[dict[str, Any]], best: list[dict[str, Any]], verdict: str | None = None,
               confirmation: dict[str, Any] | None = None) -> str:
    """The sweep run's description (Markdown): the verdict, the winner and its configuration, the headline
    comparisons at the last cycle with their intervals; `confirmation` is what confirm() returned (None: no
    confirmation finished, `verdict` then says why, if it ran)."""
    from saeception.eval.confirm import (  # lazy: the statistics only once there is a verdict
        last_cycle,
        seeds_line,
    )

    stopped = sum(r["stopped_at"] is not None for r in rows)
    failed = sum(r["error"] for r in rows)
    out = [f"**Sweep `{p.name}`**: {len(rows) - stopped - failed} trials finished, {stopped} stopped early, "
           f"{failed} failed."]
    if confirmation:
        seeds, controls = confirmation["n_seeds"], confirmation["settings"].controls
        out.append(f"**Verdict** (the winner against {', '.join(f'`{c}`' for c in controls)} on {seeds} fresh seeds, "
                   f"test split, last cycle): {confirmation['verdict']}")
        if more := seeds_line(confirmation["rows"], confirmation["headline"], controls):
            out.append(f"Seeds that would decide what is inconclusive: {more} (`--resume --confirm-seeds N`).")
    elif verdict:
        out.append(f"**Verdict**: {verdict}")
    elif p.confirm.seeds == 0:
        out.append("No confirmation ran (`--confirm-seeds 0`): the winner is the search's best on the validation "
                   "split, not a result confirmed on fresh seeds.")
    elif best:
        out.append(f"The confirmation on {p.confirm.seeds} fresh seeds has not finished (yet): no verdict.")
    if best:
        top = best[0]
        title = "Winner" if len(best) == 1 else f"Winner (first of a Pareto front of {len(best)})"
        objs = ", ".join(f"`{m}` {_cell(top[m])}" for m in p.space.metrics)
        table = ["| searched | value |", "|---|---|", *(f"| `{k}` | {_cell(v)} |" for k, v in sorted(top["config"].items()))]
        out += [f"### {title}: trial `{top['trial_id']}`",
                f"Objectives (validation split, last cycle): {objs}. Its full config: artifact `best_config.yaml`; "
                "its export: artifacts `best/`.", "\n".join(table)]
    else:
        out.append("No trial finished: no winner.")
    if confirmation:
        headline, controls = confirmation["headline"], confirmation["settings"].controls
        lines = ["| metric | control | best − control | interval | margin | verdict |", "|---|---|---|---|---|---|"]
        for r in last_cycle(confirmation["rows"]):
            if r["metric"] not in headline:
                continue
            for c in controls:
                if f"verdict_{c}" in r:
                    lo, hi = r[f"ci_{c}"]
                    lines.append(f"| `{r['metric']}` | `{c}` | {r[f'diff_{c}_mean']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
                                 f"{_cell(r['margin']) if r.get('margin') else '-'} | {r[f'verdict_{c}']} |")
        cycle = max(r["cycle"] for r in confirmation["rows"])
        out += [f"### Headline comparisons at cycle {cycle}",
                "Paired difference over seeds with its anytime-valid interval (the one the verdict rests on). Every "
                "metric and cycle: artifacts `confirmation_table.json`, `confirmation.md`, `confirmation.png` (here and "
                "on the confirmation run).", "\n".join(lines)]
    return "\n\n".join(out) + "\n"
