"""Plots for reports: measured vs predicted spatial maps, UMAPs, per-gene Pearson histograms.

scanpy style: every function returns its :class:`matplotlib.figure.Figure`; ``ax=`` draws a one-panel
plot into a given Axes; ``path=`` also saves it atomically as PNG; ``show=`` shows it with pyplot
(default: only in an interactive matplotlib session, so scripts and tests never block). Figures not
shown are drawn on the Agg canvas without pyplot (no global state, no display needed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure

from histokg.colours import CATEGORICAL
from histokg.errors import InputError
from histokg.io import atomic_path
from histokg.keys import Key

log = logging.getLogger(__name__)

_PALETTE = list(CATEGORICAL)  # the one categorical palette


def spatial_genes(
    panel_adata: ad.AnnData,
    genes: Sequence[str],
    library_id: str,
    *,
    layers: Sequence[str] = ("X", Key.layers.pred_knn),
    path: str | Path | None = None,
    library_key: str = Key.obs.library_id,
    image: bool = True,
    cmap: str = "viridis",
    dpi: int = 110,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Figure:
    """Grid of spatial maps: one row per gene, one column per layer (``"X"`` = measured).

    Spots are drawn at their true diameter over the library's hires image
    (``uns["spatial"][library_id]``, coordinates scaled by ``tissue_hires_scalef``). All panels of a
    gene share one colour scale, the 1st-99th percentile of the measured values (of all shown values
    when nothing is measured), so a prediction that compresses the range looks compressed; every
    colour bar is labelled. Predicted panels are titled with their Pearson r against ``X`` when ``X``
    is measured. ``ax`` takes one gene and one layer. The panel AnnData comes from
    :func:`histokg.tl.panel_adata` (or ``predicted.h5ad``).
    """
    genes = [str(g) for g in genes]
    if not genes:
        raise InputError("spatial_genes: no genes to plot")
    present = set(map(str, panel_adata.var_names))
    missing = [g for g in genes if g not in present]
    if missing:
        raise InputError(f"spatial_genes: genes {missing[:5]} are not in the panel")
    for layer in layers:
        if layer != "X" and layer not in panel_adata.layers:
            raise InputError(
                f"spatial_genes: layers[{layer!r}] is missing (layers: {list(panel_adata.layers.keys())})"
            )
    libs = panel_adata.obs[library_key].astype(str).to_numpy()
    mask = libs == str(library_id)
    if not mask.any():
        raise InputError(f"spatial_genes: no spot has obs[{library_key!r}] == {library_id!r}")
    sub = panel_adata[mask]
    entry = panel_adata.uns.get(Key.uns.spatial, {}).get(str(library_id), {})
    scalefactors = entry.get(Key.uns.scalefactors, {})
    scale = float(scalefactors.get(Key.scalefactors.tissue_hires_scalef, 1.0))
    diameter = float(scalefactors.get(Key.scalefactors.spot_diameter_fullres, 0.0)) * scale
    hires = entry.get(Key.uns.images, {}).get(Key.uns.hires) if image else None
    xy = np.asarray(sub.obsm[Key.obsm.spatial], dtype=np.float64) * scale
    if diameter <= 0:
        diameter = _pitch(xy) * 0.8
    measured = bool(panel_adata.uns.get(Key.uns.histokg, {}).get(Key.histokg.measured, True))
    background = _background(hires, xy, diameter)

    n_rows, n_cols = len(genes), len(layers)
    fig = _figure(ax, show, (3.3 * n_cols, 3.0 * n_rows), dpi, n_rows * n_cols, "spatial_genes")
    col_of = {g: i for i, g in enumerate(map(str, panel_adata.var_names))}
    for r, gene in enumerate(genes):
        truth = _column(sub, "X", col_of[gene])
        row = {layer: truth if layer == "X" else _column(sub, layer, col_of[gene]) for layer in layers}
        clim = _clim(truth if measured else np.concatenate(list(row.values())))
        for c, layer in enumerate(layers):
            panel_ax = ax or fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            kind = "measured" if layer == "X" and measured else f"predicted ({layer})"
            title = f"{gene} {kind}"
            if layer != "X" and measured:
                title += f" r={_pearson(row[layer], truth):.2f}"
            _spot_map(panel_ax, xy, row[layer], diameter, background, cmap, clim, f"{gene} log1p CP10k")
            panel_ax.set_title(title, fontsize=9)
    if ax is None:
        fig.suptitle(f"{library_id}: measured vs predicted (log1p CP10k)", fontsize=10)
    return _finish(fig, path, show)


def umap(
    adata: ad.AnnData,
    color: Sequence[str],
    *,
    path: str | Path | None = None,
    basis: str = Key.obsm.umap,
    point_size: float | None = None,
    dpi: int = 110,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Figure:
    """One UMAP panel per ``obs`` column in ``color`` (categorical: legend; numeric: colour bar);
    ``ax`` takes one colour key."""
    if basis not in adata.obsm:
        raise InputError(f"umap: obsm[{basis!r}] is missing; run histokg.tl.cluster (umap=True) first")
    color = [c for c in color if c in adata.obs]
    if not color:
        raise InputError("umap: none of the colour keys are obs columns")
    xy = np.asarray(adata.obsm[basis])[:, :2]
    size = point_size or max(2.0, min(30.0, 3000.0 / max(adata.n_obs, 1)))
    n_cols = min(len(color), 2)
    n_rows = -(-len(color) // n_cols)
    fig = _figure(ax, show, (5.2 * n_cols, 4.2 * n_rows), dpi, len(color), "umap")
    for i, key in enumerate(color):
        panel_ax = ax or fig.add_subplot(n_rows, n_cols, i + 1)
        values = adata.obs[key]
        if isinstance(values.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(values):
            cats = values.astype("category")
            colors = _category_colors(adata, key, list(cats.cat.categories))
            for j, cat in enumerate(cats.cat.categories):
                sel = (cats == cat).to_numpy()
                panel_ax.scatter(xy[sel, 0], xy[sel, 1], s=size, c=colors[j], label=str(cat), linewidths=0)
            panel_ax.legend(
                fontsize=7, markerscale=2.0, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5)
            )
        else:
            art = panel_ax.scatter(
                xy[:, 0], xy[:, 1], s=size, c=values.to_numpy(dtype=float), cmap="viridis", linewidths=0
            )
            fig.colorbar(art, ax=panel_ax, shrink=0.8)
        panel_ax.set_title(key, fontsize=10)
        panel_ax.set_xticks([])
        panel_ax.set_yticks([])
        panel_ax.set_xlabel("UMAP1", fontsize=8)
        panel_ax.set_ylabel("UMAP2", fontsize=8)
    return _finish(fig, path, show)


def pearson_hist(
    per_gene: np.ndarray | Sequence[float] | Mapping[str, np.ndarray | Sequence[float]],
    path: str | Path | None = None,
    *,
    bins: int = 30,
    title: str = "per-gene Pearson r (held-out)",
    dpi: int = 110,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Figure:
    """Histogram of per-gene Pearson correlations; a mapping draws one overlaid histogram per name."""
    series = per_gene if isinstance(per_gene, Mapping) else {"pearson": per_gene}
    fig = _figure(ax, show, (5.0, 3.5), dpi, 1, "pearson_hist")
    ax = ax or fig.add_subplot(1, 1, 1)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for i, (name, values) in enumerate(series.items()):
        r = np.asarray(values, dtype=np.float64)
        r = r[np.isfinite(r)]
        label = f"{name} (median {np.median(r):.2f}, n={r.size})" if r.size else f"{name} (no finite r)"
        ax.hist(r, bins=edges, alpha=0.55, color=_PALETTE[i % len(_PALETTE)], label=label)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("Pearson r per gene")
    ax.set_ylabel("genes")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return _finish(fig, path, show)


# --------------------------------------------------------------------------- helpers


def geojson_overlay(
    collection: Mapping,
    thumbnail: np.ndarray,
    scale: float,
    *,
    title: str = "",
    ax: Axes | None = None,
    path: str | Path | None = None,
    show: bool | None = None,
    figsize: tuple[float, float] = (7.0, 7.0),
    dpi: int = 110,
) -> Figure:
    """The polygons of a GeoJSON FeatureCollection (level-0 pixels, e.g. ``histokg export geojson``) drawn
    over a slide thumbnail (``scale``: thumbnail px per level-0 px), filled with their classification's
    colour (grey without one), with a legend of the classes."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    fig = _figure(ax, show, figsize, dpi, 1, "geojson_overlay")
    ax = ax or fig.add_subplot()
    ax.imshow(thumbnail)
    polygons, colours, classes = [], [], {}
    for feature in collection.get("features", []):
        geometry = feature.get("geometry") or {}
        if geometry.get("type") != "Polygon":
            continue
        polygons.append(np.asarray(geometry["coordinates"][0], np.float64) * scale)
        cls = (feature.get("properties") or {}).get("classification") or {}
        rgb = tuple(np.asarray(cls.get("color", (128, 128, 128)), np.float64) / 255)
        colours.append(rgb)
        if "name" in cls:
            classes.setdefault(cls["name"], rgb)
    ax.add_collection(
        PolyCollection(polygons, facecolors=colours, edgecolors="black", linewidths=0.2, alpha=0.6)
    )
    if classes:
        handles = [
            Patch(color=c, label=n) for n, c in sorted(classes.items(), key=lambda kv: _natural_key(kv[0]))
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    ax.set_title(title or f"{len(polygons)} objects")
    ax.set_axis_off()
    return _finish(fig, path, show)


def _natural_key(text: str):
    tail = text.rsplit(" ", 1)[-1]
    return (0, int(tail), text) if tail.isdigit() else (1, 0, text)


def _wants_show(show: bool | None) -> bool:
    return matplotlib.is_interactive() if show is None else bool(show)


def _figure(
    ax: Axes | None, show: bool | None, figsize: tuple[float, float], dpi: int, n_panels: int, what: str
):
    """The figure to draw on: ``ax``'s (one panel only), a pyplot one when shown, else a bare Agg one."""
    if ax is not None:
        if n_panels != 1:
            raise InputError(
                f"{what}: ax= takes a one-panel plot, this one has {n_panels} panels; leave ax=None"
            )
        return ax.get_figure()
    if _wants_show(show):
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, dpi=dpi, layout="constrained")
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish(fig: Figure, path: str | Path | None, show: bool | None) -> Figure:
    if path is not None:
        _save(fig, path)
    if _wants_show(show):
        import matplotlib.pyplot as plt

        plt.show()
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    log.debug("wrote %s", path)
    return path


