"""The typed graph: entities and edges with provenance, validation, TSV files and gene-universe restriction.

Files of a built graph (a folder):

- ``entities.tsv``: ``id, type, label, source``
- ``triples.tsv``: ``head, relation, tail, family, source, licence, reference``
- ``summary.json``: entities per type, edges per relation/family/source, the sources and licences,
  the relation schema, and the sha256 of ``triples.tsv``.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pathways_kg.errors import KGError, at
from pathways_kg.io import atomic_open, file_sha256, write_json
from pathways_kg.readers import check_entity_id, check_relation, tsv_rows
from pathways_kg.registry import did_you_mean
from pathways_kg.schema import (
    ENTITY_TYPES,
    FAMILIES,
    GENE_SET_RELATIONS,
    HIERARCHY_RELATIONS,
    RELATIONS,
    split_id,
)

logger = logging.getLogger(__name__)

ENTITY_COLUMNS = ("id", "type", "label", "source")
TRIPLE_COLUMNS = ("head", "relation", "tail", "family", "source", "licence", "reference")


@dataclass(frozen=True)
class Entity:
    id: str
    type: str
    label: str
    source: str
    origin: str = ""  # "file:line" where it was declared, for error messages


@dataclass(frozen=True)
class Edge:
    head: str
    relation: str
    tail: str
    source: str
    licence: str
    reference: str = ""
    origin: str = ""

    @property
    def family(self) -> str:
        return RELATIONS[self.relation].family

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.head, self.relation, self.tail)


@dataclass
class Graph:
    entities: dict[str, Entity] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {licence, citation}
    universe: dict[str, int] | None = None  # size of the gene universe and genes kept, if restricted

    # ---------------------------------------------------------------- queries
    def edges_of(self, relations: Iterable[str]) -> list[Edge]:
        wanted = set(relations)
        return [e for e in self.edges if e.relation in wanted]

    def ids_of_type(self, entity_type: str) -> list[str]:
        return [i for i, e in self.entities.items() if e.type == entity_type]

    def gene_sets(self, relation: str) -> dict[str, list[str]]:
        """Set id -> gene symbols, for ``member_of`` or ``marker_of``."""
        sets: dict[str, list[str]] = collections.defaultdict(list)
        for e in self.edges_of([relation]):
            sets[e.tail].append(split_id(e.head)[1])
        return dict(sets)

    def summary(self) -> dict:
        by_type = collections.Counter(e.type for e in self.entities.values())
        by_rel = collections.Counter(e.relation for e in self.edges)
        by_family = collections.Counter(e.family for e in self.edges)
        by_source = collections.Counter(s for e in self.edges for s in e.source.split("; "))
        return {
            "n_entities": len(self.entities),
            "n_edges": len(self.edges),
            "entities_by_type": {t: by_type.get(t, 0) for t in ENTITY_TYPES},
            "edges_by_relation": {r: by_rel.get(r, 0) for r in RELATIONS},
            "edges_by_family": {f: by_family.get(f, 0) for f in FAMILIES},
            "edges_by_source": dict(sorted(by_source.items())),
            "sources": self.sources,
            "universe": self.universe,
            "relations": {
                n: {
                    "family": r.family,
                    "heads": list(r.heads),
                    "tails": list(r.tails),
                    "symmetric": r.symmetric,
                }
                for n, r in RELATIONS.items()
            },
        }


# --------------------------------------------------------------------------- validation


def validate(graph: Graph) -> None:
    """Check ids, types, self-loops, duplicates, relation names and dangling genes; raise KGError."""
    for entity in graph.entities.values():
        kind, _ = split_id(entity.id)
        if kind != entity.type:
            raise _err(
                entity.origin, f"entity {entity.id!r} has type {entity.type!r} but its prefix says {kind!r}"
            )
    seen: dict[tuple[str, str, str], str] = {}
    for edge in graph.edges:
        if edge.relation.endswith("_inverse") or edge.relation not in RELATIONS:
            path, _, line = edge.origin.rpartition(":")
            check_relation(edge.relation, path or None, int(line) if line.isdigit() else None)
        spec = RELATIONS[edge.relation]
        for end, allowed in ((edge.head, spec.heads), (edge.tail, spec.tails)):
            if end not in graph.entities:
                known = graph.entities.keys() if len(graph.entities) < 50_000 else ()
                raise _err(
                    edge.origin,
                    f"unknown entity {end!r} in {edge.head} {edge.relation} {edge.tail}{did_you_mean(end, known)}",
                )
            if graph.entities[end].type not in allowed:
                raise _err(
                    edge.origin, f"{edge.relation} needs {' or '.join(allowed)} at this end, got {end!r}"
                )
        if edge.head == edge.tail:
            raise _err(edge.origin, f"self-loop: {edge.head!r} {edge.relation} itself")
        if edge.key in seen:
            raise _err(
                edge.origin,
                f"duplicate triple {edge.head} {edge.relation} {edge.tail} (also at {seen[edge.key]})",
            )
        seen[edge.key] = edge.origin or "?"
    in_sets = {e.head for e in graph.edges if e.relation in GENE_SET_RELATIONS}
    for edge in graph.edges:
        for end in (edge.head, edge.tail):
            if graph.entities[end].type == "gene" and end not in in_sets:
                raise _err(
                    edge.origin, f"dangling gene {end!r}: it is a member or marker of nothing in the graph"
                )
    for entity in graph.entities.values():
        if entity.type == "gene" and entity.id not in in_sets:
            raise _err(
                entity.origin,
                f"dangling gene {entity.id!r}: it is a member or marker of nothing in the graph",
            )


def _err(origin: str, message: str) -> KGError:
    return KGError(f"{origin}: {message}" if origin else message)


# --------------------------------------------------------------------------- files


def write_graph(graph: Graph, out_dir: str | Path) -> dict[str, Path]:
    """Write entities.tsv, triples.tsv and summary.json (each atomically) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "entities": out / "entities.tsv",
        "triples": out / "triples.tsv",
        "summary": out / "summary.json",
    }
    with atomic_open(paths["entities"], "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(ENTITY_COLUMNS) + "\n")
        for e in sorted(graph.entities.values(), key=lambda e: (ENTITY_TYPES.index(e.type), e.id)):
            fh.write("\t".join(_clean(v) for v in (e.id, e.type, e.label, e.source)) + "\n")
    with atomic_open(paths["triples"], "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(TRIPLE_COLUMNS) + "\n")
        for e in graph.edges:
            fh.write(
                "\t".join(
                    _clean(v)
                    for v in (e.head, e.relation, e.tail, e.family, e.source, e.licence, e.reference)
                )
                + "\n"
            )
    summary = graph.summary()
    summary["triples_sha256"] = file_sha256(paths["triples"])
    write_json(paths["summary"], summary)
    return paths


def _clean(value: str) -> str:
    return value.replace("\t", " ").replace("\n", " ")


def resolve_graph_dir(path: str | Path) -> tuple[Path, Path]:
    """``(entities.tsv, triples.tsv)`` of a graph folder, or of the folder of a given triples.tsv."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    triples = path if path.is_file() else folder / "triples.tsv"
    entities = folder / "entities.tsv"
    for p in (triples, entities):
        if not p.is_file():
            raise KGError(f"{p}: missing (expected a graph folder written by `pathways-kg build`)")
    return entities, triples


def read_graph(path: str | Path) -> Graph:
    """Read and validate a graph folder written by :func:`write_graph`."""
    entities_path, triples_path = resolve_graph_dir(path)
    graph = Graph()
    for number, (eid, etype, label, source) in tsv_rows(entities_path, ENTITY_COLUMNS):
        check_entity_id(eid, entities_path, number)
        if etype not in ENTITY_TYPES:
            raise at(
                entities_path, number, f"unknown entity type {etype!r}{did_you_mean(etype, ENTITY_TYPES)}"
            )
        if eid in graph.entities:
            raise at(entities_path, number, f"duplicate entity {eid!r}")
        graph.entities[eid] = Entity(eid, etype, label, source, f"{entities_path}:{number}")
    for number, (head, rel, tail, family, source, licence, reference) in tsv_rows(
        triples_path, TRIPLE_COLUMNS
    ):
        check_relation(rel, triples_path, number)
        if family != RELATIONS[rel].family:
            raise at(
                triples_path,
                number,
                f"relation {rel!r} belongs to family {RELATIONS[rel].family!r}, not {family!r}",
            )
        graph.edges.append(Edge(head, rel, tail, source, licence, reference, f"{triples_path}:{number}"))
    validate(graph)
    summary = entities_path.parent / "summary.json"
    if summary.is_file():
        meta = _read_summary(summary)
        graph.sources = meta.get("sources") or {}
        graph.universe = meta.get("universe")
        recorded = meta.get("triples_sha256")
        if recorded and recorded != file_sha256(triples_path):
            logger.warning("%s: out of date (%s changed after it was written)", summary, triples_path)
    return graph


def _read_summary(path: Path) -> dict:
    """The graph's summary.json, with the types :func:`read_graph` relies on checked."""
    from pathways_kg.io import read_json_object

    meta = read_json_object(path, KGError)
    for key, kinds in (("sources", (dict, type(None))), ("universe", (dict, type(None)))):
        if not isinstance(meta.get(key), kinds):
            raise KGError(f"{path}: {key!r} must be an object or null, got {meta[key]!r}")
    return meta


# --------------------------------------------------------------------------- restriction


def restrict(graph: Graph, universe: Iterable[str], min_genes: int = 5, min_markers: int = 1) -> Graph:
    """The subgraph for a gene universe (gene symbols, e.g. a dataset's ``var_names``).

    Keeps gene-set edges whose gene is in the universe; drops pathways with fewer than ``min_genes``
    genes left and PanglaoDB-only cell types with fewer than ``min_markers`` markers, except the
    hierarchy ancestors of kept ones, so the hierarchy stays connected; curated cell types,
    phenotypes and tissues always stay. Entities left without edges are dropped.
    """
    genes = set(universe)
    if not genes:
        raise KGError("the gene universe is empty")
    set_edges = [e for e in graph.edges if e.relation in GENE_SET_RELATIONS]
    size = collections.Counter(e.tail for e in set_edges if split_id(e.head)[1] in genes)
    parents: dict[str, list[str]] = collections.defaultdict(list)
    for e in graph.edges_of(HIERARCHY_RELATIONS):
        parents[e.head].append(e.tail)

    def wanted(eid: str, ent: Entity) -> bool:
        if ent.type == "pathway":
            return size[eid] >= min_genes
        if ent.type == "celltype":
            return "curated" in ent.source or size[eid] >= max(min_markers, 1)
        if ent.type == "gene":
            return split_id(eid)[1] in genes
        return True  # phenotypes and tissues

    keep = {eid for eid, ent in graph.entities.items() if wanted(eid, ent)}
    stack = [k for k in keep if graph.entities[k].type in ("pathway", "celltype")]
    while stack:  # add ancestors
        for parent in parents.get(stack.pop(), []):
            if parent not in keep:
                keep.add(parent)
                stack.append(parent)
    edges = [e for e in graph.edges if e.head in keep and e.tail in keep]
    # genes only reachable through causal edges must still be a member/marker of something kept
    in_sets = {e.head for e in edges if e.relation in GENE_SET_RELATIONS}
    edges = [
        e for e in edges if all(graph.entities[x].type != "gene" or x in in_sets for x in (e.head, e.tail))
    ]
    used = {x for e in edges for x in (e.head, e.tail)}
    dropped = collections.Counter(ent.type for eid, ent in graph.entities.items() if eid not in used)
    logger.info("gene universe of %d symbols: dropped %s", len(genes), dict(dropped))
    out = Graph(
        entities={eid: ent for eid, ent in graph.entities.items() if eid in used},
        edges=edges,
        sources=dict(graph.sources),
        universe={"size": len(genes), "genes_kept": sum(1 for u in used if u.startswith("gene:"))},
    )
    validate(out)
    return out


def drop_isolated(graph: Graph) -> Graph:
    used = {x for e in graph.edges for x in (e.head, e.tail)}
    isolated = [eid for eid in graph.entities if eid not in used]
    if isolated:
        logger.info("dropping %d entities without edges (e.g. %s)", len(isolated), ", ".join(isolated[:3]))
    return replace(graph, entities={k: v for k, v in graph.entities.items() if k in used})
