"""MSigDB Hallmark gene sets (GMT; the set name is the pathway id)."""

from __future__ import annotations

from pathways_kg.readers import GeneSet, read_gmt
from pathways_kg.sources.base import GraphBuilder, Provenance, Source
from pathways_kg.sources.reactome import add_gene_sets

HALLMARK = Provenance(
    "MSigDB Hallmark v2024.1",
    "CC BY 4.0",
    "Liberzon et al. 2015 Cell Systems 1:417 (MSigDB Hallmark gene sets)",
)


class HallmarkSource(Source):
    """``gene member_of pathway:HALLMARK_...`` for the 50 Hallmark sets."""

    provenance = HALLMARK
    shipped = "h.all.v2024.1.Hs.symbols.gmt"

    def read(self) -> list[GeneSet]:
        return read_gmt(self.path, "hallmark")

    def gene_sets(self, records: list[GeneSet]) -> list[GeneSet]:
        return records

    def add(self, builder: GraphBuilder, records: list[GeneSet]) -> None:
        add_gene_sets(builder, records, self.provenance, self.path)