def _column(adata: ad.AnnData, layer: str, col: int) -> np.ndarray:
    m = adata.X if layer == "X" else adata.layers[layer]
    v = m[:, col]
    v = v.toarray() if sp.issparse(v) else np.asarray(v)
    return v.ravel().astype(np.float64)


def _pearson(pred: np.ndarray, true: np.ndarray) -> float:
    from histokg.metrics import pearson_per_gene

    return float(pearson_per_gene(pred[:, None], true[:, None])[0])


def _pitch(xy: np.ndarray) -> float:
    if len(xy) < 2:
        return 10.0
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1])) or 10.0


def _extent(xy: np.ndarray, diameter: float) -> tuple[float, float, float, float]:
    pad = diameter * 1.5
    return xy[:, 0].min() - pad, xy[:, 0].max() + pad, xy[:, 1].min() - pad, xy[:, 1].max() + pad


def _background(hires, xy: np.ndarray, diameter: float, max_px: int = 700):
    """The part of the hires image under the spots, shrunk to at most ``max_px``, with its extent."""
    if hires is None:
        return None
    from PIL import Image

    img = np.asarray(hires)
    x0, x1, y0, y1 = _extent(xy, diameter)
    c0, r0 = max(int(x0), 0), max(int(y0), 0)
    c1, r1 = min(int(np.ceil(x1)), img.shape[1]), min(int(np.ceil(y1)), img.shape[0])
    if c1 <= c0 or r1 <= r0:
        return None
    crop = np.ascontiguousarray(img[r0:r1, c0:c1])
    factor = int(np.ceil(max(crop.shape[:2]) / max_px))
    if factor > 1 and crop.dtype == np.uint8:
        crop = np.asarray(Image.fromarray(crop).reduce(factor))
    return crop, (c0, c1, r1, r0)


