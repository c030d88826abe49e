"""`python -m saeception.sweep --dry-run`: what a sweep would do, from its plan alone. Starts no Ray,
opens no MLflow run, writes nothing."""

from __future__ import annotations

import os
import warnings

import torch
import yaml

from saeception.store.uris import redact

from ..config import to_dict
from . import memory_plan
from .plan import Plan
from .resources import TRIAL_CPU, check_local_resources

# How many sampled trial configs the dry run shows.
SHOWN_TRIALS = 3


def sample_configs(p: Plan, n: int, concurrency: int = 1) -> list[dict]:
    """The first `n` configs the sweep's sampler proposes, from an in-memory Optuna study seeded and
    configured as the real one (TPE, --seed). Nothing is told back, as in a sweep whose first trials
    are all running: while TPE is in its random start-up (10 trials) these are the configs the real
    sweep's first trials get."""
    import optuna  # lazy: Optuna only where the study is opened

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if m == "max" else "minimize" for m in p.space.modes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=p.search.seed, constant_liar=concurrency > 1)
        study = optuna.create_study(directions=directions, sampler=sampler)
        out = []
        for _ in range(n):
            trial = study.ask()
            p.space.suggest(trial)
            out.append(dict(trial.params))
    return out


def _cluster(p: Plan) -> tuple[float, float] | None:
    """CPUs and GPUs of the local Ray the sweep would start; None with --address (known only once connected)."""
    if p.resources.address:
        return None

    return float(p.resources.num_cpus or os.cpu_count() or 1), float(torch.cuda.device_count())


def describe(p: Plan) -> str:
    res, search = p.resources, p.search
    n = min(SHOWN_TRIALS, search.trials)
    lines = [f"dry run of sweep {p.name!r}: nothing started, nothing written", "",
             "base config (every trial; searched keys are overridden per trial):",
             yaml.safe_dump(to_dict(p.space.config({})), sort_keys=False).rstrip(), ""]
    searched = ", ".join(q.key for q in p.space.params)
    lines.append(f"searched ({len(p.space.params)}): {searched}")
    lines.append("objectives: " + ", ".join(f"{o.metric} ({o.mode})" for o in p.space.objectives))
    cluster = _cluster(p)
    concurrency = check_local_resources(res, search.trials) if cluster else 1
    lines.append(f"first {n} of {search.trials} sampled trial configs (TPE, seed {search.seed}):")
    trials = sample_configs(p, n, concurrency)
    for i, sampled in enumerate(trials):
        p.space.config(sampled)  # each is a valid config
        lines.append(f"  trial {i}: " + " ".join(f"{k}={_fmt(v)}" for k, v in sampled.items()))
    cpu = TRIAL_CPU + res.workers_per_trial * res.cpus_per_worker
    gpu = res.workers_per_trial * res.gpus_per_worker
    lines += ["", f"resources per trial: {cpu:g} CPU ({TRIAL_CPU:g} for the trial driver + {res.workers_per_trial} "
              f"worker(s) x {res.cpus_per_worker:g}), {gpu:g} GPU"]
    if cluster is None:
        lines.append(f"concurrency: decided on connecting to {res.address} (cluster CPUs / {cpu:g}"
                     + (f", GPUs / {gpu:g}" if gpu else "") + (f", at most {res.max_concurrent}" if res.max_concurrent else "") + ")")
    else:
        lines.append(f"concurrency: {concurrency} trial(s) at once on a local Ray with "
                     f"{cluster[0]:g} CPUs, {cluster[1]:g} GPUs")
    lines += ["", *memory_plan.describe(p.memory, p.space, res, trials), ""]
    confirm = (f"then the best config and its controls ({', '.join(p.confirm.settings.controls)}) on {p.confirm.seeds} "
               "fresh seeds, and a verdict" if p.confirm.seeds else "no confirmation")
    lines += [f"confirmation: {confirm}", f"storage: {redact(p.storage)}",
              f"MLflow: {redact(p.mlflow_uri)} (experiment {p.experiment!r})", f"optuna: {redact(p.optuna_uri)}",
              f"stage cache: {redact(p.cache_dir) if p.cache_dir else 'off'}"]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
