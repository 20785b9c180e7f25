"""Visium-like pseudo-spots on a slide without transcriptomics: a hexagonal grid of round spots.

Visium lays 55 um spots 100 um apart, centre to centre, on a hexagonal lattice: rows ``pitch * sqrt(3) / 2``
apart, every other row shifted by half a pitch. :func:`hex_centres` lays such a grid over a slide (level-0
pixels); :func:`hex_spots_adata` keeps the spots on tissue (the tissue mask's fraction inside each spot's
bounding square) and returns them on the AnnData contract, with Visium's ``array_row`` / ``array_col``
(columns counted in half pitches, so that a spot's six neighbours are at column +-2 or row +-1, column +-1).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from histokg import budget
from histokg.errors import InputError
from histokg.keys import Key
from histokg.tl.embed import Layout, layout_adata
from histokg.wsi.mask import MaskConfig, detect_tissue

log = logging.getLogger(__name__)

VISIUM_SPOT_UM = 55.0
VISIUM_PITCH_UM = 100.0


def hex_centres(width: float, height: float, pitch: float, margin: float = 0.0) -> np.ndarray:
    """(n, 4) rows of (x, y, array_row, array_col) of a hexagonal grid of pitch ``pitch`` inside
    [margin, width - margin] x [margin, height - margin] (all in the same unit, e.g. level-0 pixels)."""
    if not (pitch > 0 and math.isfinite(pitch)):
        raise InputError(f"hex grid: the pitch must be a positive number, got {pitch}")
    dy = pitch * math.sqrt(3) / 2
    rows = []
    for r, y in enumerate(np.arange(margin, height - margin + 1e-9, dy)):
        offset = pitch / 2 if r % 2 else 0.0
        xs = np.arange(margin + offset, width - margin + 1e-9, pitch)
        cols = 2 * np.arange(len(xs)) + (r % 2)
        rows.append(np.column_stack([xs, np.full(len(xs), y), np.full(len(xs), r), cols]))
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def hex_spots_adata(
    slide_path: str | Path,
    mask_cfg: MaskConfig = MaskConfig(),
    *,
    spot_um: float = VISIUM_SPOT_UM,
    pitch_um: float = VISIUM_PITCH_UM,
    min_tissue: float = 0.5,
    library_id: str | None = None,
    mpp: float | None = None,
) -> ad.AnnData:
    """AnnData (no genes) of the pseudo-spots of a hexagonal grid (``spot_um`` wide, ``pitch_um`` apart)
    that lie on the slide's tissue (at least ``min_tissue`` of the spot's bounding square)."""
    if not (spot_um > 0 and pitch_um > 0):
        raise InputError(f"pseudo-spots: spot_um and pitch_um must be > 0, got {spot_um} and {pitch_um}")
    if spot_um > pitch_um:
        log.warning("pseudo-spots of %g um at a %g um pitch overlap", spot_um, pitch_um)

    def spots(slide) -> Layout:
        diameter = spot_um / slide.mpp
        width, height = slide.dimensions
        pitch = pitch_um / slide.mpp
        n_grid = (int(width // pitch) + 2) * (int(height // (pitch * math.sqrt(3) / 2)) + 2)
        budget.check_tiles(n_grid, f"slide {slide.path}: a {pitch_um:g} um hex grid of pseudo-spots")
        mask = detect_tissue(slide, mask_cfg)
        grid = hex_centres(width, height, pitch_um / slide.mpp, margin=diameter / 2)
        boxes = np.concatenate([grid[:, :2] - diameter / 2, grid[:, :2] + diameter / 2], axis=1)
        fraction = mask.fraction_in_boxes(boxes) if len(grid) else np.zeros(0)
        keep = fraction >= min_tissue
        if not keep.any():
            raise InputError(
                f"slide {slide.path}: no {spot_um:g} um spot of the {pitch_um:g} um grid reaches the tissue "
                f"fraction {min_tissue} (of {len(grid)} spots); check the slide's MPP and tissue"
            )
        grid, fraction = grid[keep], fraction[keep]
        row, col = grid[:, 2].astype(int), grid[:, 3].astype(int)
        ids = [f"spot_{r}_{c}" for r, c in zip(row, col, strict=True)]
        obs = pd.DataFrame(
            {Key.obs.array_row: row, Key.obs.array_col: col, Key.obs.tissue_fraction: fraction}
        )
        log.info("%s: %d of %d pseudo-spots on tissue", Path(slide.path).name, int(keep.sum()), len(keep))
        metadata = {
            Key.metadata.reader: "pseudo-spots",
            Key.metadata.spot_diameter_um: float(spot_um),
            Key.metadata.spot_diameter_source: "given",
        }
        return Layout(ids, grid[:, :2], diameter, obs, metadata)

    return layout_adata(slide_path, spots, library_id=library_id, mpp=mpp)
