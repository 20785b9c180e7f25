"""Work budgets: every value that sets an amount of work is checked here, before anything is allocated.

A microns-per-pixel (MPP), a spot diameter, a patch or tile size, or an image's pixel count decides how
many pixels are read, decoded or allocated and how many tiles or patches are made. A wrong value
(``--mpp 1e-6``, a spot diameter of ``1e7`` um) would otherwise become a 289 GiB allocation or hours of
drawing. Each check compares the work a value implies with a sane cap (the constants below); the error
names the value, what it would cost and what a plausible value is. The decompression guard for image
headers (:func:`histokg.wsi.memory.check_image_memory`, which compares the pixels an image file claims
with the memory this process can still get) is the same idea; it lives in ``histokg.wsi``, which imports
this module, never the other way round (tests/test_layers.py).

Who calls what:

- :func:`check_mpp`: every MPP a slide is opened with (:func:`histokg.wsi.open_slide`: ``--mpp`` of
  ``convert``, ``tile``, ``embed``, the readers, uploads) and the tiling target;
- :func:`check_extent`: an opened slide (its pixels times its MPP must be a section, not metres);
- :func:`check_patch`: the tiling and pairing configs (patch side in pixels and microns);
- :func:`check_read`: :meth:`histokg.wsi.Slide.read_physical`, the pixels read for one patch;
- :func:`check_tiles`: :func:`histokg.wsi.tile_slide` before the grid is allocated; ``max_tiles`` of
  :func:`histokg.tl.embed.tile_adata`, :func:`histokg.tl.embed.embed_slide` and
  :func:`histokg.retrieval.regions.embed_regions` lets a caller (the web app's uploads) set a smaller cap,
  and :func:`tile_count` tells it the number before any pixel is decoded;
- :func:`check_spot_diameter`: the AnnData contract (every reader, ``pair``, overlays, ``embed``);
- :func:`check_tiff_tile`: :func:`histokg.wsi.write_pyramid` (``convert --tile``).
"""

from __future__ import annotations

import math

from histokg.errors import InputError

#: finest plausible MPP: beyond what light microscopy resolves (the finest slide scanners: about 0.1 um/px)
MIN_MPP = 0.01
#: coarsest plausible MPP: at 100 um/px a whole 25 x 75 mm glass slide is 250 x 750 pixels
MAX_MPP = 100.0
#: the longest side of a section's image in millimetres (a glass slide is 25 x 75 mm; whole mounts ~100)
MAX_SLIDE_MM = 250.0
#: the largest spot, bin or pseudo-spot in microns (Visium 55 um, legacy ST 100 um, Visium HD 2-16 um)
MAX_SPOT_UM = 5000.0
#: the side of one patch or tile in pixels, and in microns
MAX_PATCH_PX = 4096
MAX_PATCH_UM = 10_000.0
#: the side of the region read from a slide for one patch, in pixels of the pyramid level read
MAX_READ_PX = 8192
#: grid tiles of one slide at one tiling geometry (a 25 x 75 mm slide in 112 um tiles is 150,000)
MAX_TILES = 2_000_000
#: the side of one TIFF tile written by convert (JPEG tiles are 256-1024 px in practice)
MAX_TIFF_TILE = 4096


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def check_mpp(mpp, what: str = "mpp", *, error: type[Exception] = InputError) -> float:
    """``mpp`` as a float when it is a plausible microns per pixel (:data:`MIN_MPP` to :data:`MAX_MPP`)."""
    value = _number(mpp)
    if value is None or not MIN_MPP <= value <= MAX_MPP:
        raise error(
            f"{what}: microns per pixel {mpp!r} is not plausible; it must be between {MIN_MPP:g} and "
            f"{MAX_MPP:g} um/px (a 40x scan is about 0.25, 20x about 0.5)"
        )
    return value


def check_extent(
    width: int, height: int, mpp: float, what: str, *, error: type[Exception] = InputError
) -> None:
    """Refuse an image whose pixels at ``mpp`` would be larger than any section (:data:`MAX_SLIDE_MM`)."""
    longest_mm = max(int(width), int(height)) * float(mpp) / 1000.0
    if longest_mm > MAX_SLIDE_MM:
        raise error(
            f"{what}: {int(width)}x{int(height)} px at {float(mpp):g} um/px would be "
            f"{int(width) * float(mpp) / 1000:,.0f} x {int(height) * float(mpp) / 1000:,.0f} mm, larger than "
            f"any section (at most {MAX_SLIDE_MM:g} mm a side); is the microns per pixel right?"
        )


