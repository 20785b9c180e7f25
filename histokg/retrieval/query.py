"""Queries on a :class:`~histokg.retrieval.index.RetrievalIndex`.

- :func:`similar_slides`: slides ranked by a slide descriptor (any name of the descriptor registry,
  :mod:`histokg.retrieval.descriptors`: ``mean``, ``prototypes``, ``kg``, ...), leaving out the query
  slide (and, with ``exclude_patient``, the query's patient).
- :func:`similar_regions`: a rectangle on a slide (level-0 pixels or microns) -> the mean of the
  region embeddings inside it -> the nearest regions of the index (or of one target slide).
- :func:`find_entities` / :func:`slides_by_entity`: a pathway or cell-type name -> KG entities ->
  slides ranked by their mean activation (optionally within regions of one label, e.g. a tumour
  label). Slides without transcriptomics get activations transferred from the nearest measured
  regions of other slides (:func:`~histokg.retrieval.values.region_values` with
  ``source="predicted"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from histokg.errors import InputError
from histokg.registry import nearest, normalize
from histokg.retrieval import faiss_index as fi
from histokg.retrieval.entities import entity_names, resolve_entity, resolve_label
from histokg.retrieval.index import RetrievalIndex, region_id, split_region_id
from histokg.retrieval.values import TRANSFER_K, region_labels, region_values, slide_kg_means

__all__ = [
    "TRANSFER_K",
    "Box",
    "find_entities",
    "parse_region_id",
    "region_record",
    "region_values",
    "regions_in_box",
    "resolve_entity",
    "resolve_label",
    "similar_regions",
    "similar_slides",
    "similar_to_vectors",
    "slide_kg_means",
    "slides_by_entity",
]

log = logging.getLogger(__name__)

UNITS = ("px", "um")


@dataclass(frozen=True)
class Box:
    """A rectangle on a slide: (x0, y0) top-left, (x1, y1) bottom-right, in ``units``."""

    x0: float
    y0: float
    x1: float
    y1: float
    units: str = "px"

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise InputError(f"box units {self.units!r} are not one of {list(UNITS)}")
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(np.isfinite(v) for v in values):
            raise InputError(f"box {values} has a non-finite coordinate")
        if self.x1 <= self.x0 or self.y1 <= self.y0:
            raise InputError(f"box {values}: x1 must exceed x0 and y1 must exceed y0")

    def to_px(self, mpp: float) -> tuple[float, float, float, float]:
        f = 1.0 if self.units == "px" else 1.0 / mpp
        return self.x0 * f, self.y0 * f, self.x1 * f, self.y1 * f


# --------------------------------------------------------------------------- slides


def similar_slides(
    index: RetrievalIndex,
    slide_id: str,
    *,
    k: int = 5,
    descriptor: str = "mean",
    exclude_patient: bool = False,
) -> list[dict]:
    """The ``k`` slides most similar to ``slide_id`` (itself left out), best first."""
    ids, mat = index.descriptors(descriptor)
    q = mat[ids.index(index.slide_meta(slide_id)["slide_id"])]
    patient = index.patient(slide_id) if exclude_patient else None
    skip = {slide_id} | ({s for s in ids if patient and index.patient(s) == patient} if patient else set())
    return _rank(index, ids, index.descriptor(descriptor).similarity(mat, q), k, skip)


def similar_to_vectors(
    index: RetrievalIndex, vectors: np.ndarray, *, k: int = 5, descriptor: str = "mean"
) -> list[dict]:
    """Slides most similar to a new slide's region vectors (not in the index)."""
    ids, mat = index.descriptors(descriptor)
    q = index.describe_vectors(vectors, descriptor)
    return _rank(index, ids, index.descriptor(descriptor).similarity(mat, q), k, set())


