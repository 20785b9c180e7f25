"""Any MSigDB-style GMT gene-set file the user names: ``name<TAB>description<TAB>gene...`` per line.

In the KG config: ``build.sources.add: [{name: gmt, kwargs: {path: c2.cp.kegg.gmt, licence: ...}}]``.

A set named like one already in the graph (a shipped Hallmark set such as ``HALLMARK_HYPOXIA``, a
Reactome id, or a set of another user file) is refused, naming the file, the line and where the other
set comes from: merging the user's genes into the published set would change it without a word. Rename
the set, give the file a ``prefix`` (``kwargs: {path: my.gmt, prefix: LAB_}`` makes ``LAB_HALLMARK_HYPOXIA``),
or leave the shipped source out (``build.sources.hallmark: false``) to replace it. With a gene universe,
:func:`pathways_kg.build.build_graph` checks that the file's genes are in it (:func:`pathways_kg.build.check_universe`).
"""

from __future__ import annotations

from pathlib import Path

from pathways_kg.errors import KGError
from pathways_kg.readers import GeneSet, read_gmt
from pathways_kg.schema import make_id
from pathways_kg.sources.base import GraphBuilder, Provenance, Source
from pathways_kg.sources.reactome import add_gene_sets


class GMTSource(Source):
    """``gene member_of pathway:<prefix><set name>`` for every set of the file.

    ``label``, ``licence`` and ``citation`` are the provenance written on each edge (default: the
    file's name, licence not stated, the file's path): the terms of a user's file are theirs to state.
    ``prefix`` is put before every set's name (its id and label), e.g. to keep a user's version of a
    shipped set apart from it.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        label: str | None = None,
        licence: str = "not stated (user-supplied file)",
        citation: str | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__(path)
        self.prefix = str(prefix)
        self.provenance = Provenance(
            label or f"gene sets {self.path.name}", licence, citation or str(self.path)
        )

    def read(self) -> list[GeneSet]:
        sets = read_gmt(self.path, "hallmark")  # the set name is the pathway id
        if self.prefix:
            sets = [GeneSet(self.prefix + s.id, self.prefix + s.label, s.genes, s.line) for s in sets]
        return sets

    def add(self, builder: GraphBuilder, records: list[GeneSet]) -> None:
        clashes = [s for s in records if make_id("pathway", s.id) in builder.graph.entities]
        if clashes:
            first = clashes[0]
            other = builder.graph.entities[make_id("pathway", first.id)]
            more = f" (and {len(clashes) - 1} more: {', '.join(s.id for s in clashes[1:4])}{' ...' if len(clashes) > 4 else ''})"
            raise KGError(
                f"{self.path}:{first.line}: gene set {first.id!r}{more if len(clashes) > 1 else ''} is already in "
                f"the graph from {other.source} ({other.origin or 'shipped'}); its genes would be merged into "
                "that set silently: rename the set, give this gmt source a prefix (kwargs: {prefix: LAB_}), "
                "or leave the other source out (e.g. build.sources.hallmark: false)"
            )
        add_gene_sets(builder, records, self.provenance, self.path)

    def gene_sets(self, records: list[GeneSet]) -> list[GeneSet]:
        return records
