"""Every error the app answers is JSON ``{"error": message}``: one line, never a stack trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.security import header_values
from app.uploads import UploadError
from histokg.errors import HistokgError

log = logging.getLogger(__name__)


class NotFound(HistokgError):
    """A slide, region or upload job that does not exist (404)."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Invalid parameters 422, unknown endpoints and ids 404, refused uploads their own status, user
    errors (:class:`HistokgError`) 400 with their first line, anything else 500 without details."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = " ".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint"
        return error_response(exc.status_code, detail)

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(404, str(exc))

    @app.exception_handler(HistokgError)
    async def user_error(_: Request, exc: HistokgError) -> JSONResponse:
        return error_response(400, str(exc).splitlines()[0][:500])

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        # answered by Starlette's outermost middleware, outside app.security.Guard: its headers here
        return error_response(500, "internal server error", header_values())
