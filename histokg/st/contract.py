"""The AnnData contract every reader produces (see docs/architecture.md); its names are in
:class:`histokg.keys.Key` (``Key.obs.library_id``, ``Key.obsm.spatial``, ...).

- ``obs_names``: unique spot ids ``<library_id>_<barcode>``; ``obs["barcode"]`` keeps the raw id.
- ``obs["library_id"]`` (categorical), ``obs["in_tissue"]`` (a flag: categorical with bool categories,
  see :func:`bool_flag`; use ``.to_numpy(bool)`` as a mask).
- ``obsm["spatial"]``: float (n, 2) spot centres in level-0 pixels of the slide, column 0 = x.
- ``uns["spatial"][library_id]``: ``images["hires"]`` (uint8 thumbnail), ``scalefactors``
  (``tissue_hires_scalef``, ``spot_diameter_fullres``), ``metadata`` (``source_image_path`` as an
  absolute path, ``mpp``, ``counts_integer``; readers add ``mpp_source``, ``reader``,
  ``spot_diameter_um`` and ``spot_diameter_source``, see :mod:`histokg.st.reader`).
- ``layers["counts"]``: raw counts (CSR, integer unless the input held fractions: then float32, never
  rounded, with a warning); ``X`` starts as a float32 copy; ``var_names`` unique gene symbols (a
  symbol listed twice is one gene with the counts summed, never a renamed ``GENE-1``),
  ``var["gene_ids"]`` stable ids where known (``;``-joined for summed genes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg import budget
from histokg.errors import InputError
from histokg.io import atomic_path
from histokg.keys import Key

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
        Key.scalefactors.tissue_hires_scalef: float(hires_scalef),
        Key.scalefactors.spot_diameter_fullres: float(spot_diameter_fullres),
    }
    scalefactors.update({k: float(v) for k, v in (extra_scalefactors or {}).items()})
    metadata = {
        Key.metadata.source_image_path: str(Path(source_image_path).resolve()) if source_image_path else "",
        Key.metadata.mpp: float(mpp),
    }
    metadata.update(extra_metadata or {})
    return {
        Key.uns.images: {Key.uns.hires: np.ascontiguousarray(hires, dtype=np.uint8)},
        Key.uns.scalefactors: scalefactors,
        Key.uns.metadata: metadata,
    }


def bool_flag(values) -> pd.Categorical:
    """A boolean obs column (``in_tissue``, ``patch_partial``, ``on_tissue_mask``) as stored in the contract.

    ``squidpy.pl.spatial_scatter`` colours only categorical columns as groups. Any other column is
    treated as continuous values and passed to matplotlib, which colour-maps only numeric dtypes
    (numpy ``bool`` is not ``np.number``) and otherwise reads each value as a colour name, so a bool
    column fails with "Invalid RGBA argument: np.True_". A categorical with the *bool* categories
    ``[False, True]`` colours as two groups and still works as a mask: ``col.to_numpy(bool)``,
    ``adata[col]``, ``df[col]`` (use ``.to_numpy(bool)`` for ``~`` and sums).
    """
    return pd.Categorical(np.asarray(values, dtype=bool), categories=[False, True])


def _integer_counts(
    counts: sp.csr_matrix, barcodes: Sequence[str], genes: Sequence[str], source: str, library_id: str
) -> tuple[sp.csr_matrix, bool]:
    """Integer counts where the values are whole numbers; fractional values are kept, never rounded."""
    if counts.dtype.kind in "iu":
        fits = not counts.data.size or counts.data.max() <= np.iinfo(np.int32).max
        return (counts.astype(np.int32) if fits else counts), True
    if not np.isfinite(counts.data).all():
        raise InputError(f"{source}: counts contain NaN or infinite values")
    fractional = counts.data != np.round(counts.data)
    if not fractional.any():
        big = counts.data.size and counts.data.max() > np.iinfo(np.int32).max
        return counts.astype(np.int64 if big else np.int32), True
    k = int(np.flatnonzero(fractional)[0])
    row = int(np.searchsorted(counts.indptr, k, side="right") - 1)
    log.warning(
        "%s: counts are not whole numbers (%d of %d non-zero values, e.g. %.6g for spot %r, gene %r); "
        "layers['counts'] keeps them as float32, not rounded, and uns['spatial'][%r]['metadata']"
        "['counts_integer'] is False: these may be normalised or imputed values rather than raw counts, "
        "so steps that assume raw counts (count models, seurat_v3 HVG) do not apply",
        source,
        int(fractional.sum()),
        counts.nnz,
        float(counts.data[k]),
        str(barcodes[row]),
        str(genes[counts.indices[k]]),
        library_id,
    )
    return counts.astype(np.float32), False


def check_counts(counts, barcodes: Sequence[str], source: str) -> None:
    """An all-zero count matrix is an error; spots without a single count are named in a warning.

    A section with no counts can be neither trained on nor evaluated, and every spot's expression
    would be the same (an all-zero input gives every spot one identical expression embedding).
    Spots without counts among others are kept (their expression is zero) with a warning.
    A matrix without genes (tiles of a slide without transcriptomics) is not checked.
    """
    counts = sp.csr_matrix(counts)
    n_spots, n_genes = counts.shape
    if n_genes == 0 or n_spots == 0:
        return
    totals = np.asarray(counts.sum(axis=1)).ravel()
    empty = np.flatnonzero(totals <= 0)
    if len(empty) == n_spots:
        raise InputError(
            f"{source}: every count is zero ({n_spots} spots x {n_genes} genes); a section without counts "
            "can be neither trained on nor evaluated (every spot would get the same expression embedding); "
            "is it the right matrix (raw counts, filtered_feature_bc_matrix)?"
        )
    if len(empty):
        log.warning(
            "%s: %d of %d spots have no counts at all (e.g. %s); they are kept with an all-zero expression, "
            "which gives them one identical expression embedding",
            source,
            len(empty),
            n_spots,
            [str(barcodes[i]) for i in empty[:3]],
        )


def aggregate_duplicate_genes(
    counts: sp.csr_matrix, genes: Sequence[str], gene_ids: Sequence[str], source: str
) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """Sum the counts of genes listed more than once into one column each (first-seen order).

    The merged gene keeps its name; its ``gene_ids`` are the distinct ids joined with ``;``. One
    warning says how many genes were merged, with examples. Nothing is renamed.
    """
    genes = [str(g) for g in genes]
    gene_ids = [str(g) for g in gene_ids]
    codes, uniques = pd.factorize(pd.Index(genes))
    if len(uniques) == len(genes):
        return counts, genes, gene_ids
    n = len(genes)
    indicator = sp.csr_matrix(
        (np.ones(n, dtype=counts.dtype), (np.arange(n), codes)), shape=(n, len(uniques))
    )
    summed = sp.csr_matrix(counts @ indicator)
    ids: list[list[str]] = [[] for _ in uniques]
    for code, gid in zip(codes, gene_ids, strict=True):
        if gid not in ids[code]:
            ids[code].append(gid)
    sizes = np.bincount(codes, minlength=len(uniques))
    merged = np.flatnonzero(sizes > 1)
    examples = ", ".join(f"{uniques[c]} ({sizes[c]} columns, ids {';'.join(ids[c])})" for c in merged[:3])
    log.warning(
        "%s: %d gene names occur more than once (%d columns in all); their counts are summed into one "
        "gene each, var['gene_ids'] joins their ids with ';'; e.g. %s",
        source,
        len(merged),
        int(sizes[merged].sum()),
        examples,
    )
    return summed, [str(g) for g in uniques], [";".join(i) for i in ids]


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
    """Assemble an AnnData that follows the contract and check it.

    Whole-number counts become integers; fractional ones stay float32 with a warning (never
    rounded); genes listed more than once are summed (:func:`aggregate_duplicate_genes`).
    ``source`` (the counts file) names the input in warnings and errors.
    """
    source = source or library_id
    barcodes = [str(b) for b in barcodes]
    genes = [str(g) for g in genes]
    counts = sp.csr_matrix(counts)
    counts, is_integer = _integer_counts(counts, barcodes, genes, source, library_id)
    check_counts(counts, barcodes, source)
    if in_tissue is not None and len(barcodes) and not np.asarray(in_tissue, dtype=bool).any():
        log.warning(
            "%s: none of the %d spots is marked as under tissue (in_tissue is False for all); pairing "
            "still flags each spot against the slide's tissue mask, but training with "
            "data.in_tissue_only (the default) would drop them all",
            source,
            len(barcodes),
        )
    gene_ids = list(gene_ids) if gene_ids is not None else genes
    counts, genes, gene_ids = aggregate_duplicate_genes(counts, genes, gene_ids, source)
    obs = pd.DataFrame(index=pd.Index([f"{library_id}_{b}" for b in barcodes], name="spot_id"))
    obs[Key.obs.barcode] = barcodes
    obs[Key.obs.library_id] = pd.Categorical([library_id] * len(barcodes))
    obs[Key.obs.in_tissue] = bool_flag(np.ones(len(barcodes), bool) if in_tissue is None else in_tissue)
    if obs_extra is not None:
        for col in obs_extra.columns:
            obs[col] = obs_extra[col].to_numpy()
    var = pd.DataFrame(index=pd.Index(genes, name="gene"))
    var[Key.var.gene_ids] = gene_ids
    adata = ad.AnnData(X=counts.astype(np.float32), obs=obs, var=var)
    adata.layers[Key.layers.counts] = counts
    adata.obsm[Key.obsm.spatial] = np.asarray(xy, dtype=np.float64)
    metadata = {**spatial.get(Key.uns.metadata, {}), Key.metadata.counts_integer: is_integer}
    adata.uns[Key.uns.spatial] = {library_id: {**spatial, Key.uns.metadata: metadata}}
    validate(adata, source=source)
    return adata


def validate(adata: ad.AnnData, source: str = "AnnData") -> None:
    """Raise :class:`InputError` naming the field at fault if ``adata`` breaks the contract.

    The spots are checked as :func:`check_spots` does (at least one, finite centres not all at one point,
    a plausible MPP and spot diameter per library); then the thumbnail and scale factors squidpy reads.
    """
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        raise InputError(f"{source}: duplicate spot ids, e.g. {dup}")
    for col in (Key.obs.library_id, Key.obs.in_tissue):
        if col not in adata.obs:
            raise InputError(f"{source}: obs[{col!r}] is missing")
    check_spots(adata, source)
    for lib in adata.obs[Key.obs.library_id].astype(str).unique():
        entry = adata.uns[Key.uns.spatial][lib]
        if Key.scalefactors.tissue_hires_scalef not in entry.get(Key.uns.scalefactors, {}):
            raise InputError(
                f"{source}: uns['spatial'][{lib!r}]['scalefactors'][{Key.scalefactors.tissue_hires_scalef!r}] "
                "is missing"
            )
        if Key.uns.hires not in entry.get(Key.uns.images, {}):
            raise InputError(f"{source}: uns['spatial'][{lib!r}]['images']['hires'] is missing")


def _spot_text(adata: ad.AnnData, i: int, xy: np.ndarray) -> str:
    lib = adata.obs[Key.obs.library_id].iloc[i] if Key.obs.library_id in adata.obs else None
    where = f" of library {str(lib)!r}" if lib is not None else ""
    return f"spot {str(adata.obs_names[i])!r}{where} at (x={xy[i, 0]:.6g}, y={xy[i, 1]:.6g})"


def check_coordinates(xy: np.ndarray, ids: Sequence[str], where: str) -> np.ndarray:
    """``xy`` as a float (n, 2) array when every spot centre is a finite number; otherwise an
    :class:`InputError` naming ``where``, how many spots and the first bad spot ids."""
    try:
        xy = np.asarray(xy, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: spot centres are not numbers ({exc})") from None
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(ids):
        raise InputError(
            f"{where}: spot centres must be an (n_spots, 2) array of (x, y) pixels, got shape {xy.shape} "
            f"for {len(ids)} spots"
        )
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        examples = ", ".join(f"{str(ids[i])!r} ({xy[i, 0]:.6g}, {xy[i, 1]:.6g})" for i in rows[:3])
        raise InputError(
            f"{where}: {len(rows)} of {len(xy)} spot centres are not finite numbers (NaN or infinite), "
            f"e.g. {examples}; fix or drop those rows"
        )
    return xy


def check_spots(adata: ad.AnnData, source: str = "AnnData") -> None:
    """What every consumer of spots needs (pairing, patches, features, embedding, overlays, training).

    At least one spot, unique ids; ``obsm["spatial"]`` an (n_obs, 2) array of finite centres, not all at one
    point within a library; ``X`` finite and ``layers["counts"]`` (where present) finite and not negative;
    ``obs["library_id"]``; for each library ``uns["spatial"][lib]`` with a plausible MPP
    (:func:`histokg.budget.check_mpp`) and a spot diameter within the budget
    (:func:`histokg.budget.check_spot_diameter`). Errors name ``source``, the field and the first bad spots.
    """
    if adata.n_obs == 0:
        raise InputError(f"{source}: no spots (0 observations); nothing to pair, embed or train on")
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()][:3].tolist()
        raise InputError(f"{source}: duplicate spot ids, e.g. {dup}")
    if Key.obs.library_id not in adata.obs:
        raise InputError(f"{source}: obs[{Key.obs.library_id!r}] is missing")
    spatial = adata.obsm.get(Key.obsm.spatial)
    if spatial is None:
        raise InputError(
            f"{source}: obsm['spatial'] is missing (the (x, y) spot centres in level-0 pixels of the slide); "
            "read the data with `histokg read` so that it follows the AnnData contract"
        )
    xy = check_coordinates(spatial, list(adata.obs_names), f"{source}: obsm['spatial']")
    ids, genes = adata.obs_names, adata.var_names
    _check_matrix(adata.X, f"{source}: X", ids, genes, counts=False)
    if Key.layers.counts in adata.layers:
        _check_matrix(adata.layers[Key.layers.counts], f"{source}: layers['counts']", ids, genes, counts=True)
    libs = adata.obs[Key.obs.library_id].astype(str).to_numpy()
    for lib in pd.unique(libs):
        rows = np.flatnonzero(libs == lib)
        if len(rows) > 1 and (xy[rows] == xy[rows[0]]).all():
            raise InputError(
                f"{source}: all {len(rows)} spots of library {lib!r} lie at one point, "
                f"{_spot_text(adata, int(rows[0]), xy)}; the spot table holds no positions"
            )
        entry = (adata.uns.get(Key.uns.spatial) or {}).get(lib)
        if not isinstance(entry, dict):
            raise InputError(f"{source}: uns['spatial'][{lib!r}] is missing")
        field = f"uns['spatial'][{lib!r}]"
        mpp = (entry.get(Key.uns.metadata) or {}).get(Key.metadata.mpp)
        if mpp is None:
            raise InputError(f"{source}: {field}['metadata']['mpp'] is missing")
        mpp = budget.check_mpp(mpp, f"{source}: {field}['metadata']['mpp']")
        diameter = (entry.get(Key.uns.scalefactors) or {}).get(Key.scalefactors.spot_diameter_fullres)
        if diameter is None:
            raise InputError(
                f"{source}: {field}['scalefactors'][{Key.scalefactors.spot_diameter_fullres!r}] is missing"
            )
        budget.check_spot_diameter(
            diameter, mpp, f"{source}: {field}['scalefactors'][{Key.scalefactors.spot_diameter_fullres!r}]"
        )


def _check_matrix(matrix, where: str, spots: Sequence[str], genes: Sequence[str], *, counts: bool) -> None:
    """A spots x genes matrix must hold numbers, none NaN or infinite; raw counts (``counts``) none below 0
    either. The error names how many values are bad and the spot and gene of the first."""
    if matrix is None:
        return
    if sp.issparse(matrix) and matrix.format not in ("csr", "csc", "coo"):
        matrix = sp.csr_matrix(matrix)
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.dtype.kind not in "biufc":
        raise InputError(f"{where}: expected numbers, got dtype {values.dtype}")
    bad = ~np.isfinite(values) if values.dtype.kind in "fc" else np.zeros(values.shape, bool)
    what = "NaN or infinite"
    if not bad.any() and counts and values.dtype.kind in "fi":
        bad, what = values < 0, "negative (raw counts are >= 0)"
    if not bad.any():
        return
    first = int(np.flatnonzero(bad.ravel())[0])
    if sp.issparse(matrix):  # tocoo keeps the order of .data
        coo = matrix.tocoo()
        row, col = int(coo.row[first]), int(coo.col[first])
    else:
        row, col = (int(i) for i in np.unravel_index(first, values.shape))
    raise InputError(
        f"{where}: {int(bad.sum())} value(s) are {what}, e.g. {values.ravel()[first]} for spot "
        f"{str(spots[row])!r}, gene {str(genes[col])!r}"
    )


def check_spots_in_image(xy: np.ndarray, width: int, height: int, ids: Sequence[str], where: str) -> None:
    """Error if spot centres are not finite numbers (:func:`check_coordinates`) or fall outside a
    ``width`` x ``height`` image."""
    xy = check_coordinates(xy, ids, where)
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
    label = Key.obs.library_id
    libs = [list(dict.fromkeys(map(str, a.obs[label].astype(str)))) for a in adatas]
    flat = [lib for part in libs for lib in part]
    if len(set(flat)) != len(flat):
        raise InputError(f"sections share a library_id: {flat}; give each slide its own library_id")
    if all(len(part) == 1 for part in libs):
        out = ad.concat(list(adatas), label=label, keys=flat, uns_merge="unique", join=join, merge="first")
    else:  # a part holding several slides keeps each spot's own library_id (a label would relabel them all)
        out = ad.concat(list(adatas), uns_merge="unique", join=join, merge="first")
    out.obs[label] = pd.Categorical(out.obs[label].astype(str), categories=flat)
    validate(out, source="concatenated sections")
    return out


def read_h5ad(path: str | Path) -> ad.AnnData:
    """``anndata.read_h5ad`` with one clear :class:`InputError` naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"h5ad file {path} does not exist")
    if path.is_dir():
        raise InputError(f"h5ad file {path} is a folder, not an .h5ad file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise InputError(f"h5ad file {path} cannot be read ({exc})") from None
    if not is_hdf5:
        raise InputError(
            f"h5ad file {path}: not an HDF5 file (.h5ad files written by anndata are HDF5); "
            "it may be truncated, empty or another format"
        )
    try:
        return ad.read_h5ad(path)
    except MemoryError:
        raise
    except Exception as exc:  # anndata raises many types for a malformed file; none is a bug of ours
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"h5ad file {path}: an HDF5 file but not readable as AnnData ({reason})") from None


def write_h5ad(adata: ad.AnnData, path: str | Path) -> Path:
    """``adata.write_h5ad`` to a temporary file that replaces ``path`` only when complete."""
    path = Path(path)
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)
    return path
