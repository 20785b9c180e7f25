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
from pathlib import Path

from pathways_kg.config import BuildConfig, check_build
from pathways_kg.errors import KGError
from pathways_kg.graph import Graph, drop_isolated, restrict, validate
from pathways_kg.readers import GeneSet
from pathways_kg.sources import GraphBuilder, make_source
from pathways_kg.sources.panglao import ORGAN_ALIASES, panglao_name
from pathways_kg.sources.triples import CURATED_TRIPLE_FILES

__all__ = ["CURATED_TRIPLE_FILES", "ORGAN_ALIASES", "build_graph", "check_universe", "panglao_name"]

logger = logging.getLogger(__name__)


def build_graph(cfg: BuildConfig | None = None, universe: Iterable[str] | None = None) -> Graph:
    """Build, validate and (with ``universe``) restrict the graph described by ``cfg``; with a universe,
    each gene-set file the user gave is checked against it first (:func:`check_universe`)."""
    cfg = check_build(cfg or BuildConfig())
    builder = GraphBuilder()
    user_sets: list[tuple[Path, list[GeneSet]]] = []
    for part in cfg.sources.plan():
        source = make_source(part.name, part.kwargs)
        records = source.add_to(builder)
        sets = source.gene_sets(records)
        if source.user_supplied and sets:
            user_sets.append((source.path, sets))
    validate(builder.graph)
    graph = drop_isolated(builder.graph)
    if universe is not None:
        universe = list(dict.fromkeys(universe))
        for path, sets in user_sets:
            check_universe(path, sets, universe, cfg.min_genes)
        graph = restrict(graph, universe, min_genes=cfg.min_genes, min_markers=cfg.min_markers)
    logger.info("graph: %d entities, %d edges", len(graph.entities), len(graph.edges))
    return graph


FEW = 0.1  # below this share of a user file's genes in the universe, the build warns


def check_universe(path: Path, sets: list[GeneSet], universe: list[str], min_genes: int) -> None:
    """A user's gene-set file against the gene universe the graph is restricted to.

    KGError naming the file, the line and the set when none of its sets keeps ``min_genes`` genes in the
    universe (the file would add nothing: another species' symbols, Ensembl ids for symbols); a warning
    with the counts when some of its sets are dropped or fewer than :data:`FEW` of its genes are in it.
    """
    known = set(universe)
    genes = list(dict.fromkeys(g for s in sets for g in s.genes))
    matched = sum(1 for g in genes if g in known)
    kept = [s for s in sets if sum(1 for g in set(s.genes) if g in known) >= min_genes]
    dropped = [s for s in sets if s not in kept]
    if kept and not dropped and matched >= FEW * len(genes):
        return
    missing = [g for g in genes if g not in known]
    folded = {u.upper() for u in known}
    by_case = sum(1 for g in missing if g.upper() in folded)
    if by_case:
        hint = f"{by_case} of them match ignoring case (another species' symbols, e.g. mouse Actb for human ACTB?)"
    else:
        hint = "another species, or ids (Ensembl, Entrez) where the universe has symbols?"
    counts = (
        f"{matched} of its {len(genes)} genes are in the gene universe ({len(universe)} genes, e.g. "
        f"{', '.join(universe[:3])}); not found: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
    )
    first = dropped[0] if dropped else sets[0]
    if not kept:
        raise KGError(
            f"{path}:{first.line}: gene set {first.id!r}: none of the file's {len(sets)} gene set(s) keeps "
            f"{min_genes} genes in the gene universe (min_genes), so the file would add nothing to the graph: "
            f"{counts}; {hint}"
        )
    drop = (
        f"{len(dropped)} of its {len(sets)} gene sets keep fewer than {min_genes} genes and are dropped "
        f"(first: {first.id!r}, line {first.line})"
        if dropped
        else f"all {len(sets)} gene sets are kept"
    )
    few = f"; {hint}" if matched < FEW * len(genes) else ""
    logger.warning("%s: %s; %s%s", path, counts, drop, few)
