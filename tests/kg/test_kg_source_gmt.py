"""The ``gmt`` KG source: any MSigDB-style GMT file the user names, added to the graph from the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from kg_cases import SourceCase, write

from pathways_kg.cli import main
from pathways_kg.config import to_dict
from pathways_kg.graph import read_graph
from pathways_kg.sources.gmt import GMTSource
from pathways_kg.testing import pathway_genes, write_tiny_sources


class TestGMTSource(SourceCase):
    cls = GMTSource

    def fixture(self, folder: Path) -> dict[str, Any]:
        rows = ["KEGG_GLYCOLYSIS\thttp://www.gsea-msigdb.org/x\tHK1\tPFKM\tGAPDH", "MY_SET\tmine\tHK1\tTP53"]
        return {"path": write(folder / "sets.gmt", rows), "licence": "CC BY 4.0"}

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        path = write(
            folder / "sets.gmt", ["KEGG_GLYCOLYSIS\tx\tHK1\tPFKM", "", "MY_SET\tmine\tHK1\tTP53\tHK1"]
        )
        return {"path": path}, path, 3  # a gene listed twice


def test_a_user_gmt_joins_the_graph_by_name_from_the_config(tmp_path):
    """``build.sources.add: [{name: gmt, ...}]`` in a KG config, with the tiny shipped-style sources."""
    sources = to_dict(write_tiny_sources(tmp_path / "src"))
    gmt = write(
        tmp_path / "lab.gmt", ["LAB_ALPHA_CORE\tlab\t" + "\t".join(pathway_genes("1001")[:5] + ["NEW1"])]
    )
    sources["add"] = [
        {"name": "gmt", "kwargs": {"path": str(gmt), "label": "lab sets", "licence": "CC0 1.0"}}
    ]
    config = tmp_path / "kg.yaml"
    config.write_text(yaml.safe_dump({"build": {"sources": sources}}), encoding="utf-8")
    result = CliRunner().invoke(main, ["build", "--config", str(config), "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    graph = read_graph(tmp_path / "g")
    members = {e.head for e in graph.edges_of(["member_of"]) if e.tail == "pathway:LAB_ALPHA_CORE"}
    assert members == {f"gene:{g}" for g in pathway_genes("1001")[:5]} | {"gene:NEW1"}
    lab = [e for e in graph.edges if e.source == "lab sets"]
    assert len(lab) == 6 and {e.licence for e in lab} == {"CC0 1.0"}
    assert graph.sources["lab sets"]["licence"] == "CC0 1.0"

    bad = CliRunner().invoke(main, ["build", "--config", str(config), "--out", str(tmp_path / "h"),
                                    "--set", "build.sources.add=[{name: gtm}]"])  # fmt: skip
    assert bad.exit_code == 2
    assert "build.sources.add[0].name: unknown KG source 'gtm'; did you mean 'gmt'?" in bad.output
