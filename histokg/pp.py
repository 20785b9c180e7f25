"""Expression preprocessing, scanpy style: the one normalisation and the gene panels of histokg.

- **Normalisation.** :func:`log1p_cp10k`: ``log1p(counts / total * 1e4)`` per spot, the library size
  taken over all measured genes of the spot (totals clipped at 1), float32; sparse input stays sparse.
  Training inputs, prediction targets, evaluation, the KG priors and the bench all use it.
- **Panels.** A model's gene panel is the list of genes its expression tower reads. A panel gene a
  section lacks is a measured zero (:func:`panel_columns`); more than half of the panel missing means the
  panel and the data do not belong together and is refused. :func:`panel_log1p` and :func:`panel_counts`
  read a panel's values.
- **Two ways to choose genes, with two names.** :func:`panel_genes` chooses a model's panel ("the
  panel"): scanpy's ``highly_variable_genes`` (Seurat flavour, dispersion of log1p CP10k).
  :func:`top_genes` ranks genes by mean (HEG-n, highly expressed genes) or by variance of log1p CP10k
  (HVG-n, highly variable genes in the H&E-to-expression literature's sense): the evaluation's gene sets.
  Both are computed on the training (reference) slides only. In histokg "HVG" always means the latter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import scipy.sparse as sp

from histokg.errors import InputError
from histokg.keys import Key

log = logging.getLogger(__name__)

__all__ = [
    "MAX_MISSING_PANEL_FRACTION",
    "check_panel",
    "counts_of",
    "log1p_cp10k",
    "panel_columns",
    "panel_counts",
    "panel_genes",
    "panel_log1p",
    "take_columns",
    "top_genes",
]

# A section may lack some panel genes (legacy ST tables list only the genes detected in that section):
# those are measured zeros. When more than this fraction of the panel is absent, the data and the panel
# do not belong together, and filling them would fabricate the input.
MAX_MISSING_PANEL_FRACTION = 0.5


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def log1p_cp10k(counts, target_sum: float = 1e4, *, dense: bool = False):
    """``log1p(counts / total * target_sum)`` per row (float32, totals clipped at 1).

    Sparse input stays sparse (CSR) unless ``dense``; dense input stays dense.
    """
    if sp.issparse(counts):
        m = sp.csr_matrix(counts, dtype=np.float32, copy=True)
        totals = np.asarray(m.sum(axis=1), dtype=np.float32).ravel()
        totals = np.maximum(totals, np.float32(1.0))
        m.data = np.log1p(m.data / np.repeat(totals, np.diff(m.indptr)) * np.float32(target_sum))
        return m.toarray() if dense else m
    m = np.asarray(counts, dtype=np.float32)
    totals = m.sum(axis=1, keepdims=True)
    return np.log1p(m / np.maximum(totals, np.float32(1.0)) * np.float32(target_sum))


def counts_of(adata: ad.AnnData, layer: str | None = Key.layers.counts):
    """The raw counts: ``layers[layer]``, or ``X`` when ``layer`` is None or absent."""
    return adata.layers[layer] if layer and layer in adata.layers else adata.X


def take_columns(matrix, cols: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Dense ``matrix[:, cols]`` (sparse or dense input) with zero columns where ``cols`` is -1."""
    out = np.zeros((matrix.shape[0], len(cols)), dtype=dtype)
    present = cols >= 0
    if present.any():
        out[:, present] = _dense(matrix[:, cols[present]])
    return out


def panel_columns(genes: Sequence[str], available: Sequence[str], source: str = "data") -> np.ndarray:
    """Column of each panel gene in ``available``; -1 where absent (a measured zero).

    Logs how many panel genes are absent; raises :class:`InputError` when more than
    :data:`MAX_MISSING_PANEL_FRACTION` of the panel is absent (wrong panel, species or gene naming).
    """
    index: dict[str, int] = {}
    for i, g in enumerate(map(str, available)):
        index.setdefault(g, i)
    cols = np.array([index.get(str(g), -1) for g in genes], dtype=np.int64)
    missing = [str(g) for g, c in zip(genes, cols, strict=True) if c < 0]
    if len(missing) > MAX_MISSING_PANEL_FRACTION * len(cols):
        raise InputError(
            f"{source} lacks {len(missing)} of the {len(cols)} panel genes (e.g. {missing[:5]}); more than "
            f"{MAX_MISSING_PANEL_FRACTION:.0%} missing means the panel and the data do not match (species, "
            f"gene naming?); the data has {len(available)} genes (e.g. {list(map(str, available[:3]))})"
        )
    if missing:
        log.warning(
            "%s lacks %d of the %d panel genes (e.g. %s); they count as measured zeros",
            source,
            len(missing),
            len(cols),
            missing[:5],
        )
    return cols


