"""Malformed inputs: every error is a KGError naming the file and line at fault."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pathways_kg import sources
from pathways_kg.build import build_graph
from pathways_kg.config import BuildConfig
from pathways_kg.errors import KGError
from pathways_kg.graph import read_graph, write_graph
from pathways_kg.testing import write_tiny_sources


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _at(path: Path, line: int) -> str:
    return re.escape(f"{path}:{line}:")


def test_gmt_line_without_genes(tmp_path):
    p = _write(tmp_path / "r.gmt", "Alpha\tR-HSA-1\tA\tB\nBeta\tR-HSA-2\n")
    with pytest.raises(KGError, match=_at(p, 2) + ".*'Beta' has no genes"):
        sources.read_gmt(p, "reactome")


def test_gmt_without_id_column(tmp_path):
    p = _write(tmp_path / "h.gmt", "HALLMARK_X\n")
    with pytest.raises(KGError, match=_at(p, 1) + ".*no id/description column"):
        sources.read_gmt(p, "hallmark")


def test_gmt_bad_reactome_id_and_duplicates(tmp_path):
    p = _write(tmp_path / "r.gmt", "Alpha\tR-MMU-1\tA\n")
    with pytest.raises(KGError, match=_at(p, 1) + ".*human Reactome id"):
        sources.read_gmt(p, "reactome")
    p = _write(tmp_path / "r2.gmt", "Alpha\tR-HSA-1\tA\tB\tA\n")
    with pytest.raises(KGError, match=_at(p, 1) + ".*gene 'A' twice"):
        sources.read_gmt(p, "reactome")
    p = _write(tmp_path / "r3.gmt", "Alpha\tR-HSA-1\tA\nAlpha again\tR-HSA-1\tB\n")
    with pytest.raises(KGError, match=_at(p, 2) + ".*duplicate gene set 'R-HSA-1' \\(first on line 1\\)"):
        sources.read_gmt(p, "reactome")


def test_hierarchy_errors(tmp_path):
    p = _write(tmp_path / "rel.txt", "R-HSA-1\tR-HSA-2\nR-HSA-3\tR-HSA-3\n")
    with pytest.raises(KGError, match=_at(p, 2) + ".*self-loop"):
        sources.read_reactome_hierarchy(p)
    p = _write(tmp_path / "rel2.txt", "R-HSA-1\tR-HSA-2\nR-HSA-1\tR-HSA-2\n")
    with pytest.raises(KGError, match=_at(p, 2) + ".*duplicate edge"):
        sources.read_reactome_hierarchy(p)
    p = _write(tmp_path / "rel3.txt", "R-HSA-1\tR-HSA-2\tR-HSA-3\n")
    with pytest.raises(KGError, match=_at(p, 1) + ".*expected 2 tab-separated columns"):
        sources.read_reactome_hierarchy(p)


def test_tsv_wrong_column_count_and_header(tmp_path):
    p = _write(tmp_path / "m.tsv", "# comment\ncell_type\tgene\treference\nT cell\tCD3E\n")
    with pytest.raises(KGError, match=_at(p, 3) + ".*expected 3 tab-separated columns"):
        sources.read_markers(p)
    p = _write(tmp_path / "m2.tsv", "celltype\tgene\tref\n")
    with pytest.raises(KGError, match=_at(p, 1) + ".*expected the header"):
        sources.read_markers(p)


CURATED_HEADER = "head\trelation\ttail\treference\n"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("phenotype:a\tregulates\tphenotype:b\tref", "unknown relation 'regulates'"),
        ("phenotype:a\tis_a_inverse\tphenotype:b\tref", "reserved by pykeen"),
        ("phenotype:a\tis_a\tphenotype:a\tref", "self-loop"),
        ("phenotyp:a\tis_a\tphenotype:b\tref", "did you mean 'phenotype'"),
        ("phenotype:a\tis_a\tphenotype:b\t", "has no reference"),
    ],
)
def test_curated_triple_errors(tmp_path, row, message):
    p = _write(tmp_path / "c.tsv", CURATED_HEADER + "phenotype:x\tis_a\tphenotype:y\tref\n" + row + "\n")
    with pytest.raises(KGError, match=_at(p, 3) + ".*" + re.escape(message)):
        sources.read_curated_triples(p)


def test_unknown_relation_suggests_nearest(tmp_path):
    p = _write(tmp_path / "c.tsv", CURATED_HEADER + "celltype:a\tsubtype\tcelltype:b\tref\n")
    with pytest.raises(KGError, match="did you mean 'subtype_of'"):
        sources.read_curated_triples(p)


def test_curated_duplicate(tmp_path):
    p = _write(
        tmp_path / "c.tsv",
        CURATED_HEADER + "phenotype:x\tis_a\tphenotype:y\tref\nphenotype:x\tis_a\tphenotype:y\tother\n",
    )
    with pytest.raises(KGError, match=_at(p, 3) + ".*duplicate triple.*first on line 2"):
        sources.read_curated_triples(p)


def _build_with_extra(tmp_path: Path, row: str) -> tuple[Path, Exception]:
    src = write_tiny_sources(tmp_path / "src")
    extra = _write(tmp_path / "extra.tsv", CURATED_HEADER + row + "\n")
    cfg = BuildConfig(sources=src.__class__(**{**src.__dict__, "extra": (str(extra),)}))
    with pytest.raises(KGError) as info:
        build_graph(cfg)
    return extra, info.value


def test_dangling_gene_in_curated_file(tmp_path):
    extra, err = _build_with_extra(tmp_path, "gene:NOPE1\tactivates\tpathway:R-HSA-1001\tref")
    assert f"{extra}:2:" in str(err) and "dangling gene 'gene:NOPE1'" in str(err)


def test_unknown_entity_in_curated_file(tmp_path):
    extra, err = _build_with_extra(tmp_path, "phenotype:carcinom\tadjacent_to\tphenotype:stroma\tref")
    assert f"{extra}:2:" in str(err) and "unknown entity 'phenotype:carcinom'" in str(err)
    assert "did you mean 'phenotype:carcinoma'" in str(err)


def test_wrong_entity_type_for_relation(tmp_path):
    extra, err = _build_with_extra(tmp_path, "celltype:T cell\tcomposed_of\tcelltype:B cell\tref")
    assert f"{extra}:2:" in str(err) and "composed_of needs phenotype" in str(err)


def test_same_fact_in_two_curated_files_is_kept_once(tmp_path):
    """A fact repeated by a user's extra layer is not a duplicate error: it is kept once."""
    src = write_tiny_sources(tmp_path / "src")
    extra = _write(
        tmp_path / "extra.tsv",
        CURATED_HEADER + "celltype:T cell\tsubtype_of\tcelltype:lymphocyte\tsecond ref\n",
    )
    graph = build_graph(BuildConfig(sources=src.__class__(**{**src.__dict__, "extra": (str(extra),)})))
    edge = next(e for e in graph.edges if e.key == ("celltype:T cell", "subtype_of", "celltype:lymphocyte"))
    assert "second ref" not in edge.reference  # same source name: kept once


