"""KG sources: the registry of input files the graph is built from, one class per file in this folder.

A source is named by its registry name in the KG config: ``build.sources.add: [{name: gmt, kwargs:
{path: my_sets.gmt}}]``; the ``build.sources`` shorthand keys (``hallmark_gmt``, ``panglao``...)
name the built-in ones (:meth:`~pathways_kg.config.SourcesConfig.plan`). Each module's docstring
says what its file holds; ``sorted(source_resolver.lookup_dict)`` lists the names.

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
from pathways_kg.registry import check_kwargs, lookup, registry
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
    "source_resolver",
    "tsv_rows",
]

#: every :class:`Source` subclass of this folder, by name
source_resolver = registry(Source, __name__, __path__)


def get_source(name: str, key: str = "") -> type[Source]:
    """The source class registered as ``name``; an unknown name is a KGError naming ``key``."""
    return lookup(source_resolver, name, "KG source", key)


def make_source(name: str, kwargs: Mapping[str, Any] | None = None, key: str = "") -> Source:
    """A configured source (its files are not read yet); errors name ``key`` (``build.sources.add[0]``)."""
    cls = get_source(name, f"{key}.name" if key else "")
    kwargs = dict(kwargs or {})
    check_kwargs(cls, kwargs, f"{key}.kwargs: KG source {cls.name!r}" if key else f"KG source {cls.name!r}")
    try:
        return cls(**kwargs)
    except KGError as exc:
        raise KGError(f"{key}: {exc}" if key else str(exc)) from None
