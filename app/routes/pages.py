"""The page (``app/static``, no build step) and, last of all routes, the JSON 404 of unknown API paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()
fallback = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/static/{name}", include_in_schema=False)
def static(name: Annotated[str, PathParam(pattern=r"^(app\.js|style\.css)$")]) -> FileResponse:
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(STATIC / name, media_type=media)


@fallback.get("/api/{rest:path}", include_in_schema=False)
def unknown(rest: str) -> None:
    raise HTTPException(404, "no such endpoint")
