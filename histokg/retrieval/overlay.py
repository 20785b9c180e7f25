"""What the web page draws over a slide: its regions and one feature's values, with a legend that says
what they are.

:func:`slide_overlay` returns the region centres (level-0 pixels), their region ids and the values of a
feature (``cluster``, ``label``, ``gene:<symbol>``, ``kg:<entity id>``; see
:func:`histokg.retrieval.values.region_values`), measured or predicted, on an indexed slide. The
answer's shape is shared with the slides that ``histokg predict`` wrote (:mod:`histokg.predict.view`),
through :func:`categorical` and :func:`continuous`:

- categorical features: ``categories``, ``values`` (indices into them), ``colours`` (one per category,
  :data:`histokg.colours.CATEGORICAL`, distinct for up to 24 classes) and ``legend`` (a title and a
  sentence on what a class is);
- continuous features: ``values`` (``None`` where unknown), ``vmin``/``vmax``, ``label``, ``value``
  (``what``: measured expression, predicted expression, pathway score...; ``unit``; ``definition``)
  and ``scale``: the colour scale's range, the percentiles it is clipped at (:data:`CLIP_PERCENTILES`),
  which values it was computed over, and how many regions lie below or above it (drawn in the end
  colours). Measured and predicted values of one slide share one scale, so they compare by eye.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from histokg.colours import categorical_colours
from histokg.errors import InputError
from histokg.retrieval.entities import resolve_entity
from histokg.retrieval.index import region_id
from histokg.retrieval.values import TRANSFER_K, region_values

if TYPE_CHECKING:
    from histokg.retrieval.index import RetrievalIndex

SOURCES = ("measured", "predicted", "auto")
CATEGORICAL = ("cluster", "label")
CLIP_PERCENTILES = (2.0, 98.0)  # the colour scale's ends: values beyond take the end colours
EXPRESSION_UNIT = "log1p CP10k"
EXPRESSION_DEFINITION = (
    "counts of the gene per 10,000 counts of the region, as log(1 + x): 0 is none, about 2.4 is 1 in 1,000"
)
KG_UNIT = "rank score, 0-1"
KG_DEFINITION = (
    "mean rank of the set's genes among the region's genes, divided by the number of genes "
    "(near 1: its genes are among the region's most expressed; about 0.5: no enrichment)"
)


def slide_overlay(
    index: RetrievalIndex, slide_id: str, feature: str = "cluster", source: str = "auto"
) -> dict:
    """Region positions (level-0 pixels), region ids and ``feature``'s values on ``slide_id``.

    ``source``: ``"measured"``, ``"predicted"`` or ``"auto"`` (measured where the slide has it).
    See the module docstring for the answer's fields.
    """
    if source not in SOURCES:
        why = " (intervals are given for slides predicted from H&E by histokg predict)"
        raise InputError(
            f"source {source!r} is not one of {list(SOURCES)}{why if source == 'uncertainty' else ''}"
        )
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
        n = int(index.manifest.get("n_prototypes") or 0)
        return out | categorical(
            [f"prototype {int(v)}" for v in values],
            "Region prototype",
            f"Each region takes the nearest of the index's {n or 'k'} prototypes (k-means centres of all "
            "regions' image embeddings): one colour, regions that look alike to the model. "
            "A grouping by appearance, not a diagnosis.",
        )
    if feature == "label":
        note = (
            "The label annotated on the region."
            if source == "measured"
            else f"Predicted: the most common label of the {TRANSFER_K} most similar regions (image "
            "embedding) on other slides that have labels."
        )
        return out | categorical(values, "Region label", note)
    vals = np.asarray(values, np.float64)
    scale = [vals]
    other = "predicted" if source == "measured" else "measured"
    if other in out["sources"]:  # one colour scale for measured and predicted
        scale.append(np.asarray(region_values(index, slide_id, feature, source=other), np.float64))
    over = "this slide's measured and predicted values" if len(scale) > 1 else "this slide's values"
    return out | continuous(vals, scale, over, feature_label(index, feature), value_info(feature, source))


def categorical(values, title: str, note: str) -> dict:
    """The categorical part of an overlay: categories in a stable order (shorter names first, so that
    ``2`` comes before ``10``), each value's index into them, their colours and the legend's text."""
    cats = sorted({str(v) for v in values}, key=lambda c: (len(c), c))
    position = {c: i for i, c in enumerate(cats)}
    colours = categorical_colours(len(cats))
    if len(set(colours)) < len(cats):
        note += f" ({len(cats)} classes: colours repeat after the first {len(set(colours))})"
    return {
        "kind": "categorical",
        "categories": cats,
        "values": [position[str(v)] for v in values],
        "colours": colours,
        "legend": {"title": title, "note": note},
    }


def continuous(values: np.ndarray, scale_over: list[np.ndarray], over: str, label: str, value: dict) -> dict:
    """The continuous part of an overlay: ``values`` rounded (``None`` where not finite), the colour scale
    computed over ``scale_over`` (described as ``over``) and what the value is (``value``)."""
    vmin, vmax = colour_scale(*scale_over)
    finite = values[np.isfinite(values)]
    return {
        "kind": "continuous",
        "vmin": vmin,
        "vmax": vmax,
        "values": [None if not np.isfinite(v) else round(float(v), 5) for v in values],
        "label": label,
        "value": value,
        "scale": {
            "vmin": vmin,
            "vmax": vmax,
            "clip_percentiles": list(CLIP_PERCENTILES),
            "over": over,
            "n_below": int((finite < vmin).sum()),
            "n_above": int((finite > vmax).sum()),
            "n": int(finite.size),
        },
    }


def colour_scale(*values: np.ndarray) -> tuple[float, float]:
    """(vmin, vmax): the :data:`CLIP_PERCENTILES` (2nd and 98th percentiles) of the finite values of all
    arrays together ((0, 1) when there are none; vmax > vmin always)."""
    both = np.concatenate([np.asarray(v, np.float64).ravel() for v in values])
    both = both[np.isfinite(both)]
    low, high = CLIP_PERCENTILES
    vmin, vmax = (
        (float(np.percentile(both, low)), float(np.percentile(both, high))) if both.size else (0.0, 1.0)
    )
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
    return f"{name} ({EXPRESSION_UNIT})"


def entity_kind(entity: str) -> str:
    """``pathway score``, ``cell-type score`` or ``phenotype score``: what a KG entity's value is called."""
    kind = entity.split(":", 1)[0].replace("celltype", "cell-type").replace("_", " ")
    return f"{kind} score" if kind else "KG score"


def value_info(feature: str, source: str) -> dict:
    """What a continuous value of an indexed slide is: ``what``, ``unit`` and ``definition``."""
    kind, _, name = feature.partition(":")
    if kind == "gene":
        what, unit, definition = "expression", EXPRESSION_UNIT, EXPRESSION_DEFINITION
    else:
        what, unit, definition = entity_kind(name), KG_UNIT, KG_DEFINITION
    if source == "measured":
        how = "measured on this slide (spatial transcriptomics)"
    else:
        how = (
            f"predicted: the mean of the measured values of the {TRANSFER_K} most similar regions "
            "(image embedding) on the index's other slides with transcriptomics"
        )
    return {
        "what": f"{source} {what}",
        "source": source,
        "unit": unit,
        "definition": f"{definition}; {how}",
    }
