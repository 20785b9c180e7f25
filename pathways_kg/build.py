"""Assemble the phenotype-pathway-tissue graph from its sources.

The sources are registered classes (:mod:`pathways_kg.sources`), built in the order of
:meth:`~pathways_kg.config.SourcesConfig.plan`: Reactome gene sets and hierarchy, MSigDB Hallmark
gene sets, the curated cell-type markers, the curated entity declarations and triples (cell-type
hierarchy, phenotypes, regulation, spatial), PanglaoDB markers if a path is given, user-supplied
extra triple files, then any source the config adds by name. The same fact from two sources becomes
one edge whose ``source``/``licence`` list both; a duplicate inside one file is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pathways_kg.config import BuildConfig, check_build
from pathways_kg.graph import Graph, drop_isolated, restrict, validate
from pathways_kg.sources import GraphBuilder, make_source
from pathways_kg.sources.panglao import ORGAN_ALIASES, panglao_name
from pathways_kg.sources.triples import CURATED_TRIPLE_FILES

__all__ = ["CURATED_TRIPLE_FILES", "ORGAN_ALIASES", "build_graph", "panglao_name"]

logger = logging.getLogger(__name__)


def build_graph(cfg: BuildConfig | None = None, universe: Iterable[str] | None = None) -> Graph:
    """Build, validate and (with ``universe``) restrict the graph described by ``cfg``."""
    cfg = check_build(cfg or BuildConfig())
    builder = GraphBuilder()
    for part in cfg.sources.plan():
        make_source(part.name, part.kwargs).add_to(builder)
    validate(builder.graph)
    graph = drop_isolated(builder.graph)
    if universe is not None:
        graph = restrict(graph, universe, min_genes=cfg.min_genes, min_markers=cfg.min_markers)
    logger.info("graph: %d entities, %d edges", len(graph.entities), len(graph.edges))
    return graph
