"""Values on the regions of an indexed slide: prototype clusters, labels, genes, KG activations.

Measured values come from the slide's own shard (counts, KG activations, region labels); predicted
values are transferred from the :data:`TRANSFER_K` nearest measured regions of the *other* slides
(a kNN over region embeddings), so slides without transcriptomics can be coloured and ranked too.
:func:`slide_kg_means` (each slide's mean activation of every KG entity) feeds the ``kg`` slide
descriptor and pathway queries.

Functions take a :class:`~histokg.retrieval.index.RetrievalIndex`; this module does not import it,
so the index, its descriptors and the queries can all use it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from histokg.errors import InputError
from histokg.retrieval.entities import resolve_entity

if TYPE_CHECKING:
    from histokg.retrieval.index import RetrievalIndex

TRANSFER_K = 10


def region_values(index: RetrievalIndex, slide_id: str, what: str, *, source: str = "measured") -> np.ndarray:
    """Values of one feature on each region of a slide.

    ``what``: ``"cluster"`` (prototype), ``"label"`` (region label), ``"gene:<symbol>"`` (log1p
    CP10k), ``"kg:<entity>"`` (activation; the entity by id or as a person types it, resolved by
    :func:`histokg.retrieval.entities.resolve_entity`). ``source``: ``"measured"`` (the slide's own counts or
    labels; InputError when it has none) or ``"predicted"`` (transferred from the
    :data:`TRANSFER_K` nearest measured regions of the *other* slides).
    """
    if source not in ("measured", "predicted"):
        raise InputError(f"source {source!r} is not 'measured' or 'predicted'")
    if what == "cluster":
        return index.clusters(slide_id).astype(np.float32)
    kind, _, name = what.partition(":")
    if kind not in ("gene", "kg", "label") or (kind != "label" and not name):
        raise InputError(f"feature {what!r}: use 'cluster', 'label', 'gene:<symbol>' or 'kg:<entity id>'")
    if kind == "kg":
        name = resolve_entity(index, name)
    shard = index.shard(slide_id)
    if source == "measured":
        values = _measured(index, shard, kind, name)
        if values is None:
            raise InputError(f"slide {slide_id} has no measured {kind} values; ask for source='predicted'")
        return values
    return _predicted(index, slide_id, kind, name)


def _measured(index: RetrievalIndex, shard, kind: str, name: str) -> np.ndarray | None:
    if kind == "label":
        return None if shard.labels is None else shard.labels
    names, mat = (shard.genes, shard.expr) if kind == "gene" else (shard.entities, shard.kg)
    if mat is None:
        return None
    if name not in names:
        known = index.manifest["genes"] if kind == "gene" else index.manifest["entities"]
        if name not in known:
            raise InputError(f"{kind} {name!r} is not in the index{_suggest(name, known)}")
        return np.full(len(shard), np.nan, np.float32)
    return mat[:, names.index(name)].astype(np.float32)


def _suggest(name: str, known: list[str]) -> str:
    """``"; did you mean 'A', 'B'?"``: up to three names, never the whole (long) list."""
    from histokg.registry import did_you_mean

    return did_you_mean(name, known, n=3, cutoff=0.6)


def _predicted(index: RetrievalIndex, slide_id: str, kind: str, name: str) -> np.ndarray:
    donors = []
    for meta in index.manifest["slides"]:
        sid = meta["slide_id"]
        if sid == slide_id:
            continue
        values = _measured(index, index.shard(sid), kind, name)
        if values is not None:
            donors.append((index.shard(sid).vectors, values))
    if not donors:
        raise InputError(f"no other slide in the index has measured {kind} values to transfer to {slide_id}")
    pool = np.concatenate([d[0] for d in donors])
    vals = np.concatenate([d[1] for d in donors])
    query = index.shard(slide_id).vectors
    k = min(TRANSFER_K, len(pool))
    sims = query @ pool.T
    nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    if kind == "label":  # majority vote of the neighbours
        picked = vals[nn]
        out = []
        for row in picked:
            labels, counts = np.unique(row, return_counts=True)
            out.append(labels[np.argmax(counts)])
        return np.asarray(out)
    with np.errstate(invalid="ignore"):
        return np.nanmean(vals[nn].astype(np.float32), axis=1)


def slide_kg_means(index: RetrievalIndex) -> np.ndarray:
    """(n_slides, n_entities) mean activation of each entity on each slide (measured, else transferred)."""
    entities = index.manifest["entities"]
    if not entities:
        raise InputError("the index has no KG activations (no slide with counts and a KG bundle)")

    def build() -> np.ndarray:
        rows = []
        for sid in index.slide_ids:
            shard = index.shard(sid)
            if shard.kg is not None:
                full = np.full((len(shard), len(entities)), np.nan, np.float32)
                for j, e in enumerate(shard.entities):
                    full[:, entities.index(e)] = shard.kg[:, j]
            else:
                full = np.stack([_predicted(index, sid, "kg", e) for e in entities], axis=1)
            with np.errstate(invalid="ignore"):
                rows.append(np.nanmean(full, axis=0) if len(full) else np.full(len(entities), np.nan))
        return np.stack(rows)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return index.cached(("kg_means",), build)


def region_labels(index: RetrievalIndex) -> list[str]:
    """Every region label of the index's slides (measured labels only), sorted; cached on the index."""

    def build() -> list[str]:
        labels: set[str] = set()
        for sid in index.slide_ids:
            shard = index.shard(sid)
            if shard.labels is not None:
                labels.update(map(str, np.unique(shard.labels)))
        return sorted(labels)

    return index.cached(("region_labels",), build)
