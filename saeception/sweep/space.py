"""Search spaces: YAML over the core's dotted config keys, validated before anything starts.

    name: default                      # optional; the sweep name defaults to it
    fixed:                             # config values every trial shares (nested or dotted keys)
      chain.cycles: 2
    params:
      sae.kind: {choices: [topk, l1]}
      sae.k: {type: int, low: 4, high: 64, log: true, when: {sae.kind: topk}}
      sae.l1_coefficient: {type: float, low: 1.0e-3, high: 0.1, log: true, when: {sae.kind: l1}}
    objectives:
      - {metric: val_task_accuracy, mode: max}

A param is a float or int range (`low` < `high`, optional `log`, optional int `step`) or a list of
`choices`; `when` makes it conditional on earlier categorical params. Objectives must be validation
metrics (`val_*`) read at the chain's last cycle: test metrics are for reporting only. An optional
`confirm:` section sets the confirmation (saeception.eval.confirm.ConfirmSettings: controls, alpha, margins,
sae_seeds). Optional `constraints:` bound validation metrics at the last cycle, e.g.

    constraints:
      - {metric: val_explained_variance, min: 0.8}
      - {metric: val_task_accuracy, min: 0.9}

told to Optuna with each finished trial (`Trial.set_constraint`, Optuna 5's constrained optimisation, which
replaced the samplers' deprecated `constraints_func`: TPE models the feasible trials) and honoured when the
best trial or the Pareto front is chosen: an infeasible trial is never best.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from saeception.eval.confirm import ConfirmSettings, parse_settings
from saeception.eval.evaluate import VAL_METRIC_NAMES
from saeception.method.sharpen import is_noop

from ..config import REMOVED_KEYS, Config, ConfigError, build_config, config_keys, flatten, read_yaml

TOP_KEYS = ("name", "description", "fixed", "params", "objectives", "constraints", "confirm")
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "when")


@dataclass
class Param:
    key: str
    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: list[Any] = field(default_factory=list)
    when: dict[str, list[Any]] = field(default_factory=dict)

    def active(self, sampled: dict[str, Any]) -> bool:
        return all(k in sampled and sampled[k] in vs for k, vs in self.when.items())

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass
class Objective:
    metric: str
    mode: str  # "max" | "min"


@dataclass
class Constraint:
    """A bound on a validation metric at the last cycle: exactly one of `min`, `max`."""

    metric: str
    min: float | None = None
    max: float | None = None

    def violation(self, value: Any) -> float:
        """<= 0 when met, by how much it is missed otherwise (Optuna's constraints convention); inf when the
        value is missing or not finite."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return math.inf
        return float(self.min - value) if self.min is not None else float(value - self.max)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, **({"min": self.min} if self.min is not None else {"max": self.max})}


def violations(constraints: list[Constraint], result: dict[str, Any]) -> list[float]:
    return [c.violation(result.get(c.metric)) for c in constraints]


@dataclass
class SearchSpace:
    name: str
    fixed: dict[str, Any]
    params: list[Param]
    objectives: list[Objective]
    source: str = ""
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)  # the `confirm:` section
    constraints: list[Constraint] = field(default_factory=list)

    def feasible(self, result: dict[str, Any]) -> bool:
        """Every constraint met by `result` (a trial's last-cycle metrics)."""
        return all(v <= 0 for v in violations(self.constraints, result))

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def suggest(self, trial) -> None:
        """Optuna define-by-run: samples the active params in order (conditions see earlier values)."""
        sampled: dict[str, Any] = {}
        for p in self.params:
            if not p.active(sampled):
                continue
            if p.kind == "float":
                sampled[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log)
            elif p.kind == "int":
                sampled[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=p.step or 1, log=p.log)
            else:
                sampled[p.key] = trial.suggest_categorical(p.key, p.choices)

    def config(self, sampled: dict[str, Any]) -> Config:
        """The trial's full config: fixed values overlaid with the sampled ones."""
        return build_config({**self.fixed, **sampled})

    def to_dict(self) -> dict[str, Any]:
        params = {}
        for p in self.params:
            spec: dict[str, Any] = {"choices": p.choices} if p.kind == "categorical" else {"type": p.kind, "low": p.low, "high": p.high}
            if p.log:
                spec["log"] = True
            if p.step:
                spec["step"] = p.step
            if p.when:
                spec["when"] = p.when
            params[p.key] = spec
        return {"name": self.name, "fixed": self.fixed, "params": params,
                "objectives": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
                **({"constraints": [c.to_dict() for c in self.constraints]} if self.constraints else {}),
                "confirm": self.confirm.to_dict()}


