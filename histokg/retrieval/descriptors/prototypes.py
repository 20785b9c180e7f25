"""``prototypes``: a bag-of-regions histogram that keeps the slide's composition.

A set of region prototypes is learned by spherical k-means (faiss) over the indexed regions when the
index is created (:func:`learn_prototypes`, saved as ``prototypes.npy``); each region is assigned
softly to its prototypes (softmax of cosine / temperature, :func:`assign`); the slide's histogram is
the mean assignment, square-rooted and L2-normalised, so that the inner product of two slides is
their Bhattacharyya coefficient (1 = same composition). The same prototypes colour the regions of
the web page ("cluster", :meth:`RetrievalIndex.clusters`).
"""

from __future__ import annotations

import logging

import numpy as np

from histokg.errors import InputError
from histokg.retrieval.descriptors.base import SlideDescriptor
from histokg.retrieval.vectors import normalize

log = logging.getLogger(__name__)


def learn_prototypes(
    vectors: np.ndarray, n_prototypes: int = 16, *, seed: int = 0, max_train: int = 100_000
) -> np.ndarray:
    """Spherical k-means centres (n_prototypes, d) over (a sample of) region vectors."""
    import faiss

    vectors = np.asarray(vectors, np.float32)
    k = int(max(2, min(n_prototypes, len(vectors) // 10)))
    if len(vectors) < 20:
        raise InputError(f"learning region prototypes needs at least 20 regions, got {len(vectors)}")
    rng = np.random.default_rng(seed)
    sample = (
        vectors if len(vectors) <= max_train else vectors[rng.choice(len(vectors), max_train, replace=False)]
    )
    km = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(sample))
    log.info("learned %d region prototypes from %d regions", k, len(sample))
    return normalize(km.centroids)


def assign(vectors: np.ndarray, prototypes: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    """Soft assignment (n, k) of regions to prototypes: softmax(cosine / temperature)."""
    sim = np.asarray(vectors, np.float32) @ np.asarray(prototypes, np.float32).T / temperature
    sim -= sim.max(axis=1, keepdims=True)
    w = np.exp(sim)
    return w / w.sum(axis=1, keepdims=True)


def prototype_histogram(vectors: np.ndarray, prototypes: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    hist = assign(vectors, prototypes, temperature).mean(axis=0)
    return normalize(np.sqrt(hist))


class PrototypeDescriptor(SlideDescriptor):
    name = "prototypes"
    summary = "the slide's mix of region prototypes (square-rooted soft histogram)"

    def describe(self, vectors: np.ndarray) -> np.ndarray:
        index = self.index
        return prototype_histogram(index.centered(vectors), index.prototypes, index.prototype_temperature)
