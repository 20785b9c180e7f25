"""Pictures of indexed regions for the web page: a region's square from its slide, as PNG bytes."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from histokg.errors import HistokgError

if TYPE_CHECKING:
    from histokg.retrieval.index import RetrievalIndex

DEFAULT_SIDE_PX = 100.0  # a region's side when the index does not know its diameter


def region_image(index: RetrievalIndex, slide_id: str, number: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8 image of region ``number`` of ``slide_id``: read from the source slide
    at the region's physical size when it is still readable, else cut from the slide's thumbnail
    (white when there is none)."""
    meta = index.slide_meta(slide_id)
    shard = index.shard(slide_id)
    x, y = (float(v) for v in shard.coords[number])
    side_px = float(meta.get("region_diameter_px") or 0) or DEFAULT_SIDE_PX
    mpp = float(meta.get("slide_mpp") or 0)
    source = meta.get("source_image") or ""
    if source and Path(source).is_file() and mpp > 0:
        try:
            img, _ = _open(source, mpp).read_physical((x, y), side_px * mpp, size)
            return img
        except HistokgError:
            pass
    thumb_path = index.thumbnail_path(slide_id)
    if thumb_path is None:
        return np.full((size, size, 3), 255, np.uint8)
    scale = float(meta.get("thumbnail_scale") or 1.0)
    with Image.open(thumb_path) as im:
        half = side_px * scale / 2
        box = (
            round(x * scale - half),
            round(y * scale - half),
            round(x * scale + half),
            round(y * scale + half),
        )
        return np.asarray(im.convert("RGB").crop(box).resize((size, size), Image.Resampling.BILINEAR))


def png_bytes(image: np.ndarray) -> bytes:
    """An RGB (or grey) uint8 image encoded as PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=4)
def _open(path: str, mpp: float):
    """Slides stay open between requests for regions of the same slide (a few at a time)."""
    from histokg.wsi import open_slide

    return open_slide(path, mpp=mpp)
