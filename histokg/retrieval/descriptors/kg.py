"""``kg``: the slide's KG-activation profile.

The mean activation of each pathway / cell-type / phenotype entity over the slide's regions
(measured from counts, or transferred from the nearest measured regions for slides without
transcriptomics: :func:`histokg.retrieval.values.slide_kg_means`), z-scored across the indexed slides
and L2-normalised. It needs the other slides (the z-scores), so it describes the index's slides only.
"""

from __future__ import annotations

import numpy as np

from histokg.retrieval.descriptors.base import SlideDescriptor
from histokg.retrieval.values import slide_kg_means
from histokg.retrieval.vectors import normalize


def kg_profiles(means: np.ndarray) -> np.ndarray:
    """z-score each entity's slide means across slides (NaN -> 0), then L2-normalise each slide."""
    means = np.asarray(means, np.float64)
    mu = np.nanmean(means, axis=0) if len(means) else means
    sd = np.nanstd(means, axis=0) if len(means) else means
    z = (means - mu) / np.where(sd > 1e-9, sd, 1.0)
    return normalize(np.nan_to_num(z, nan=0.0))


class KGDescriptor(SlideDescriptor):
    name = "kg"
    summary = "the slide's pathway / cell-type activation profile, z-scored across slides"
    from_regions = False

    def available(self) -> bool:
        return bool(self.index.manifest["entities"])

    def matrix(self) -> np.ndarray:
        return kg_profiles(slide_kg_means(self.index))
