"""The outputs of ``histokg predict`` as the web app shows them: slides predicted from H&E alone.

:func:`load_predictions` reads the ``predicted.h5ad`` files an operator names (a file, a slide's folder,
or the ``-o`` folder of ``histokg predict`` with one folder per slide), checks each (it must be an output
of ``histokg predict``: one slide, finite positions, a thumbnail, an MPP, its prediction layers) and
keeps what the page draws: positions, the predicted genes and pathway scores, their 90% interval
half-widths (the uncertainty) and the Leiden clusters. A :class:`PredictedSlide` answers overlays in the
shape of :func:`histokg.retrieval.overlay.slide_overlay` (sources ``predicted`` and ``uncertainty``;
nothing is measured), with legends that say the values were predicted from H&E and how.

Slide ids are the slide's library id with :data:`ID_SUFFIX` added, so that a slide both indexed and
predicted is two slides (measured and predicted) that cannot be confused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from histokg import keys
from histokg.budget import check_mpp
from histokg.errors import InputError
from histokg.keys import Key
from histokg.retrieval.entities import EntityNames
from histokg.retrieval.ids import safe_slide_id
from histokg.retrieval.images import png_bytes
from histokg.retrieval.overlay import (
    EXPRESSION_DEFINITION,
    EXPRESSION_UNIT,
    KG_DEFINITION,
    KG_UNIT,
    categorical,
    continuous,
    entity_kind,
)
from histokg.retrieval.values import not_in_panel

PREDICTED = "predicted.h5ad"  # the file histokg predict writes in each slide's folder
ID_SUFFIX = ".predicted"
SOURCES = ("predicted", "uncertainty", "auto")
MAX_SLIDES = 1000  # predicted slides one server loads

PATHWAY_SCORES = {  # histokg.priors.PriorConfig.score -> (unit, definition)
    "rank": (KG_UNIT, KG_DEFINITION),
    "zmean": (
        "z-score",
        "mean of the set's genes' log1p CP10k, each standardised across the reference spots (0: average)",
    ),
    "mean": ("mean count", "mean of the set's genes' counts in the region"),
}


@dataclass
class PredictedSlide:
    """One slide that ``histokg predict`` wrote, held for drawing (see the module docstring)."""

    slide_id: str
    name: str  # the library id
    path: Path
    mpp: float
    kind: str  # "tiles" or "spots" (hexagonal pseudo-spots), for drawing
    layout: str  # in words, for the legend
    coords: np.ndarray  # (n, 2) level-0 px
    diameter_px: float
    thumbnail: np.ndarray
    thumbnail_scale: float
    genes: list[str]
    expression: np.ndarray  # (n, genes) predicted log1p CP10k
    expression_hw: np.ndarray | None  # (n, genes) interval half-width
    pathways: pd.DataFrame | None  # (n, entities) predicted pathway scores
    pathways_hw: pd.DataFrame | None
    clusters: np.ndarray | None
    record: dict = field(default_factory=dict)
    _png: bytes | None = None

    # ------------------------------------------------------------------ what the page asks
    def meta(self) -> dict:
        """What ``/api/slides/{id}`` answers for this slide (the fields of an indexed slide, and more)."""
        cfg = self.record.get("config", {})
        return {
            "slide_id": self.slide_id,
            "name": self.name,
            "origin": "predicted",
            "kind": self.kind,
            "n_regions": len(self.coords),
            "patient": None,
            "labels": {},
            "mpp": self.mpp,
            "thumbnail_scale": self.thumbnail_scale,
            "thumbnail_size": [int(self.thumbnail.shape[1]), int(self.thumbnail.shape[0])],
            "region_diameter_px": self.diameter_px,
            "spot_diameter_px": self.diameter_px if self.kind == "spots" else None,
            "measured": {"genes": False, "kg": False, "labels": False},
            "genes": list(self.genes),
            "pathways": [] if self.pathways is None else list(map(str, self.pathways.columns)),
            "predicted": {
                "method": cfg.get("method", ""),
                "layout": self.layout,
                "interval_level": self.level,
                "reference_slides": list(self.record.get("reference_libraries", [])),
                "has_uncertainty": self.expression_hw is not None,
                "has_clusters": self.clusters is not None,
            },
        }

    @property
    def level(self) -> float:
        return float(self.record.get("config", {}).get("level", 0.9))

    def thumbnail_png(self) -> bytes:
        if self._png is None:
            self._png = png_bytes(self.thumbnail)
        return self._png

    def overlay(self, feature: str = "cluster", source: str = "auto") -> dict:
        """Positions and one feature's values (``cluster``, ``gene:<symbol>``, ``kg:<pathway>``), predicted
        or their uncertainty (the half-width of the interval), in the shape of an indexed slide's overlay."""
        if source not in SOURCES:
            raise InputError(
                f"slide {self.slide_id} was predicted from H&E alone: source {source!r} is not one of "
                f"{list(SOURCES)} (nothing on it was measured)"
            )
        source = "predicted" if source == "auto" else source
        out = {
            "slide_id": self.slide_id,
            "feature": feature,
            "source": source,
            "sources": ["predicted"] if feature == "cluster" else ["predicted", "uncertainty"],
            "x": [round(float(v), 1) for v in self.coords[:, 0]],
            "y": [round(float(v), 1) for v in self.coords[:, 1]],
            "origin": "predicted",
        }
        if feature == "cluster":
            if source != "predicted":
                raise InputError("clusters have no uncertainty: ask for source 'predicted'")
            if self.clusters is None:
                raise InputError(f"slide {self.slide_id} has no clusters (too few tiles or spots)")
            return out | categorical(
                [f"cluster {c}" for c in self.clusters],
                "Cluster (predicted from H&E)",
                "Leiden clusters of this slide's image embeddings (histokg predict): one colour, regions "
                "that look alike to the model. A grouping by appearance, not a diagnosis.",
            )
        kind, _, name = feature.partition(":")
        if kind == "gene":
            values, label, value = self._gene(name, source)
        elif kind == "kg":
            values, label, value, entity = self._pathway(name, source)
            out["feature"] = f"kg:{entity}"
        else:
            raise InputError(
                f"slide {self.slide_id} was predicted from H&E: colour it by 'cluster', 'gene:<symbol>' "
                f"or 'kg:<pathway>', not {feature!r}"
            )
        what = (
            "this slide's predicted values" if source == "predicted" else "this slide's interval half-widths"
        )
        return out | continuous(values, [values], what, label, value)

    # ------------------------------------------------------------------ values
    def _how(self) -> str:
        cfg = self.record.get("config", {})
        refs = ", ".join(self.record.get("reference_libraries", [])) or "the reference"
        smooth = float(cfg.get("smooth", 0) or 0)
        return (
            f"predicted from the H&E image alone by histokg predict (method {cfg.get('method', '?')}"
            f"{f', smoothed over neighbouring {self.kind} ({smooth:g})' if smooth else ''}; "
            f"reference slides with transcriptomics: {refs})"
        )

    def _interval(self) -> str:
        z = self.record.get("interval_scale")
        pct = round(self.level * 100)
        return (
            f"half-width of the {pct}% interval: the prediction plus or minus this covers the measured value "
            f"{pct}% of the time on the reference slides (the spread of the nearest reference spots"
            f"{f' times {float(z):.2f}' if z is not None else ''}, calibrated there); larger is less certain"
        )

    def _gene(self, name: str, source: str) -> tuple[np.ndarray, str, dict]:
        if name not in self.genes:
            raise not_in_panel(name, self.genes, f"the genes histokg predict wrote for {self.name}")
        j = self.genes.index(name)
        pct = round(self.level * 100)
        if source == "predicted":
            values = self.expression[:, j]
            value = {
                "what": "predicted expression (from H&E)",
                "definition": f"{EXPRESSION_DEFINITION}; {self._how()}",
            }
        else:
            if self.expression_hw is None:
                raise InputError(f"slide {self.slide_id} has no intervals for its predicted genes")
            values = self.expression_hw[:, j]
            value = {"what": f"uncertainty: {pct}% interval half-width", "definition": self._interval()}
        label = f"{name} ({EXPRESSION_UNIT})"
        return np.asarray(values, np.float64), label, {"source": source, "unit": EXPRESSION_UNIT, **value}

    def _pathway(self, name: str, source: str) -> tuple[np.ndarray, str, dict, str]:
        if self.pathways is None:
            raise InputError(
                f"slide {self.slide_id} has no pathway scores (histokg predict ran without a KG bundle "
                "or with --pathways 0)"
            )
        columns = list(map(str, self.pathways.columns))
        names = EntityNames(
            columns, {c: c.split(":", 1)[-1] for c in columns}, where="this slide's predictions"
        )
        entity = names.resolve(name)
        label = names.label(entity)
        unit, definition = PATHWAY_SCORES.get(
            self.record.get("pathway_score", "rank"), PATHWAY_SCORES["rank"]
        )
        if source == "predicted":
            values = self.pathways[entity].to_numpy()
            value = {
                "what": f"predicted {entity_kind(entity)} (from H&E)",
                "definition": f"{definition}; scored on the reference spots and carried over to this "
                f"slide from the nearest ones, {self._how()}",
            }
        else:
            if self.pathways_hw is None:
                raise InputError(f"slide {self.slide_id} has no intervals for its pathway scores")
            values = self.pathways_hw[entity].to_numpy()
            value = {
                "what": f"uncertainty: {round(self.level * 100)}% interval half-width",
                "definition": self._interval(),
            }
        return np.asarray(values, np.float64), label, {"source": source, "unit": unit, **value}, entity


