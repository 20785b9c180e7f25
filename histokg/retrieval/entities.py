"""What a person types for a pathway, a cell type or a region label -> the one name the index holds.

One resolver for every consumer: ``histokg index query --pathway/--within``, the library's
:func:`~histokg.retrieval.query.slides_by_entity`, overlays and values (``kg:<name>``) and the web
app. A KG entity is found by

- its id (``pathway:HALLMARK_HYPOXIA``, ``celltype:T cell``), its id without the type
  (``HALLMARK_HYPOXIA``, ``R-HSA-1234174``) or its label (``Cellular-response-to-hypoxia``),
- under the naming rule of :func:`histokg.registry.normalize`: any case, without spaces, ``-`` or
  ``_`` (``hallmark hypoxia``, ``t-cell``, ``cellular response to hypoxia``),
- without its collection prefix (``hypoxia`` for ``HALLMARK_HYPOXIA``), or with the prefix of its
  collection added (``REACTOME_GLYCOLYSIS`` for Reactome's ``Glycolysis``, as MSigDB names it).

One match is the entity. Several are refused with the candidates (``glycolysis`` is Hallmark's and
Reactome's: the user picks one by id or prefix); none is refused with the nearest names
(:func:`histokg.registry.did_you_mean`, the project's one "did you mean"). Region labels
(``--within``) follow the naming rule too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from histokg.errors import InputError
from histokg.registry import did_you_mean, normalize

if TYPE_CHECKING:
    from histokg.retrieval.index import RetrievalIndex

#: MSigDB collection prefixes (``HALLMARK_HYPOXIA``, ``KEGG_GLYCOLYSIS``): a set is also found without it
COLLECTIONS = ("HALLMARK", "REACTOME", "KEGG", "BIOCARTA", "PID", "WP", "GOBP", "GOCC", "GOMF")
_MSIGDB = re.compile(rf"^({'|'.join(COLLECTIONS)})_(.+)$")
_REACTOME_ID = re.compile(r"^R-[A-Z]{3}-\d+$")
MAX_QUERY = 200
MAX_CANDIDATES = 8  # candidates named in an ambiguity error


class EntityNames:
    """Every spelling of every entity of an index, under the naming rule (built once per index)."""

    def __init__(self, entities: list[str], labels: dict[str, str], where: str = "the index's KG") -> None:
        self.where = where  # what holds the entities, for errors
        self.entities = list(entities)
        self.labels = {e: str(labels.get(e, e)) for e in self.entities}
        self.by_key: dict[str, list[str]] = {}
        self.spellings: dict[str, str] = {}  # other spellings -> the label to suggest
        for e in self.entities:
            for key in self._keys(e):
                hits = self.by_key.setdefault(key, [])
                if e not in hits:
                    hits.append(e)

    def _keys(self, entity: str) -> set[str]:
        name = entity.split(":", 1)[-1]
        label = self.labels[entity]
        spellings = {entity, name, label}
        for text in (name, label):
            if m := _MSIGDB.match(text):
                spellings.add(m.group(2))
                self.spellings[m.group(2)] = label
        if _REACTOME_ID.match(name):
            spellings.add(f"REACTOME_{label}")
            self.spellings[f"REACTOME_{label}"] = label
        return {normalize(s) for s in spellings}

    def label(self, entity: str) -> str:
        return self.labels.get(entity, entity)

    def resolve(self, text: str, *, what: str = "pathway or cell type") -> str:
        """The entity id ``text`` names; InputError naming the candidates or the nearest names."""
        text = _query_text(text, what)
        if text in self.labels:
            return text
        hits = self.by_key.get(normalize(text), [])
        if len(hits) == 1:
            return hits[0]
        if hits:
            shown = ", ".join(f"{self.label(e)!r} ({e})" for e in hits[:MAX_CANDIDATES])
            more = f" and {len(hits) - MAX_CANDIDATES} more" if len(hits) > MAX_CANDIDATES else ""
            raise InputError(
                f"{what} {text!r} matches {len(hits)} entities of {self.where}: {shown}{more}; "
                "give one of these ids (or its collection prefix, e.g. HALLMARK_ or REACTOME_)"
            )
        if not self.entities:
            raise InputError(
                f"{what} {text!r}: {self.where} holds no KG entities (no slide with counts and a KG bundle)"
            )
        hint = did_you_mean(text, self.labels.values(), n=3, cutoff=0.6, spellings=self.spellings)
        raise InputError(f"{what} {text!r} is not in {self.where}{hint}")


def entity_names(index: RetrievalIndex) -> EntityNames:
    """The spellings table of ``index``'s KG entities (cached on the index)."""
    manifest = index.manifest
    return index.cached(
        ("entity_names",), lambda: EntityNames(manifest["entities"], manifest["entity_labels"])
    )


def resolve_entity(index: RetrievalIndex, name: str) -> str:
    """The KG entity id that ``name`` (an id, a label, a name as a person types it) names."""
    return entity_names(index).resolve(name)


def resolve_label(text: str, labels: list[str], *, what: str = "region label") -> str:
    """The one of ``labels`` that ``text`` names under the naming rule; InputError with the nearest otherwise."""
    text = _query_text(text, what)
    if text in labels:
        return text
    hits = [lab for lab in labels if normalize(lab) == normalize(text)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise InputError(
            f"{what} {text!r} matches {len(hits)} labels: {hits[:MAX_CANDIDATES]}; give one exactly"
        )
    listing = f" (labels: {', '.join(labels[:20])}{', ...' if len(labels) > 20 else ''})" if labels else ""
    raise InputError(f"no {what} {text!r} in the index{did_you_mean(text, labels, n=3)}{listing}")


def _query_text(text: object, what: str) -> str:
    text = str(text).strip()
    if not text:
        raise InputError(f"{what}: an empty name")
    if len(text) > MAX_QUERY:
        raise InputError(f"{what}: a name is at most {MAX_QUERY} characters, got {len(text)}")
    return text
