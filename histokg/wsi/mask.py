"""Tissue detection on a low-resolution view of the slide.

Tissue is told from glass by colour saturation: Otsu's threshold (scikit-image) on the saturation
channel of a thumbnail, then morphological closing, and removal of small specks and small holes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage import color, filters, morphology

from histokg import budget
from histokg.errors import InputError
from histokg.wsi.slide import Slide


@dataclass(frozen=True)
class MaskConfig:
    """How tissue is found. Sizes are in microns so that they mean the same on every scanner."""

    mask_mpp: float = 8.0  # resolution of the thumbnail the mask is computed on
    min_saturation: float = 0.04  # floor on the Otsu threshold, so blank glass never counts as tissue
    closing_um: float = 32.0  # closing radius that joins nearby tissue fragments
    min_object_um2: float = 40_000.0  # specks smaller than this (about 200 x 200 um) are dropped
    min_hole_um2: float = 40_000.0  # holes smaller than this are filled

    def __post_init__(self) -> None:
        from pathways_kg.dataconf import DataConfError, check

        budget.check_mpp(self.mask_mpp, "mask_mpp", error=DataConfError)
        check(
            0 <= self.min_saturation <= 1, "min_saturation", f"must be in [0, 1], got {self.min_saturation}"
        )
        for key in ("closing_um", "min_object_um2", "min_hole_um2"):
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, key, f"must be a finite number >= 0, got {value}")


@dataclass
class TissueMask:
    """Boolean tissue mask with its scale: mask pixels per level-0 pixel."""

    mask: np.ndarray
    scale: float
    thumbnail: np.ndarray
    threshold: float

    def fraction_in_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue fraction inside each level-0 box (x0, y0, x1, y1), from an integral image."""
        integral = np.pad(self.mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        h, w = self.mask.shape
        b = np.asarray(boxes, dtype=np.float64) * self.scale
        fx0, fy0 = np.floor(b[:, 0]).astype(int), np.floor(b[:, 1]).astype(int)
        fx1, fy1 = np.ceil(b[:, 2]).astype(int), np.ceil(b[:, 3]).astype(int)
        x0, x1 = np.clip(fx0, 0, w), np.clip(fx1, 0, w)
        y0, y1 = np.clip(fy0, 0, h), np.clip(fy1, 0, h)
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        # Parts of a box outside the image count as background.
        return inside / np.maximum((fx1 - fx0) * (fy1 - fy0), 1)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Whether each level-0 point (x, y) falls on tissue."""
        pts = np.floor(np.asarray(xy, dtype=np.float64) * self.scale).astype(int)
        h, w = self.mask.shape
        ok = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
        out = np.zeros(len(pts), dtype=bool)
        out[ok] = self.mask[pts[ok, 1], pts[ok, 0]]
        return out


def tissue_mask_from_image(
    rgb: np.ndarray, um_per_px: float, cfg: MaskConfig = MaskConfig()
) -> tuple[np.ndarray, float]:
    """Mask of an RGB thumbnail whose pixels are ``um_per_px`` wide; returns (mask, threshold)."""
    saturation = color.rgb2hsv(rgb)[..., 1]
    saturation = filters.median(saturation, morphology.disk(2))
    if float(saturation.max()) - float(saturation.min()) < 1e-6:
        threshold = 1.0
    else:
        threshold = float(filters.threshold_otsu(saturation))
    threshold = max(threshold, cfg.min_saturation)
    mask = saturation > threshold
    # a disk wider than the image closes nothing more: the cap keeps a tiny MPP from allocating gigabytes
    radius = min(max(1, int(round(cfg.closing_um / um_per_px))), max(rgb.shape[:2]))
    mask = morphology.closing(mask, morphology.disk(radius))
    px_area = um_per_px**2
    mask = morphology.remove_small_objects(mask, max_size=max(1, int(cfg.min_object_um2 / px_area)))
    mask = morphology.remove_small_holes(mask, max_size=max(1, int(cfg.min_hole_um2 / px_area)))
    return mask, threshold


def detect_tissue(slide: Slide, cfg: MaskConfig = MaskConfig(), *, allow_empty: bool = False) -> TissueMask:
    """Compute the tissue mask of ``slide`` at ``cfg.mask_mpp``."""
    width, height = slide.dimensions
    max_side = max(16, int(round(max(width, height) * slide.mpp / cfg.mask_mpp)))
    thumb, scale = slide.thumbnail(max_side=max_side)
    mask, threshold = tissue_mask_from_image(thumb, slide.mpp / scale, cfg)
    if not mask.any() and not allow_empty:
        raise InputError(
            f"slide {slide.path}: the tissue mask is empty (no region more saturated than "
            f"{threshold:.3f} at {cfg.mask_mpp} um/px); is this a blank or non-H&E image?"
        )
    return TissueMask(mask=mask, scale=scale, thumbnail=thumb, threshold=threshold)
