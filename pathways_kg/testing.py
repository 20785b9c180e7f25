"""A tiny hand-made graph with known answers, for tests and examples (also histokg's trainer tests).

Two pathway trees (``R-HSA-1000`` signalling with children 1001-1003, ``R-HSA-2000`` metabolism with
children 2001-2003), each child with its own block of 10 genes and each parent with the union of its
children's genes (as in Reactome's GMT); two Hallmark-style sets; four cell types with five markers
each (T and B cells are subtypes of lymphocyte); three phenotypes with compositions. Gene symbols are
``GA01``... so that expression matrices with known answers are easy to write.

- :func:`write_tiny_sources` writes the source files and returns the :class:`SourcesConfig` for them;
- :func:`tiny_graph` builds and writes the graph folder;
- :func:`random_bundle` writes a bundle with seeded random (untrained) embeddings, without pykeen,
  for fast tests of code that only consumes bundles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathways_kg.bundle import Bundle, save_bundle
from pathways_kg.config import BuildConfig, SourcesConfig
from pathways_kg.graph import read_graph, write_graph
from pathways_kg.models import get_model
from pathways_kg.schema import RELATIONS

TREES = {"1000": ("1001", "1002", "1003"), "2000": ("2001", "2002", "2003")}
_BLOCKS = {"1001": "GA", "1002": "GB", "1003": "GC", "2001": "GD", "2002": "GE", "2003": "GF"}
CELL_MARKERS = {
    "T cell": [f"TC{i}" for i in range(1, 6)],
    "B cell": [f"BC{i}" for i in range(1, 6)],
    "fibroblast": [f"FB{i}" for i in range(1, 6)],
    "tumour cell": [f"TU{i}" for i in range(1, 6)],
}
REF = "hand-made test fact"


def pathway_genes(pathway: str) -> list[str]:
    """Genes of a tiny Reactome pathway id (child: its block; parent: its children's union)."""
    if pathway in TREES:
        return [g for child in TREES[pathway] for g in pathway_genes(child)]
    return [f"{_BLOCKS[pathway]}{i:02d}" for i in range(1, 11)]


def all_genes() -> list[str]:
    genes = [g for child in _BLOCKS for g in pathway_genes(child)]
    genes += [g for markers in CELL_MARKERS.values() for g in markers]
    return genes + [f"HX{i}" for i in range(1, 6)]


def write_tiny_sources(folder: str | Path) -> SourcesConfig:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"1000": "Signalling", "1001": "Alpha", "1002": "Beta", "1003": "Gamma", "2000": "Metabolism",
             "2001": "Delta", "2002": "Epsilon", "2003": "Zeta"}  # fmt: skip
    lines = [f"{names[p]}\tR-HSA-{p}\t" + "\t".join(pathway_genes(p)) for p in names]
    (folder / "reactome.gmt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rel = [f"R-HSA-{parent}\tR-HSA-{child}" for parent, kids in TREES.items() for child in kids]
    (folder / "hierarchy.txt").write_text("\n".join(rel) + "\n", encoding="utf-8")
    hallmark = {
        "HALLMARK_PROLIFERATION": pathway_genes("1001")[:6] + ["HX1", "HX2", "HX3"],
        "HALLMARK_MATRIX": pathway_genes("2001")[:6] + ["HX4", "HX5"],
    }
    (folder / "hallmark.gmt").write_text(
        "".join(f"{k}\thttps://example.org/{k}\t" + "\t".join(v) + "\n" for k, v in hallmark.items()),
        encoding="utf-8",
    )
    markers = ["cell_type\tgene\treference"] + [
        f"{c}\t{g}\t{REF}" for c, gs in CELL_MARKERS.items() for g in gs
    ]
    (folder / "markers.tsv").write_text("\n".join(markers) + "\n", encoding="utf-8")
    entities = [
        "id\tdefinition\treference",
        f"phenotype:tumour\tneoplastic tissue\t{REF}",
        f"phenotype:carcinoma\tmalignant epithelial tumour\t{REF}",
        f"phenotype:infiltrate\tlymphocyte aggregate\t{REF}",
        f"phenotype:stroma\tconnective tissue\t{REF}",
        f"celltype:lymphocyte\tlymphocyte\t{REF}",
        f"tissue:breast\tbreast\t{REF}",
    ]
    (folder / "entities.tsv").write_text("\n".join(entities) + "\n", encoding="utf-8")
    triples = [
        ("phenotype:carcinoma", "is_a", "phenotype:tumour"),
        ("phenotype:carcinoma", "composed_of", "celltype:tumour cell"),
        ("phenotype:carcinoma", "composed_of", "celltype:fibroblast"),
        ("phenotype:carcinoma", "has_hallmark", "pathway:HALLMARK_PROLIFERATION"),
        ("phenotype:infiltrate", "composed_of", "celltype:T cell"),
        ("phenotype:infiltrate", "composed_of", "celltype:B cell"),
        ("phenotype:stroma", "composed_of", "celltype:fibroblast"),
        ("phenotype:stroma", "has_hallmark", "pathway:HALLMARK_MATRIX"),
        ("phenotype:infiltrate", "adjacent_to", "phenotype:carcinoma"),
        ("celltype:T cell", "subtype_of", "celltype:lymphocyte"),
        ("celltype:B cell", "subtype_of", "celltype:lymphocyte"),
        ("celltype:T cell", "found_in", "tissue:breast"),
        ("gene:GA01", "activates", "pathway:HALLMARK_PROLIFERATION"),
        ("pathway:HALLMARK_MATRIX", "inhibits", "pathway:HALLMARK_PROLIFERATION"),
    ]
    rows = ["head\trelation\ttail\treference"] + ["\t".join((*t, REF)) for t in triples]
    (folder / "curated.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return SourcesConfig(
        reactome_gmt=str(folder / "reactome.gmt"),
        reactome_hierarchy=str(folder / "hierarchy.txt"),
        hallmark_gmt=str(folder / "hallmark.gmt"),
        markers=str(folder / "markers.tsv"),
        curated=(str(folder / "curated.tsv"),),
        curated_entities=str(folder / "entities.tsv"),
    )


def tiny_graph(folder: str | Path) -> Path:
    """Write the tiny sources into ``folder/sources`` and the built graph into ``folder/graph``."""
    from pathways_kg.build import build_graph

    folder = Path(folder)
    graph = build_graph(BuildConfig(sources=write_tiny_sources(folder / "sources")))
    write_graph(graph, folder / "graph")
    return folder / "graph"


def random_bundle(
    graph_dir: str | Path, out_dir: str | Path, model: str = "transe", dim: int = 16, seed: int = 0
) -> Path:
    """A bundle for ``graph_dir`` with seeded random embeddings (no training, no pykeen)."""
    spec = get_model(model)
    graph = read_graph(graph_dir)
    rng = np.random.default_rng(seed)
    ids = sorted(graph.entities)
    rels = sorted({e.relation for e in graph.edges})
    n, m = len(ids), len(rels)
    if spec.storage == "gaussian":
        ents = {"entity_mean": rng.normal(size=(n, dim)), "entity_var": rng.uniform(0.05, 1.0, size=(n, dim))}
        relt = {
            "relation_mean": rng.normal(size=(m, dim)),
            "relation_var": rng.uniform(0.05, 1.0, size=(m, dim)),
        }
    else:
        shape = (dim, 2) if spec.storage == "complex" else (dim,)
        ents, relt = {"entity": rng.normal(size=(n, *shape))}, {"relation": rng.normal(size=(m, *shape))}
    bundle = Bundle(
        model=spec.name,
        entity_ids=tuple(ids),
        entity_types=tuple(graph.entities[i].type for i in ids),
        relation_ids=tuple(rels),
        relation_families=tuple(RELATIONS[r].family for r in rels),
        entity_tensors={k: v.astype(np.float32) for k, v in ents.items()},
        relation_tensors={k: v.astype(np.float32) for k, v in relt.items()},
        meta={
            "model_kwargs": dict(spec.defaults, embedding_dim=dim),
            "embedding_dim": dim,
            "seed": seed,
            "metrics": {},
            "note": "random untrained embeddings (pathways_kg.testing.random_bundle)",
        },  # fmt: skip
    )
    return save_bundle(bundle, out_dir, graph_dir=graph_dir)
