"""Spots or tiles as a GeoJSON FeatureCollection that QuPath's "Import objects" reads onto the slide.

Each observation is one Feature: a Polygon in level-0 pixels (a circle as a ``CIRCLE_VERTICES``-gon for
round spots, a square for tiles and bins), with QuPath's properties: ``objectType`` ("detection", light
and many, or "annotation"), ``name`` (the observation id), ``classification`` ``{"name", "color"}`` (the
cluster, with a distinct colour per cluster) and ``measurements`` (name -> number: predicted genes, their
interval half-widths, pathway scores, cluster; :func:`histokg.export.shapes.measurements`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import anndata as ad
import numpy as np

from histokg.errors import InputError
from histokg.export.shapes import (
    CIRCLE,
    class_colours,
    cluster_labels,
    measurements,
    one_library,
    slide_shapes,
)
from histokg.io import atomic_open

log = logging.getLogger(__name__)

CIRCLE_VERTICES = 32
OBJECT_TYPES = ("detection", "annotation")


def outline(centre: np.ndarray, size: float, kind: str) -> list[list[float]]:
    """The closed ring of one shape (level-0 pixels): a circle of diameter ``size`` or a square of side ``size``."""
    x, y = float(centre[0]), float(centre[1])
    r = size / 2
    if kind == CIRCLE:
        angles = np.linspace(0, 2 * math.pi, CIRCLE_VERTICES, endpoint=False)
        ring = [[round(x + r * math.cos(a), 2), round(y + r * math.sin(a), 2)] for a in angles]
    else:
        ring = [[x - r, y - r], [x + r, y - r], [x + r, y + r], [x - r, y + r]]
        ring = [[round(a, 2), round(b, 2)] for a, b in ring]
    return [*ring, ring[0]]


def to_geojson(
    adata: ad.AnnData,
    *,
    library_id: str | None = None,
    object_type: str = "detection",
    genes: list[str] | None = None,
) -> dict:
    """The FeatureCollection of one slide's observations (see the module docstring)."""
    if object_type not in OBJECT_TYPES:
        raise InputError(f"object type {object_type!r} is not one of {', '.join(OBJECT_TYPES)}")
    adata = one_library(adata, library_id)
    shapes = slide_shapes(adata)
    values = measurements(adata, genes)
    labels = cluster_labels(adata)
    colours = class_colours(labels) if labels is not None else {}
    features = []
    for i, name in enumerate(shapes.names):
        row = values.iloc[i]
        props: dict = {
            "objectType": object_type,
            "name": name,
            "measurements": {k: float(v) for k, v in row.items() if np.isfinite(v)},
        }
        if labels is not None:
            label = labels.iloc[i]
            props["classification"] = {"name": f"cluster {label}", "color": list(colours[label])}
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [outline(shapes.centres[i], shapes.size, shapes.kind)],
                },
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    adata: ad.AnnData,
    path: str | Path,
    *,
    library_id: str | None = None,
    object_type: str = "detection",
    genes: list[str] | None = None,
) -> Path:
    """Write :func:`to_geojson` to ``path`` atomically; returns ``path``."""
    collection = to_geojson(adata, library_id=library_id, object_type=object_type, genes=genes)
    path = Path(path)
    with atomic_open(path, "w") as fh:
        json.dump(collection, fh, separators=(",", ":"), allow_nan=False)
    log.info("%d %ss -> %s", len(collection["features"]), object_type, path)
    return path