def _rank(index: RetrievalIndex, ids: list[str], scores: np.ndarray, k: int, skip: set[str]) -> list[dict]:
    k = _check_k(k)
    order = np.argsort(-scores, kind="stable")
    out = []
    for i in order:
        if ids[i] in skip:
            continue
        meta = index.slide_meta(ids[i])
        out.append(
            {
                "slide_id": ids[i],
                "score": float(scores[i]),
                "patient": meta.get("patient"),
                "labels": meta.get("labels", {}),
            }
        )
        if len(out) == k:
            break
    return out


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or not 1 <= int(k) <= 1000:
        raise InputError(f"k={k!r} must be an integer from 1 to 1000")
    return int(k)


# --------------------------------------------------------------------------- regions


def regions_in_box(index: RetrievalIndex, slide_id: str, box: Box) -> np.ndarray:
    """Numbers of the slide's regions whose centres lie inside ``box`` (nearest one if none does)."""
    meta = index.slide_meta(slide_id)
    shard = index.shard(slide_id)
    x0, y0, x1, y1 = box.to_px(float(meta["slide_mpp"]))
    xy = shard.coords
    inside = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    if len(inside):
        return inside
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    dist = np.linalg.norm(xy - centre, axis=1)
    nearest = int(np.argmin(dist))
    reach = max(x1 - x0, y1 - y0) / 2 + float(meta.get("region_diameter_px") or 0)
    if dist[nearest] > reach:
        raise InputError(
            f"box ({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) px on slide {slide_id} covers none of its "
            f"{len(xy)} regions (nearest centre {dist[nearest]:.0f} px away)"
        )
    return np.array([nearest])


def similar_regions(
    index: RetrievalIndex,
    slide_id: str,
    box: Box,
    *,
    k: int = 10,
    target_slide: str | None = None,
    exclude_query_slide: bool = True,
) -> dict:
    """Regions most similar to the regions inside ``box`` on ``slide_id``.

    With ``target_slide``: "which regions of that slide resemble this region" (exact search over that
    slide). Otherwise the whole index is searched (approximate for HNSW/IVF indexes), leaving out the
    query slide's own regions when ``exclude_query_slide``.
    """
    k = _check_k(k)
    chosen = regions_in_box(index, slide_id, box)
    q = fi.normalize(index.shard(slide_id).vectors[chosen].mean(axis=0))
    if target_slide is not None:
        shard = index.shard(target_slide)
        scores = shard.vectors @ q
        if target_slide == slide_id and exclude_query_slide:
            scores[chosen] = -np.inf
        order = np.argsort(-scores, kind="stable")[:k]
        order = order[np.isfinite(scores[order])]
        ordinal = index.slide_meta(target_slide)["ordinal"]
        hits = [(float(scores[i]), int(region_id(ordinal, i))) for i in order]
    else:
        own = index.slide_meta(slide_id)["ordinal"]
        fetch = k + (index.slide_meta(slide_id)["n_regions"] if exclude_query_slide else 0)
        scores, ids = fi.search(index.regions, q[None], fetch)
        hits = []
        for s, rid in zip(scores[0], ids[0], strict=True):
            if rid < 0 or (exclude_query_slide and split_region_id(rid)[0] == own):
                continue
            hits.append((float(s), int(rid)))
            if len(hits) == k:
                break
    return {
        "query": {"slide_id": slide_id, "regions": [int(i) for i in chosen], "box": box.__dict__},
        "results": [region_record(index, rid, score) for score, rid in hits],
    }


def region_record(index: RetrievalIndex, rid: int, score: float | None = None) -> dict:
    ordinal, number = split_region_id(rid)
    slide = index.slide_of_ordinal(int(ordinal))
    shard = index.shard(slide)
    n = int(number)
    x, y = (float(v) for v in shard.coords[n])
    out = {
        "region_id": int(rid),
        "slide_id": slide,
        "name": str(shard.names[n]),
        "x": x,
        "y": y,
        "diameter_px": float(index.slide_meta(slide).get("region_diameter_px") or 0.0),
        "mpp": slide_mpp(index.slide_meta(slide)),
    }
    if score is not None:
        out["score"] = score
    if shard.labels is not None:
        out["label"] = str(shard.labels[n])
    return out