def _clim(values: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile of the finite values (a small positive span when they are constant)."""
    finite = values[np.isfinite(values)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1e-6)


def _spot_map(
    ax,
    xy: np.ndarray,
    values: np.ndarray,
    diameter: float,
    background,
    cmap: str,
    clim: tuple[float, float] | None = None,
    label: str = "",
) -> None:
    x0, x1, y0, y1 = _extent(xy, diameter)
    if background is not None:
        ax.imshow(background[0], extent=background[1], origin="upper")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image rows grow downwards
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    lo, hi = clim or _clim(values)
    spots = EllipseCollection(
        widths=diameter,
        heights=diameter,
        angles=0.0,
        units="xy",  # spot diameter in data (hires pixel) units, whatever the figure size
        offsets=xy,
        offset_transform=ax.transData,
        cmap=cmap,
        linewidths=0,
    )
    spots.set_array(np.where(np.isfinite(values), values, np.nan))
    spots.set_clim(lo, hi)
    ax.add_collection(spots)
    bar = ax.get_figure().colorbar(spots, ax=ax, shrink=0.75)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=7)


def _category_colors(adata: ad.AnnData, key: str, cats: list) -> list[str]:
    stored = adata.uns.get(f"{key}_colors")
    if stored is not None and len(stored) >= len(cats):
        return [str(c) for c in stored[: len(cats)]]
    return [_PALETTE[i % len(_PALETTE)] for i in range(len(cats))]
