"""Curated triples: a TSV ``head, relation, tail, reference`` whose ids the graph already has."""

from __future__ import annotations

from pathways_kg.errors import KGError
from pathways_kg.readers import CuratedTriple, read_curated_triples
from pathways_kg.registry import did_you_mean
from pathways_kg.schema import split_id
from pathways_kg.sources.base import CURATED, GraphBuilder, Source

#: the curated layer shipped in ``pathways_kg/data``
CURATED_TRIPLE_FILES = ("curated_celltypes.tsv", "curated_phenotypes.tsv", "curated_regulation.tsv")


class TriplesSource(Source):
    """Typed facts with a reference each; every id must be known by now (a gene that is nobody's
    member or marker dangles), so this source comes after the ones that declare its entities."""

    provenance = CURATED

    def read(self) -> list[CuratedTriple]:
        return read_curated_triples(self.path)

    def add(self, builder: GraphBuilder, records: list[CuratedTriple]) -> None:
        for t in records:
            for end in (t.head, t.tail):
                if end not in builder.graph.entities:
                    kind = split_id(end)[0]
                    if kind == "gene":
                        raise KGError(
                            f"{t.origin}: dangling gene {end!r}: it is a member or marker of nothing in the graph"
                        )
                    known = [e for e in builder.graph.entities if e.startswith(kind + ":")]
                    raise KGError(
                        f"{t.origin}: unknown entity {end!r}{did_you_mean(end, known)}; declare phenotypes, "
                        "tissues and extra cell types in curated_entities.tsv"
                    )
            builder.edge(t.head, t.relation, t.tail, self.provenance, t.reference, t.origin)