def slide_mpp(meta: dict) -> float | None:
    """A slide's microns per level-0 pixel (None when the index does not know it)."""
    mpp = float(meta.get("slide_mpp") or np.nan)
    return mpp if np.isfinite(mpp) and mpp > 0 else None


def parse_region_id(index: RetrievalIndex, rid: int) -> tuple[str, int]:
    """(slide id, region number) of a region id, checked against the index."""
    if isinstance(rid, bool) or not isinstance(rid, int | np.integer) or rid < 0:
        raise InputError(f"region id {rid!r} is not a non-negative integer")
    ordinal, number = (int(v) for v in split_region_id(rid))
    slide = index.slide_of_ordinal(ordinal)
    if number >= index.slide_meta(slide)["n_regions"]:
        raise InputError(f"region id {rid}: slide {slide} has no region {number}")
    return slide, number


# --------------------------------------------------------------------------- KG entities


def find_entities(
    index: RetrievalIndex, text: str, *, limit: int = 10, types: tuple[str, ...] = ()
) -> list[dict]:
    """KG entities for completion: the entity ``text`` names first (:mod:`histokg.retrieval.entities`),
    then those whose id or label starts with it, then those containing it (all under the naming
    rule: any case, without spaces, ``-`` or ``_``), then the nearest labels."""
    text = str(text).strip()
    if len(text) > 200:
        raise InputError("an entity query is at most 200 characters")
    names = entity_names(index)
    ents = [e for e in names.entities if not types or e.split(":", 1)[0] in types]
    if not text:
        return [{"id": e, "label": names.label(e)} for e in ents[:limit]]
    key = normalize(text)
    named = set(names.by_key.get(key, ()))
    scored = []
    for e in ents:
        lab = normalize(names.label(e))
        ident = normalize(e.split(":", 1)[-1])
        if e in named:
            scored.append((0, lab, e))
        elif lab.startswith(key) or ident.startswith(key):
            scored.append((1, lab, e))
        elif key in lab or key in normalize(e):
            scored.append((2, lab, e))
    if not scored:
        close = set(nearest(text, [names.label(e) for e in ents], n=limit, cutoff=0.5))
        scored = [(3, normalize(names.label(e)), e) for e in ents if names.label(e) in close]
    scored.sort()
    return [{"id": e, "label": names.label(e)} for _, _, e in scored[:limit]]


def slides_by_entity(index: RetrievalIndex, name: str, *, k: int = 10, within: str | None = None) -> dict:
    """Slides ranked by the mean activation of a KG entity, over all regions or those labelled ``within``.

    ``name`` and ``within`` are resolved from what a person types (:mod:`histokg.retrieval.entities`:
    ``hypoxia``, ``HALLMARK_HYPOXIA``, ``pathway:HALLMARK_HYPOXIA``; ``Invasive Carcinoma``).
    """
    k = _check_k(k)
    entity = resolve_entity(index, name)
    if within is not None:
        within = resolve_label(within, region_labels(index))
    rows = []
    for sid in index.slide_ids:
        shard = index.shard(sid)
        measured = shard.kg is not None and entity in shard.entities
        values = region_values(index, sid, f"kg:{entity}", source="measured" if measured else "predicted")
        mask = np.ones(len(values), bool)
        if within is not None:
            labels = (
                shard.labels
                if shard.labels is not None
                else region_values(index, sid, "label", source="predicted")
            )
            mask = labels == within
        n = int(np.isfinite(values[mask]).sum())
        if n == 0:
            continue
        rows.append(
            {
                "slide_id": sid,
                "score": float(np.nanmean(values[mask])),
                "n_regions": n,
                "source": "measured" if measured else "predicted",
                "labels": index.slide_meta(sid).get("labels", {}),
            }
        )
    if within is not None and not rows:
        raise InputError(f"no slide has regions labelled {within!r}")
    rows.sort(key=lambda r: -r["score"])
    return {
        "entity": entity,
        "label": entity_names(index).label(entity),
        "within": within,
        "results": rows[:k],
    }
