"""Small Visium HD and Xenium output folders, written in the layouts 10x documents.

Visium HD (Space Ranger 3+ ``outs``): ``binned_outputs/square_002um|square_008um|square_016um/`` each
with ``filtered_feature_bc_matrix.h5`` and ``spatial/tissue_positions.parquet`` (barcode, in_tissue,
array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres) + ``spatial/scalefactors_json.json``
(spot_diameter_fullres, bin_size_um, microns_per_pixel, tissue_hires_scalef, tissue_lowres_scalef,
fiducial_diameter_fullres, regist_target_img_scalef). The 8 and 16 um bins are sums of the 2 um bins,
as Space Ranger makes them.

Xenium (Onboard Analysis output): ``experiment.xenium`` (JSON with pixel_size), ``transcripts.parquet``
(transcript_id, cell_id, overlaps_nucleus, feature_name, x_location, y_location, z_location, qv,
fov_name, nucleus_distance, codeword_index, codeword_category, is_gene), ``cells.parquet``
(cell_id, x_centroid, y_centroid, ...) and ``cell_feature_matrix.h5``; optionally the 3x3 alignment
CSV Xenium Explorer exports (slide pixels -> morphology pixels).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histokg.st import write_10x_h5

HD_GENES = [f"HDG{i:02d}" for i in range(24)]
XENIUM_GENES = [f"XG{i:02d}" for i in range(20)] + ["MARKER"]
XENIUM_CONTROLS = [
    "NegControlProbe_00001",
    "NegControlCodeword_0500",
    "BLANK_0006",
    "UnassignedCodeword_0007",
]


@dataclass
class HDTruth:
    counts_2um: np.ndarray  # (rows, cols, genes) counts of every 2 um bin
    tissue_2um: np.ndarray  # (rows, cols) bool
    origin_px: tuple[float, float]
    mpp: float


def write_visium_hd(
    outs: Path,
    *,
    mpp: float = 0.5,
    origin_px: tuple[float, float] = (500.0, 400.0),
    shape_2um: tuple[int, int] = (96, 112),
    bins: tuple[int, ...] = (2, 8, 16),
    tissue_at: Callable[[np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
) -> HDTruth:
    """A Space Ranger Visium HD ``outs`` folder over a ``shape_2um`` grid of 2 um bins at ``origin_px``.

    ``tissue_at`` (slide pixels -> bool, e.g. a tissue mask's ``contains``) says which 2 um bins are
    under tissue, as Space Ranger's tissue detection does; default: a disk in the grid's middle.
    """
    rng = np.random.default_rng(seed)
    n_rows, n_cols = shape_2um
    rr, cc = np.mgrid[0:n_rows, 0:n_cols]
    if tissue_at is None:
        tissue = (rr - n_rows / 2) ** 2 + (cc - n_cols / 2) ** 2 < (0.45 * min(shape_2um)) ** 2
    else:
        centres = np.column_stack(
            [origin_px[0] + (cc.ravel() + 0.5) * 2 / mpp, origin_px[1] + (rr.ravel() + 0.5) * 2 / mpp]
        )
        tissue = np.asarray(tissue_at(centres), dtype=bool).reshape(n_rows, n_cols)
    lam = np.full((n_rows, n_cols, len(HD_GENES)), 0.04)
    lam[..., 0] += 0.3 * (cc < n_cols / 2)  # HDG00 marks the left half of the tissue
    counts = rng.poisson(lam) * tissue[..., None]
    for b in bins:
        f = b // 2
        rows, cols = n_rows // f, n_cols // f
        binned = counts.reshape(rows, f, cols, f, -1).sum(axis=(1, 3))
        in_tissue = tissue.reshape(rows, f, cols, f).any(axis=(1, 3))
        br, bc = np.mgrid[0:rows, 0:cols]
        barcodes = np.array(
            [f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(br.ravel(), bc.ravel(), strict=True)]
        )
        positions = pd.DataFrame(
            {
                "barcode": barcodes,
                "in_tissue": in_tissue.ravel().astype(np.int32),
                "array_row": br.ravel().astype(np.int32),
                "array_col": bc.ravel().astype(np.int32),
                "pxl_row_in_fullres": origin_px[1] + (br.ravel() + 0.5) * b / mpp,
                "pxl_col_in_fullres": origin_px[0] + (bc.ravel() + 0.5) * b / mpp,
            }
        )
        folder = outs / "binned_outputs" / f"square_{b:03d}um"
        (folder / "spatial").mkdir(parents=True, exist_ok=True)
        keep = in_tissue.ravel()
        write_10x_h5(
            folder / "filtered_feature_bc_matrix.h5",
            binned.reshape(rows * cols, -1)[keep],
            barcodes[keep],
            [f"ENSG{i:011d}" for i in range(len(HD_GENES))],
            HD_GENES,
            library_id=outs.parent.name,
            chemistry_description="Visium HD v1",
        )
        positions.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        scalefactors = {
            "spot_diameter_fullres": b / mpp,
            "bin_size_um": float(b),
            "microns_per_pixel": mpp,
            "tissue_lowres_scalef": 0.01,
            "fiducial_diameter_fullres": 1000.0,
            "tissue_hires_scalef": 0.03,
            "regist_target_img_scalef": 0.03,
        }
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    return HDTruth(counts, tissue, origin_px, mpp)


@dataclass
class XeniumTruth:
    transcripts: pd.DataFrame
    matrix: np.ndarray  # slide px -> morphology px
    pixel_size: float
    marker_slide_px: tuple[float, float]


def rotation_alignment(
    slide_mpp: float, pixel_size: float, degrees: float, shift: tuple[float, float]
) -> np.ndarray:
    """A Xenium Explorer style matrix: slide px -> morphology px (scale, rotation, translation)."""
    s = slide_mpp / pixel_size
    t = np.deg2rad(degrees)
    return np.array(
        [
            [s * np.cos(t), -s * np.sin(t), shift[0]],
            [s * np.sin(t), s * np.cos(t), shift[1]],
            [0.0, 0.0, 1.0],
        ]
    )


def write_xenium(
    out: Path,
    *,
    region_slide_px: tuple[float, float, float, float],
    marker_slide_px: tuple[float, float],
    matrix: np.ndarray | None = None,
    slide_mpp: float = 0.2125,
    pixel_size: float = 0.2125,
    n_transcripts: int = 30_000,
    n_cells: int = 300,
    tissue_at: Callable[[np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
    names_as_bytes: bool = False,
) -> XeniumTruth:
    """A Xenium output folder whose transcripts fall in ``region_slide_px`` (x0, y0, x1, y1) of the slide.

    ``matrix`` maps slide pixels to morphology pixels (identity: the slide is the morphology image).
    Each transcript is one of ``XENIUM_GENES`` or a control; about half have qv below 20. ``MARKER``
    transcripts (all qv 40) lie within 5 um of ``marker_slide_px``. Cells lie in the left 60% of the
    region, and only where ``tissue_at`` (slide pixels -> bool) says there is tissue when given.
    """
    rng = np.random.default_rng(seed)
    matrix = np.eye(3) if matrix is None else matrix
    x0, y0, x1, y1 = region_slide_px
    n_marker = 400
    slide_xy = np.column_stack([rng.uniform(x0, x1, n_transcripts), rng.uniform(y0, y1, n_transcripts)])
    blob = np.asarray(marker_slide_px) + rng.uniform(-5, 5, (n_marker, 2)) / slide_mpp
    slide_xy = np.concatenate([slide_xy, blob])
    names = np.concatenate(
        [rng.choice(XENIUM_GENES[:-1] + XENIUM_CONTROLS, n_transcripts), np.full(n_marker, "MARKER")]
    )
    qv = np.concatenate([rng.uniform(0, 40, n_transcripts), np.full(n_marker, 40.0)]).astype(np.float32)
    morph = (np.column_stack([slide_xy, np.ones(len(slide_xy))]) @ matrix.T)[:, :2]
    um = morph * pixel_size
    n = len(um)
    is_gene = ~pd.Series(names).str.startswith(tuple(c.split("_")[0] for c in XENIUM_CONTROLS)).to_numpy()
    transcripts = pd.DataFrame(
        {
            "transcript_id": np.arange(281474976710656, 281474976710656 + n, dtype=np.uint64),
            "cell_id": np.where(rng.random(n) < 0.7, "aaabcdef-1", "UNASSIGNED"),
            "overlaps_nucleus": rng.integers(0, 2, n).astype(np.uint8),
            "feature_name": [s.encode() for s in names] if names_as_bytes else names,
            "x_location": um[:, 0].astype(np.float32),
            "y_location": um[:, 1].astype(np.float32),
            "z_location": rng.uniform(10, 20, n).astype(np.float32),
            "qv": qv,
            "fov_name": "A1",
            "nucleus_distance": rng.uniform(0, 10, n).astype(np.float32),
            "codeword_index": rng.integers(0, 500, n).astype(np.int32),
            "codeword_category": np.where(is_gene, "predesigned_gene", "negative_control_probe"),
            "is_gene": is_gene,
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    transcripts.to_parquet(out / "transcripts.parquet", index=False)
    # cells only in the left 60% of the region: pseudo-spots on the right hold none
    cell_slide = np.column_stack(
        [rng.uniform(x0, x0 + 0.6 * (x1 - x0), n_cells), rng.uniform(y0, y1, n_cells)]
    )
    if tissue_at is not None:
        cell_slide = cell_slide[np.asarray(tissue_at(cell_slide), dtype=bool)]
        n_cells = len(cell_slide)
    cell_um = (np.column_stack([cell_slide, np.ones(n_cells)]) @ matrix.T)[:, :2] * pixel_size
    cell_ids = [f"cell{i:06d}-1" for i in range(n_cells)]
    pd.DataFrame(
        {
            "cell_id": cell_ids,
            "x_centroid": cell_um[:, 0],
            "y_centroid": cell_um[:, 1],
            "transcript_counts": rng.integers(10, 200, n_cells),
            "control_probe_counts": 0,
            "control_codeword_counts": 0,
            "total_counts": rng.integers(10, 200, n_cells),
            "cell_area": rng.uniform(50, 150, n_cells),
            "nucleus_area": rng.uniform(20, 50, n_cells),
        }
    ).to_parquet(out / "cells.parquet", index=False)
    write_10x_h5(
        out / "cell_feature_matrix.h5",
        rng.poisson(1.0, (n_cells, len(XENIUM_GENES))),
        cell_ids,
        [f"ENSG{900 + i:011d}" for i in range(len(XENIUM_GENES))],
        XENIUM_GENES,
        library_id=out.name,
        chemistry_description="Xenium",
    )
    experiment = {
        "major_version": 5,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": "histokg test run",
        "run_start_time": "2024-01-01T00:00:00Z",
        "region_name": out.name,
        "preservation_method": "FFPE",
        "num_cells": n_cells,
        "transcripts_per_cell": 100,
        "pixel_size": pixel_size,
        "panel_name": "histokg test panel",
        "panel_num_targets_predesigned": len(XENIUM_GENES),
        "analysis_sw_version": "xenium-2.0.0",
        "images": {
            "morphology_filepath": "morphology.ome.tif",
            "morphology_focus_filepath": "morphology_focus/ch0000_dapi.ome.tif",
        },
        "xenium_explorer_files": {
            "transcripts_zarr_filepath": "transcripts.zarr.zip",
            "cells_zarr_filepath": "cells.zarr.zip",
            "cell_features_zarr_filepath": "cell_feature_matrix.zarr.zip",
            "analysis_zarr_filepath": "analysis.zarr.zip",
            "analysis_summary_filepath": "analysis_summary.html",
        },
    }
    (out / "experiment.xenium").write_text(json.dumps(experiment, indent=2))
    return XeniumTruth(transcripts, matrix, pixel_size, marker_slide_px)


def write_alignment_csv(path: Path, matrix: np.ndarray) -> Path:
    """The matrix as Xenium Explorer exports it: three lines of three comma-separated numbers."""
    path.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in matrix) + "\n")
    return path
