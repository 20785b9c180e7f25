"""Write images as pyramidal tiled TIFFs that OpenSlide reads (its "generic tiled TIFF" format).

Levels are stored as consecutive TIFF directories, each tiled and JPEG-compressed, halving in size
until the longest side fits in one or two tiles. The TIFF resolution tags carry the MPP (in pixels
per centimetre), which OpenSlide reports as ``openslide.mpp-x``/``openslide.mpp-y``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from histokg.errors import InputError
from histokg.io import atomic_path
from histokg.wsi.slide import open_slide

log = logging.getLogger(__name__)


def pyramid_levels(image: np.ndarray, min_side: int = 512) -> list[np.ndarray]:
    """Level 0 and successive 2x box-downsampled levels until the longest side is below ``min_side``."""
    levels = [image]
    while max(levels[-1].shape[:2]) > min_side:
        current = Image.fromarray(levels[-1])
        levels.append(np.asarray(current.reduce(2)))
    return levels


def write_pyramid(
    image: np.ndarray,
    out_path: str | Path,
    mpp: float,
    *,
    tile: int = 256,
    quality: int = 90,
    min_side: int = 512,
    description: str = "",
) -> Path:
    """Write an RGB ``uint8`` image (H, W, 3) as a pyramidal tiled JPEG TIFF with MPP metadata.

    The file appears at ``out_path`` only once complete.
    """
    out_path = Path(out_path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"{out_path}: expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}"
        )
    if not mpp or mpp <= 0:
        raise InputError(f"{out_path}: mpp must be positive, got {mpp!r}")
    if tile % 16:
        raise InputError(f"{out_path}: tile size must be a multiple of 16, got {tile}")
    levels = pyramid_levels(image, min_side=min_side)
    with atomic_path(out_path) as tmp:
        big = image.nbytes > 2**31
        with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
            for index, level in enumerate(levels):
                down = image.shape[1] / level.shape[1]
                pixels_per_cm = 1e4 / (mpp * down)
                tw.write(
                    level,
                    photometric="rgb",
                    tile=(tile, tile),
                    compression="jpeg",
                    compressionargs={"level": quality},
                    resolution=(pixels_per_cm, pixels_per_cm),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if index else 0,
                    description=(description or f"histokg pyramid; level {index}; mpp={mpp * down:.6g}"),
                    metadata=None,
                )
    log.info(
        "wrote %s: %d levels, level 0 %dx%d at %.4g um/px",
        out_path,
        len(levels),
        image.shape[1],
        image.shape[0],
        mpp,
    )
    return out_path


def convert(src: str | Path, dst: str | Path, mpp: float | None = None, **kwargs) -> Path:
    """Convert a slide or plain image to a pyramidal TIFF that OpenSlide reads back with its MPP."""
    with open_slide(src, mpp=mpp) as slide:
        width, height = slide.dimensions
        image = slide.read_region((0, 0), 0, (width, height))
        return write_pyramid(image, dst, slide.mpp, **kwargs)
