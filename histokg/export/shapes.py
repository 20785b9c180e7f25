"""What the exports share: one slide's observations as shapes, their measurements and classes.

An observation is a round spot (Visium, legacy ST, ``histokg predict --spots hex``) or a square (tissue
tiles, Visium HD bins, Xenium pseudo-spots: ``uns["spatial"][lib]["metadata"]["spot_shape"] == "square"``
or the tile reader), centred at ``obsm["spatial"]`` (level-0 pixels), ``spot_diameter_fullres`` wide.

Measurements (:func:`measurements`) are what a viewer shows per object: the genes of ``X`` (for
``histokg predict`` output: the predicted log1p CP10k), each with its interval half-width where the
prediction has one (``"<gene> hw90"``), the transferred pathway scores (``obsm["pred_pathways"]``, with
``"<pathway> hw90"``), and the cluster. Non-finite values are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg import keys
from histokg.errors import InputError
from histokg.keys import Key

CIRCLE = "circle"
SQUARE = "square"
_SQUARE_READERS = ("tiles",)


@dataclass
class SlideShapes:
    """One slide's observations as shapes in level-0 pixels."""

    library_id: str
    names: list[str]  # obs_names
    centres: np.ndarray  # (n, 2) level-0 (x, y)
    size: float  # circle diameter or square side, level-0 pixels
    kind: str  # CIRCLE or SQUARE
    mpp: float
    slide_path: str  # "" when the contract records none
    thumbnail: np.ndarray | None
    thumbnail_scale: float  # thumbnail px per level-0 px


def one_library(adata: ad.AnnData, library_id: str | None = None, what: str = "input") -> ad.AnnData:
    """The observations of one slide: ``library_id``, or the only one ``adata`` holds."""
    libs = list(map(str, pd.unique(adata.obs[Key.obs.library_id].astype(str))))
    if library_id is None:
        if len(libs) != 1:
            raise InputError(
                f"{what} holds {len(libs)} slides ({', '.join(libs[:6])}); choose one with --library-id"
            )
        library_id = libs[0]
    if library_id not in libs:
        raise InputError(f"{what} has no slide {library_id!r} (it has {', '.join(libs[:6])})")
    if len(libs) == 1:
        return adata
    return adata[adata.obs[Key.obs.library_id].astype(str) == library_id].copy()


def slide_shapes(adata: ad.AnnData, what: str = "input") -> SlideShapes:
    """The shapes of a one-slide AnnData (:func:`one_library`)."""
    lib = str(adata.obs[Key.obs.library_id].astype(str).iloc[0])
    entry = adata.uns.get(Key.uns.spatial, {}).get(lib)
    if not isinstance(entry, dict):
        raise InputError(
            f"{what}: uns['spatial'][{lib!r}] is missing; it does not follow the AnnData contract"
        )
    scalefactors = entry.get(Key.uns.scalefactors, {})
    metadata = entry.get(Key.uns.metadata, {})
    size = float(scalefactors.get(Key.scalefactors.spot_diameter_fullres, np.nan))
    mpp = float(metadata.get(Key.metadata.mpp, np.nan))
    if not (np.isfinite(size) and size > 0 and np.isfinite(mpp) and mpp > 0):
        raise InputError(f"{what}: slide {lib} records no spot diameter or MPP (uns['spatial'][{lib!r}])")
    square = (
        metadata.get(Key.metadata.spot_shape) == SQUARE
        or metadata.get(Key.metadata.reader) in _SQUARE_READERS
    )
    images = entry.get(Key.uns.images, {})
    return SlideShapes(
        library_id=lib,
        names=list(map(str, adata.obs_names)),
        centres=np.asarray(adata.obsm[Key.obsm.spatial], np.float64)[:, :2],
        size=size,
        kind=SQUARE if square else CIRCLE,
        mpp=mpp,
        slide_path=str(metadata.get(Key.metadata.source_image_path, "") or ""),
        thumbnail=images.get(Key.uns.hires),
        thumbnail_scale=float(scalefactors.get(Key.scalefactors.tissue_hires_scalef, np.nan)),
    )


