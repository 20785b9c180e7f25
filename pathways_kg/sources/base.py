"""The :class:`Source` base class and the :class:`GraphBuilder` that sources add their facts to.

A source is one kind of input file (a GMT of gene sets, a marker table, curated triples...). Its
skeleton: ``__init__`` takes the file's path (``None``: the copy shipped in ``pathways_kg/data``,
named by :attr:`Source.shipped`) and its options; :meth:`Source.read` parses and checks the file,
raising :class:`~pathways_kg.errors.KGError` naming ``file:line`` and the field at fault;
:meth:`Source.add` turns the records into entities and typed edges (relations of
:mod:`pathways_kg.schema`), each stamped with the source's :class:`Provenance`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pathways_kg.errors import KGError
from pathways_kg.graph import Edge, Entity, Graph
from pathways_kg.io import data_path
from pathways_kg.registry import normalize
from pathways_kg.schema import RELATIONS, split_id

if TYPE_CHECKING:
    from pathways_kg.readers import GeneSet


@dataclass(frozen=True)
class Provenance:
    """Where a fact comes from and under which licence."""

    name: str
    licence: str
    citation: str


CURATED = Provenance(
    "histokg curated", "MIT", "written for histokg from the cited literature (reference column)"
)


class GraphBuilder:
    """A graph being built: the first source to name an entity labels it; the same fact from two
    sources becomes one edge whose ``source``/``licence`` list both."""

    def __init__(self) -> None:
        self.graph = Graph()
        self._index: dict[tuple[str, str, str], int] = {}

    def entity(self, eid: str, label: str, source: Provenance, origin: str = "") -> None:
        if eid not in self.graph.entities:
            self.graph.entities[eid] = Entity(eid, split_id(eid)[0], label, source.name, origin)

    def edge(
        self, head: str, relation: str, tail: str, source: Provenance, reference: str = "", origin: str = ""
    ) -> None:
        self.graph.sources.setdefault(source.name, {"licence": source.licence, "citation": source.citation})
        pairs = [(head, tail), (tail, head)] if RELATIONS[relation].symmetric else [(head, tail)]
        for h, t in pairs:
            key = (h, relation, t)
            if key in self._index:  # the same fact from another source: merge provenance
                i = self._index[key]
                old = self.graph.edges[i]
                if source.name not in old.source.split("; "):
                    refs = "; ".join(r for r in (old.reference, reference) if r)
                    self.graph.edges[i] = Edge(
                        h,
                        relation,
                        t,
                        f"{old.source}; {source.name}",
                        f"{old.licence}; {source.licence}",
                        refs,
                        old.origin,
                    )
                continue
            self._index[key] = len(self.graph.edges)
            self.graph.edges.append(Edge(h, relation, t, source.name, source.licence, reference, origin))


class Source(ABC):
    """One kind of input file that becomes entities and typed triples with provenance.

    A subclass is registered under its class name without ``Source`` (``MarkersSource`` ->
    ``markers``) and sets :attr:`provenance` (or ``self.provenance`` in ``__init__``).
    """

    #: registry name, set from the class name
    name: ClassVar[str]
    #: where the facts come from and under which licence
    provenance: Provenance
    #: the file shipped in ``pathways_kg/data`` read when no path is given; None: a path is required
    shipped: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = normalize(cls.__name__).removesuffix("source")

    def __init__(self, path: str | Path | None = None) -> None:
        #: the file is the user's (not the copy shipped in ``pathways_kg/data``)
        self.user_supplied = path is not None
        if path is None:
            if self.shipped is None:
                raise KGError(f"KG source {self.name!r} needs a file: give kwargs {{path: FILE}}")
            path = data_path(self.shipped)
        self.path = Path(path)

    @abstractmethod
    def read(self) -> Sequence[Any]:
        """The file's records, checked; a bad one raises :class:`KGError` naming ``file:line``."""

    @abstractmethod
    def add(self, builder: GraphBuilder, records: Sequence[Any]) -> None:
        """Add the records' entities and edges to ``builder``."""

    def add_to(self, builder: GraphBuilder) -> Sequence[Any]:
        """Read the file and add its facts to ``builder``; returns the records."""
        records = self.read()
        self.add(builder, records)
        return records

    def gene_sets(self, records: Sequence[Any]) -> list[GeneSet]:
        """The gene sets among the records (gene-set sources; others: none). With a gene universe, the
        build checks a user's file against it (:func:`pathways_kg.build.check_universe`)."""
        return []

    def origin(self, line: int, path: str | Path | None = None) -> str:
        """``file:line`` of a record, for error messages and ``Entity.origin``/``Edge.origin``."""
        return f"{self.path if path is None else path}:{line}"
