"""Curated cell-type markers: a TSV ``cell_type, gene, reference``."""

from __future__ import annotations

from pathways_kg.readers import read_markers
from pathways_kg.schema import make_id
from pathways_kg.sources.base import CURATED, GraphBuilder, Source


class MarkersSource(Source):
    """``gene marker_of celltype``, each with its reference."""

    provenance = CURATED
    shipped = "cell_type_markers.tsv"

    def read(self) -> list[tuple[str, str, str, int]]:
        return read_markers(self.path)

    def add(self, builder: GraphBuilder, records: list[tuple[str, str, str, int]]) -> None:
        for cell_type, gene, reference, line in records:
            cid, gid = make_id("celltype", cell_type), make_id("gene", gene)
            builder.entity(cid, cell_type, self.provenance, self.origin(line))
            builder.entity(gid, gene, self.provenance, self.origin(line))
            builder.edge(gid, "marker_of", cid, self.provenance, reference, self.origin(line))
