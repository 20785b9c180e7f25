"""What the web page draws over a slide: its regions and one feature's values, on one colour scale.

:func:`slide_overlay` returns the region centres, their region ids and the values of a feature
(``cluster``, ``label``, ``gene:<symbol>``, ``kg:<entity id>``; see
:func:`histokg.retrieval.values.region_values`), measured or predicted. Categories are numbered in
a stable order; continuous values come with a colour scale (:func:`colour_scale`) shared by the
measured and the predicted values of a slide, so that the two can be compared by eye.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from histokg.errors import InputError
from histokg.retrieval.entities import resolve_entity
from histokg.retrieval.index import region_id
from histokg.retrieval.values import region_values

if TYPE_CHECKING:
    from histokg.retrieval.index import RetrievalIndex

SOURCES = ("measured", "predicted", "auto")
CATEGORICAL = ("cluster", "label")


def slide_overlay(
    index: RetrievalIndex, slide_id: str, feature: str = "cluster", source: str = "auto"
) -> dict:
    """Region positions (level-0 pixels), region ids and ``feature``'s values on ``slide_id``.

    ``source``: ``"measured"``, ``"predicted"`` or ``"auto"`` (measured where the slide has it).
    Categorical features (``cluster``, ``label``) give ``categories`` and indices into them;
    continuous ones give values (``None`` where unknown), ``vmin``/``vmax`` and a ``label``.
    """
    if source not in SOURCES:
        raise InputError(f"source {source!r} is not one of {list(SOURCES)}")
    if feature.startswith("kg:"):  # as a person types it (``kg:hypoxia``): answered with the entity's id
        feature = "kg:" + resolve_entity(index, feature[3:])
    meta = index.slide_meta(slide_id)
    shard = index.shard(slide_id)
    measured_ok = has_measured(meta, feature)
    if source == "auto":
        source = "measured" if measured_ok else "predicted"
    values = region_values(index, slide_id, feature, source=source)
    out = {
        "slide_id": slide_id,
        "feature": feature,
        "source": source,
        "sources": ["measured", "predicted"] if measured_ok and feature != "cluster" else [source],
        "x": [round(float(v), 1) for v in shard.coords[:, 0]],
        "y": [round(float(v), 1) for v in shard.coords[:, 1]],
        "region_ids": [int(r) for r in region_id(meta["ordinal"], np.arange(len(shard)))],
    }
    if feature == "cluster":
        values = [f"prototype {int(v)}" for v in values]
    if feature in CATEGORICAL:
        cats = sorted({str(v) for v in values}, key=lambda c: (len(c), c))
        out.update(kind="categorical", categories=cats, values=[cats.index(str(v)) for v in values])
        return out
    vals = np.asarray(values, np.float64)
    scale = [vals]
    other = "predicted" if source == "measured" else "measured"
    if other in out["sources"]:  # one colour scale for measured and predicted
        scale.append(np.asarray(region_values(index, slide_id, feature, source=other), np.float64))
    vmin, vmax = colour_scale(*scale)
    out.update(
        kind="continuous",
        vmin=vmin,
        vmax=vmax,
        values=[None if not np.isfinite(v) else round(float(v), 5) for v in vals],
        label=feature_label(index, feature),
    )
    return out


def colour_scale(*values: np.ndarray) -> tuple[float, float]:
    """(vmin, vmax): the 2nd and 98th percentiles of the finite values of all arrays together
    ((0, 1) when there are none; vmax > vmin always)."""
    both = np.concatenate([np.asarray(v, np.float64).ravel() for v in values])
    both = both[np.isfinite(both)]
    vmin, vmax = (float(np.percentile(both, 2)), float(np.percentile(both, 98))) if both.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-6
    return vmin, vmax


def has_measured(meta: dict, feature: str) -> bool:
    """Whether a slide (its manifest entry) has measured values of ``feature``."""
    if feature == "cluster":
        return True
    if feature == "label":
        return bool(meta.get("has_labels"))
    return bool(meta.get("has_expr") if feature.startswith("gene:") else meta.get("has_kg"))


def feature_label(index: RetrievalIndex, feature: str) -> str:
    """The colour bar's label of a continuous feature: the KG entity's label, or the gene and its unit."""
    kind, _, name = feature.partition(":")
    if kind == "kg":
        return index.manifest["entity_labels"].get(name, name)
    return f"{name} (log1p CP10k)"
