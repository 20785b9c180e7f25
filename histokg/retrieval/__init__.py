"""Slide-level retrieval: slide descriptors, a FAISS region index, queries and their evaluation.

- :class:`RetrievalIndex` (``histokg.retrieval.index``): a folder with per-slide shards, a FAISS
  region index (exact, HNSW or IVF) and a manifest (slide ids, patients, labels, checkpoint hash).
- ``histokg.retrieval.descriptors``: the registry of slide descriptors (``mean``, ``prototypes``,
  ``kg``; one module each), :func:`descriptor_names`, :func:`get_descriptor`.
- :func:`build_index` / :func:`add_to_index` (``histokg.retrieval.build``): embed slides, one Dask
  task per slide, resumable; add slides without a rebuild.
- ``histokg.retrieval.query``: :func:`similar_slides`, :func:`similar_regions` (a rectangle on a
  slide), :func:`slides_by_entity` (pathway or cell-type name through the KG activations);
  ``histokg.retrieval.entities``: :func:`resolve_entity` (a name as a person types it -> the KG id);
  ``histokg.retrieval.values``: :func:`region_values` (measured or transferred values on regions).
- What the web app draws and embeds: ``histokg.retrieval.overlay`` (a slide's regions with one
  feature on one colour scale), ``histokg.retrieval.images`` (region images),
  :func:`embed_regions` (``histokg.retrieval.regions``: a new slide's tiles, with progress).
- ``histokg.retrieval.evaluate``: mMV@5, mAP, hit@k with leave-one-slide/patient-out.

Submodules import faiss and Dask on first use, so ``import histokg.retrieval`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RetrievalIndex": "histokg.retrieval.index",
    "SlideSpec": "histokg.retrieval.shards",
    "specs_from_paths": "histokg.retrieval.shards",
    "specs_from_table": "histokg.retrieval.shards",
    "build_index": "histokg.retrieval.build",
    "add_to_index": "histokg.retrieval.build",
    "embed_slides": "histokg.retrieval.build",
    "Box": "histokg.retrieval.query",
    "similar_slides": "histokg.retrieval.query",
    "similar_regions": "histokg.retrieval.query",
    "similar_to_vectors": "histokg.retrieval.query",
    "slides_by_entity": "histokg.retrieval.query",
    "find_entities": "histokg.retrieval.query",
    "resolve_entity": "histokg.retrieval.entities",
    "region_values": "histokg.retrieval.values",
    "descriptor_names": "histokg.retrieval.descriptors",
    "get_descriptor": "histokg.retrieval.descriptors",
    "embed_regions": "histokg.retrieval.regions",
    "retrieval_metrics": "histokg.retrieval.evaluate",
    "slide_retrieval_metrics": "histokg.retrieval.evaluate",
    "region_retrieval_metrics": "histokg.retrieval.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'histokg.retrieval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
