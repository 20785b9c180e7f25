"""Readers for the graph's source files, with errors that name the file and line at fault.

- GMT gene sets (Reactome, MSigDB Hallmark): ``name<TAB>id-or-url<TAB>gene...``
- the Reactome hierarchy: ``parent<TAB>child`` (R-HSA ids)
- curated TSVs written for this project: cell-type markers (``cell_type, gene, reference``),
  entity declarations (``id, definition, reference``) and triples (``head, relation, tail, reference``)
- PanglaoDB markers (read from the user's path; its licence is not established, so it never ships)

Lines starting with ``#`` and blank lines are skipped in the TSVs. Every reader checks the column
count, empty fields and duplicates, and raises :class:`~pathways_kg.errors.KGError` with ``file:line``.
The KG sources (:mod:`pathways_kg.sources`) read their files with these functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pathways_kg.errors import KGError, at
from pathways_kg.registry import did_you_mean, unknown_name_message
from pathways_kg.schema import ENTITY_TYPES, RELATIONS, split_id

_REACTOME_ID = re.compile(r"^R-HSA-\d+$")


@dataclass(frozen=True)
class GeneSet:
    id: str  # R-HSA id for Reactome, set name for Hallmark
    label: str
    genes: tuple[str, ...]
    line: int


@dataclass(frozen=True)
class CuratedTriple:
    head: str
    relation: str
    tail: str
    reference: str
    origin: str  # "file:line"


@dataclass(frozen=True)
class CuratedEntity:
    id: str
    definition: str
    reference: str
    origin: str


@dataclass(frozen=True)
class PanglaoRow:
    cell_type: str
    gene: str
    organ: str
    line: int


# --------------------------------------------------------------------------- helpers


def open_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    path = Path(path)
    if path.is_dir():
        raise KGError(f"{path}: is a folder, expected a file")
    if not path.is_file():
        raise KGError(f"{path}: file does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            for number, raw in enumerate(fh, start=1):
                yield number, raw.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise KGError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise KGError(f"{path}: cannot read ({exc.strerror or exc})") from None


def tsv_rows(path: str | Path, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Rows of a TSV with a header line naming ``columns``; comments and blank lines skipped."""
    header_seen = False
    for number, line in open_lines(path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if not header_seen:
            if fields != list(columns):
                raise at(path, number, f"expected the header {'<TAB>'.join(columns)!r}, got {line!r}")
            header_seen = True
            continue
        if len(fields) != len(columns):
            raise at(
                path,
                number,
                f"expected {len(columns)} tab-separated columns ({', '.join(columns)}), got {len(fields)}: {line!r}",
            )
        yield number, fields
    if not header_seen:
        raise KGError(f"{path}: empty file (no header line {'<TAB>'.join(columns)!r})")


def check_entity_id(entity_id: str, path: str | Path, line: int) -> str:
    try:
        split_id(entity_id)
    except ValueError:
        kind = entity_id.partition(":")[0]
        raise at(
            path,
            line,
            f"entity id {entity_id!r} must be <type>:<name> with type one of "
            f"{', '.join(ENTITY_TYPES)}{did_you_mean(kind, ENTITY_TYPES)}",
        ) from None
    return entity_id


def check_relation(relation: str, path: str | Path, line: int) -> str:
    if relation.endswith("_inverse"):
        raise at(
            path,
            line,
            f"relation {relation!r}: names ending in '_inverse' are reserved by pykeen for inverse "
            "triples and would be dropped; state the edge in its forward direction",
        )
    if relation not in RELATIONS:
        raise at(
            path,
            line,
            unknown_name_message("relation", relation, RELATIONS, listing="known"),
        )
    return relation


# --------------------------------------------------------------------------- readers


def read_gmt(path: str | Path, kind: str) -> list[GeneSet]:
    """Gene sets of a GMT file. ``kind="reactome"``: id is column 2; ``"hallmark"``: id is the name."""
    if kind not in ("reactome", "hallmark"):
        raise ValueError(f"unknown GMT kind {kind!r}")
    sets: list[GeneSet] = []
    seen: dict[str, int] = {}
    for number, line in open_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        name = fields[0].strip()
        if not name:
            raise at(path, number, "gene set with an empty name")
        genes = [g.strip() for g in fields[2:] if g.strip()]
        if len(fields) < 2:
            raise at(
                path,
                number,
                f"gene set {name!r} has no id/description column and no genes (expected name<TAB>id<TAB>genes...)",
            )
        if not genes:
            raise at(path, number, f"gene set {name!r} has no genes")
        set_id = fields[1].strip() if kind == "reactome" else name
        if kind == "reactome" and not _REACTOME_ID.match(set_id):
            raise at(
                path,
                number,
                f"gene set {name!r}: column 2 must be a human Reactome id (R-HSA-<digits>), got {set_id!r}",
            )
        if set_id in seen:
            raise at(path, number, f"duplicate gene set {set_id!r} (first on line {seen[set_id]})")
        seen[set_id] = number
        dup = first_duplicate(genes)
        if dup is not None:
            raise at(path, number, f"gene set {name!r} lists gene {dup!r} twice")
        sets.append(GeneSet(id=set_id, label=name, genes=tuple(genes), line=number))
    if not sets:
        raise KGError(f"{path}: no gene sets")
    return sets


def read_reactome_hierarchy(path: str | Path) -> list[tuple[str, str, int]]:
    """``(parent, child, line)`` rows of a Reactome ``parent<TAB>child`` relation file."""
    rows: list[tuple[str, str, int]] = []
    seen: dict[tuple[str, str], int] = {}
    for number, line in open_lines(path):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2:
            raise at(
                path, number, f"expected 2 tab-separated columns (parent, child), got {len(fields)}: {line!r}"
            )
        parent, child = fields
        for value in fields:
            if not _REACTOME_ID.match(value):
                raise at(path, number, f"{value!r} is not a human Reactome id (R-HSA-<digits>)")
        if parent == child:
            raise at(path, number, f"self-loop: {parent} is its own parent")
        if (parent, child) in seen:
            raise at(
                path, number, f"duplicate edge {parent} -> {child} (first on line {seen[parent, child]})"
            )
        seen[parent, child] = number
        rows.append((parent, child, number))
    return rows


def read_markers(path: str | Path) -> list[tuple[str, str, str, int]]:
    """``(cell_type, gene, reference, line)`` rows of a curated marker table."""
    rows = []
    seen: dict[tuple[str, str], int] = {}
    for number, (cell_type, gene, reference) in tsv_rows(path, ("cell_type", "gene", "reference")):
        if not cell_type or not gene:
            raise at(path, number, "empty cell_type or gene")
        if (cell_type, gene) in seen:
            raise at(
                path,
                number,
                f"duplicate marker {gene!r} of {cell_type!r} (first on line {seen[cell_type, gene]})",
            )
        seen[cell_type, gene] = number
        rows.append((cell_type, gene, reference, number))
    return rows


def read_curated_entities(path: str | Path) -> list[CuratedEntity]:
    out = []
    seen: dict[str, int] = {}
    for number, (entity_id, definition, reference) in tsv_rows(path, ("id", "definition", "reference")):
        check_entity_id(entity_id, path, number)
        if entity_id in seen:
            raise at(path, number, f"duplicate entity {entity_id!r} (first on line {seen[entity_id]})")
        seen[entity_id] = number
        out.append(CuratedEntity(entity_id, definition, reference, f"{path}:{number}"))
    return out


def read_curated_triples(path: str | Path) -> list[CuratedTriple]:
    """Curated facts: ``head, relation, tail, reference``; every fact needs a reference."""
    out = []
    seen: dict[tuple[str, str, str], int] = {}
    for number, (head, relation, tail, reference) in tsv_rows(
        path, ("head", "relation", "tail", "reference")
    ):
        check_relation(relation, path, number)
        check_entity_id(head, path, number)
        check_entity_id(tail, path, number)
        if head == tail:
            raise at(path, number, f"self-loop: {head!r} {relation} itself")
        if not reference:
            raise at(path, number, f"curated fact {head} {relation} {tail} has no reference")
        key = (head, relation, tail)
        if key in seen:
            raise at(path, number, f"duplicate triple {head} {relation} {tail} (first on line {seen[key]})")
        seen[key] = number
        out.append(CuratedTriple(head, relation, tail, reference, f"{path}:{number}"))
    return out


_PANGLAO_COLUMNS = ("species", "official gene symbol", "cell type", "organ", "canonical marker")


def read_panglao(
    path: str | Path, organs: Sequence[str] = (), canonical_only: bool = False
) -> list[PanglaoRow]:
    """Human rows (species contains ``Hs``) of a PanglaoDB marker export, optionally for some organs."""
    lines = open_lines(path)
    try:
        number, header = next(lines)
    except StopIteration:
        raise KGError(f"{path}: empty file") from None
    names = header.split("\t")
    missing = [c for c in _PANGLAO_COLUMNS if c not in names]
    if missing:
        raise at(
            path, number, f"not a PanglaoDB marker table: missing column(s) {', '.join(map(repr, missing))}"
        )
    col = {c: names.index(c) for c in _PANGLAO_COLUMNS}
    wanted = {o.lower() for o in organs}
    rows = []
    for number, line in lines:
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(names):
            raise at(path, number, f"expected {len(names)} tab-separated columns, got {len(fields)}")
        if "Hs" not in fields[col["species"]].split():
            continue
        organ = fields[col["organ"]].strip()
        if wanted and organ.lower() not in wanted:
            continue
        if canonical_only and fields[col["canonical marker"]].strip() not in ("1", "1.0"):
            continue
        gene, cell_type = fields[col["official gene symbol"]].strip(), fields[col["cell type"]].strip()
        if not gene or not cell_type:
            raise at(path, number, "empty gene symbol or cell type")
        rows.append(PanglaoRow(cell_type, gene, organ if organ.upper() != "NA" else "", number))
    if wanted and not rows:
        raise KGError(f"{path}: no human rows for organ(s) {', '.join(organs)}")
    return rows


def read_panglao_map(path: str | Path) -> dict[str, tuple[str, str, str]]:
    """PanglaoDB cell type -> ``(curated cell type or "", parent cell type or "", reference)``."""
    out: dict[str, tuple[str, str, str]] = {}
    for number, (name, alias, parent, reference) in tsv_rows(
        path, ("panglao_cell_type", "cell_type", "parent", "reference")
    ):
        if name in out:
            raise at(path, number, f"duplicate PanglaoDB cell type {name!r}")
        if bool(alias) == bool(parent):
            raise at(
                path,
                number,
                f"{name!r}: give exactly one of cell_type (same type) or parent (a subtype of it)",
            )
        if not reference:
            raise at(path, number, f"{name!r}: missing reference")
        out[name] = (alias, parent, reference)
    return out


def first_duplicate(items: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None