def _number(where: str, v: Any) -> float:
    if isinstance(v, str):
        try:  # PyYAML reads "1e-4" as a string
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}: must be a finite number, got {v!r}")
    return float(v)


def _param(key: str, spec: Any, known: dict[str, Any], earlier: dict[str, Param]) -> Param:
    where = f"params.{key}"
    if key not in known:
        raise ConfigError(f"{where}: {REMOVED_KEYS[key]}" if key in REMOVED_KEYS else
                          f"{where}: unknown config key (see `python -m saeception.run --keys` or docs/config.md for keys)")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: must be a mapping like {{type: float, low: 0.1, high: 1}} or {{choices: [...]}}")
    for k in spec:
        if k not in PARAM_KEYS:
            raise ConfigError(f"{where}.{k}: unknown field (allowed: {', '.join(PARAM_KEYS)})")
    if "choices" in spec:
        if "type" in spec and spec["type"] != "categorical":
            raise ConfigError(f"{where}.type: a param with choices is categorical")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices: must be a non-empty list")
        p = Param(key, "categorical", choices=choices)
    else:
        kind = spec.get("type")
        if kind not in ("float", "int"):
            raise ConfigError(f"{where}.type: must be float or int (or give choices: [...])")
        takes = _number_kinds(known[key])
        if kind not in takes:
            # A float range samples fractions: every trial of an int key would fail on its value.
            allowed = f"use type: {takes[0]}, or choices" if takes else "a range is for numeric keys; use choices"
            raise ConfigError(f"{where}.type: {key} is not a {kind} key; {allowed}")
        for bound in ("low", "high"):
            if bound not in spec:
                raise ConfigError(f"{where}.{bound}: required for a {kind} range")
        low, high = _number(f"{where}.low", spec["low"]), _number(f"{where}.high", spec["high"])
        if not low < high:
            raise ConfigError(f"{where}.low: must be < high (got low={spec['low']}, high={spec['high']})")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: must be true or false")
        if log and low <= 0:
            raise ConfigError(f"{where}.low: must be > 0 with log: true")
        step = spec.get("step")
        if step is not None and (kind != "int" or not isinstance(step, int) or step < 1 or log):
            raise ConfigError(f"{where}.step: only for int ranges without log, and must be an integer >= 1")
        if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}.low: an int range needs integer bounds")
        p = Param(key, kind, low=low, high=high, log=log, step=step)
    when = spec.get("when", {})
    if not isinstance(when, dict):
        raise ConfigError(f"{where}.when: must map earlier categorical params to allowed values")
    for cond_key, values in when.items():
        values = values if isinstance(values, list) else [values]
        cond = earlier.get(cond_key)
        if cond is None or cond.kind != "categorical":
            raise ConfigError(f"{where}.when.{cond_key}: must name a categorical param listed before {key}")
        bad = [v for v in values if v not in cond.choices]
        if bad:
            raise ConfigError(f"{where}.when.{cond_key}: {bad[0]!r} is not one of its choices {cond.choices}")
        p.when[cond_key] = values
    return p


def _number_kinds(t: Any) -> tuple[str, ...]:
    """The range types a config field takes: ("float", "int") for a float, ("int",) for an int."""
    args = typing.get_args(t) if typing.get_origin(t) in (typing.Union, types.UnionType) else (t,)
    if float in args:
        return ("float", "int")
    return ("int",) if int in args else ()


