"""FAISS indexes over L2-normalised vectors (inner product = cosine similarity).

``kind``: ``"flat"`` (exact), ``"hnsw"`` (graph, no training, adds anywhere), ``"ivf"`` (inverted
lists, trained on the first vectors it sees, then adds without retraining), or ``"auto"``: exact
below :data:`EXACT_LIMIT` vectors, HNSW beyond. Every index is wrapped in an ``IndexIDMap2`` so
that region ids are stable 64-bit integers that survive save/load and appends.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import faiss
import numpy as np

from histokg.errors import InputError
from histokg.io import atomic_path
from histokg.retrieval.vectors import normalize  # noqa: F401  (re-exported: fi.normalize)

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf")
EXACT_LIMIT = 50_000  # below this many vectors exact search is fast enough (a few ms per query)


def resolve_kind(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise InputError(f"index kind {kind!r} is not one of {list(KINDS)}")
    if kind == "auto":
        return "flat" if n < EXACT_LIMIT else "hnsw"
    return kind


def ivf_nlist(n: int) -> int:
    """Inverted lists for n vectors: about 2 sqrt(n), at least 1, at most n / 39 (faiss's training minimum)."""
    return int(max(1, min(2 * math.sqrt(max(n, 1)), n // 39 if n >= 39 else 1)))


TRAIN_PER_LIST = 64  # k-means training sample per inverted list (faiss needs >= 39)


def make_index(kind: str, dim: int, train: np.ndarray | None = None, *, hnsw_m: int = 32) -> faiss.Index:
    """An empty ``IndexIDMap2`` of the given kind; IVF is trained on ``train``."""
    n = 0 if train is None else len(train)
    kind = resolve_kind(kind, n)
    if kind == "flat":
        base = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        base.hnsw.efConstruction = 80
        base.hnsw.efSearch = 64
    else:
        if train is None or len(train) < 39:
            raise InputError(f"an IVF index needs at least 39 training vectors, got {n}")
        nlist = ivf_nlist(len(train))
        quantizer = faiss.IndexFlatIP(dim)
        base = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        if len(train) > TRAIN_PER_LIST * nlist:
            rng = np.random.default_rng(0)
            train = train[rng.choice(len(train), TRAIN_PER_LIST * nlist, replace=False)]
        base.cp.niter = 10
        base.train(np.ascontiguousarray(train, dtype=np.float32))
        base.nprobe = max(1, min(nlist, max(16, nlist // 16)))
    return faiss.IndexIDMap2(base)


def index_kind(index: faiss.Index) -> str:
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(base, faiss.IndexIVF):
        return "ivf"
    return "flat"


def add(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != index.d:
        raise InputError(f"vectors of shape {vectors.shape} do not fit an index of dimension {index.d}")
    index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k); missing results have id -1 and score -inf."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = int(max(1, min(k, index.ntotal)))
    scores, ids = index.search(queries, k)
    scores = np.where(ids < 0, -np.inf, scores)
    return scores, ids


def set_search_effort(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Trade speed for recall: IVF ``nprobe`` lists, HNSW ``efSearch`` candidates."""
    base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if nprobe is not None and isinstance(base, faiss.IndexIVF):
        base.nprobe = int(nprobe)
    if ef_search is not None and isinstance(base, faiss.IndexHNSW):
        base.hnsw.efSearch = int(ef_search)


def save(index: faiss.Index, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return path


def load(path: str | Path) -> faiss.Index:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"index file {path} does not exist")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise InputError(f"index file {path} cannot be read by faiss: {str(exc).splitlines()[0]}") from None
