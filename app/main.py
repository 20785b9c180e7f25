"""The histokg web app: a FastAPI service over a retrieval index and the page it serves itself.

``create_app(index_dir)`` builds the application; ``histokg serve INDEX_DIR`` runs it with uvicorn on
127.0.0.1. Slides are addressed by their id in the index, never by a path; every parameter is
validated; request bodies are bounded; every error is JSON ``{"error": message}`` without a trace.
The OpenAPI schema is at ``/openapi.json`` (interactive at ``/docs``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.uploads import UploadError, UploadJobs, check_suffix, validate_upload
from histokg.errors import HistokgError, InputError
from histokg.keys import Key
from histokg.retrieval import query as q
from histokg.retrieval.descriptors import descriptor_names, region_descriptor_names
from histokg.retrieval.ids import SLIDE_ID_PATTERN, check_slide_id
from histokg.retrieval.index import RetrievalIndex

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024  # every request but an upload
FEATURE_PATTERN = r"^(cluster|label|gene:[A-Za-z0-9_.\-]{1,64}|kg:[A-Za-z0-9_.:\-]{1,200})$"
TEXT_PATTERN = r"^[^\x00-\x1f<>]{0,200}$"

SlideId = Annotated[
    str, PathParam(pattern=SLIDE_ID_PATTERN, max_length=128, description="slide id in the index")
]
K = Annotated[int, Query(ge=1, le=100)]
Coord = Annotated[float, Query(ge=-1e7, le=1e7)]
DescriptorName = Literal[tuple(descriptor_names())]  # the registered slide descriptors


class NotFound(HistokgError):
    pass


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
    state = _State(index, checkpoint, max_upload_bytes, max_upload_pixels, work_dir)

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
    app.state.index = index
    app.state.jobs = state.jobs
    _install_errors(app)
    _install_body_limit(app, max_upload_bytes)
    _routes(app, index, state)
    return app


# --------------------------------------------------------------------------- plumbing


class _State:
    def __init__(self, index, checkpoint, max_upload_bytes, max_upload_pixels, work_dir) -> None:
        self.index = index
        self.max_upload_bytes = max_upload_bytes
        self.max_upload_pixels = max_upload_pixels
        self.checkpoint = Path(checkpoint) if checkpoint else Path(index.manifest.get("checkpoint") or "")
        self.upload_reason = ""
        from histokg.io import file_sha256

        if not self.checkpoint.is_file():
            self.upload_reason = "uploads are off: the index's checkpoint is not available to the server"
        elif file_sha256(self.checkpoint) != index.checkpoint_sha256:
            self.upload_reason = (
                "uploads are off: the given checkpoint is not the one the index was built with"
            )
        self._tmp = None
        if work_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="histokg-uploads-")
            work_dir = self._tmp
        self.jobs = UploadJobs(Path(work_dir), self._embed_upload)
        self._model = None

    def model(self):
        if self._model is None:
            from histokg.checkpoint import load_model

            self._model = load_model(self.checkpoint)
        return self._model

    def _embed_upload(self, job, path: Path, mpp: float | None) -> dict:
        from histokg.tl.embed import embed, tile_adata

        model = self.model()
        job.status = "tiling"
        tiles = tile_adata(path, model.pairing, library_id="upload", mpp=mpp)
        if tiles.n_obs == 0:
            raise InputError("no tissue tiles found on the upload")
        job.n_tiles = int(tiles.n_obs)
        job.status = "embedding"
        chunk = max(32, int(np.ceil(tiles.n_obs / 20)))
        parts = []
        for start in range(0, tiles.n_obs, chunk):
            part = tiles[start : start + chunk].copy()
            embed(part, model, batch_size=32)
            parts.append(part.obsm[Key.obsm.image])
            job.progress = min(0.99, (start + len(part)) / tiles.n_obs)
        vectors = np.concatenate(parts)
        return {
            descriptor: _with_thumbs(q.similar_to_vectors(self.index, vectors, k=5, descriptor=descriptor))
            for descriptor in region_descriptor_names()
        }

    def close(self) -> None:
        self.jobs.shutdown()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:5]:
            where = " ".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint"
        return _error(exc.status_code, detail)

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(HistokgError)
    async def user_error(_: Request, exc: HistokgError) -> JSONResponse:
        return _error(400, str(exc).splitlines()[0][:500])

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(500, "internal server error")


def _install_body_limit(app: FastAPI, max_upload_bytes: int) -> None:
    """Refuse bodies over the limit from Content-Length, and stop streamed ones at the limit."""

    class BodyLimit:
        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            limit = max_upload_bytes + 64 * 1024 if scope["path"] == "/api/uploads" else MAX_BODY
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length")
            if declared is not None:
                try:
                    too_big = int(declared) > limit
                except ValueError:
                    return await _send_json(send, 400, "malformed Content-Length header")
                if too_big:
                    return await _send_json(send, 413, f"request body over the limit of {limit:,} bytes")
            seen = 0

            async def limited():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise _BodyTooLarge(limit)
                return message

            try:
                await self.inner(scope, limited, send)
            except _BodyTooLarge as exc:
                await _send_json(send, 413, f"request body over the limit of {exc.limit:,} bytes")

    app.add_middleware(BodyLimit)


class _BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


async def _send_json(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _slide(index: RetrievalIndex, slide_id: str) -> dict:
    check_slide_id(slide_id)
    if slide_id not in index.slide_ids:
        raise NotFound(f"slide {slide_id!r} is not in the index")
    return index.slide_meta(slide_id)


def _with_thumbs(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["thumbnail_url"] = f"/api/slides/{r['slide_id']}/thumbnail"
    return rows


def _png(array: np.ndarray) -> Response:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png")


# --------------------------------------------------------------------------- routes


def _routes(app: FastAPI, index: RetrievalIndex, state: _State) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: Annotated[str, PathParam(pattern=r"^(app\.js|style\.css)$")]) -> FileResponse:
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return FileResponse(STATIC / name, media_type=media)

    @app.get("/api/info", summary="The index: slide count, regions, checkpoint, uploads")
    def info() -> dict:
        m = index.manifest
        return {
            "n_slides": len(index.slide_ids),
            "n_regions": index.n_regions,
            "kind": index.kind,
            "checkpoint_sha256": index.checkpoint_sha256,
            "model": m.get("model", {}),
            "uploads": not state.upload_reason,
            "uploads_reason": state.upload_reason,
            "max_upload_bytes": state.max_upload_bytes,
            "region_labels": _region_labels(index),
        }

    @app.get("/api/slides", summary="The indexed slides")
    def slides() -> dict:
        rows = []
        for s in index.manifest["slides"]:
            rows.append(
                {
                    "slide_id": s["slide_id"],
                    "kind": s["kind"],
                    "n_regions": s["n_regions"],
                    "patient": s.get("patient"),
                    "labels": s.get("labels", {}),
                    "has_expr": s.get("has_expr", False),
                    "has_kg": s.get("has_kg", False),
                    "thumbnail_url": f"/api/slides/{s['slide_id']}/thumbnail",
                }
            )
        return {"slides": rows}

    @app.get("/api/slides/{slide_id}", summary="One slide: metadata and the features it can be coloured by")
    def slide(slide_id: SlideId) -> dict:
        meta = _slide(index, slide_id)
        return {
            "slide_id": slide_id,
            "kind": meta["kind"],
            "n_regions": meta["n_regions"],
            "patient": meta.get("patient"),
            "labels": meta.get("labels", {}),
            "mpp": meta.get("slide_mpp"),
            "thumbnail_scale": meta.get("thumbnail_scale"),
            "thumbnail_size": meta.get("thumbnail_size"),
            "region_diameter_px": meta.get("region_diameter_px"),
            "measured": {
                "genes": meta.get("has_expr", False),
                "kg": meta.get("has_kg", False),
                "labels": meta.get("has_labels", False),
            },
            "genes": index.manifest["genes"],
        }

    @app.get("/api/slides/{slide_id}/thumbnail", summary="The slide's thumbnail (PNG)")
    def thumbnail(slide_id: SlideId) -> FileResponse:
        _slide(index, slide_id)
        path = index.thumbnail_path(slide_id)
        if path is None:
            raise NotFound(f"slide {slide_id!r} has no thumbnail")
        return FileResponse(path, media_type="image/png")

    @app.get(
        "/api/slides/{slide_id}/overlay", summary="Region positions and one feature's values, for drawing"
    )
    def overlay(
        slide_id: SlideId,
        feature: Annotated[
            str, Query(pattern=FEATURE_PATTERN, description="cluster, label, gene:<symbol> or kg:<entity id>")
        ] = "cluster",
        source: Literal["measured", "predicted", "auto"] = "auto",
    ) -> dict:
        meta = _slide(index, slide_id)
        shard = index.shard(slide_id)
        measured_ok = _has_measured(meta, feature)
        if source == "auto":
            source = "measured" if measured_ok else "predicted"
        values = q.region_values(index, slide_id, feature, source=source)
        out = {
            "slide_id": slide_id,
            "feature": feature,
            "source": source,
            "sources": ["measured", "predicted"]
            if measured_ok and feature not in ("cluster",)
            else ([source]),
            "x": [round(float(v), 1) for v in shard.coords[:, 0]],
            "y": [round(float(v), 1) for v in shard.coords[:, 1]],
            "region_ids": [int(r) for r in (np.int64(meta["ordinal"]) << 32) + np.arange(len(shard))],
        }
        if feature == "cluster":
            values = [f"prototype {int(v)}" for v in values]
        if feature in ("cluster", "label"):
            cats = sorted({str(v) for v in values}, key=lambda c: (len(c), c))
            out.update(kind="categorical", categories=cats, values=[cats.index(str(v)) for v in values])
            return out
        vals = np.asarray(values, np.float64)
        pool = [vals]
        other = "predicted" if source == "measured" else "measured"
        if other in out["sources"]:  # one colour scale for measured and predicted
            pool.append(np.asarray(q.region_values(index, slide_id, feature, source=other), np.float64))
        both = np.concatenate(pool)
        both = both[np.isfinite(both)]
        vmin, vmax = (
            (float(np.percentile(both, 2)), float(np.percentile(both, 98))) if both.size else (0.0, 1.0)
        )
        if vmax <= vmin:
            vmax = vmin + 1e-6
        out.update(
            kind="continuous",
            vmin=vmin,
            vmax=vmax,
            values=[None if not np.isfinite(v) else round(float(v), 5) for v in vals],
            label=_feature_label(index, feature),
        )
        return out

    @app.get("/api/slides/{slide_id}/similar", summary="Slides most similar to this one")
    def similar(
        slide_id: SlideId,
        k: K = 5,
        descriptor: DescriptorName = "prototypes",
        exclude_patient: bool = False,
    ) -> dict:
        _slide(index, slide_id)
        rows = q.similar_slides(index, slide_id, k=k, descriptor=descriptor, exclude_patient=exclude_patient)
        return {"slide_id": slide_id, "descriptor": descriptor, "results": _with_thumbs(rows)}

    @app.get(
        "/api/slides/{slide_id}/regions/similar", summary="Regions most similar to a rectangle on this slide"
    )
    def similar_regions(
        slide_id: SlideId,
        x0: Coord,
        y0: Coord,
        x1: Coord,
        y1: Coord,
        units: Literal["px", "um"] = "px",
        k: K = 8,
        target: Annotated[str | None, Query(pattern=SLIDE_ID_PATTERN, max_length=128)] = None,
    ) -> dict:
        _slide(index, slide_id)
        if target is not None:
            _slide(index, target)
        res = q.similar_regions(index, slide_id, q.Box(x0, y0, x1, y1, units), k=k, target_slide=target)
        for r in res["results"]:
            r["thumbnail_url"] = f"/api/regions/{r['region_id']}/thumbnail"
        return res

    @app.get("/api/regions/{region_id}/thumbnail", summary="A region's image (PNG)")
    def region_thumbnail(
        region_id: Annotated[int, PathParam(ge=0, le=2**62)], size: Annotated[int, Query(ge=16, le=512)] = 128
    ) -> Response:
        try:
            slide_id, number = q.parse_region_id(index, region_id)
        except InputError as exc:
            raise NotFound(str(exc)) from None
        return _png(_region_image(index, slide_id, number, size))

    @app.get("/api/pathways", summary="Pathway and cell-type names for completion")
    def pathways(
        q_: Annotated[str, Query(alias="q", pattern=TEXT_PATTERN, max_length=200)] = "",
        limit: Annotated[int, Query(ge=1, le=50)] = 10,
    ) -> dict:
        return {"query": q_, "results": q.find_entities(index, q_, limit=limit)}

    @app.get("/api/pathways/slides", summary="Slides ranked by a pathway's or cell type's activation")
    def pathway_slides(
        name: Annotated[str, Query(pattern=TEXT_PATTERN, min_length=1, max_length=200)],
        within: Annotated[str | None, Query(pattern=TEXT_PATTERN, max_length=200)] = None,
        k: K = 10,
    ) -> dict:
        if not index.manifest["entities"]:
            raise NotFound("the index has no KG activations")
        res = q.slides_by_entity(index, name, k=k, within=within or None)
        _with_thumbs(res["results"])
        return res

    @app.post("/api/uploads", status_code=202, summary="Upload a slide to embed and query (size-limited)")
    async def upload(
        file: Annotated[UploadFile, File(description="a .svs/.tif/.tiff/.ndpi slide or a .jpg/.png image")],
        mpp: Annotated[float | None, Form(gt=0.05, le=50.0)] = None,
    ) -> dict:
        if state.upload_reason:
            raise UploadError(state.upload_reason, 503)
        suffix = check_suffix(file.filename)
        path = state.jobs.new_path(suffix)
        written = 0
        try:
            with open(path, "wb") as fh:
                while chunk := await file.read(1 << 20):
                    written += len(chunk)
                    if written > state.max_upload_bytes:
                        raise UploadError(
                            f"the upload is over the limit of {state.max_upload_bytes:,} bytes", 413
                        )
                    fh.write(chunk)
            if written == 0:
                raise UploadError("the upload is empty")
            import anyio

            info = await anyio.to_thread.run_sync(
                functools.partial(validate_upload, path, suffix, max_pixels=state.max_upload_pixels, mpp=mpp)
            )
            job = state.jobs.submit(path, mpp)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return {**job.public(), "image": info, "status_url": f"/api/uploads/{job.id}"}

    @app.get("/api/uploads/{job_id}", summary="Progress and results of an upload")
    def upload_status(job_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")]) -> dict:
        job = state.jobs.get(job_id)
        if job is None:
            raise NotFound(f"upload job {job_id!r} does not exist")
        return job.public()

    @app.get("/api/{rest:path}", include_in_schema=False)
    def unknown(rest: str) -> None:
        raise HTTPException(404, "no such endpoint")


def _has_measured(meta: dict, feature: str) -> bool:
    if feature == "cluster":
        return True
    if feature == "label":
        return bool(meta.get("has_labels"))
    return bool(meta.get("has_expr") if feature.startswith("gene:") else meta.get("has_kg"))


def _feature_label(index: RetrievalIndex, feature: str) -> str:
    kind, _, name = feature.partition(":")
    if kind == "kg":
        return index.manifest["entity_labels"].get(name, name)
    return f"{name} (log1p CP10k)"


def _region_labels(index: RetrievalIndex) -> list[str]:
    def build() -> list[str]:
        labels: set[str] = set()
        for sid in index.slide_ids:
            shard = index.shard(sid)
            if shard.labels is not None:
                labels.update(map(str, np.unique(shard.labels)))
        return sorted(labels)

    return index.cached(("region_labels",), build)


@functools.lru_cache(maxsize=4)
def _open(path: str, mpp: float):
    from histokg.wsi import open_slide

    return open_slide(path, mpp=mpp)


def _region_image(index: RetrievalIndex, slide_id: str, number: int, size: int) -> np.ndarray:
    """The region's square from the source image when it is readable, else from the thumbnail."""
    meta = index.slide_meta(slide_id)
    shard = index.shard(slide_id)
    x, y = (float(v) for v in shard.coords[number])
    side_px = float(meta.get("region_diameter_px") or 0) or 100.0
    mpp = float(meta.get("slide_mpp") or 0)
    source = meta.get("source_image") or ""
    if source and Path(source).is_file() and mpp > 0:
        try:
            img, _ = _open(source, mpp).read_physical((x, y), side_px * mpp, size)
            return img
        except HistokgError:
            pass
    thumb_path = index.thumbnail_path(slide_id)
    if thumb_path is None:
        return np.full((size, size, 3), 255, np.uint8)
    scale = float(meta.get("thumbnail_scale") or 1.0)
    with Image.open(thumb_path) as im:
        half = side_px * scale / 2
        box = (
            round(x * scale - half),
            round(y * scale - half),
            round(x * scale + half),
            round(y * scale + half),
        )
        return np.asarray(im.convert("RGB").crop(box).resize((size, size), Image.Resampling.BILINEAR))
