"""Pathways and cell types: name completion, and slides ranked by an entity's activation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import TEXT_PATTERN, K, State
from app.errors import NotFound
from app.urls import with_thumbs
from histokg.retrieval import query as q

router = APIRouter()


@router.get("/api/pathways", summary="Pathway and cell-type names for completion")
def pathways(
    state: State,
    q_: Annotated[str, Query(alias="q", pattern=TEXT_PATTERN, max_length=200)] = "",
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> dict:
    return {"query": q_, "results": q.find_entities(state.index, q_, limit=limit)}


@router.get("/api/pathways/slides", summary="Slides ranked by a pathway's or cell type's activation")
def pathway_slides(
    state: State,
    name: Annotated[str, Query(pattern=TEXT_PATTERN, min_length=1, max_length=200)],
    within: Annotated[str | None, Query(pattern=TEXT_PATTERN, max_length=200)] = None,
    k: K = 10,
) -> dict:
    if not state.index.manifest["entities"]:
        raise NotFound("the index has no KG activations")
    res = q.slides_by_entity(state.index, name, k=k, within=within or None)
    with_thumbs(res["results"])
    return res
