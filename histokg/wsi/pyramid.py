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
from tqdm.auto import tqdm

from histokg import budget
from histokg.errors import InputError
from histokg.io import atomic_path
from histokg.wsi.slide import open_slide

log = logging.getLogger(__name__)


def pyramid_levels(image: np.ndarray, min_side: int = 512, rows: int = 512) -> list[np.ndarray]:
    """Level 0 and successive 2x box-downsampled levels until the longest side is below ``min_side``.

    Each level is Pillow's ``reduce(2)`` of the one above, applied to bands of ``rows`` (even) rows:
    the same pixels as reducing the whole level at once (each output row averages two input rows that
    fall in one band), without copying a whole level into Pillow first.
    """
    levels = [image]
    while max(levels[-1].shape[:2]) > min_side:
        above = levels[-1]
        height, width = above.shape[:2]
        level = np.empty(((height + 1) // 2, (width + 1) // 2, 3), np.uint8)
        for y in range(0, height, rows):
            band = Image.fromarray(above[y : y + rows]).reduce(2)
            level[y // 2 : y // 2 + band.height] = np.asarray(band)
        levels.append(level)
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
    progress: bool | None = None,
) -> Path:
    """Write an RGB ``uint8`` image (H, W, 3) as a pyramidal tiled JPEG TIFF with MPP metadata.

    The file appears at ``out_path`` only once complete. ``progress`` shows a bar over tile rows
    (default: when there are at least 16 of them).
    """
    out_path = Path(out_path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"{out_path}: expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}"
        )
    mpp = budget.check_mpp(mpp, f"{out_path}: mpp")
    tile = _check_tiles_and_quality(out_path, tile, quality)
    levels = pyramid_levels(image, min_side=min_side)
    rows = sum(-(-level.shape[0] // tile) for level in levels)
    with (
        atomic_path(out_path) as tmp,
        tqdm(
            total=rows,
            desc=f"writing {out_path.name}",
            unit="tile row",
            disable=(rows < 16) if progress is None else not progress,
        ) as bar,
    ):
        big = image.nbytes > 2**31
        with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
            for index, level in enumerate(levels):
                down = image.shape[1] / level.shape[1]
                pixels_per_cm = 1e4 / (mpp * down)
                bar.set_postfix(level=index)
                tw.write(
                    _tiles(level, tile, bar),
                    shape=level.shape,
                    dtype=level.dtype,
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


def _check_tiles_and_quality(out_path: Path, tile, quality) -> int:
    """The TIFF tile side (:func:`histokg.budget.check_tiff_tile`); the JPEG quality in 1..100."""
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise InputError(f"{out_path}: JPEG quality must be a whole number in 1..100, got {quality!r}")
    return budget.check_tiff_tile(tile, f"{out_path}: tile")


def _tiles(level: np.ndarray, tile: int, bar: tqdm):
    """Tiles of ``level`` in row-major order (edge tiles smaller; tifffile pads them), counting rows."""
    height, width = level.shape[:2]
    last_x = (width - 1) // tile * tile
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            if x == last_x:  # counted before the yield: tifffile stops drawing after the last tile
                bar.update(1)
            yield level[y : y + tile, x : x + tile]


def convert(src: str | Path, dst: str | Path, mpp: float | None = None, **kwargs) -> Path:
    """Convert a slide or plain image to a pyramidal TIFF that OpenSlide reads back with its MPP.

    Level 0 is held in memory once (checked against the memory available before reading; a plain RGB
    JPEG is decoded straight into it), the smaller levels beside it (a third more); the MPP, the tile
    size and the JPEG quality are checked before anything is read. Peak memory: benchmarks/slide_memory.py.
    """
    _check_tiles_and_quality(Path(dst), kwargs.get("tile", 256), kwargs.get("quality", 90))
    with open_slide(src, mpp=mpp) as slide:
        image = slide.read_level(0, progress=True)
        return write_pyramid(image, dst, slide.mpp, **kwargs)
