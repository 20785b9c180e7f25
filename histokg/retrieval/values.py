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
from tqdm.auto import tqdm

from histokg.errors import InputError
from histokg.retrieval.entities import resolve_entity

if TYPE_CHECKING:
    from histokg.retrieval.index import RetrievalIndex

TRANSFER_K = 10
CHUNK_CELLS = 1 << 24  # about 64 MB of float32 per chunk of a similarity or transfer matrix


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
            if kind == "gene":
                raise not_in_panel(name, known, "the genes this index holds")
            raise InputError(f"{kind} {name!r} is not in the index{_suggest(name, known)}")
        return np.full(len(shard), np.nan, np.float32)
    return mat[:, names.index(name)].astype(np.float32)


def _suggest(name: str, known: list[str]) -> str:
    """``"; did you mean 'A', 'B'?"``: up to three names, never the whole (long) list."""
    from histokg.registry import did_you_mean

    return did_you_mean(name, known, n=3, cutoff=0.6)


def not_in_panel(gene: str, panel: list[str], what: str) -> InputError:
    """The error for a gene outside the model's panel: it says so, and names the nearest panel genes
    (or, when none is near, the first few of the panel), never the whole list."""
    hint = _suggest(gene, panel)
    if not hint and panel:
        shown = sorted(panel)[:6]
        hint = f"; its genes include {', '.join(shown)}{', ...' if len(panel) > len(shown) else ''}"
    return InputError(
        f"gene {gene!r} is outside the model's gene panel ({len(panel)} genes: {what}), "
        f"so it has no measured or predicted values here{hint}"
    )


def _has(shard, kind: str) -> bool:
    """Whether a slide measured values of this kind (a donor for transfers)."""
    return {"label": shard.labels, "gene": shard.expr, "kg": shard.kg}[kind] is not None


def transfer_neighbours(index: RetrievalIndex, slide_id: str, kind: str) -> tuple[list[str], np.ndarray]:
    """(donor slides, (n_regions, k) indices into their concatenated regions): the :data:`TRANSFER_K`
    nearest regions with measured ``kind`` values on other slides, for each region of ``slide_id``.
    Computed once per slide and kind (chunked, bounded memory) and kept on the index."""

    def build() -> tuple[list[str], np.ndarray]:
        donors = [s for s in index.slide_ids if s != slide_id and _has(index.shard(s), kind)]
        if not donors:
            raise InputError(
                f"no other slide in the index has measured {kind} values to transfer to {slide_id}"
            )
        pool = np.concatenate([index.shard(s).vectors for s in donors])
        query = index.shard(slide_id).vectors
        k = min(TRANSFER_K, len(pool))
        nn = np.empty((len(query), k), np.int64)
        step = max(1, CHUNK_CELLS // max(len(pool), 1))
        for start in range(0, len(query), step):
            sims = query[start : start + step] @ pool.T
            nn[start : start + step] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return donors, nn

    return index.cached(("transfer", slide_id, kind), build)


def _predicted(index: RetrievalIndex, slide_id: str, kind: str, name: str) -> np.ndarray:
    donors, nn = transfer_neighbours(index, slide_id, kind)
    vals = np.concatenate([_measured(index, index.shard(s), kind, name) for s in donors])
    if kind == "label":  # majority vote of the neighbours
        picked = vals[nn]
        out = []
        for row in picked:
            labels, counts = np.unique(row, return_counts=True)
            out.append(labels[np.argmax(counts)])
        return np.asarray(out)
    with np.errstate(invalid="ignore"):
        return np.nanmean(vals[nn].astype(np.float32), axis=1)


def _kg_matrix(shard, entities: list[str]) -> np.ndarray:
    """A shard's measured activations in the order of the index's ``entities`` (NaN where it has none)."""
    full = np.full((len(shard), len(entities)), np.nan, np.float32)
    column = {e: j for j, e in enumerate(entities)}
    for j, e in enumerate(shard.entities):
        full[:, column[e]] = shard.kg[:, j]
    return full


def _predicted_kg_mean(index: RetrievalIndex, slide_id: str, donor_kg: dict[str, np.ndarray]) -> np.ndarray:
    """The mean over a slide's regions of every entity's transferred activation (as :func:`_predicted`
    region by region, all entities at once; chunked so that memory stays bounded)."""
    donors, nn = transfer_neighbours(index, slide_id, "kg")
    vals = np.concatenate([donor_kg[s] for s in donors])
    total = np.zeros(vals.shape[1], np.float64)
    count = np.zeros(vals.shape[1], np.int64)
    step = max(1, CHUNK_CELLS // max(nn.shape[1] * vals.shape[1], 1))
    for start in range(0, len(nn), step):
        per_region = np.nanmean(vals[nn[start : start + step]], axis=1)  # (chunk, entities)
        finite = np.isfinite(per_region)
        total += np.where(finite, per_region, 0.0).sum(axis=0)
        count += finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def slide_kg_means(index: RetrievalIndex) -> np.ndarray:
    """(n_slides, n_entities) mean activation of each entity on each slide (measured, else transferred).

    Stored with the index's generation (``descriptors.npz``, computed when the index is written);
    computed here only for an index written before that, once, with a progress bar."""
    entities = index.manifest["entities"]
    if not entities:
        raise InputError("the index has no KG activations (no slide with counts and a KG bundle)")

    def build() -> np.ndarray:
        stored = index.stored("kg_means")
        if stored is not None:
            return stored
        measured = {
            s: _kg_matrix(index.shard(s), entities) for s in index.slide_ids if index.shard(s).kg is not None
        }
        rows = []
        for sid in tqdm(index.slide_ids, desc="KG activations per slide", unit="slide", leave=False):
            if sid in measured:
                full = measured[sid]
                rows.append(np.nanmean(full, axis=0) if len(full) else np.full(len(entities), np.nan))
            else:
                rows.append(_predicted_kg_mean(index, sid, measured))
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
