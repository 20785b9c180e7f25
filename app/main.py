"""The histokg web app: a FastAPI service over a retrieval index and the page it serves itself.

``create_app(index_dir)`` builds the application; ``histokg serve INDEX_DIR`` runs it with uvicorn on
127.0.0.1. Slides are addressed by their id in the index, never by a path; every parameter is
validated; request bodies are bounded; every error is JSON ``{"error": message}`` without a trace.
The OpenAPI schema is at ``/openapi.json`` (interactive at ``/docs``).

The app is HTTP only and calls the library for the work: routes per resource in :mod:`app.routes`,
shared parameters in :mod:`app.deps`, body limits in :mod:`app.limits`, error answers in
:mod:`app.errors`, upload checks and jobs in :mod:`app.uploads`, the running state in
:mod:`app.state`; overlays, region images and upload embedding are in :mod:`histokg.retrieval`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.limits import install_body_limit
from app.routes import ROUTERS
from app.state import AppState
from histokg.retrieval.index import RetrievalIndex


def create_app(
    index_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    max_upload_bytes: int = 200 * 2**20,
    max_upload_pixels: int = 200_000_000,
    work_dir: str | Path | None = None,
) -> FastAPI:
    """The application over the index in ``index_dir`` (uploads embed with ``checkpoint``, whose hash
    must be the index's; default: the checkpoint path the index recorded)."""
    index = RetrievalIndex.load(index_dir)
    state = AppState(index, checkpoint, max_upload_bytes, max_upload_pixels, work_dir)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        state.close()

    app = FastAPI(
        title="histokg",
        version="0.1.0",
        description="Slide-level retrieval over H&E slides and spatial transcriptomics (histokg).",
        debug=False,
        lifespan=lifespan,
    )
    app.state.histokg = state
    app.state.index = index
    app.state.jobs = state.jobs
    install_error_handlers(app)
    install_body_limit(app, max_upload_bytes)
    for router in ROUTERS:
        app.include_router(router)
    return app
