"""Building the graph from the real shipped sources (and PanglaoDB from ../shared), with counts."""

from __future__ import annotations

import collections

import pytest

from pathways_kg.build import build_graph, panglao_name
from pathways_kg.config import BuildConfig, SourcesConfig
from pathways_kg.graph import read_graph, restrict, write_graph
from pathways_kg.io import data_path
from pathways_kg.schema import FAMILIES, HIERARCHY_RELATIONS, RELATIONS
from pathways_kg.sources import read_gmt, read_markers


@pytest.fixture(scope="module")
def real_graph():
    return build_graph()


def test_real_sources_counts(real_graph):
    s = real_graph.summary()
    pathways = real_graph.ids_of_type("pathway")
    hallmark = [p for p in pathways if p.startswith("pathway:HALLMARK_")]
    reactome = [p for p in pathways if p.startswith("pathway:R-HSA-")]
    assert len(hallmark) == 50
    assert len(reactome) == 2613  # 2,504 gene sets + 109 hierarchy-only container pathways
    assert s["edges_by_relation"]["part_of"] == 2628
    n_members = sum(len(g.genes) for g in read_gmt(data_path("ReactomePathways.gmt"), "reactome"))
    n_members += sum(len(g.genes) for g in read_gmt(data_path("h.all.v2024.1.Hs.symbols.gmt"), "hallmark"))
    assert s["edges_by_relation"]["member_of"] == n_members
    assert s["edges_by_relation"]["marker_of"] == len(read_markers(data_path("cell_type_markers.tsv")))
    assert s["entities_by_type"]["gene"] > 11_000
    assert all(s["edges_by_family"][f] > 0 for f in FAMILIES)
    assert s["n_edges"] == len(real_graph.edges) == len({e.key for e in real_graph.edges})


def test_real_sources_provenance(real_graph):
    licences = collections.defaultdict(set)
    for e in real_graph.edges:
        assert e.source and e.licence
        licences[e.source].add(e.licence)
        if e.source == "histokg curated" and e.relation != "member_of":
            assert e.reference, e
    assert licences["Reactome"] == {"CC0 1.0"}
    assert licences["MSigDB Hallmark v2024.1"] == {"CC BY 4.0"}
    for e in real_graph.edges_of(["part_of"]):  # child -> parent
        assert e.head.startswith("pathway:R-HSA-") and e.tail.startswith("pathway:R-HSA-")


def test_hierarchy_direction_child_to_parent(real_graph):
    # R-HSA-109581 (Apoptosis) is the parent of R-HSA-109606 in the relation file (parent<TAB>child)
    assert ("pathway:R-HSA-109606", "part_of", "pathway:R-HSA-109581") in {e.key for e in real_graph.edges}


def test_write_and_read_back(real_graph, tmp_path):
    paths = write_graph(real_graph, tmp_path / "g")
    header = paths["triples"].read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header == ["head", "relation", "tail", "family", "source", "licence", "reference"]
    again = read_graph(tmp_path / "g")
    assert len(again.edges) == len(real_graph.edges) and set(again.entities) == set(real_graph.entities)


def test_panglao_from_user_path(panglao_path):
    graph = build_graph(BuildConfig(sources=SourcesConfig(panglao=str(panglao_path))))
    s = graph.summary()
    assert s["entities_by_type"]["celltype"] > 150
    assert s["edges_by_source"]["PanglaoDB 27 Mar 2020"] > 7000
    keys = {e.key: e for e in graph.edges}
    merged = keys[("gene:CD3E", "marker_of", "celltype:T cell")]  # curated and PanglaoDB agree
    assert "PanglaoDB" in merged.source and "histokg curated" in merged.source
    assert ("celltype:B cell memory", "subtype_of", "celltype:B cell") in keys
    assert ("celltype:acinar cell", "found_in", "tissue:pancreas") in keys
    assert graph.sources["PanglaoDB 27 Mar 2020"]["licence"] == "not established"


def test_panglao_organ_filter(panglao_path):
    src = SourcesConfig(panglao=str(panglao_path), panglao_organs=("Mammary gland",), reactome=False)
    graph = build_graph(BuildConfig(sources=src))
    found = {e.tail for e in graph.edges_of(["found_in"]) if "PanglaoDB" in e.source}
    assert found == {"tissue:breast"}


def test_panglao_names():
    assert panglao_name("Acinar cells") == "acinar cell"
    assert panglao_name("Fibroblasts") == "fibroblast"
    assert panglao_name("Endothelial cells (aorta)") == "endothelial cell (aorta)"
    assert panglao_name("Purkinje neurons") == "Purkinje neuron"
    assert panglao_name("NK cells") == "NK cell"
    assert panglao_name("Microglia") == "microglia"


def test_gene_universe_restriction(real_graph):
    hallmark = {g.id: g.genes for g in read_gmt(data_path("h.all.v2024.1.Hs.symbols.gmt"), "hallmark")}
    universe = (
        set(hallmark["HALLMARK_HYPOXIA"]) | set(hallmark["HALLMARK_E2F_TARGETS"]) | {"CD3E", "CD3D", "PTPRC"}
    )
    small = restrict(real_graph, universe, min_genes=5)
    genes = {e.split(":", 1)[1] for e in small.ids_of_type("gene")}
    assert genes <= universe
    sizes = collections.Counter(e.tail for e in small.edges_of(["member_of"]))
    parents = {e.tail for e in small.edges_of(HIERARCHY_RELATIONS)}
    for p in small.ids_of_type("pathway"):  # enough genes, or an ancestor kept for the hierarchy
        assert sizes[p] >= 5 or p in parents
    kept_hallmark = [p for p in small.ids_of_type("pathway") if p.startswith("pathway:HALLMARK_")]
    assert "pathway:HALLMARK_HYPOXIA" in kept_hallmark and len(kept_hallmark) < 50
    assert "celltype:adipocyte" in small.entities  # curated cell types stay
    assert 100 < len(small.ids_of_type("pathway")) < 1500
    assert small.universe == {"size": len(universe), "genes_kept": len(genes)}


def test_curated_layer_matches_the_synthetic_biology(real_graph):
    """The six planted regions are phenotypes with exactly-true composed_of / has_hallmark / is_a edges."""
    import histokg.synth.biology as biology

    keys = {e.key for e in real_graph.edges}
    for region in biology.REGIONS:
        ph = f"phenotype:{region.name}"
        assert ph in real_graph.entities
        for cell_type in region.cell_types:
            assert (ph, "composed_of", f"celltype:{cell_type}") in keys
        for pathway in region.pathways:
            assert (ph, "has_hallmark", f"pathway:{pathway}") in keys
        if region.children_of:
            assert (ph, "is_a", f"phenotype:{region.children_of}") in keys
    for name in ("tumour", "carcinoma in situ"):
        assert f"phenotype:{name}" in real_graph.entities


def test_summary_lists_relation_families(real_graph):
    s = real_graph.summary()
    assert {r: m["family"] for r, m in s["relations"].items()} == {
        r: spec.family for r, spec in RELATIONS.items()
    }
    assert set(s["sources"]) == {"Reactome", "MSigDB Hallmark v2024.1", "histokg curated"}
