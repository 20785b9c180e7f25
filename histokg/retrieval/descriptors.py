"""Slide descriptors from region (tile or spot) embeddings.

- ``mean``: the L2-normalised mean of a slide's region embeddings (the usual baseline).
- ``prototypes``: a bag-of-regions histogram that keeps the slide's composition. A set of region
  prototypes is learned by spherical k-means (faiss) over the indexed regions; each region is
  assigned softly to its prototypes (softmax of cosine / temperature); the slide's histogram is the
  mean assignment, square-rooted and L2-normalised, so that the inner product of two slides is
  their Bhattacharyya coefficient (1 = same composition).
- ``kg``: the slide's KG-activation profile: the mean activation of each pathway / cell-type /
  phenotype entity over its regions (measured from counts, or transferred from the nearest
  measured regions for slides without transcriptomics), z-scored across the indexed slides and
  L2-normalised.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

from histokg.errors import InputError
from histokg.retrieval.faiss_index import normalize

log = logging.getLogger(__name__)

DESCRIPTORS = ("mean", "prototypes", "kg")


def mean_descriptor(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError(f"a slide descriptor needs a non-empty (n, d) array of regions, got {vectors.shape}")
    return normalize(vectors.mean(axis=0))


def learn_prototypes(
    vectors: np.ndarray, n_prototypes: int = 16, *, seed: int = 0, max_train: int = 100_000
) -> np.ndarray:
    """Spherical k-means centres (n_prototypes, d) over (a sample of) region vectors."""
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


def kg_profiles(means: np.ndarray) -> np.ndarray:
    """z-score each entity's slide means across slides (NaN -> 0), then L2-normalise each slide."""
    means = np.asarray(means, np.float64)
    mu = np.nanmean(means, axis=0) if len(means) else means
    sd = np.nanstd(means, axis=0) if len(means) else means
    z = (means - mu) / np.where(sd > 1e-9, sd, 1.0)
    return normalize(np.nan_to_num(z, nan=0.0))
