"""Regions: the regions most similar to a rectangle on a slide, and a region's image."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam

from app.deps import Coord, K, SlideId, State, known_slide
from app.errors import NotFound
from app.urls import region_thumbnail_url
from histokg.errors import InputError
from histokg.retrieval import query as q
from histokg.retrieval.ids import SLIDE_ID_PATTERN
from histokg.retrieval.images import png_bytes, region_image

router = APIRouter()


@router.get(
    "/api/slides/{slide_id}/regions/similar", summary="Regions most similar to a rectangle on this slide"
)
def similar_regions(
    slide_id: SlideId,
    state: State,
    x0: Coord,
    y0: Coord,
    x1: Coord,
    y1: Coord,
    units: Literal["px", "um"] = "px",
    k: K = 8,
    target: Annotated[str | None, Query(pattern=SLIDE_ID_PATTERN, max_length=128)] = None,
) -> dict:
    known_slide(state.index, slide_id, state)
    if target is not None:
        known_slide(state.index, target, state)
    res = q.similar_regions(state.index, slide_id, q.Box(x0, y0, x1, y1, units), k=k, target_slide=target)
    for r in res["results"]:
        r["thumbnail_url"] = region_thumbnail_url(r["region_id"])
    return res


@router.get("/api/regions/{region_id}/thumbnail", summary="A region's image (PNG)")
def region_thumbnail(
    region_id: Annotated[int, PathParam(ge=0, le=2**62)],
    state: State,
    size: Annotated[int, Query(ge=16, le=512)] = 128,
) -> Response:
    try:
        slide_id, number = q.parse_region_id(state.index, region_id)
    except InputError as exc:
        raise NotFound(str(exc)) from None
    return Response(png_bytes(region_image(state.index, slide_id, number, size)), media_type="image/png")
