"""PanglaoDB markers (``--panglao PATH``): read from the user's copy only, its licence not being established."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from pathways_kg.errors import KGError
from pathways_kg.io import data_path
from pathways_kg.readers import PanglaoRow, read_panglao, read_panglao_map
from pathways_kg.schema import make_id
from pathways_kg.sources.base import CURATED, GraphBuilder, Provenance, Source

logger = logging.getLogger(__name__)

PANGLAO = Provenance(
    "PanglaoDB 27 Mar 2020", "not established", "Franzen et al. 2019 Database (Oxford) baz046"
)
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

_Records = tuple[dict[str, tuple[str, str, str]], list[PanglaoRow]]


class PanglaoSource(Source):
    """Human ``gene marker_of celltype`` and ``celltype found_in tissue``; ``name_map`` (a TSV
    ``panglao_cell_type, cell_type, parent, reference``) maps PanglaoDB cell types onto curated ones
    (same type) or below them (``subtype_of``), so this source comes after the curated cell types."""

    provenance = PANGLAO

    def __init__(
        self,
        path: str | Path | None = None,
        organs: Iterable[str] = (),
        canonical_only: bool = False,
        name_map: str | Path | None = None,
    ) -> None:
        super().__init__(path)
        self.organs = tuple(organs)
        self.canonical_only = canonical_only
        self.name_map = Path(name_map) if name_map else data_path("cell_type_name_map.tsv")

    def read(self) -> _Records:
        mapping = read_panglao_map(self.name_map)
        return mapping, read_panglao(self.path, self.organs, self.canonical_only)

    def add(self, builder: GraphBuilder, records: _Records) -> None:
        mapping, rows = records
        for name, (alias, parent, _reference) in mapping.items():
            target = alias or parent
            if make_id("celltype", target) not in builder.graph.entities:
                raise KGError(f"{self.name_map}: {name!r} maps to unknown cell type {target!r}")
        seen_types: set[str] = set()
        for row in rows:
            origin = self.origin(row.line)
            alias, parent, reference = mapping.get(row.cell_type, ("", "", ""))
            cid = make_id("celltype", alias or panglao_name(row.cell_type))
            builder.entity(cid, row.cell_type, self.provenance, origin)
            gid = make_id("gene", row.gene)
            builder.entity(gid, row.gene, self.provenance, origin)
            builder.edge(gid, "marker_of", cid, self.provenance, origin=origin)
            if row.organ:
                tid = make_id("tissue", ORGAN_ALIASES.get(row.organ, row.organ.lower()))
                builder.entity(tid, row.organ, self.provenance, origin)
                builder.edge(cid, "found_in", tid, self.provenance, origin=origin)
            if parent and cid not in seen_types:
                builder.edge(
                    cid, "subtype_of", make_id("celltype", parent), CURATED, reference, f"{self.name_map}"
                )
            seen_types.add(cid)
        logger.info("PanglaoDB: %d human marker rows, %d cell types", len(rows), len(seen_types))


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
