"""One test case per built-in KG source (the generic tests are in kg_cases.SourceCase)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kg_cases import SourceCase, write

from pathways_kg.sources import CURATED, GraphBuilder
from pathways_kg.sources.entities import EntitiesSource
from pathways_kg.sources.hallmark import HallmarkSource
from pathways_kg.sources.markers import MarkersSource
from pathways_kg.sources.panglao import PanglaoSource
from pathways_kg.sources.reactome import ReactomeSource
from pathways_kg.sources.triples import TriplesSource


class TestReactomeSource(SourceCase):
    cls = ReactomeSource

    def fixture(self, folder: Path) -> dict[str, Any]:
        gmt = write(folder / "r.gmt", ["Parent\tR-HSA-10\tA1\tA2\tB1", "Child\tR-HSA-11\tA1\tA2"])
        hierarchy = write(folder / "rel.txt", ["R-HSA-10\tR-HSA-11", "R-HSA-1\tR-HSA-10"])
        return {"path": gmt, "hierarchy": hierarchy}

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        kwargs = self.fixture(folder)
        hierarchy = write(folder / "bad.txt", ["R-HSA-10\tR-HSA-11", "R-HSA-10\tR-MMU-12"])
        return {**kwargs, "hierarchy": hierarchy}, hierarchy, 2


class TestHallmarkSource(SourceCase):
    cls = HallmarkSource

    def fixture(self, folder: Path) -> dict[str, Any]:
        return {
            "path": write(folder / "h.gmt", ["HALLMARK_A\thttps://x/A\tG1\tG2", "HALLMARK_B\t>B\tG2\tG3"])
        }

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        path = write(folder / "h.gmt", ["HALLMARK_A\thttps://x/A\tG1\tG2", "HALLMARK_B\thttps://x/B"])
        return {"path": path}, path, 2  # a set without genes


class TestMarkersSource(SourceCase):
    cls = MarkersSource

    def fixture(self, folder: Path) -> dict[str, Any]:
        return {
            "path": write(
                folder / "m.tsv", ["cell_type\tgene\treference", "T cell\tCD3E\tref", "B cell\tMS4A1\tref"]
            )
        }

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        path = write(
            folder / "m.tsv", ["cell_type\tgene\treference", "T cell\tCD3E\tref", "T cell\tCD3E\tref"]
        )
        return {"path": path}, path, 3  # a duplicate marker


class TestEntitiesSource(SourceCase):
    cls = EntitiesSource
    declares_only = True

    def fixture(self, folder: Path) -> dict[str, Any]:
        rows = ["id\tdefinition\treference", "phenotype:tumour\tneoplasm\tref", "tissue:breast\tbreast\tref"]
        return {"path": write(folder / "e.tsv", rows)}

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        path = write(
            folder / "e.tsv", ["id\tdefinition\treference", "# note", "phenotyp:tumour\tneoplasm\tref"]
        )
        return {"path": path}, path, 3  # an entity type that does not exist


class TestTriplesSource(SourceCase):
    cls = TriplesSource

    def prepare(self, builder: GraphBuilder) -> None:
        for eid in ("phenotype:tumour", "phenotype:carcinoma", "celltype:fibroblast"):
            builder.entity(eid, eid.split(":")[1], CURATED)

    def fixture(self, folder: Path) -> dict[str, Any]:
        rows = [
            "head\trelation\ttail\treference",
            "phenotype:carcinoma\tis_a\tphenotype:tumour\tref",
            "phenotype:carcinoma\tcomposed_of\tcelltype:fibroblast\tref",
        ]
        return {"path": write(folder / "t.tsv", rows)}

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        rows = [
            "head\trelation\ttail\treference",
            "phenotype:carcinoma\tis_a\tphenotype:tumour\tref",
            "phenotype:carcinoma\tcontains\tcelltype:fibroblast\tref",
        ]
        path = write(folder / "t.tsv", rows)
        return {"path": path}, path, 3  # a relation not in the schema


class TestPanglaoSource(SourceCase):
    cls = PanglaoSource
    header = "species\tofficial gene symbol\tcell type\torgan\tcanonical marker"

    def prepare(self, builder: GraphBuilder) -> None:
        builder.entity("celltype:T cell", "T cell", CURATED)

    def _map(self, folder: Path) -> Path:
        return write(
            folder / "map.tsv",
            [
                "panglao_cell_type\tcell_type\tparent\treference",
                "T cells\tT cell\t\tref",
                "T memory cells\t\tT cell\tref",
            ],
        )

    def fixture(self, folder: Path) -> dict[str, Any]:
        rows = [
            self.header,
            "Mm Hs\tCD3E\tT cells\tImmune system\t1",
            "Hs\tIL7R\tT memory cells\tImmune system\t1",
        ]
        rows.append("Mm\tCd4\tT cells\tImmune system\t1")  # mouse only: skipped
        return {"path": write(folder / "p.tsv", rows), "name_map": self._map(folder)}

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        path = write(
            folder / "p.tsv", [self.header, "Hs\tCD3E\tT cells\tImmune system\t1", "Hs\tIL7R\tT cells"]
        )
        return {"path": path, "name_map": self._map(folder)}, path, 3  # too few columns
