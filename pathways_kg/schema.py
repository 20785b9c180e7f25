"""The graph schema: entity types, relations, and the relation families that group them.

Entity ids are typed and prefixed, ``<type>:<name>``: ``gene:ERBB2``, ``pathway:R-HSA-109581``,
``pathway:HALLMARK_HYPOXIA``, ``celltype:T cell``, ``phenotype:invasive carcinoma``, ``tissue:breast``.

Every relation has one family (hierarchical, membership, marker, composition, causal, spatial), the
entity types allowed at its head and tail, and a direction:

- hierarchical edges point from child to parent (``child part_of parent``), and activations
  propagate along them from the child up to the parent;
- membership and marker edges point from a gene to the set it belongs to, and define the gene sets
  that score pathways and cell types from expression;
- composition edges point from a phenotype to its parts (cell types, hallmark programs), and a
  phenotype's activation is the mean of its parts';
- symmetric relations (``adjacent_to``) are stored in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

ENTITY_TYPES: tuple[str, ...] = ("gene", "pathway", "celltype", "phenotype", "tissue")
FAMILIES: tuple[str, ...] = ("hierarchical", "membership", "marker", "composition", "causal", "spatial")


@dataclass(frozen=True)
class Relation:
    """Metadata of one relation type."""

    name: str
    family: str
    heads: tuple[str, ...]  # allowed head entity types
    tails: tuple[str, ...]  # allowed tail entity types
    symmetric: bool = False
    description: str = ""


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "part_of",
            "hierarchical",
            ("pathway",),
            ("pathway",),
            description="sub-pathway -> parent pathway (Reactome)",
        ),
        Relation(
            "is_a",
            "hierarchical",
            ("phenotype", "pathway"),
            ("phenotype", "pathway"),
            description="specific -> general",
        ),
        Relation(
            "subtype_of",
            "hierarchical",
            ("celltype",),
            ("celltype",),
            description="cell subtype -> parent cell type",
        ),
        Relation(
            "member_of", "membership", ("gene",), ("pathway",), description="gene -> pathway or gene set"
        ),
        Relation("marker_of", "marker", ("gene",), ("celltype",), description="marker gene -> cell type"),
        Relation(
            "composed_of",
            "composition",
            ("phenotype",),
            ("celltype",),
            description="phenotype -> cell type it contains",
        ),
        Relation(
            "has_hallmark",
            "composition",
            ("phenotype",),
            ("pathway",),
            description="phenotype -> active program",
        ),
        Relation(
            "activates",
            "causal",
            ("gene", "pathway", "celltype"),
            ("pathway", "celltype"),
            description="regulator -> target",
        ),
        Relation(
            "inhibits",
            "causal",
            ("gene", "pathway", "celltype"),
            ("pathway", "celltype"),
            description="regulator -> target",
        ),
        Relation(
            "adjacent_to",
            "spatial",
            ("phenotype",),
            ("phenotype",),
            symmetric=True,
            description="regions that border",
        ),
        Relation(
            "found_in",
            "spatial",
            ("celltype", "phenotype"),
            ("tissue",),
            description="cell type or phenotype -> tissue",
        ),
    )
}

#: relations along which activations propagate from head (child) to tail (parent)
HIERARCHY_RELATIONS: tuple[str, ...] = tuple(n for n, r in RELATIONS.items() if r.family == "hierarchical")
#: relations that define gene sets (gene -> set)
GENE_SET_RELATIONS: tuple[str, ...] = ("member_of", "marker_of")
#: relations whose tails make up the head's activation
COMPOSITION_RELATIONS: tuple[str, ...] = tuple(n for n, r in RELATIONS.items() if r.family == "composition")


def family_of(relation: str) -> str:
    return RELATIONS[relation].family


def make_id(entity_type: str, name: str) -> str:
    return f"{entity_type}:{name}"


def split_id(entity_id: str) -> tuple[str, str]:
    """``"celltype:T cell"`` -> ``("celltype", "T cell")``; raises ValueError if not typed."""
    kind, sep, name = entity_id.partition(":")
    if not sep or kind not in ENTITY_TYPES or not name.strip():
        raise ValueError(
            f"entity id {entity_id!r} is not of the form <type>:<name> with type one of {', '.join(ENTITY_TYPES)}"
        )
    return kind, name


def type_of(entity_id: str) -> str:
    return split_id(entity_id)[0]
