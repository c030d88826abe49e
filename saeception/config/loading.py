"""From YAML and --set to a validated Config, and the key documentation generated from the schema (the
keys table of docs/config.md and `python -m saeception.run --keys`)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import yaml

from saeception.config.schema import Config, ConfigError

# Keys that are gone, with what replaced them: a config or space naming one fails (as any unknown key does)
# with this hint instead of the list of every key.
REMOVED_KEYS = {
    "eval.min_firings": "removed: the threshold is now a share of the split's examples, `eval.min_firing_rate` "
                        "(ceil(rate × n) of n examples; its default 0.0125 is 5 of 360)",
}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: t for name, t in hints.items() if dataclasses.is_dataclass(t)}


def config_keys() -> dict[str, Any]:
    """Every dotted key with its type annotation, e.g. {"sae.k": int, "seed": int}."""
    out: dict[str, Any] = {}
    for name, t in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(t):
            for sub, st in typing.get_type_hints(t).items():
                out[f"{name}.{sub}"] = st
        else:
            out[name] = t
    return out


@dataclass(frozen=True)
class KeyDoc:
    key: str
    type: Any
    default: Any
    help: str


def key_docs() -> list[KeyDoc]:
    """Every dotted key with its type, default and help text, in declaration order."""
    out = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if dataclasses.is_dataclass(t):
                walk(t, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append(KeyDoc(prefix + f.name, t, default, f.metadata.get("help", "")))

    walk(Config, "")
    return out


def _show_default(v: Any) -> str:
    if v is None:
        return "`null`"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f"`{v}`" if v else '`""`'
    if isinstance(v, float) and v and abs(v) < 1e-2:
        mantissa, exponent = f"{v:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(v, float):
        return f"{v:g}"
    return f"`{v}`" if isinstance(v, list) else str(v)


def _short_type(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        return " or ".join(_short_type(a) for a in typing.get_args(t))
    if origin is list:
        return f"list of {_short_type(typing.get_args(t)[0])}"
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def keys_table() -> str:
    """docs/config.md's key table, generated from the dataclasses (a test keeps the page equal to it)."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for d in key_docs():
        lines.append(f"| `{d.key}` | {_short_type(d.type)} | {_show_default(d.default)} | {d.help} |")
    return "\n".join(lines)


def keys_text() -> str:
    """`python -m saeception.run --keys`: every key with type, default and help, one per line."""
    docs = key_docs()
    width = max(len(d.key) for d in docs)
    return "\n".join(f"{d.key.ljust(width)}  {_short_type(d.type)}, default {_show_default(d.default).strip('`')}: "
                     f"{d.help.replace('`', '')}" for d in docs)


def _type_name(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    if origin is list:
        inner = typing.get_args(t)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(inner, _type_name(inner))
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true/false",
            type(None): "null"}.get(t, str(t))


def _coerce(key: str, value: Any, t: Any) -> Any:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(t):
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: must be {_type_name(t)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be {_type_name(t)}, got {value!r}")
        (inner,) = typing.get_args(t)
        return [_coerce(key, v, inner) for v in value]
    if t is type(None):
        if value is None:
            return None
    elif t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "1e-4" as a string; it is a number everywhere a number is expected.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: must be {_type_name(t)}, got {value!r}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"sae": {"k": 8}} -> {"sae.k": 8}; dotted keys pass through."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def build_config(values: dict[str, Any]) -> Config:
    """Builds a validated Config from nested and/or dotted keys. Raises ConfigError."""
    keys = config_keys()
    sections: dict[str, dict[str, Any]] = {name: {} for name in _section_types()}
    top: dict[str, Any] = {}
    for key, value in flatten(values).items():
        if key not in keys:
            raise ConfigError(f"{key}: {REMOVED_KEYS[key]}" if key in REMOVED_KEYS
                              else f"{key}: unknown config key (known: {', '.join(sorted(keys))})")
        coerced = _coerce(key, value, keys[key])
        section, _, sub = key.partition(".")
        if sub:
            sections[section][sub] = coerced
        else:
            top[key] = coerced
    built = {}
    for name, cls in _section_types().items():
        built[name] = cls(**sections[name])
    return Config(**top, **built)


def parse_override(item: str) -> tuple[str, Any]:
    """'sae.k=32' -> ("sae.k", 32); the value is parsed as YAML (numbers, lists, booleans)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: must be KEY=VALUE, e.g. sae.k=32")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path, what: str = "--config") -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{what}: cannot read {p}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what}: {p} is not valid YAML{where}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {p} must hold a mapping of config keys")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    values: dict[str, Any] = flatten(read_yaml(path)) if path else {}
    for item in overrides or []:
        key, value = parse_override(item)
        values[key] = value
    return build_config(values)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_flat_dict(cfg: Config) -> dict[str, Any]:
    return flatten(to_dict(cfg))
