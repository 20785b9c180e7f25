"""KG sources: the registry of input files the graph is built from, one class per file in this folder.

A source is named by its registry name in the KG config: ``build.sources.add: [{name: gmt, kwargs:
{path: my_sets.gmt}}]``; the ``build.sources`` shorthand keys (``hallmark_gmt``, ``panglao``...)
name the built-in ones (:meth:`~pathways_kg.config.SourcesConfig.plan`). Each module's docstring
says what its file holds; ``source_registry.names`` lists the names. A name is matched as every
registry name is (:mod:`pathways_kg.registry`: any case, ``-``/``_`` ignored).

How to add a source: one file here with a :class:`~pathways_kg.sources.base.Source` subclass, plus
its test case in ``tests/kg`` (a ``SourceCase`` subclass, see ``test_kg_source_gmt.py``). Every
module of this folder is imported below, so nothing else needs editing. The file readers live in
:mod:`pathways_kg.readers` (also re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pathways_kg.errors import KGError
from pathways_kg.readers import (
    CuratedEntity,
    CuratedTriple,
    GeneSet,
    PanglaoRow,
    check_entity_id,
    check_relation,
    read_curated_entities,
    read_curated_triples,
    read_gmt,
    read_markers,
    read_panglao,
    read_panglao_map,
    read_reactome_hierarchy,
    tsv_rows,
)
from pathways_kg.registry import Registry, check_kwargs, import_modules, subclasses
from pathways_kg.sources.base import CURATED, GraphBuilder, Provenance, Source

__all__ = [
    "CURATED",
    "CuratedEntity",
    "CuratedTriple",
    "GeneSet",
    "GraphBuilder",
    "PanglaoRow",
    "Provenance",
    "Source",
    "check_entity_id",
    "check_relation",
    "get_source",
    "make_source",
    "read_curated_entities",
    "read_curated_triples",
    "read_gmt",
    "read_markers",
    "read_panglao",
    "read_panglao_map",
    "read_reactome_hierarchy",
    "source_registry",
    "tsv_rows",
]

import_modules(__name__, __path__)
#: every :class:`Source` subclass of this folder, by name
source_registry: Registry[type[Source]] = Registry(
    sorted(subclasses(Source), key=lambda c: c.name), "KG source"
)


def get_source(name: str, key: str = "") -> type[Source]:
    """The source class registered as ``name``; an unknown name is a KGError naming ``key``."""
    return source_registry.lookup(name, where=key)


def make_source(name: str, kwargs: Mapping[str, Any] | None = None, key: str = "") -> Source:
    """A configured source (its files are not read yet); errors name ``key`` (``build.sources.add[0]``)."""
    cls = get_source(name, f"{key}.name" if key else "")
    kwargs = dict(kwargs or {})
    where = f"{key}.kwargs: KG source {cls.name!r}" if key else f"KG source {cls.name!r}"
    check_kwargs(cls, kwargs, where, keyword_only=False)
    try:
        return cls(**kwargs)
    except KGError as exc:
        raise KGError(f"{key}: {exc}" if key else str(exc)) from None
