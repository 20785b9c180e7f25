"""The AnnData contract every reader produces (see docs/architecture.md).

- ``obs_names``: unique spot ids ``<library_id>_<barcode>``; ``obs["barcode"]`` keeps the raw id.
- ``obs["library_id"]`` (categorical), ``obs["in_tissue"]`` (bool).
- ``obsm["spatial"]``: float (n, 2) spot centres in level-0 pixels of the slide, column 0 = x.
- ``uns["spatial"][library_id]``: ``images["hires"]`` (uint8 thumbnail), ``scalefactors``
  (``tissue_hires_scalef``, ``spot_diameter_fullres``), ``metadata`` (``source_image_path``, ``mpp``).
- ``layers["counts"]``: raw counts (CSR); ``X`` starts as a float32 copy; ``var_names`` gene symbols,
  ``var["gene_ids"]`` stable ids where known.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg.errors import InputError
from histokg.io import atomic_path

log = logging.getLogger(__name__)


def spatial_uns(
    hires: np.ndarray,
    hires_scalef: float,
    spot_diameter_fullres: float,
    source_image_path: str | Path | None,
    mpp: float,
    extra_scalefactors: dict | None = None,
    extra_metadata: dict | None = None,
) -> dict:
    """The ``uns["spatial"][library_id]`` entry scanpy and squidpy read."""
    scalefactors = {
        "tissue_hires_scalef": float(hires_scalef),
        "spot_diameter_fullres": float(spot_diameter_fullres),
    }
    scalefactors.update({k: float(v) for k, v in (extra_scalefactors or {}).items()})
    metadata = {"source_image_path": str(source_image_path) if source_image_path else "", "mpp": float(mpp)}
    metadata.update(extra_metadata or {})
    return {
        "images": {"hires": np.ascontiguousarray(hires, dtype=np.uint8)},
        "scalefactors": scalefactors,
        "metadata": metadata,
    }


def build_anndata(
    counts: sp.spmatrix | np.ndarray,
    barcodes: Sequence[str],
    genes: Sequence[str],
    xy: np.ndarray,
    library_id: str,
    spatial: dict,
    *,
    in_tissue: np.ndarray | None = None,
    gene_ids: Sequence[str] | None = None,
    obs_extra: pd.DataFrame | None = None,
    source: str = "",
) -> ad.AnnData:
    """Assemble an AnnData that follows the contract and check it."""
    barcodes = [str(b) for b in barcodes]
    counts = sp.csr_matrix(counts)
    if counts.dtype.kind == "f" and np.array_equal(counts.data, np.round(counts.data)):
        counts = counts.astype(np.int32)  # raw UMI counts are integers, whatever the reader returned
    obs = pd.DataFrame(index=pd.Index([f"{library_id}_{b}" for b in barcodes], name="spot_id"))
    obs["barcode"] = barcodes
    obs["library_id"] = pd.Categorical([library_id] * len(barcodes))
    obs["in_tissue"] = np.ones(len(barcodes), bool) if in_tissue is None else np.asarray(in_tissue, bool)
    if obs_extra is not None:
        for col in obs_extra.columns:
            obs[col] = obs_extra[col].to_numpy()
    var = pd.DataFrame(index=pd.Index([str(g) for g in genes], name="gene"))
    var["gene_ids"] = list(gene_ids) if gene_ids is not None else var.index.to_list()
    adata = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=var)
    adata.layers["counts"] = counts
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    adata.uns["spatial"] = {library_id: spatial}
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    validate(adata, source=source or library_id)
    return adata


def validate(adata: ad.AnnData, source: str = "AnnData") -> None:
    """Raise :class:`InputError` naming the field at fault if ``adata`` breaks the contract."""
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        raise InputError(f"{source}: duplicate spot ids, e.g. {dup}")
    for col in ("library_id", "in_tissue"):
        if col not in adata.obs:
            raise InputError(f"{source}: obs[{col!r}] is missing")
    spatial = adata.obsm.get("spatial")
    if spatial is None or np.asarray(spatial).shape != (adata.n_obs, 2):
        raise InputError(f"{source}: obsm['spatial'] must be an (n_obs, 2) array of (x, y) level-0 pixels")
    if not np.isfinite(np.asarray(spatial, dtype=float)).all():
        raise InputError(f"{source}: obsm['spatial'] has non-finite coordinates")
    libs = adata.obs["library_id"].astype(str).unique()
    for lib in libs:
        entry = adata.uns.get("spatial", {}).get(lib)
        if entry is None:
            raise InputError(f"{source}: uns['spatial'][{lib!r}] is missing")
        for key in ("tissue_hires_scalef", "spot_diameter_fullres"):
            if key not in entry.get("scalefactors", {}):
                raise InputError(f"{source}: uns['spatial'][{lib!r}]['scalefactors'][{key!r}] is missing")
        if "hires" not in entry.get("images", {}):
            raise InputError(f"{source}: uns['spatial'][{lib!r}]['images']['hires'] is missing")
        mpp = entry.get("metadata", {}).get("mpp")
        if mpp is None or not np.isfinite(float(mpp)) or float(mpp) <= 0:
            raise InputError(
                f"{source}: uns['spatial'][{lib!r}]['metadata']['mpp'] is missing or not positive"
            )


def check_spots_in_image(xy: np.ndarray, width: int, height: int, ids: Sequence[str], where: str) -> None:
    """Error if spot centres fall outside a ``width`` x ``height`` image."""
    xy = np.asarray(xy, dtype=float)
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= width) | (xy[:, 1] >= height)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"{where}: {int(outside.sum())} of {len(xy)} spot centres lie outside the {width}x{height} px image, "
            f"e.g. spot {ids[i]!r} at (x={xy[i, 0]:.1f}, y={xy[i, 1]:.1f}); are the image and the spot table "
            "from the same section, at the same resolution?"
        )


def match_ids(
    count_ids: Sequence[str],
    table_ids: Sequence[str],
    *,
    counts_name: str,
    table_name: str,
    min_match: float = 0.9,
) -> np.ndarray:
    """Boolean mask over ``count_ids`` of those found in ``table_ids``.

    Error (with how many matched and an example of each side) when fewer than ``min_match`` of the
    count rows have a spot in the table; fewer unmatched rows are dropped with a warning.
    """
    count_ids = pd.Index([str(i) for i in count_ids])
    table_ids = pd.Index([str(i) for i in table_ids])
    for name, ids in ((counts_name, count_ids), (table_name, table_ids)):
        if not ids.is_unique:
            raise InputError(f"{name}: duplicate spot ids, e.g. {ids[ids.duplicated()][:3].tolist()}")
    found = count_ids.isin(table_ids)
    n = int(found.sum())
    if n < min_match * len(count_ids) or n == 0:
        only_counts = count_ids[~found][:1].tolist()
        only_table = table_ids[~table_ids.isin(count_ids)][:1].tolist()
        raise InputError(
            f"counts {counts_name} and spot table {table_name} do not match: {n} of {len(count_ids)} count rows "
            f"have a spot ({len(table_ids)} spots in the table); e.g. only in counts: {only_counts}, "
            f"only in the table: {only_table}"
        )
    if n < len(count_ids):
        log.warning(
            "%s: %d of %d count rows have no spot in %s and are dropped (e.g. %s)",
            counts_name,
            len(count_ids) - n,
            len(count_ids),
            table_name,
            count_ids[~found][0],
        )
    return np.asarray(found)


def concat_sections(adatas: Sequence[ad.AnnData], join: str = "inner") -> ad.AnnData:
    """Concatenate sections as the contract says: ``label="library_id"``, ``uns_merge="unique"``.

    ``join="inner"`` keeps the genes every section measured (a gene missing from a panel is not a zero).
    """
    if len(adatas) == 1:
        return adatas[0]
    keys = [str(a.obs["library_id"].iloc[0]) for a in adatas]
    if len(set(keys)) != len(keys):
        raise InputError(f"sections share a library_id: {keys}; give each slide its own library_id")
    out = ad.concat(list(adatas), label="library_id", keys=keys, uns_merge="unique", join=join, merge="first")
    out.obs["library_id"] = out.obs["library_id"].astype("category")
    validate(out, source="concatenated sections")
    return out


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """``adata.write_h5ad`` to a temporary file that replaces ``path`` only when complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
