"""``mean``: the L2-normalised mean of a slide's centred region vectors (the usual baseline)."""

from __future__ import annotations

import numpy as np

from histokg.errors import InputError
from histokg.retrieval.descriptors.base import SlideDescriptor
from histokg.retrieval.vectors import normalize


def mean_descriptor(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise InputError(f"a slide descriptor needs a non-empty (n, d) array of regions, got {vectors.shape}")
    return normalize(vectors.mean(axis=0))


class MeanDescriptor(SlideDescriptor):
    name = "mean"
    summary = "mean embedding of the slide's regions (minus the archive's mean region)"

    def describe(self, vectors: np.ndarray) -> np.ndarray:
        return mean_descriptor(self.index.centered(vectors))
