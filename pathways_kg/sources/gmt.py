"""Any MSigDB-style GMT gene-set file the user names: ``name<TAB>description<TAB>gene...`` per line.

In the KG config: ``build.sources.add: [{name: gmt, kwargs: {path: c2.cp.kegg.gmt, licence: ...}}]``.
"""

from __future__ import annotations

from pathlib import Path

from pathways_kg.readers import GeneSet, read_gmt
from pathways_kg.sources.base import GraphBuilder, Provenance, Source
from pathways_kg.sources.reactome import add_gene_sets


class GMTSource(Source):
    """``gene member_of pathway:<set name>`` for every set of the file.

    ``label``, ``licence`` and ``citation`` are the provenance written on each edge (default: the
    file's name, licence not stated, the file's path): the terms of a user's file are theirs to state.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        label: str | None = None,
        licence: str = "not stated (user-supplied file)",
        citation: str | None = None,
    ) -> None:
        super().__init__(path)
        self.provenance = Provenance(
            label or f"gene sets {self.path.name}", licence, citation or str(self.path)
        )

    def read(self) -> list[GeneSet]:
        return read_gmt(self.path, "hallmark")  # the set name is the pathway id

    def add(self, builder: GraphBuilder, records: list[GeneSet]) -> None:
        add_gene_sets(builder, records, self.provenance, self.path)
