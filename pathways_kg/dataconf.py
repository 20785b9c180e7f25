"""Frozen-dataclass configuration: YAML files and ``--set a.b=value`` overrides, checked on the way in.

The engine behind both ``pathways_kg.config`` and ``histokg.config`` (it lives here because
``pathways_kg`` must not import ``histokg``; ``histokg`` may import ``pathways_kg``). Each caller
turns :class:`DataConfError` into its own user-facing error type.

- Unknown keys are errors naming the dotted key and the nearest valid one.
- Values are checked against the annotations: numbers (``3e-3``, which YAML 1.1 reads as a string,
  counts as a number), integers, booleans, strings, paths, literals, tuples, mappings, optionals and
  nested sections. A partial nested section is completed from the field's default; a
  :class:`Component` whose ``name`` changes does not inherit the default's ``kwargs``.
- ``names`` (a mapping from a :class:`Component` field's dotted key, list indices left out, to a
  function) turns the names users give into the names a registry records: ``{"loss": canonical}``
  makes ``--set loss.name=KG-Soft`` load as ``kg_soft``. An unknown name is left as it is for the
  schema's own check to refuse.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pathways_kg.io import atomic_open
from pathways_kg.registry import did_you_mean

T = TypeVar("T")
#: Component field (dotted key without list indices) -> the function giving the name to record
Names = Mapping[str, Callable[[str], str]]
_INDEX = re.compile(r"\[\d+\]")


class DataConfError(ValueError):
    """A config file, override or value that does not fit the schema."""


@dataclasses.dataclass(frozen=True)
class Component:
    """A pluggable part looked up by name in a registry, with keyword arguments for it."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping; errors name the file and line (``file:line: ...``)."""
    path = Path(path)
    if not path.is_file():
        raise DataConfError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataConfError(f"config file {path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DataConfError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataConfError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DataConfError(f"override {item!r} is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise DataConfError(f"override {item!r}: value is not valid YAML ({exc})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DataConfError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
    names: Names | None = None,
) -> T:
    """Defaults of ``cls``, then ``base``, then the YAML file ``path``, then overrides (``names``: see above)."""
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        data = merge(data, read_yaml(path))
        source = str(path)
    overrides = list(overrides)
    try:
        return from_dict(cls, merge(data, parse_overrides(overrides)), names=names)
    except DataConfError as exc:
        raise DataConfError(_blame(cls, data, overrides, source, str(exc), names)) from None


def _blame(
    cls: type, data: Mapping[str, Any], overrides: list[str], source: str, message: str, names: Names | None
) -> str:
    """Prefix an error with what caused it: the file (it fails the same way alone) or the ``--set``."""
    if overrides:
        try:
            from_dict(cls, data, names=names)
            alone = None
        except DataConfError as exc:
            alone = str(exc)
        if alone != message:  # the overrides changed the outcome: they are at fault
            last = {o.partition("=")[0].strip(): o for o in overrides}  # a repeated key: the last one wins
            named = [o for key, o in last.items() if key in message]
            return f"--set {' '.join(named or last.values())}: {message}"
    return f"{source}: {message}"


def check(condition: bool, key: str, message: str) -> None:
    """For ``__post_init__`` validation: raise :class:`DataConfError` ``"key: message"`` unless ``condition``."""
    if not condition:
        raise DataConfError(f"{key}: {message}")


def save(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
    return path


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "", names: Names | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types (``names``: see above)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise DataConfError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            hint = did_you_mean(key, fields)
            raise DataConfError(f"unknown config key {dotted!r}{hint} (valid keys here: {', '.join(fields)})")
        value = _named(value, names.get(_INDEX.sub("", dotted)) if names else None)
        values[key] = _coerce(hints[key], _with_defaults(fields[key], value), dotted, names)
    try:
        return cls(**values)
    except TypeError as exc:  # a required field without default is missing
        raise DataConfError(f"{where or 'config'}: {exc}") from None
    except DataConfError as exc:  # a value check in __post_init__ (see :func:`check`)
        raise DataConfError(f"{where}.{exc}" if where else str(exc)) from None


def to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-friendly view of a config tree."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, tuple | list):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _named(value: Any, rename: Callable[[str], str] | None) -> Any:
    """``value`` (a Component, its mapping, or a list of them) with each name as ``rename`` records it."""
    if rename is None:
        return value
    if isinstance(value, list | tuple):
        return type(value)(_named(v, rename) for v in value)
    if isinstance(value, Component) and isinstance(value.name, str):
        return dataclasses.replace(value, name=rename(value.name))
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return {**value, "name": rename(value["name"])}
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if f.default is not dataclasses.MISSING:
        return f.default
    return None


def _with_defaults(f: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested dataclass field is completed from the field's default."""
    if not isinstance(value, Mapping):
        return value
    default = _default(f)
    if not dataclasses.is_dataclass(default):
        return value
    base = to_dict(default)
    if isinstance(default, Component) and value.get("name", default.name) != default.name:
        base = {"name": default.name, "kwargs": {}}  # another component: the old kwargs do not apply
    return merge(base, value)


def _coerce(tp: Any, value: Any, where: str, names: Names | None = None) -> Any:
    """Check ``value`` against annotation ``tp``; lists become tuples, mappings nested sections."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where, names)
            except DataConfError as exc:
                errors.append(str(exc))
        raise DataConfError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise DataConfError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return value if dataclasses.is_dataclass(value) else from_dict(tp, value, where, names)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise DataConfError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]", names) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise DataConfError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _coerce(a, v, f"{where}[{i}]", names) for i, (a, v) in enumerate(zip(args, value, strict=False))
        )
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise DataConfError(f"{where}: expected a mapping, got {value!r}")
        return (
            {k: _coerce(args[1], v, f"{where}.{k}", names) for k, v in value.items()} if args else dict(value)
        )
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise DataConfError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataConfError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataConfError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise DataConfError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise DataConfError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise DataConfError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value