def check_patch(
    patch_um, patch_px, what: str = "", *, error: type[Exception] = InputError, px_key: str = "patch_px"
) -> None:
    """A patch of ``patch_um`` microns read at ``patch_px`` pixels: both bounded, and their ratio an MPP."""
    prefix = f"{what}." if what else ""
    px = _number(patch_px)
    if px is None or px != int(px) or not 8 <= px <= MAX_PATCH_PX:
        raise error(
            f"{prefix}{px_key}: must be a whole number of pixels in 8..{MAX_PATCH_PX}, got {patch_px!r}"
        )
    um = _number(patch_um)
    if um is None or not 0 < um <= MAX_PATCH_UM:
        raise error(
            f"{prefix}patch_um: must be a number of microns in (0, {MAX_PATCH_UM:g}], got {patch_um!r}"
        )
    check_mpp(um / px, f"{prefix}patch_um / {prefix}{px_key} ({um:g} um / {int(px)} px)", error=error)


def check_read(side_px: int, size_um: float, mpp: float, what: str) -> None:
    """Refuse reading a ``side_px`` square for one patch when it exceeds :data:`MAX_READ_PX`."""
    if side_px > MAX_READ_PX:
        raise InputError(
            f"{what}: a {size_um:g} um patch at {mpp:g} um/px is a {side_px:,} px square, more than the "
            f"{MAX_READ_PX} px histokg reads for one patch; is the microns per pixel right?"
        )


def tile_count(width: int, height: int, mpp: float, target_mpp: float, patch_px: int, stride_px=None) -> int:
    """How many grid tiles of ``patch_px`` px at ``target_mpp`` a ``width`` x ``height`` image at ``mpp``
    holds (before the tissue filter): what :func:`histokg.wsi.tile_slide` would allocate, computed
    from the header alone (nothing is decoded)."""
    size0 = patch_px * target_mpp / mpp
    stride0 = (stride_px or patch_px) * target_mpp / mpp

    def along(extent: int) -> int:  # as many as np.arange(0, extent - size0 + 1e-6, stride0) holds
        span = extent - size0 + 1e-6
        return max(0, math.ceil(span / stride0))

    return along(int(width)) * along(int(height))


def check_tiles(n: int, what: str, max_tiles: int | None = None) -> None:
    """Refuse ``n`` tiles above ``max_tiles`` (default :data:`MAX_TILES`)."""
    cap = MAX_TILES if max_tiles is None else int(max_tiles)
    if n > cap:
        raise InputError(
            f"{what}: {n:,} tiles, more than the {cap:,} allowed; check the microns per pixel and the tile "
            "size, or tile a smaller image"
        )


def check_spot_diameter(diameter_px, mpp: float, what: str) -> float:
    """``diameter_px`` (slide pixels) as a float: positive, finite, at most :data:`MAX_SPOT_UM` microns."""
    value = _number(diameter_px)
    if value is None or value <= 0:
        raise InputError(
            f"{what}: the spot diameter must be a positive number of pixels, got {diameter_px!r}"
        )
    microns = value * float(mpp)
    if microns > MAX_SPOT_UM:
        raise InputError(
            f"{what}: a spot diameter of {value:g} px at {float(mpp):g} um/px is {microns:g} um, more than "
            f"any spot or bin (at most {MAX_SPOT_UM:g} um; Visium spots are 55 um, legacy ST spots 100 um)"
        )
    return value


def check_tiff_tile(tile, what: str) -> int:
    """A TIFF tile side: a multiple of 16 in 16..:data:`MAX_TIFF_TILE` (the TIFF standard's rule)."""
    value = _number(tile)
    if value is None or value != int(value) or int(value) % 16 or not 16 <= value <= MAX_TIFF_TILE:
        raise InputError(
            f"{what}: the tile size must be a multiple of 16 in 16..{MAX_TIFF_TILE} px, got {tile!r}"
        )
    return int(value)
