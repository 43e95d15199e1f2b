"""YAML configuration: ``base:`` composition, dotted overrides and typed validation.

A config file may name other files under ``base:`` (a string or a list). Bases are merged in the
order given, each one's own bases first, and the file itself last, so later files override
earlier ones. Relative base paths are looked up next to the including file, then among the
configs shipped with geosane (``geosane/configs``). Command-line overrides ``a.b=value`` are
applied after composition; values are parsed as YAML (``lr=3e-4``, ``layers=[1,2]``).

The merged mapping is validated against a dataclass schema by :func:`from_dict`: unknown keys are
rejected with the closest valid key, values are coerced to the annotated types.

We validate with dataclasses rather than OmegaConf/pydantic because the error messages are part
of the product (an unknown key must name the closest valid one) and the schema stays plain Python.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from geosane.errors import ConfigError
from geosane.io import write_text

__all__ = [
    "PACKAGED_CONFIGS",
    "compose",
    "expand_dotted",
    "find_config",
    "flatten_dotted",
    "from_dict",
    "load_config",
    "merge",
    "packaged_configs",
    "parse_overrides",
    "save_config",
    "to_dict",
]

T = TypeVar("T")

PACKAGED_CONFIGS = Path(str(resources.files("geosane") / "configs"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def _find_base(name: str, including: Path) -> Path:
    candidate = Path(name).expanduser()
    if candidate.is_absolute():
        return candidate
    for root in (including.parent, PACKAGED_CONFIGS):
        if (root / candidate).is_file():
            return root / candidate
    raise ConfigError(
        f"base config '{name}' named in {including} not found next to it or in {PACKAGED_CONFIGS}"
    )


def find_config(name: str | Path, folder: str) -> Path:
    """A config file path, else a config shipped with geosane: the one way every stage finds a config.

    ``name`` may be an existing file, or name a packaged config relative to ``configs/<folder>``
    or to ``configs`` itself, with or without ``.yaml`` (``rsscn7_gw``, ``difuser/rsscn7_gw.yaml``).
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    for root in (PACKAGED_CONFIGS / folder, PACKAGED_CONFIGS):
        for candidate in (root / str(name), root / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    raise ConfigError(
        f"config file not found: {name} (packaged {folder} configs: {', '.join(packaged_configs(folder))})"
    )


def packaged_configs(folder: str) -> list[str]:
    """File names of the configs shipped in ``configs/<folder>`` (``["small.yaml", "tiny.yaml"]``)."""
    return sorted(p.name for p in (PACKAGED_CONFIGS / folder).glob("*.yaml"))


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge two mappings; values of ``override`` win, nested mappings merge."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def compose(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load ``path`` with all its ``base:`` files merged (bases first, the file itself last)."""
    path = Path(path).expanduser().resolve()
    if path in _stack:
        cycle = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"config bases form a cycle: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"'base' in {path} must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for name in bases:
        merged = merge(merged, compose(_find_base(name, path), (*_stack, path)))
    return merge(merged, data)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[x, y]"]`` into ``{"a": {"b": 1}, "c": ["x", "y"]}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.lr=3e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return out


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to annotation ``tp`` or raise a ConfigError naming ``where``."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    args = get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"invalid value {value!r} for '{where}'")
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(str(a) for a in args)
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"invalid value {value!r} for '{where}': expected one of {choices}{hint}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{where}' needs {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"'{where}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{where}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{where}' must be a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value).expanduser()
        raise ConfigError(f"'{where}' must be a path, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"'{where}' must be {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and coercing types."""
    if not _is_dataclass_type(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            valid = [f"{where}.{k}" if where else k for k in fields]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        names = ", ".join(f"{where}.{m}" if where else m for m in missing)
        raise ConfigError(f"missing required config key(s): {names}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config{f' for {where}' if where else ''}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain-Python (YAML/JSON-ready) view of a config dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def expand_dotted(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "a.c": 2, "d": 3}`` -> ``{"a": {"b": 1, "c": 2}, "d": 3}`` (top-level keys only,
    merged in order, so later keys win)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        head, *rest = str(key).split(".")
        for part in reversed(rest):
            value = {part: value}
        out = merge(out, {head: value})
    return out


def flatten_dotted(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "d": 3}`` -> ``{"a.b": 1, "d": 3}``: the inverse of :func:`expand_dotted`,
    how a resumed run's stored config is compared with the new one key by key."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    defaults: Mapping[str, Any] | None = None,
) -> T:
    """Compose ``path`` (if given) over ``defaults``, apply overrides, validate against ``cls``."""
    data: dict[str, Any] = dict(defaults or {})
    if path is not None:
        data = merge(data, compose(path))
    extra = parse_overrides(overrides) if not isinstance(overrides, Mapping) else expand_dotted(overrides)
    data = merge(data, extra)
    return from_dict(cls, data)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Atomically write a config dataclass as YAML (what was actually run, for reproducibility)."""
    return write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