def _graph_files(tmp_path: Path) -> Path:
    graph = build_graph(BuildConfig(sources=write_tiny_sources(tmp_path / "src")))
    write_graph(graph, tmp_path / "g")
    return tmp_path / "g"


def _append(path: Path, line: str) -> int:
    text = path.read_text(encoding="utf-8")
    path.write_text(text + line + "\n", encoding="utf-8")
    return text.count("\n") + 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("gene:GA01\tmember_of\tpathway:R-HSA-1001\tmembership\tx\tx\t", "duplicate triple"),
        ("gene:GA01\tmember_of\tpathway:R-HSA-9\tmembership\tx\tx\t", "unknown entity 'pathway:R-HSA-9'"),
        ("gene:GA01\tmember_of\tpathway:R-HSA-1001\tmarker\tx\tx\t", "belongs to family 'membership'"),
        ("gene:GA01\tmember_of_inverse\tpathway:R-HSA-1002\tmembership\tx\tx\t", "reserved by pykeen"),
        ("pathway:R-HSA-1001\tpart_of\tpathway:R-HSA-1001\thierarchical\tx\tx\t", "self-loop"),
        ("gene:GA01\tmember_of\tpathway:R-HSA-1002\tmembership\tx\tx", "expected 7 tab-separated columns"),
    ],
)
def test_read_graph_triples_errors(tmp_path, line, message):
    folder = _graph_files(tmp_path)
    number = _append(folder / "triples.tsv", line)
    with pytest.raises(KGError, match=_at(folder / "triples.tsv", number) + ".*" + re.escape(message)):
        read_graph(folder)


def test_read_graph_dangling_gene(tmp_path):
    folder = _graph_files(tmp_path)
    number = _append(folder / "entities.tsv", "gene:LONELY\tgene\tLONELY\ttest")
    with pytest.raises(KGError, match=_at(folder / "entities.tsv", number) + ".*dangling gene 'gene:LONELY'"):
        read_graph(folder)
    _append(folder / "triples.tsv", "gene:LONELY\tactivates\tpathway:R-HSA-1001\tcausal\tx\tx\tref")
    with pytest.raises(KGError, match=r"triples\.tsv:\d+: dangling gene 'gene:LONELY'"):
        read_graph(folder)


def test_panglao_missing_column(tmp_path):
    p = _write(tmp_path / "p.tsv", "species\tofficial gene symbol\tcell type\n")
    with pytest.raises(KGError, match=_at(p, 1) + ".*missing column"):
        sources.read_panglao(p)


def test_missing_file(tmp_path):
    with pytest.raises(KGError, match="does not exist"):
        sources.read_gmt(tmp_path / "nope.gmt", "hallmark")
