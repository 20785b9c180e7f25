"""Assemble the phenotype-pathway-tissue graph from its sources.

Order: Reactome gene sets and hierarchy, MSigDB Hallmark gene sets, the curated cell-type markers,
the curated entity declarations and triples (cell-type hierarchy, phenotypes, regulation, spatial),
PanglaoDB markers if a path is given, then user-supplied extra triple files. The same fact from two
sources becomes one edge whose ``source``/``licence`` list both; a duplicate inside one file is an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from pathways_kg import sources as src
from pathways_kg.config import BuildConfig, check_build
from pathways_kg.errors import KGError, suggest
from pathways_kg.graph import Edge, Entity, Graph, drop_isolated, restrict, validate
from pathways_kg.io import data_path
from pathways_kg.schema import RELATIONS, make_id, split_id

logger = logging.getLogger(__name__)

CURATED_TRIPLE_FILES = ("curated_celltypes.tsv", "curated_phenotypes.tsv", "curated_regulation.tsv")
#: PanglaoDB organ names that are the same tissue as a curated one
ORGAN_ALIASES = {"Mammary gland": "breast"}
_EPONYMS = {
    "Bergmann",
    "Cajal-Retzius",
    "Clara",
    "His",
    "Kupffer",
    "Langerhans",
    "Leydig",
    "Merkel",
    "Müller",
    "Paneth",
    "Purkinje",
    "Schwann",
    "Sertoli",
}


class _Builder:
    def __init__(self) -> None:
        self.graph = Graph()
        self._index: dict[tuple[str, str, str], int] = {}

    def entity(self, eid: str, label: str, source: src.Source | str, origin: str = "") -> None:
        if eid not in self.graph.entities:
            name = source if isinstance(source, str) else source.name
            self.graph.entities[eid] = Entity(eid, split_id(eid)[0], label, name, origin)

    def edge(
        self, head: str, relation: str, tail: str, source: src.Source, reference: str = "", origin: str = ""
    ) -> None:
        self.graph.sources.setdefault(source.name, {"licence": source.licence, "citation": source.citation})
        pairs = [(head, tail), (tail, head)] if RELATIONS[relation].symmetric else [(head, tail)]
        for h, t in pairs:
            key = (h, relation, t)
            if key in self._index:  # the same fact from another source: merge provenance
                i = self._index[key]
                old = self.graph.edges[i]
                if source.name not in old.source.split("; "):
                    refs = "; ".join(r for r in (old.reference, reference) if r)
                    self.graph.edges[i] = Edge(
                        h,
                        relation,
                        t,
                        f"{old.source}; {source.name}",
                        f"{old.licence}; {source.licence}",
                        refs,
                        old.origin,
                    )
                continue
            self._index[key] = len(self.graph.edges)
            self.graph.edges.append(Edge(h, relation, t, source.name, source.licence, reference, origin))


def build_graph(cfg: BuildConfig | None = None, universe: Iterable[str] | None = None) -> Graph:
    """Build, validate and (with ``universe``) restrict the graph described by ``cfg``."""
    cfg = check_build(cfg or BuildConfig())
    s = cfg.sources
    b = _Builder()
    if s.reactome:
        _add_reactome(
            b,
            s.reactome_gmt or data_path("ReactomePathways.gmt"),
            s.reactome_hierarchy or data_path("ReactomePathwaysRelation.human.txt"),
        )
    if s.hallmark:
        _add_gene_sets(
            b,
            src.read_gmt(s.hallmark_gmt or data_path("h.all.v2024.1.Hs.symbols.gmt"), "hallmark"),
            src.HALLMARK,
            s.hallmark_gmt or data_path("h.all.v2024.1.Hs.symbols.gmt"),
        )
    _add_markers(b, s.markers or data_path("cell_type_markers.tsv"))
    for ent in src.read_curated_entities(s.curated_entities or data_path("curated_entities.tsv")):
        b.entity(ent.id, split_id(ent.id)[1], src.CURATED, ent.origin)
    curated = s.curated if s.curated is not None else tuple(str(data_path(n)) for n in CURATED_TRIPLE_FILES)
    for path in curated:
        _add_curated(b, path)
    if s.panglao:
        _add_panglao(
            b,
            s.panglao,
            s.panglao_organs,
            s.panglao_canonical_only,
            s.panglao_map or data_path("cell_type_name_map.tsv"),
        )
    for path in s.extra:
        _add_curated(b, path)
    validate(b.graph)
    graph = drop_isolated(b.graph)
    if universe is not None:
        graph = restrict(graph, universe, min_genes=cfg.min_genes, min_markers=cfg.min_markers)
    logger.info("graph: %d entities, %d edges", len(graph.entities), len(graph.edges))
    return graph


def _add_gene_sets(b: _Builder, sets: list[src.GeneSet], source: src.Source, path: str | Path) -> None:
    for gs in sets:
        pid = make_id("pathway", gs.id)
        b.entity(pid, gs.label, source, f"{path}:{gs.line}")
        for gene in gs.genes:
            gid = make_id("gene", gene)
            b.entity(gid, gene, source, f"{path}:{gs.line}")
            b.edge(gid, "member_of", pid, source, origin=f"{path}:{gs.line}")


def _add_reactome(b: _Builder, gmt: str | Path, hierarchy: str | Path) -> None:
    _add_gene_sets(b, src.read_gmt(gmt, "reactome"), src.REACTOME, gmt)
    for parent, child, line in src.read_reactome_hierarchy(hierarchy):
        for rid in (parent, child):  # container pathways without genes in the GMT keep their id as label
            b.entity(make_id("pathway", rid), rid, src.REACTOME, f"{hierarchy}:{line}")
        b.edge(
            make_id("pathway", child),
            "part_of",
            make_id("pathway", parent),
            src.REACTOME,
            origin=f"{hierarchy}:{line}",
        )


def _add_markers(b: _Builder, path: str | Path) -> None:
    for cell_type, gene, reference, line in src.read_markers(path):
        cid, gid = make_id("celltype", cell_type), make_id("gene", gene)
        b.entity(cid, cell_type, src.CURATED, f"{path}:{line}")
        b.entity(gid, gene, src.CURATED, f"{path}:{line}")
        b.edge(gid, "marker_of", cid, src.CURATED, reference, f"{path}:{line}")


def _add_curated(b: _Builder, path: str | Path) -> None:
    """Curated triples; every id must be known by now (genes too: a gene that is nobody's member dangles)."""
    for t in src.read_curated_triples(path):
        for end in (t.head, t.tail):
            if end not in b.graph.entities:
                kind = split_id(end)[0]
                if kind == "gene":
                    raise KGError(
                        f"{t.origin}: dangling gene {end!r}: it is a member or marker of nothing in the graph"
                    )
                known = [e for e in b.graph.entities if e.startswith(kind + ":")]
                raise KGError(
                    f"{t.origin}: unknown entity {end!r}{suggest(end, known)}; declare phenotypes, "
                    "tissues and extra cell types in curated_entities.tsv"
                )
        b.edge(t.head, t.relation, t.tail, src.CURATED, t.reference, t.origin)


def panglao_name(name: str) -> str:
    """Singular, sentence-case cell-type name: ``"Acinar cells"`` -> ``"acinar cell"``."""
    words = re.sub(r"\bcells\b", "cell", name).split(" ")
    if "cell" not in words:  # "Fibroblasts", "Glutaminergic neurons", "Endothelial cells (aorta)"
        last = next(
            (i for i in range(len(words) - 1, -1, -1) if not words[i].startswith("(")), len(words) - 1
        )
        if words[last].endswith("s") and not words[last].endswith("ss"):
            words[last] = words[last][:-1]
    first = words[0]
    if first not in _EPONYMS and len(first) > 1 and first[1:2].islower():
        words[0] = first[0].lower() + first[1:]
    return " ".join(words)


def _add_panglao(
    b: _Builder, path: str | Path, organs: Iterable[str], canonical_only: bool, map_path: str | Path
) -> None:
    mapping = src.read_panglao_map(map_path)
    rows = src.read_panglao(path, tuple(organs), canonical_only)
    for name, (alias, parent, _reference) in mapping.items():
        target = alias or parent
        if make_id("celltype", target) not in b.graph.entities:
            raise KGError(f"{map_path}: {name!r} maps to unknown cell type {target!r}")
    seen_types: set[str] = set()
    for row in rows:
        alias, parent, reference = mapping.get(row.cell_type, ("", "", ""))
        cid = make_id("celltype", alias or panglao_name(row.cell_type))
        b.entity(cid, row.cell_type, src.PANGLAO, f"{path}:{row.line}")
        gid = make_id("gene", row.gene)
        b.entity(gid, row.gene, src.PANGLAO, f"{path}:{row.line}")
        b.edge(gid, "marker_of", cid, src.PANGLAO, origin=f"{path}:{row.line}")
        if row.organ:
            tid = make_id("tissue", ORGAN_ALIASES.get(row.organ, row.organ.lower()))
            b.entity(tid, row.organ, src.PANGLAO, f"{path}:{row.line}")
            b.edge(cid, "found_in", tid, src.PANGLAO, origin=f"{path}:{row.line}")
        if parent and cid not in seen_types:
            b.edge(cid, "subtype_of", make_id("celltype", parent), src.CURATED, reference, f"{map_path}")
        seen_types.add(cid)
    logger.info("PanglaoDB: %d human marker rows, %d cell types", len(rows), len(seen_types))
