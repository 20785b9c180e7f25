"""Registries of named classes (KG sources, KG models) and the package's one "unknown name" error.

A registry is class_resolver's ``ClassResolver.from_subclasses(base)``, the pattern of pykeen's
``loss_resolver``: every subclass of ``base`` defined in the package is registered under its class
name, lower-cased, without the base's name as suffix (``GMTSource`` -> ``gmt``, ``TransE`` ->
``transe``). :func:`registry` first imports every module of a folder, so that adding a class is
adding one file. :func:`lookup` is the one place an unknown name becomes a :class:`KGError`:
``unknown KG model 'rotat'; did you mean 'rotate'? (registered: complex, kg2e, rotate, transe)``.
(histokg has its own helper: this package must not import histokg.)
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterable
from typing import Any, TypeVar

from class_resolver import ClassResolver

from pathways_kg.errors import KGError, suggest

X = TypeVar("X")


def registry(base: type[X], package: str, folder: Iterable[str]) -> ClassResolver[X]:
    """Import every public module of ``package`` (at ``folder``), then register the subclasses of ``base``."""
    for module in pkgutil.iter_modules(list(folder)):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
    return ClassResolver.from_subclasses(base, exclude_predicate=inspect.isabstract)


def lookup(resolver: ClassResolver[X], name: Any, what: str, key: str = "") -> type[X]:
    """The class registered as ``name``; else a :class:`KGError` naming ``key``, the nearest name and all names."""
    try:
        return resolver.lookup(name)
    except (KeyError, ValueError, TypeError):
        names = sorted(resolver.lookup_dict)
        nearest = suggest(resolver.normalize(str(name)), names)
        where = f"{key}: " if key else ""
        raise KGError(f"{where}unknown {what} {name!r}{nearest} (registered: {', '.join(names)})") from None


def check_kwargs(cls: type, given: Iterable[str], what: str) -> None:
    """Raise a :class:`KGError` for a keyword argument ``cls`` does not take, with the nearest valid one."""
    valid = [
        p
        for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "args", "kwargs", "triples_factory")
    ]
    for key in given:
        if key not in valid:
            raise KGError(f"{what} has no argument {key!r}{suggest(key, valid)} (valid: {', '.join(valid)})")
