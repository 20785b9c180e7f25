"""The page (``app/static``, no build step), the OpenAPI page (``/docs``) and, last of all routes, the JSON
404 of unknown API paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

STATIC = Path(__file__).resolve().parents[1] / "static"
#: the OpenAPI page (Swagger UI); app.security allows its CDN and its one inline script by hash
DOCS_HTML = get_swagger_ui_html(openapi_url="/openapi.json", title="histokg - API").body.decode()

router = APIRouter()
fallback = APIRouter()


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/docs", include_in_schema=False)
def docs() -> HTMLResponse:
    return HTMLResponse(DOCS_HTML)


@router.get("/static/{name}", include_in_schema=False)
def static(name: Annotated[str, PathParam(pattern=r"^(app\.js|style\.css)$")]) -> FileResponse:
    media = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(STATIC / name, media_type=media)


@fallback.get("/api/{rest:path}", include_in_schema=False)
def unknown(rest: str) -> None:
    raise HTTPException(404, "no such endpoint")
