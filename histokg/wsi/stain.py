"""Stain normalisation: Reinhard colour transfer of every patch to one reference stain.

Reinhard et al. (2001) match colour by moving an image's per-channel mean and standard deviation in
CIELAB onto a target's. histokg measures the *source* statistics once per slide, on the tissue of the
slide's low-resolution view (the tissue mask of :mod:`histokg.wsi.mask`, 8 um/px by default), so every
patch of one slide gets the same transform, whichever spots or tiles are read, and a patch keeps the
colour differences between regions of its own slide (a per-patch normalisation would erase them).

The *target* is fixed and recorded with the model (``data.stain_target`` in a checkpoint's config),
so training, embedding and prediction on a new slide map onto the same reference. The default,
:data:`DEFAULT_TARGET`, is the tissue statistics of the OpenSlide test slide CMU-1-Small-Region.svs
(Aperio, H&E), measured with :func:`slide_stain_stats`: a reference no fold of any benchmark holds out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from histokg.errors import InputError

#: ``stain_norm`` values: ``none`` (patches as read) or ``reinhard``.
STAIN_NORMS = ("none", "reinhard")

#: CIELAB mean (L, a, b) and standard deviation (L, a, b) of the tissue of CMU-1-Small-Region.svs.
DEFAULT_TARGET: tuple[float, ...] = (54.65, 25.09, -10.87, 17.34, 9.8, 5.6)

MIN_TISSUE_PX = 64  # fewer tissue pixels in the slide's low-resolution view: no statistics to trust


@dataclass(frozen=True)
class StainStats:
    """CIELAB mean and standard deviation (L, a, b) of an image's tissue."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, values: Sequence[float], what: str = "stain_target") -> StainStats:
        """From six numbers: mean L, a, b then standard deviation L, a, b; errors name ``what``."""
        problem = target_problem(values)
        if problem:
            raise InputError(f"{what}: {problem}")
        vals = [float(v) for v in values]
        return cls(tuple(vals[:3]), tuple(vals[3:]))  # type: ignore[arg-type]

    def as_tuple(self) -> tuple[float, ...]:
        return (*self.mean, *self.std)


def target_problem(values) -> str | None:
    """What is wrong with six numbers meant as a stain target (CIELAB mean L, a, b then std L, a, b), or
    None when they are one."""
    try:
        vals = [float(v) for v in values] if isinstance(values, Sequence) else []
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 6 or not all(math.isfinite(v) for v in vals):
        return f"expected six finite numbers (CIELAB mean L, a, b, then std L, a, b), got {values!r}"
    if not 0 <= vals[0] <= 100 or min(vals[3:]) <= 0:
        return f"mean L must be in 0..100 and every standard deviation > 0, got {values!r}"
    return None


def lab_stats(rgb: np.ndarray, mask: np.ndarray | None = None) -> StainStats:
    """CIELAB statistics of the pixels of an (H, W, 3) uint8 image (only where ``mask``, when given)."""
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb)
    pixels = lab[mask] if mask is not None else lab.reshape(-1, 3)
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    return StainStats(tuple(map(float, mean)), tuple(float(max(s, 1e-3)) for s in std))  # type: ignore[arg-type]


def reinhard(patch: np.ndarray, source: StainStats, target: StainStats) -> np.ndarray:
    """An (H, W, 3) uint8 patch with its slide's colour statistics ``source`` moved onto ``target``:
    in CIELAB, ``(value - source mean) / source std * target std + target mean`` per channel."""
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(patch)
    lab = (lab - np.asarray(source.mean)) * (np.asarray(target.std) / np.asarray(source.std))
    lab += np.asarray(target.mean)
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    rgb = lab2rgb(lab)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def slide_stain_stats(slide, mask_cfg=None) -> StainStats:
    """The CIELAB statistics of a slide's tissue, on its low-resolution view at the tissue mask's
    resolution (:func:`histokg.wsi.mask.detect_tissue`). An InputError names the slide when it has too
    little tissue to measure."""
    from histokg.wsi.mask import MaskConfig, detect_tissue

    tissue = detect_tissue(slide, mask_cfg or MaskConfig(), allow_empty=True)
    if int(tissue.mask.sum()) < MIN_TISSUE_PX:
        raise InputError(
            f"slide {slide.path}: stain normalisation needs tissue to measure, and its tissue mask holds "
            f"{int(tissue.mask.sum())} pixels (fewer than {MIN_TISSUE_PX}); use data.stain_norm: none"
        )
    return lab_stats(tissue.thumbnail, tissue.mask)


@lru_cache(maxsize=64)
def _cached_stats(path: str, size: int, mtime_ns: int, mpp: float) -> StainStats:
    from histokg.wsi.slide import open_slide

    with open_slide(path, mpp=mpp) as slide:
        return slide_stain_stats(slide)


def stats_of(slide) -> StainStats:
    """:func:`slide_stain_stats` of an open slide, computed once per file (path, size, modification
    time and MPP) in a process: tiled prediction opens one slide many times."""
    path = Path(slide.path)
    if not path.is_file():
        return slide_stain_stats(slide)
    stat = path.stat()
    return _cached_stats(str(path.resolve()), stat.st_size, stat.st_mtime_ns, float(slide.mpp))
