"""Configuration: frozen dataclasses are the schema, YAML files fill them.

Every section of a config is a frozen dataclass. :func:`load_config` reads a YAML file, applies
``--set a.b=value`` overrides and builds the dataclass tree, checking every key and type on the
way: an unknown key is an error that names it and suggests the nearest valid one. Pluggable parts
(losses, encoders, KG models) are :class:`Component` values, ``{name, kwargs}``; the name of a
registered part is recorded as its registry spells it (:data:`NAMES`: ``--set loss.name=KG-Soft``
loads as ``kg_soft``, so every later comparison sees ``kg_soft``).
:func:`save_config` writes the resolved config next to outputs so that a run can be repeated.

The engine is :mod:`pathways_kg.dataconf` (shared with ``pathways-kg``); here its errors become
:class:`~histokg.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from histokg.errors import ConfigError
from pathways_kg import dataconf
from pathways_kg.dataconf import Component, check, merge, to_dict

__all__ = [
    "NAMES",
    "Component",
    "check",
    "from_dict",
    "load_config",
    "merge",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "to_dict",
]

T = TypeVar("T")


def _loss_name(name: str) -> str:
    from histokg.losses import loss_registry

    return loss_registry.canonical(name)


def _kg_model_name(name: str) -> str:
    from pathways_kg.models import model_registry

    return model_registry.canonical(name)


def _kg_source_name(name: str) -> str:
    from pathways_kg.sources import source_registry

    return source_registry.canonical(name)


#: The Component fields of histokg's configs whose names a registry records, by dotted key: the loss
#: of ``histokg train`` (``loss``), the losses of ``histokg bench`` and ``histokg demo`` (``losses``),
#: the demo's training run and knowledge graph. An unknown name is left for the schema to refuse.
NAMES: dataconf.Names = {
    "loss": _loss_name,
    "losses": _loss_name,
    "train.loss": _loss_name,
    "kg.embed.model": _kg_model_name,
    "kg.build.sources.add": _kg_source_name,
}


def _translate(fn, *args):
    try:
        return fn(*args)
    except dataconf.DataConfError as exc:
        raise ConfigError(str(exc)) from None


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating keys and value types (names as :data:`NAMES`)."""
    return _translate(dataconf.from_dict, cls, data, where, NAMES)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    return _translate(dataconf.parse_overrides, overrides)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file and line."""
    return _translate(dataconf.read_yaml, path)


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> T:
    """Load ``cls`` from defaults, then ``base``, then the YAML file ``path``, then overrides.

    Registered names are recorded as their registry spells them (:data:`NAMES`).
    """
    return _translate(dataconf.load, cls, path, overrides, base, NAMES)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically; returns the path."""
    return dataconf.save(cfg, path)