def parse_space(data: dict[str, Any], source: str = "", overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> SearchSpace:
    """base: a run config (dotted keys) under every trial; the space's `fixed:`, then `overrides`
    (--set), then the searched params override it."""
    for k in data:
        if k not in TOP_KEYS:
            raise ConfigError(f"{k}: unknown search-space field (allowed: {', '.join(TOP_KEYS)})")
    fixed_raw = data.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        raise ConfigError("fixed: must be a mapping of config keys")
    fixed = {**flatten(fixed_raw), **(overrides or {})}
    try:
        build_config(fixed)
    except ConfigError as e:
        raise ConfigError(f"fixed.{e}") from None
    searched = set(data.get("params") or {}) if isinstance(data.get("params"), dict) else set()
    under = {k: v for k, v in (base or {}).items() if k not in fixed and k not in searched}
    if under:
        fixed = {**under, **fixed}
        try:
            build_config(fixed)
        except ConfigError as e:
            raise ConfigError(f"--config: with the space's fixed values and --set, {e}") from None

    params_raw = data.get("params") or {}
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError("params: must map at least one config key to a range or choices")
    known = config_keys()
    params: dict[str, Param] = {}
    for key, spec in params_raw.items():
        if key in fixed:
            raise ConfigError(f"params.{key}: is also fixed (in fixed: or --set); search it or fix it, not both")
        params[key] = _param(key, spec, known, params)

    # Every value a param can take must be valid for its config field.
    for p in params.values():
        for value in p.extremes():
            try:
                build_config({**fixed, p.key: int(value) if p.kind == "int" else value})
            except ConfigError as e:
                raise ConfigError(f"params.{e}") from None
    _check_k_fits(fixed, params)
    if "aux.weight" in params and build_config(fixed).aux.weight_per_cycle:
        raise ConfigError("params.aux.weight: fixed.aux.weight_per_cycle replaces aux.weight in every cycle, so the "
                          "searched value would be ignored; search one of them")

    objectives_raw = data.get("objectives")
    if not isinstance(objectives_raw, list) or not objectives_raw:
        raise ConfigError("objectives: must be a non-empty list of {metric: val_..., mode: max|min}")
    objectives = []
    for i, o in enumerate(objectives_raw):
        if not isinstance(o, dict) or set(o) - {"metric", "mode"}:
            raise ConfigError(f"objectives[{i}]: must be {{metric: ..., mode: max|min}}")
        metric, mode = o.get("metric"), o.get("mode", "max")
        if metric not in VAL_METRIC_NAMES:
            hint = f" (objectives use the validation split: try val_{metric})" if f"val_{metric}" in VAL_METRIC_NAMES else ""
            raise ConfigError(f"objectives[{i}].metric: {metric!r} is not a validation metric{hint}; "
                              f"allowed: {', '.join(VAL_METRIC_NAMES)}")
        if mode not in ("max", "min"):
            raise ConfigError(f"objectives[{i}].mode: must be max or min, got {mode!r}")
        objectives.append(Objective(metric, mode))
    if len({o.metric for o in objectives}) != len(objectives):
        raise ConfigError("objectives: a metric is listed twice")
    name = data.get("name") or Path(source).stem or "sweep"
    return SearchSpace(str(name), fixed, list(params.values()), objectives, source, parse_settings(data.get("confirm")),
                       _constraints(data.get("constraints")))


def _constraints(raw: Any) -> list[Constraint]:
    if raw is None:
        return []
    shape = "a list of {metric: val_..., min: NUMBER} or {metric: val_..., max: NUMBER}"
    if not isinstance(raw, list):
        raise ConfigError(f"constraints: must be {shape}")
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or set(c) - {"metric", "min", "max"} or len(set(c) & {"min", "max"}) != 1:
            raise ConfigError(f"constraints[{i}]: must be {{metric: val_..., min: NUMBER}} or {{metric: val_..., max: NUMBER}} "
                              f"(exactly one bound), got {c!r}")
        metric = c.get("metric")
        if metric not in VAL_METRIC_NAMES:
            hint = f" (constraints use the validation split: try val_{metric})" if f"val_{metric}" in VAL_METRIC_NAMES else ""
            raise ConfigError(f"constraints[{i}].metric: {metric!r} is not a validation metric{hint}; "
                              f"allowed: {', '.join(VAL_METRIC_NAMES)}")
        bound = "min" if "min" in c else "max"
        out.append(Constraint(metric, **{bound: _number(f"constraints[{i}].{bound}", c[bound])}))
    if len({c.metric for c in out}) != len(out):
        raise ConfigError("constraints: a metric is bounded twice (give one min or max per metric)")
    return out


def _check_k_fits(fixed: dict[str, Any], params: dict[str, Param]) -> None:
    """For the MLP the layer width is known from config: reject any sae.k >= latents up front."""
    cfg = build_config(fixed)
    if cfg.model.name != "mlp" or isinstance(cfg.model.layer, str):
        return  # transformer widths are checked when a trial loads its model
    width = cfg.model.hidden_sizes[cfg.model.layer]
    k = params.get("sae.k")
    k_max = k.high if k and k.kind != "categorical" else max(k.choices) if k else cfg.sae.k
    e = params.get("sae.expansion_factor")
    e_min = e.low if e and e.kind != "categorical" else min(e.choices) if e else cfg.sae.expansion_factor
    if k_max >= e_min * width:
        where = "params.sae.k" if k else "fixed.sae.k"
        raise ConfigError(f"{where}: must be < the number of latents ({int(e_min * width)} = expansion {int(e_min)} x width {width})")
    _check_sharpening_can_bite(cfg, params, width)


def _lowest(params: dict[str, Param], key: str, default: Any) -> Any:
    p = params.get(key)
    return default if p is None else (min(p.choices) if p.kind == "categorical" else p.low)


def _check_sharpening_can_bite(cfg: Config, params: dict[str, Param], width: int) -> None:
    """per_example sharpening keeps every active latent of a TopK code when it keeps >= k latents: reject a
    space in which that holds for every configuration it can sample (its sharpening would do nothing)."""
    strategies = params["sharpen.strategy"].choices if "sharpen.strategy" in params else [cfg.sharpen.strategy]
    kinds = params["sae.kind"].choices if "sae.kind" in params else [cfg.sae.kind]
    if strategies != ["per_example"] or not set(kinds) <= {"topk", "batchtopk"}:
        return
    k = params.get("sae.k")
    k_max = (max(k.choices) if k.kind == "categorical" else int(k.high)) if k else cfg.sae.k
    n_min = int(_lowest(params, "sae.expansion_factor", cfg.sae.expansion_factor)) * width
    pct_min = float(_lowest(params, "sharpen.top_k_pct", cfg.sharpen.top_k_pct))
    if is_noop("per_example", "topk", k_max, n_min, pct_min):
        raise ConfigError(f"params.sharpen.top_k_pct: with per_example sharpening every sampled config keeps >= sae.k "
                          f"latents (smallest: {pct_min:g}% of {n_min} latents vs k <= {k_max}), so sharpening would keep "
                          "every active latent; lower sharpen.top_k_pct or raise sae.k")


def load_space(path: str | Path, overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> SearchSpace:
    return parse_space(read_yaml(path, "--space"), str(path), overrides, base)


def shipped_spaces() -> dict[str, Any]:
    """The search spaces installed with saeception (`search_spaces/*.yaml`), by name."""
    root = files("saeception.search_spaces")
    return {p.name.removesuffix(".yaml"): p for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_space(name_or_path: str) -> Any:
    """A path to a YAML file, or the name of a shipped space ("default", "gpt2_sst2", ...)."""
    if Path(name_or_path).exists() or name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        return Path(name_or_path)
    shipped = shipped_spaces()
    if name_or_path not in shipped:
        raise ConfigError(f"--space: {name_or_path!r} is neither a file nor a shipped space ({', '.join(sorted(shipped))})")
    return shipped[name_or_path]
