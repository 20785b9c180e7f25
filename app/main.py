"""The histokg web app: a FastAPI service over a retrieval index (and, when given, slides predicted
from H&E by ``histokg predict``) and the page it serves itself.

``create_app(index_dir)`` builds the application; ``histokg serve INDEX_DIR [--predictions OUT]`` runs it
with uvicorn on 127.0.0.1. Slides are addressed by their id in the index, never by a path; every parameter is
validated; request bodies are bounded; every error is JSON ``{"error": message}`` without a trace;
requests must name a host the server serves, state-changing ones must come from its own origin, and
every answer carries a Content-Security-Policy. The OpenAPI schema is at ``/openapi.json``
(interactive at ``/docs``).

The app is HTTP only and calls the library for the work: routes per resource in :mod:`app.routes`,
shared parameters in :mod:`app.deps`, body limits in :mod:`app.limits`, Host/Origin checks and
security headers in :mod:`app.security`, error answers in :mod:`app.errors`, upload checks, bounds and
jobs in :mod:`app.uploads`, the running state in :mod:`app.state`; overlays, region images and upload
embedding are in :mod:`histokg.retrieval`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from fastapi import FastAPI

from app.errors import install_error_handlers
from app.limits import install_body_limit
from app.routes import ROUTERS
from app.routes.pages import DOCS_HTML
from app.security import LOOPBACK, install_guard
from app.state import AppState
from app.uploads import UploadLimits
from histokg.retrieval.index import RetrievalIndex


def create_app(
    index_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    max_upload_bytes: int = UploadLimits.max_bytes,
    max_upload_pixels: int = UploadLimits.max_pixels,
    max_upload_tiles: int = UploadLimits.max_tiles,
    max_job_seconds: float = UploadLimits.max_job_seconds,
    max_pending_uploads: int = UploadLimits.max_pending,
    allowed_hosts: Iterable[str] = LOOPBACK,
    work_dir: str | Path | None = None,
    predictions: Iterable[str | Path] = (),
) -> FastAPI:
    """The application over the index in ``index_dir`` (uploads embed with ``checkpoint``, whose hash
    must be the index's; default: the checkpoint path the index recorded).

    Uploads are bounded by size, decoded pixels, grid tiles at the model's patch geometry, a job's
    running time and how many are checked or queued at once (:class:`app.uploads.UploadLimits`). ``allowed_hosts``: the names (any port) or
    ``name:port`` pairs requests may carry in their Host header (:mod:`app.security`). ``predictions``:
    outputs of ``histokg predict`` (files or folders, :func:`histokg.predict.view.load_predictions`) shown
    beside the index's slides as slides predicted from H&E; only the operator names them.
    """
    limits = UploadLimits(
        max_bytes=max_upload_bytes,
        max_pixels=max_upload_pixels,
        max_tiles=max_upload_tiles,
        max_job_seconds=max_job_seconds,
        max_pending=max_pending_uploads,
    )
    index = RetrievalIndex.load(index_dir)
    state = AppState(index, checkpoint, limits, work_dir, predictions)

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
        docs_url=None,  # app.routes.pages serves /docs, under its own Content-Security-Policy
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.state.histokg = state
    app.state.index = index
    app.state.jobs = state.jobs
    install_error_handlers(app)
    install_body_limit(app, max_upload_bytes)
    install_guard(app, allowed_hosts, docs_html=DOCS_HTML)  # last: the outermost, before bodies are read
    for router in ROUTERS:
        app.include_router(router)
    return app