# --------------------------------------------------------------------------- loading


def prediction_files(path: str | Path) -> list[Path]:
    """The ``predicted.h5ad`` files ``path`` names: itself, its own, or those of its slide folders."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"predictions {path} do not exist")
    if (path / PREDICTED).is_file():
        return [path / PREDICTED]
    found = sorted(p / PREDICTED for p in path.iterdir() if p.is_dir() and (p / PREDICTED).is_file())
    if not found:
        raise InputError(
            f"predictions {path}: no {PREDICTED} in it or in its folders (give the -o folder of histokg "
            "predict, one slide's folder, or a predicted.h5ad)"
        )
    return found


def load_predictions(paths: list[str | Path], taken: set[str] = frozenset()) -> dict[str, PredictedSlide]:
    """Every predicted slide under ``paths``, by slide id; an id in ``taken`` or given twice is refused."""
    files = [f for p in paths for f in prediction_files(p)]
    if len(files) > MAX_SLIDES:
        raise InputError(f"{len(files)} predicted slides: at most {MAX_SLIDES} are served at once")
    slides: dict[str, PredictedSlide] = {}
    for f in files:
        slide = load_predicted_slide(f)
        if slide.slide_id in slides or slide.slide_id in taken:
            other = slides[slide.slide_id].path if slide.slide_id in slides else "the index"
            raise InputError(f"predictions {f}: slide id {slide.slide_id!r} is also that of {other}")
        slides[slide.slide_id] = slide
    return slides


def load_predicted_slide(path: str | Path) -> PredictedSlide:
    """One ``predicted.h5ad``, checked (one :class:`InputError` naming the file and the field at fault)."""
    from histokg.st.contract import read_h5ad

    path = Path(path)
    adata = read_h5ad(path)

    def bad(what: str) -> InputError:
        return InputError(f"predictions {path}: {what}")

    info = adata.uns.get(Key.uns.histokg)
    record = info.get(Key.histokg.predict) if isinstance(info, dict) else None
    if not isinstance(record, dict):
        raise bad(f"no uns['{Key.uns.histokg}']['{Key.histokg.predict}']: not an output of histokg predict")
    libraries = adata.obs[Key.obs.library_id].astype(str).unique() if Key.obs.library_id in adata.obs else []
    if len(libraries) != 1:
        raise bad(f"obs['{Key.obs.library_id}'] must name one slide, found {len(libraries)}")
    library = str(libraries[0])
    coords = np.asarray(adata.obsm.get(Key.obsm.spatial, np.empty((0, 0))), np.float64)
    if coords.ndim != 2 or coords.shape != (adata.n_obs, 2) or not np.isfinite(coords).all():
        raise bad(f"obsm['{Key.obsm.spatial}'] must be finite (n, 2) positions, got shape {coords.shape}")
    entry = adata.uns.get(Key.uns.spatial, {}).get(library)
    if not isinstance(entry, dict):
        raise bad(f"no uns['{Key.uns.spatial}'][{library!r}]")
    mpp = check_mpp(entry.get(Key.uns.metadata, {}).get(Key.metadata.mpp), f"{path}: metadata mpp")
    thumb = np.asarray(entry.get(Key.uns.images, {}).get(Key.uns.hires, np.empty(0)))
    if thumb.ndim != 3 or thumb.shape[2] not in (3, 4) or thumb.dtype != np.uint8 or min(thumb.shape[:2]) < 1:
        raise bad(f"uns['{Key.uns.spatial}'][{library!r}]['images']['hires'] is not an RGB uint8 image")
    scalef = entry.get(Key.uns.scalefactors, {})
    scale = float(scalef.get(Key.scalefactors.tissue_hires_scalef, np.nan))
    diameter = float(scalef.get(Key.scalefactors.spot_diameter_fullres, np.nan))
    if not (np.isfinite(scale) and scale > 0 and np.isfinite(diameter) and diameter > 0):
        raise bad("scalefactors tissue_hires_scalef and spot_diameter_fullres must be positive numbers")
    cfg = record.get("config", {}) if isinstance(record.get("config"), dict) else {}
    method, level = str(cfg.get("method", "blend")), float(cfg.get("level", 0.9))
    expression = _matrix(adata, keys.pred_key(method), bad, required=True)
    hw = _matrix(adata, keys.interval_key(keys.pred_key(method), level), bad, required=False)
    pathways = _frame(adata, Key.obsm.pred_pathways, bad)
    pathways_hw = _frame(adata, keys.interval_key(Key.obsm.pred_pathways, level), bad)
    clusters = adata.obs[Key.obs.cluster].astype(str).to_numpy() if Key.obs.cluster in adata.obs else None
    spots = record.get("observations", "tiles")
    layout = (
        f"hexagonal pseudo-spots of {float(cfg.get('spot_um', 55)):g} µm, {float(cfg.get('pitch_um', 100)):g} µm apart"
        if spots == "hex"
        else f"tissue tiles of {diameter * mpp:.0f} µm"
    )
    return PredictedSlide(
        slide_id=safe_slide_id(library)[: 128 - len(ID_SUFFIX)] + ID_SUFFIX,
        name=library,
        path=path,
        mpp=mpp,
        kind="spots" if spots == "hex" else "tiles",
        layout=layout,
        coords=coords,
        diameter_px=diameter,
        thumbnail=np.ascontiguousarray(thumb[..., :3]),
        thumbnail_scale=scale,
        genes=list(map(str, adata.var_names)),
        expression=expression,
        expression_hw=hw,
        pathways=pathways,
        pathways_hw=pathways_hw,
        clusters=clusters,
        record=dict(record),
    )


def _matrix(adata, key: str, bad, *, required: bool) -> np.ndarray | None:
    if key not in adata.layers:
        if required:
            raise bad(f"no layers[{key!r}] (the prediction its uns record names)")
        return None
    mat = adata.layers[key]
    mat = np.asarray(mat.toarray() if hasattr(mat, "toarray") else mat, np.float32)
    if not np.isfinite(mat).all():
        raise bad(f"layers[{key!r}] holds values that are not finite")
    return mat


def _frame(adata, key: str, bad) -> pd.DataFrame | None:
    if key not in adata.obsm:
        return None
    frame = adata.obsm[key]
    if not isinstance(frame, pd.DataFrame) or len(frame) != adata.n_obs:
        raise bad(f"obsm[{key!r}] is not a table of one row per observation")
    values = frame.to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise bad(f"obsm[{key!r}] holds values that are not finite")
    return frame
