"""Configuration of ``pathways-kg``: frozen dataclasses filled from YAML and ``--set a.b=value`` overrides.

``pathways_kg`` does not import ``histokg``, so it carries its own small loader. Unknown keys raise a
:class:`~pathways_kg.errors.KGError` naming the key and the nearest valid one; values are checked
against the annotations (numbers, strings, booleans, lists, mappings, nested sections).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pathways_kg.errors import KGError, suggest

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Component:
    """A pluggable part looked up by name in a registry, with keyword arguments for it."""

    name: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SourcesConfig:
    """Input files of the graph; ``None`` means the copy shipped in ``pathways_kg/data``."""

    reactome_gmt: str | None = None
    reactome_hierarchy: str | None = None
    hallmark_gmt: str | None = None
    markers: str | None = None
    curated: tuple[str, ...] | None = None  # curated triple files; None: the shipped curated layer
    curated_entities: str | None = None
    panglao: str | None = None  # PanglaoDB markers TSV, read from the user's path only
    panglao_organs: tuple[str, ...] = ()  # keep only these PanglaoDB organs (empty: all)
    panglao_canonical_only: bool = False
    panglao_map: str | None = None  # PanglaoDB cell type -> curated cell type / parent
    extra: tuple[str, ...] = ()  # more curated triple files (head, relation, tail, reference)
    reactome: bool = True
    hallmark: bool = True


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    sources: SourcesConfig = dataclasses.field(default_factory=SourcesConfig)
    min_genes: int = 5  # with a gene universe: pathways with fewer genes in it are dropped
    min_markers: int = 1  # with a gene universe: PanglaoDB cell types with fewer markers are dropped


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float = 0.01
    optimizer: str = "adam"
    negatives_per_positive: int = 1
    loss: Component | None = None  # None: pykeen's default loss for the model


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_triples: int | None = None  # evaluate on a seeded subsample of the test triples
    batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    model: Component = dataclasses.field(default_factory=lambda: Component("transe", {"embedding_dim": 64}))
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclasses.dataclass(frozen=True)
class KGConfig:
    build: BuildConfig = dataclasses.field(default_factory=BuildConfig)
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), cls: type[T] = KGConfig) -> T:
    """Defaults, then the YAML file ``path``, then ``key.path=value`` overrides."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
    data = merge(data, parse_overrides(overrides))
    try:
        return from_dict(cls, data)
    except KGError as exc:
        raise KGError(f"{source}: {exc}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KGError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise KGError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KGError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise KGError(f"override {item!r} is not of the form key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise KGError(f"override {item!r}: value is not valid YAML ({exc})") from None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KGError(f"override {item!r} conflicts with an earlier override of {part!r}")
        node[parts[-1]] = value
    return nested


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise KGError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise KGError(
                f"unknown config key {dotted!r}{suggest(str(key), fields)} (valid here: {', '.join(fields)})"
            )
        default = _default(fields[key])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(default):
            value = merge(to_dict(default), value)  # a partial section keeps the other defaults
        values[key] = _coerce(hints[key], value, dotted)
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise KGError(f"{where or 'config'}: {exc}") from None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def to_dict(cfg: Any) -> Any:
    """Plain YAML/JSON-friendly view of a config tree."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except KGError as exc:
                errors.append(str(exc))
        raise KGError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return value if dataclasses.is_dataclass(value) else from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise KGError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise KGError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise KGError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KGError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KGError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise KGError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise KGError(f"{where}: expected a string, got {value!r}")
        return value
    return value
