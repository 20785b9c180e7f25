"""Whole-slide images: reading (OpenSlide and plain images), pyramid writing, tissue masks, tiling."""

from histokg.wsi.mask import MaskConfig, TissueMask, detect_tissue, tissue_mask_from_image
from histokg.wsi.pyramid import convert, write_pyramid
from histokg.wsi.slide import OpenSlideSlide, PlainImageSlide, Slide, open_slide, slide_dimensions
from histokg.wsi.tiling import (
    Tiles,
    TilingConfig,
    draw_overlay,
    load_tiles_h5,
    save_png,
    save_tiles_h5,
    tile_slide,
    tiles_overlay,
)

__all__ = [
    "MaskConfig",
    "OpenSlideSlide",
    "PlainImageSlide",
    "Slide",
    "Tiles",
    "TilingConfig",
    "TissueMask",
    "convert",
    "detect_tissue",
    "draw_overlay",
    "load_tiles_h5",
    "open_slide",
    "save_png",
    "save_tiles_h5",
    "slide_dimensions",
    "tile_slide",
    "tiles_overlay",
    "tissue_mask_from_image",
    "write_pyramid",
]
