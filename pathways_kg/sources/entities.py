"""Curated entity declarations: a TSV ``id, definition, reference`` (phenotypes, tissues, extra cell types)."""

from __future__ import annotations

from pathways_kg.readers import CuratedEntity, read_curated_entities
from pathways_kg.schema import split_id
from pathways_kg.sources.base import CURATED, GraphBuilder, Source


class EntitiesSource(Source):
    """Declares entities (no triples) so that later triple files may name them."""

    provenance = CURATED
    shipped = "curated_entities.tsv"

    def read(self) -> list[CuratedEntity]:
        return read_curated_entities(self.path)

    def add(self, builder: GraphBuilder, records: list[CuratedEntity]) -> None:
        for ent in records:
            builder.entity(ent.id, split_id(ent.id)[1], self.provenance, ent.origin)
