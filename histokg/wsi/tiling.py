"""Grid tiling of the tissue at a target resolution, CLAM-compatible coordinate files and overlays."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from histokg import budget
from histokg.errors import InputError
from histokg.io import atomic_path
from histokg.wsi.mask import MaskConfig, TissueMask, detect_tissue
from histokg.wsi.slide import Slide

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TilingConfig:
    """Grid tiling: patches of ``patch_px`` pixels at ``target_mpp`` um/px."""

    target_mpp: float = 0.5
    patch_px: int = 224
    stride_px: int | None = None  # defaults to patch_px (no overlap)
    min_tissue: float = 0.5  # keep tiles whose tissue fraction is at least this
    mask: MaskConfig = field(default_factory=MaskConfig)

    def __post_init__(self) -> None:
        from pathways_kg.dataconf import DataConfError, check

        budget.check_mpp(self.target_mpp, "target_mpp", error=DataConfError)
        budget.check_patch(self.patch_px * self.target_mpp, self.patch_px, error=DataConfError)
        stride = self.stride_px
        check(
            stride is None or (int(stride) == stride and 1 <= stride <= budget.MAX_PATCH_PX),
            "stride_px",
            f"must be a whole number of pixels in 1..{budget.MAX_PATCH_PX} (or null: the tile size), got {stride!r}",
        )
        check(0 <= self.min_tissue <= 1, "min_tissue", f"must be in [0, 1], got {self.min_tissue}")


@dataclass
class Tiles:
    """Tile grid of one slide: top-left level-0 coordinates and reading geometry."""

    slide_path: Path
    coords: np.ndarray  # (n, 2) int64 level-0 top-left (x, y)
    tissue_fraction: np.ndarray  # (n,)
    size0: float  # tile side in level-0 pixels
    level: int  # pyramid level to read from
    level_size: int  # tile side in pixels at ``level``
    level_dims: tuple[int, int]
    level0_dims: tuple[int, int]
    downsample: float
    mpp: float
    cfg: TilingConfig

    @property
    def centers(self) -> np.ndarray:
        return self.coords + self.size0 / 2.0

    def __len__(self) -> int:
        return len(self.coords)


def tile_slide(
    slide: Slide,
    cfg: TilingConfig = TilingConfig(),
    mask: TissueMask | None = None,
    *,
    max_tiles: int | None = None,
) -> Tiles:
    """Grid-tile the tissue of ``slide``; tiles below ``cfg.min_tissue`` tissue fraction are dropped.

    The grid is counted before it is allocated: more than ``max_tiles`` grid tiles (default
    :data:`histokg.budget.MAX_TILES`) is an error naming the slide, its MPP and the tile geometry.
    """
    width, height = slide.dimensions
    n_grid = budget.tile_count(width, height, slide.mpp, cfg.target_mpp, cfg.patch_px, cfg.stride_px)
    budget.check_tiles(
        n_grid,
        f"slide {slide.path} ({width}x{height} px at {slide.mpp:g} um/px) in {cfg.patch_px}-px tiles "
        f"at {cfg.target_mpp:g} um/px",
        max_tiles,
    )
    if mask is None:
        mask = detect_tissue(slide, cfg.mask)
    size0 = cfg.patch_px * cfg.target_mpp / slide.mpp
    stride0 = (cfg.stride_px or cfg.patch_px) * cfg.target_mpp / slide.mpp
    xs = np.arange(0.0, width - size0 + 1e-6, stride0)
    ys = np.arange(0.0, height - size0 + 1e-6, stride0)
    if len(xs) == 0 or len(ys) == 0:
        raise InputError(
            f"slide {slide.path}: {width}x{height} px at {slide.mpp:.4g} um/px is smaller than one "
            f"{cfg.patch_px}-px tile at {cfg.target_mpp} um/px"
        )
    gx, gy = np.meshgrid(xs, ys)
    top_left = np.stack([gx.ravel(), gy.ravel()], axis=1)
    boxes = np.concatenate([top_left, top_left + size0], axis=1)
    fraction = mask.fraction_in_boxes(boxes)
    keep = fraction >= cfg.min_tissue
    if not keep.any():
        raise InputError(
            f"slide {slide.path}: no tile reaches the tissue fraction {cfg.min_tissue} "
            f"(best {fraction.max():.2f}); lower tiling.min_tissue or check the mask"
        )
    level = slide.best_level(cfg.target_mpp)
    down = slide.level_downsamples[level]
    tiles = Tiles(
        slide_path=Path(slide.path),
        coords=np.round(top_left[keep]).astype(np.int64),
        tissue_fraction=fraction[keep],
        size0=size0,
        level=level,
        level_size=int(round(size0 / down)),
        level_dims=tuple(slide.level_dimensions[level]),
        level0_dims=tuple(slide.dimensions),
        downsample=down,
        mpp=slide.mpp,
        cfg=cfg,
    )
    log.info("%s: %d of %d grid tiles on tissue", slide.path.name, len(tiles), len(top_left))
    return tiles


def save_tiles_h5(tiles: Tiles, path: str | Path) -> Path:
    """Write coordinates in CLAM's layout: dataset ``coords`` with its reading attributes.

    ``coords`` are level-0 top-left corners; ``patch_level``/``patch_size`` say how to read them
    (``read_region(coord, patch_level, (patch_size, patch_size))``), as CLAM's feature extractor does.
    histokg adds the physical geometry (``target_mpp``, ``patch_px``, ``mpp``) and tissue fractions.
    """
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        dset = h5.create_dataset("coords", data=tiles.coords)
        dset.attrs["patch_size"] = tiles.level_size
        dset.attrs["patch_level"] = tiles.level
        dset.attrs["downsample"] = np.array([tiles.downsample, tiles.downsample])
        dset.attrs["downsampled_level_dim"] = np.array(tiles.level_dims)
        dset.attrs["level_dim"] = np.array(tiles.level0_dims)
        dset.attrs["name"] = tiles.slide_path.stem
        dset.attrs["save_path"] = str(path.parent)
        dset.attrs["target_mpp"] = tiles.cfg.target_mpp
        dset.attrs["patch_px"] = tiles.cfg.patch_px
        dset.attrs["mpp"] = tiles.mpp
        dset.attrs["patch_size_level0"] = tiles.size0
        h5.create_dataset("tissue_fraction", data=tiles.tissue_fraction.astype(np.float32))
    return path


def load_tiles_h5(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read coordinates and attributes written by :func:`save_tiles_h5` (or CLAM)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            dset = h5["coords"]
            return dset[:], dict(dset.attrs)
    except (OSError, KeyError) as exc:
        raise InputError(
            f"tile file {path}: not a readable coordinate h5 with a 'coords' dataset ({exc})"
        ) from None


# --------------------------------------------------------------------------- overlays


def draw_overlay(
    thumbnail: np.ndarray,
    scale: float,
    *,
    mask: TissueMask | None = None,
    boxes: np.ndarray | None = None,
    circles: np.ndarray | None = None,
    radius0: float = 0.0,
    colors: np.ndarray | None = None,
) -> np.ndarray:
    """Draw the mask outline tint, level-0 boxes (x0, y0, x1, y1) and circles (x, y) on a thumbnail.

    ``scale`` is thumbnail px per level-0 px; ``radius0`` is the circle radius in level-0 px;
    ``colors`` gives one RGB colour per circle.
    """
    img = Image.fromarray(thumbnail).convert("RGB")
    if mask is not None:
        m = Image.fromarray(mask.mask.astype(np.uint8) * 255).resize(img.size, Image.Resampling.NEAREST)
        tint = Image.new("RGB", img.size, (40, 160, 60))
        img = Image.composite(Image.blend(img, tint, 0.25), img, m)
    draw = ImageDraw.Draw(img)
    if boxes is not None:
        scaled = np.asarray(boxes) * scale
        for x0, y0, x1, y1 in tqdm(scaled, desc="drawing tiles", unit="tile"):
            draw.rectangle([x0, y0, x1, y1], outline=(20, 60, 200))
    if circles is not None:
        r = max(1.0, radius0 * scale)
        scaled = np.asarray(circles) * scale
        for i, (x, y) in enumerate(
            tqdm(scaled, desc="drawing spots", unit="spot", disable=len(scaled) < 5000)
        ):
            col = tuple(int(c) for c in colors[i]) if colors is not None else (230, 120, 0)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=col, width=max(1, int(r / 4)))
    return np.asarray(img)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Save an RGB array as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def tiles_overlay(tiles: Tiles, mask: TissueMask) -> np.ndarray:
    """Thumbnail with the tissue mask tinted and the kept tiles outlined."""
    boxes = np.concatenate([tiles.coords, tiles.coords + tiles.size0], axis=1)
    return draw_overlay(mask.thumbnail, mask.scale, mask=mask, boxes=boxes)
