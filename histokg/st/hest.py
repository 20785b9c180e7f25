"""HEST-1k style pairs: an ``.h5ad`` of spot counts plus the pyramidal TIFF its coordinates refer to.

Spot centres come from ``obsm["spatial"]`` (full-resolution pixels) or from the columns
``pxl_col_in_fullres``/``pxl_row_in_fullres``; the MPP from the argument, the slide's metadata, or
a HEST metadata JSON (``pixel_size_um_estimated`` / ``pixel_size_um_embedded``).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg.errors import InputError, SlideError
from histokg.st.contract import build_anndata, check_spots_in_image, read_h5ad, spatial_uns
from histokg.wsi.slide import open_slide

HEST_MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")


def read_hest(
    h5ad: str | Path,
    slide: str | Path,
    *,
    library_id: str | None = None,
    mpp: float | None = None,
    metadata_json: str | Path | None = None,
    spot_diameter_um: float = 55.0,
) -> ad.AnnData:
    """Read a HEST-style ``.h5ad`` + slide pair into the AnnData contract."""
    h5ad = Path(h5ad)
    src = read_h5ad(h5ad)
    library_id = library_id or h5ad.stem
    if "spatial" in src.obsm:
        xy = np.asarray(src.obsm["spatial"], dtype=np.float64)[:, :2]
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(src.obs.columns):
        xy = src.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    else:
        raise InputError(
            f"h5ad file {h5ad}: no obsm['spatial'] and no obs pxl_col_in_fullres/pxl_row_in_fullres"
        )

    if mpp is None and metadata_json is not None:
        try:
            meta = json.loads(Path(metadata_json).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"HEST metadata {metadata_json}: cannot be read as JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise InputError(f"HEST metadata {metadata_json}: expected a JSON object")
        mpp = next((float(meta[k]) for k in HEST_MPP_KEYS if meta.get(k)), None)
        if mpp is None:
            raise InputError(f"{metadata_json}: none of {HEST_MPP_KEYS} is set")
    try:
        opened = open_slide(slide, mpp=mpp)
    except SlideError as exc:
        raise InputError(f"{exc}; for HEST data pass mpp or the sample's metadata JSON") from None
    with opened as s:
        check_spots_in_image(xy, *s.dimensions, list(src.obs_names), f"{h5ad} vs slide {slide}")
        hires, scale = s.thumbnail(2000)
        mpp_value = s.mpp
    counts = src.layers["counts"] if "counts" in src.layers else src.X
    in_tissue = src.obs["in_tissue"].to_numpy().astype(bool) if "in_tissue" in src.obs else None
    gene_ids = src.var["gene_ids"].astype(str).to_list() if "gene_ids" in src.var else None
    spatial = spatial_uns(
        hires,
        scale,
        spot_diameter_um / mpp_value,
        Path(slide),
        mpp_value,
        extra_metadata={"reader": "hest", "source_path": str(h5ad.resolve())},
    )
    extra = src.obs.drop(
        columns=[c for c in ("in_tissue", "library_id", "barcode") if c in src.obs], errors="ignore"
    )
    extra = pd.DataFrame({c: extra[c].to_numpy() for c in extra.columns})
    return build_anndata(
        sp.csr_matrix(counts),
        src.obs_names,
        src.var_names,
        xy,
        library_id,
        spatial,
        in_tissue=in_tissue,
        gene_ids=gene_ids,
        obs_extra=extra,
        source=str(h5ad),
    )
