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


def _gmt_config(tmp_path: Path, rows: list[str], **kwargs: Any) -> Path:
    sources = to_dict(write_tiny_sources(tmp_path / "src"))
    gmt = write(tmp_path / "lab.gmt", rows)
    sources["add"] = [{"name": "gmt", "kwargs": {"path": str(gmt), **kwargs}}]
    config = tmp_path / "kg.yaml"
    config.write_text(yaml.safe_dump({"build": {"sources": sources}}), encoding="utf-8")
    return config


def test_a_user_set_named_like_a_shipped_set_is_refused_or_prefixed(tmp_path):
    """Before: the user's HALLMARK_PROLIFERATION was merged into the shipped set, silently."""
    rows = ["MY_SET\tmine\tHK1\tTP53", "HALLMARK_PROLIFERATION\tmine\tNEW1\tNEW2\tNEW3"]
    config = _gmt_config(tmp_path, rows)
    res = CliRunner().invoke(main, ["build", "--config", str(config), "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.strip() == (
        f"Error: {tmp_path / 'lab.gmt'}:2: gene set 'HALLMARK_PROLIFERATION' is already in the graph from "
        f"MSigDB Hallmark v2024.1 ({tmp_path / 'src' / 'hallmark.gmt'}:1); its genes would be merged into that "
        "set silently: rename the set, give this gmt source a prefix (kwargs: {prefix: LAB_}), or leave the "
        "other source out (e.g. build.sources.hallmark: false)"
    )
    assert not (tmp_path / "g").exists()
    # with a prefix both sets are in the graph, the shipped one unchanged
    config = _gmt_config(tmp_path, rows, prefix="LAB_")
    res = CliRunner().invoke(main, ["build", "--config", str(config), "--out", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    graph = read_graph(tmp_path / "g")
    members = {e.head for e in graph.edges_of(["member_of"]) if e.tail == "pathway:HALLMARK_PROLIFERATION"}
    assert not {"gene:NEW1", "gene:NEW2"} & members and "pathway:LAB_HALLMARK_PROLIFERATION" in graph.entities
    assert graph.entities["pathway:LAB_HALLMARK_PROLIFERATION"].label == "LAB_HALLMARK_PROLIFERATION"


def test_a_gmt_whose_genes_miss_the_universe_is_an_error_or_a_warning(tmp_path, caplog):
    """Before: mouse symbols against a human universe contributed nothing, silently."""
    from pathways_kg.build import build_graph
    from pathways_kg.config import load_config

    def build(config, universe=None):
        return build_graph(load_config(config).build, universe)

    universe = pathway_genes("1001") + pathway_genes("2001")
    mouse = [g.capitalize() for g in pathway_genes("1001")[:6]]
    config = _gmt_config(tmp_path, ["MOUSE_SET\tm\t" + "\t".join(mouse)])
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(universe) + "\n")
    res = CliRunner().invoke(
        main, ["build", "--config", str(config), "--out", str(tmp_path / "g"), "--genes", str(genes)]
    )
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.strip() == (
        f"Error: {tmp_path / 'lab.gmt'}:1: gene set 'MOUSE_SET': none of the file's 1 gene set(s) keeps 5 genes "
        "in the gene universe (min_genes), so the file would add nothing to the graph: 0 of its 6 genes are in "
        f"the gene universe ({len(universe)} genes, e.g. {', '.join(universe[:3])}); not found: "
        f"{', '.join(mouse[:5])} ...; 6 of them match ignoring case (another species' symbols, e.g. mouse Actb "
        "for human ACTB?)"
    )
    assert not (tmp_path / "g").exists()
    # one set in the universe, one not (line 2): a warning with the counts, and the build goes on
    rows = ["OK_SET\tm\t" + "\t".join(universe[:6]), "MOUSE_SET\tm\t" + "\t".join(mouse)]
    config = _gmt_config(tmp_path, rows)
    with caplog.at_level("WARNING", logger="pathways_kg.build"):
        graph = build(config, universe)
    assert (
        f"{tmp_path / 'lab.gmt'}: 6 of its 12 genes are in the gene universe ({len(universe)} genes, e.g. "
        f"{', '.join(universe[:3])}); not found: {', '.join(mouse[:5])} ...; 1 of its 2 gene sets keep fewer "
        "than 5 genes and are dropped (first: 'MOUSE_SET', line 2)"
    ) in caplog.messages
    assert "pathway:OK_SET" in graph.entities and "pathway:MOUSE_SET" not in graph.entities
    # every set kept but few of the file's genes in the universe: a warning too
    caplog.clear()
    few = universe[:5] + [f"OTHER{i}" for i in range(60)]
    with caplog.at_level("WARNING", logger="pathways_kg.build"):
        build(_gmt_config(tmp_path, ["FEW_SET\tm\t" + "\t".join(few)]), universe)
    assert any(
        m.startswith(f"{tmp_path / 'lab.gmt'}: 5 of its 65 genes are in the gene universe")
        and "all 1 gene sets are kept; another species, or ids" in m
        for m in caplog.messages
    ), caplog.messages
    # a file wholly in the universe, or no universe at all: nothing to say about the file
    caplog.clear()
    with caplog.at_level("WARNING", logger="pathways_kg.build"):
        build(_gmt_config(tmp_path, ["OK_SET\tm\t" + "\t".join(universe[:6])]), universe)
        build(config)
    assert not [m for m in caplog.messages if "lab.gmt" in m]