def check_panel(genes: Sequence[str], available: Sequence[str], source: str = "gene panel") -> None:
    """Error naming how many panel genes the data lacks, with examples of each side (an explicit panel
    for training must be measured on the training slides)."""
    present = set(available)
    missing = [g for g in genes if g not in present]
    if missing:
        raise InputError(
            f"{source} does not match the data: {len(missing)} of {len(genes)} genes are absent "
            f"(e.g. {missing[:5]}); the data has {len(available)} genes (e.g. {list(available[:3])})"
        )


def panel_log1p(
    adata: ad.AnnData,
    genes: Sequence[str] | None = None,
    layer: str | None = Key.layers.counts,
    source: str = "data",
) -> np.ndarray:
    """Dense float32 log1p CP10k of ``genes`` (all genes if None), the library size over all genes of the
    spot; counts from ``layers[layer]`` (``X`` when None or absent); absent panel genes are zeros."""
    normalised = log1p_cp10k(counts_of(adata, layer))  # stays sparse: only the panel's columns are densified
    if genes is None:
        return _dense(normalised)
    return take_columns(normalised, panel_columns(genes, adata.var_names, source))


def panel_counts(adata: ad.AnnData, genes: Sequence[str], source: str = "data") -> sp.csr_matrix:
    """Raw counts of ``genes`` (sparse CSR; genes the data lacks are zeros)."""
    cols = panel_columns(genes, adata.var_names, source)
    return sp.csr_matrix(take_columns(counts_of(adata), cols))


def panel_genes(adata: ad.AnnData, n_genes: int) -> list[str]:
    """A model's panel: scanpy's highly variable genes (Seurat flavour) on log1p CP10k of ``adata``'s
    counts, in the data's gene order."""
    import scanpy as sc

    tmp = ad.AnnData(X=log1p_cp10k(adata.layers[Key.layers.counts], dense=True), var=adata.var[[]].copy())
    tmp.var_names = adata.var_names
    n = min(n_genes, tmp.n_vars)
    sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat", subset=False)
    return list(tmp.var_names[tmp.var["highly_variable"].to_numpy()])


def top_genes(
    adata_reference, n: int = 50, how: str = "mean", *, genes=None, layer: str | None = Key.layers.counts
) -> list[str]:
    """The ``n`` most highly expressed (``how="mean"``: HEG-n) or most variable (``how="variance"``:
    HVG-n, variance of log1p CP10k) genes.

    Computed on ``adata_reference`` (the reference/training slides only, so that held-out slides never
    choose their own evaluation genes); the library size is taken over all measured genes. ``genes``
    restricts the candidates (e.g. to the model's panel); ``layer`` holds raw counts (``None`` or a
    missing layer: ``X``). Ties keep the data's gene order.
    """
    if how not in ("mean", "variance"):
        raise InputError(f"top_genes: how={how!r} is not one of 'mean', 'variance'")
    expr = log1p_cp10k(counts_of(adata_reference, layer))
    names = list(map(str, adata_reference.var_names))
    if genes is not None:
        index = {g: i for i, g in enumerate(names)}
        missing = [g for g in genes if g not in index]
        if missing:
            raise InputError(
                f"top_genes: {len(missing)} of {len(genes)} genes are absent from the reference (e.g. {missing[:5]})"
            )
        cols = [index[g] for g in genes]
        expr = expr[:, cols]
        names = [names[i] for i in cols]
    mean = np.asarray(expr.mean(axis=0), dtype=np.float64).ravel()
    if how == "mean":
        score = mean
    else:
        sq = expr.multiply(expr) if hasattr(expr, "multiply") else expr.astype(np.float64) ** 2
        score = np.asarray(sq.mean(axis=0), dtype=np.float64).ravel() - mean**2
    order = np.argsort(-score, kind="stable")
    return [names[i] for i in order[: max(0, int(n))]]
