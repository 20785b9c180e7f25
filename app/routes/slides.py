"""The index and its slides: ``/api/info``, ``/api/slides``, one slide, its thumbnail, overlay and
similar slides. Slides predicted from H&E (``histokg serve --predictions``) are listed, described,
drawn and coloured through the same routes (``origin: "predicted"``); they are not searched."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from app.deps import FEATURE_PATTERN, DescriptorName, K, SlideId, State, known_slide, predicted_slide
from app.errors import NotFound
from app.urls import slide_thumbnail_url, with_thumbs
from histokg.retrieval import query as q
from histokg.retrieval.descriptors import descriptor_names, get_descriptor
from histokg.retrieval.overlay import slide_overlay
from histokg.retrieval.values import region_labels

router = APIRouter()


@router.get("/api/info", summary="The index: slide count, regions, checkpoint, uploads")
def info(state: State) -> dict:
    index = state.index
    return {
        "n_slides": len(index.slide_ids),
        "n_predicted": len(state.predicted),
        "n_regions": index.n_regions,
        "kind": index.kind,
        "checkpoint_sha256": index.checkpoint_sha256,
        "model": index.manifest.get("model", {}),
        "uploads": not state.upload_reason,
        "uploads_reason": state.upload_reason,
        "max_upload_bytes": state.max_upload_bytes,
        "max_upload_tiles": state.limits.max_tiles,
        "max_job_seconds": state.limits.max_job_seconds,
        "max_pending_uploads": state.limits.max_pending,
        "region_labels": region_labels(index),
        "descriptors": {name: get_descriptor(name).summary for name in descriptor_names()},
    }


@router.get("/api/slides", summary="The indexed slides")
def slides(state: State) -> dict:
    rows = []
    for s in state.index.manifest["slides"]:
        rows.append(
            {
                "slide_id": s["slide_id"],
                "kind": s["kind"],
                "n_regions": s["n_regions"],
                "patient": s.get("patient"),
                "labels": s.get("labels", {}),
                "has_expr": s.get("has_expr", False),
                "has_kg": s.get("has_kg", False),
                "mpp": q.slide_mpp(s),
                "origin": "index",
                "thumbnail_url": slide_thumbnail_url(s["slide_id"]),
            }
        )
    for p in state.predicted.values():
        meta = p.meta()
        rows.append(
            {
                k: meta[k]
                for k in ("slide_id", "name", "kind", "n_regions", "patient", "labels", "mpp", "origin")
            }
            | {"has_expr": False, "has_kg": False, "thumbnail_url": slide_thumbnail_url(p.slide_id)}
        )
    return {"slides": rows}


@router.get("/api/slides/{slide_id}", summary="One slide: metadata and the features it can be coloured by")
def slide(slide_id: SlideId, state: State) -> dict:
    if (predicted := predicted_slide(state, slide_id)) is not None:
        return predicted.meta()
    meta = known_slide(state.index, slide_id)
    return {
        "slide_id": slide_id,
        "name": slide_id,
        "origin": "index",
        "kind": meta["kind"],
        "n_regions": meta["n_regions"],
        "patient": meta.get("patient"),
        "labels": meta.get("labels", {}),
        "mpp": q.slide_mpp(meta),
        "thumbnail_scale": meta.get("thumbnail_scale"),
        "thumbnail_size": meta.get("thumbnail_size"),
        "region_diameter_px": meta.get("region_diameter_px"),
        "spot_diameter_px": _finite(meta.get("spot_diameter_px")),
        "measured": {
            "genes": meta.get("has_expr", False),
            "kg": meta.get("has_kg", False),
            "labels": meta.get("has_labels", False),
        },
        "genes": state.index.manifest["genes"],
    }


@router.get("/api/slides/{slide_id}/thumbnail", summary="The slide's thumbnail (PNG)")
def thumbnail(slide_id: SlideId, state: State) -> Response:
    if (predicted := predicted_slide(state, slide_id)) is not None:
        return Response(predicted.thumbnail_png(), media_type="image/png")
    known_slide(state.index, slide_id)
    path = state.index.thumbnail_path(slide_id)
    if path is None:
        raise NotFound(f"slide {slide_id!r} has no thumbnail")
    return FileResponse(path, media_type="image/png")


@router.get(
    "/api/slides/{slide_id}/overlay", summary="Region positions and one feature's values, for drawing"
)
def overlay(
    slide_id: SlideId,
    state: State,
    feature: Annotated[
        str, Query(pattern=FEATURE_PATTERN, description="cluster, label, gene:<symbol> or kg:<entity id>")
    ] = "cluster",
    source: Annotated[
        Literal["measured", "predicted", "uncertainty", "auto"],
        Query(description="uncertainty: the interval half-width, on slides predicted from H&E"),
    ] = "auto",
) -> dict:
    if (predicted := predicted_slide(state, slide_id)) is not None:
        return predicted.overlay(feature, source)
    known_slide(state.index, slide_id)
    return slide_overlay(state.index, slide_id, feature, source) | {"origin": "index"}


@router.get("/api/slides/{slide_id}/similar", summary="Slides most similar to this one")
def similar(
    slide_id: SlideId,
    state: State,
    k: K = 5,
    descriptor: DescriptorName = "prototypes",
    exclude_patient: bool = False,
) -> dict:
    known_slide(state.index, slide_id, state)
    rows = q.similar_slides(
        state.index, slide_id, k=k, descriptor=descriptor, exclude_patient=exclude_patient
    )
    return {"slide_id": slide_id, "descriptor": descriptor, "results": with_thumbs(rows)}


def _finite(value) -> float | None:
    """A positive finite number, else None (JSON has no NaN; an index written before a field lacks it)."""
    return float(value) if isinstance(value, int | float) and 0 < value < float("inf") else None
