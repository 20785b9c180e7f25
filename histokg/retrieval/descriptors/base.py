"""The base class of slide descriptors: a whole slide as one vector, from its region vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from histokg.errors import InputError

if TYPE_CHECKING:
    from histokg.retrieval.index import RetrievalIndex


class SlideDescriptor:
    """How a slide becomes one vector, and how two such vectors are compared.

    A subclass sets ``name`` (its name in the registry, :mod:`histokg.retrieval.descriptors`: the
    ``--descriptor`` of ``histokg index query``, the app's ``?descriptor=``) and ``summary`` (one
    line), and implements :meth:`describe` (one slide's region vectors -> its descriptor) or, when a
    slide's descriptor needs more than its own region vectors (``kg``: z-scores across slides),
    :meth:`matrix` (every slide of the index at once) with ``from_regions = False``.

    An instance is bound to one :class:`~histokg.retrieval.index.RetrievalIndex` and reads what
    the index learned from the whole archive when it was created and saved with it: the mean region
    ``index.center`` (``center.npy``; :meth:`RetrievalIndex.centered`) and the region prototypes
    ``index.prototypes`` (``prototypes.npy``). So a loaded index gives the same descriptors as the
    one that was saved. The index computes every descriptor of every slide when it writes a
    generation and stores them (``descriptors.npz``, :meth:`RetrievalIndex.descriptors` reads them);
    for an index written before generations they are computed when first asked for, once.

    Descriptors are L2-normalised vectors compared by their inner product (cosine similarity);
    override :meth:`similarity` for another comparison (queries and evaluation both use it).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: :meth:`describe` works on region vectors alone: slides outside the index (uploads) and slides
    #: without transcriptomics can be described (the app answers uploads with these descriptors).
    from_regions: ClassVar[bool] = True

    def __init__(self, index: RetrievalIndex) -> None:
        self.index = index

    def available(self) -> bool:
        """Whether the index holds what this descriptor needs (e.g. KG activations)."""
        return True

    def describe(self, vectors: np.ndarray) -> np.ndarray:
        """The (d,) L2-normalised descriptor of one slide's (n, dim) region vectors."""
        from histokg.retrieval.descriptors import region_descriptor_names

        raise InputError(
            f"the {self.name!r} descriptor cannot describe regions outside the index; "
            f"use one of {region_descriptor_names()}"
        )

    def matrix(self) -> np.ndarray:
        """(n_slides, d) descriptors of the index's slides, in the order of ``index.slide_ids``."""
        return np.stack([self.describe(self.index.shard(s).vectors) for s in self.index.slide_ids])

    def similarity(self, descriptors: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Similarity of each row of ``descriptors`` to ``query``: one descriptor (d,) -> (n,), or
        rows (m, d) -> (n, m). Higher is more similar."""
        return descriptors @ query.T
