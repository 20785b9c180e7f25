"""Reactome: pathway gene sets (GMT, column 2 the R-HSA id) and the ``parent<TAB>child`` hierarchy."""

from __future__ import annotations

from pathlib import Path

from pathways_kg.io import data_path
from pathways_kg.readers import GeneSet, read_gmt, read_reactome_hierarchy
from pathways_kg.schema import make_id
from pathways_kg.sources.base import GraphBuilder, Provenance, Source

REACTOME = Provenance(
    "Reactome", "CC0 1.0", "Gillespie et al. 2022 Nucleic Acids Res (Reactome pathway knowledgebase)"
)


class ReactomeSource(Source):
    """``gene member_of pathway`` from the GMT, ``child part_of parent`` from the hierarchy file."""

    provenance = REACTOME
    shipped = "ReactomePathways.gmt"

    def __init__(self, path: str | Path | None = None, hierarchy: str | Path | None = None) -> None:
        super().__init__(path)
        self.hierarchy = Path(hierarchy) if hierarchy else data_path("ReactomePathwaysRelation.human.txt")

    def read(self) -> tuple[list[GeneSet], list[tuple[str, str, int]]]:
        return read_gmt(self.path, "reactome"), read_reactome_hierarchy(self.hierarchy)

    def gene_sets(self, records: tuple[list[GeneSet], list[tuple[str, str, int]]]) -> list[GeneSet]:
        return records[0]

    def add(self, builder: GraphBuilder, records: tuple[list[GeneSet], list[tuple[str, str, int]]]) -> None:
        sets, edges = records
        add_gene_sets(builder, sets, self.provenance, self.path)
        for parent, child, line in edges:
            origin = self.origin(line, self.hierarchy)
            for rid in (parent, child):  # container pathways without genes in the GMT keep their id as label
                builder.entity(make_id("pathway", rid), rid, self.provenance, origin)
            builder.edge(
                make_id("pathway", child),
                "part_of",
                make_id("pathway", parent),
                self.provenance,
                origin=origin,
            )


def add_gene_sets(builder: GraphBuilder, sets: list[GeneSet], source: Provenance, path: str | Path) -> None:
    """``gene member_of pathway:<set id>`` for every gene of every set (shared by the GMT sources)."""
    for gs in sets:
        pid = make_id("pathway", gs.id)
        builder.entity(pid, gs.label, source, f"{path}:{gs.line}")
        for gene in gs.genes:
            gid = make_id("gene", gene)
            builder.entity(gid, gene, source, f"{path}:{gs.line}")
            builder.edge(gid, "member_of", pid, source, origin=f"{path}:{gs.line}")