def slide_file(shapes: SlideShapes, slide_dir: str | Path | None = None, what: str = "input") -> Path:
    """The slide file the contract records (found by name in ``slide_dir`` when given)."""
    if not shapes.slide_path:
        raise InputError(f"{what}: slide {shapes.library_id} records no slide file")
    path = Path(shapes.slide_path)
    if slide_dir is not None:
        path = Path(slide_dir) / path.name
    if not path.is_file():
        raise InputError(
            f"{what}: slide {shapes.library_id}'s image {path} does not exist; pass --slide-dir with its folder"
        )
    return path


def measurements(adata: ad.AnnData, genes: list[str] | None = None) -> pd.DataFrame:
    """Per-observation measurements (see the module docstring), columns in viewer order."""
    columns: dict[str, np.ndarray] = {}
    names = list(map(str, adata.var_names))
    if genes is not None:
        missing = [g for g in genes if g not in set(names)]
        if missing:
            raise InputError(f"genes not in the data: {', '.join(missing[:5])}")
    chosen = [names.index(g) for g in genes] if genes is not None else list(range(len(names)))
    X = adata.X[:, chosen] if chosen else np.zeros((adata.n_obs, 0), np.float32)
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    interval = _interval_layer(adata)
    hw = None if interval is None else np.asarray(adata.layers[interval])[:, chosen]
    suffix = interval_suffix(adata)
    for j, col in enumerate(chosen):
        columns[names[col]] = X[:, j]
        if hw is not None:
            columns[f"{names[col]} {suffix}"] = hw[:, j]
    pathways = adata.obsm.get(Key.obsm.pred_pathways)
    if isinstance(pathways, pd.DataFrame):
        half = adata.obsm.get(keys.interval_key(Key.obsm.pred_pathways, _level(adata)))
        for name in pathways.columns:
            columns[str(name)] = pathways[name].to_numpy()
            if isinstance(half, pd.DataFrame) and name in half.columns:
                columns[f"{name} {suffix}"] = half[name].to_numpy()
    clusters = cluster_labels(adata)
    if clusters is not None:
        columns["cluster"] = pd.to_numeric(clusters, errors="coerce").to_numpy()
    return pd.DataFrame({k: np.asarray(v, np.float64) for k, v in columns.items()}, index=adata.obs_names)


def cluster_labels(adata: ad.AnnData) -> pd.Series | None:
    """The Leiden clusters (``obs["histokg_leiden"]``) as strings, if any."""
    if Key.obs.cluster not in adata.obs:
        return None
    return adata.obs[Key.obs.cluster].astype(str)


def class_colours(labels: pd.Series) -> dict[str, tuple[int, int, int]]:
    """One distinct RGB colour per class, in natural order (:data:`histokg.colours.CATEGORICAL`)."""
    from histokg.colours import categorical_colours, rgb

    classes = sorted(pd.unique(labels), key=_natural)
    return {c: rgb(colour) for c, colour in zip(classes, categorical_colours(len(classes)), strict=True)}


def interval_suffix(adata: ad.AnnData) -> str:
    return f"hw{round(_level(adata) * 100):d}"


def _predict_record(adata: ad.AnnData) -> dict:
    info = adata.uns.get(Key.uns.histokg)
    record = info.get(Key.histokg.predict) if isinstance(info, dict) else None
    return record if isinstance(record, dict) else {}


def _level(adata: ad.AnnData) -> float:
    config = _predict_record(adata).get("config", {})
    return float(config.get("level", 0.9)) if isinstance(config, dict) else 0.9


def _interval_layer(adata: ad.AnnData) -> str | None:
    config = _predict_record(adata).get("config", {})
    method = config.get("method") if isinstance(config, dict) else None
    if not method:
        return None
    key = keys.interval_key(keys.pred_key(str(method)), _level(adata))
    return key if key in adata.layers else None


def _natural(label: str):
    return (0, int(label), "") if label.isdigit() else (1, 0, label)
