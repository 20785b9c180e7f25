"""What routes share: the app's state as a dependency, typed and bounded parameters, slide lookup.

Slides are addressed by their id in the index or among the predicted slides (:data:`SlideId`, checked against
:data:`histokg.retrieval.ids.SLIDE_ID_PATTERN`), never by a path; every parameter has a type, a range
or a pattern, so FastAPI refuses anything else with a 422 before a route runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam

from app.errors import NotFound
from app.state import AppState
from histokg.errors import InputError
from histokg.predict.view import PredictedSlide
from histokg.retrieval.descriptors import descriptor_names
from histokg.retrieval.ids import SLIDE_ID_PATTERN, check_slide_id
from histokg.retrieval.index import RetrievalIndex

FEATURE_PATTERN = r"^(cluster|label|gene:[A-Za-z0-9_.\-]{1,64}|kg:[^\x00-\x1f<>]{1,200})$"
TEXT_PATTERN = r"^[^\x00-\x1f<>]{0,200}$"

SlideId = Annotated[
    str, PathParam(pattern=SLIDE_ID_PATTERN, max_length=128, description="slide id in the index")
]
K = Annotated[int, Query(ge=1, le=100)]
Coord = Annotated[float, Query(ge=-1e7, le=1e7)]
DescriptorName = Literal[tuple(descriptor_names())]  # the registered slide descriptors


async def get_state(request: Request) -> AppState:
    return request.app.state.histokg


State = Annotated[AppState, Depends(get_state)]


def known_slide(index: RetrievalIndex, slide_id: str, state: AppState | None = None) -> dict:
    """The manifest entry of ``slide_id``; NotFound (404) when the index does not hold it (400, saying
    why, when it is a slide predicted from H&E: those are not in the index, so not searched)."""
    check_slide_id(slide_id)
    if slide_id not in index.slide_ids:
        if state is not None and slide_id in state.predicted:
            raise InputError(
                f"slide {slide_id!r} was predicted from H&E by histokg predict and is not in the index: "
                "similar slides and regions are searched among indexed slides (histokg index add)"
            )
        raise NotFound(f"slide {slide_id!r} is not in the index")
    return index.slide_meta(slide_id)


def predicted_slide(state: AppState, slide_id: str) -> PredictedSlide | None:
    """The predicted slide of that id, None for an indexed one; NotFound (404) for any other id."""
    check_slide_id(slide_id)
    if slide_id in state.predicted:
        return state.predicted[slide_id]
    if slide_id not in state.index.slide_ids:
        raise NotFound(f"slide {slide_id!r} is not in the index, nor among the predicted slides")
    return None
