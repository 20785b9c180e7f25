"""Uploads: a new slide, stored under a random name, checked, then embedded and queried in the background."""

from __future__ import annotations

import functools
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, UploadFile
from fastapi import Path as PathParam

from app.deps import State
from app.errors import NotFound
from app.uploads import UploadError, check_suffix

router = APIRouter()

READ_CHUNK = 1 << 20


@router.post("/api/uploads", status_code=202, summary="Upload a slide to embed and query (size-limited)")
async def upload(
    state: State,
    file: Annotated[UploadFile, File(description="a .svs/.tif/.tiff/.ndpi slide or a .jpg/.png image")],
    mpp: Annotated[float | None, Form(gt=0.05, le=50.0)] = None,
) -> dict:
    if state.upload_reason:
        raise UploadError(state.upload_reason, 503)
    suffix = check_suffix(file.filename)
    with state.jobs.slot() as submit:  # 429 at once when max_pending uploads are checked or embedded
        path = state.jobs.new_path(suffix)
        written = 0
        try:
            with open(path, "wb") as fh:
                while chunk := await file.read(READ_CHUNK):
                    written += len(chunk)
                    if written > state.max_upload_bytes:
                        raise UploadError(
                            f"the upload is over the limit of {state.max_upload_bytes:,} bytes", 413
                        )
                    fh.write(chunk)
            if written == 0:
                raise UploadError("the upload is empty")
            pairing = await anyio.to_thread.run_sync(state.pairing)
            check = functools.partial(
                state.check_upload, path, suffix, limits=state.limits, mpp=mpp, pairing=pairing
            )
            info = await anyio.to_thread.run_sync(check)
            job = submit(path, mpp)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return {**job.public(), "image": info, "status_url": f"/api/uploads/{job.id}"}


@router.get("/api/uploads/{job_id}", summary="Progress and results of an upload")
def upload_status(job_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")], state: State) -> dict:
    job = state.jobs.get(job_id)
    if job is None:
        raise NotFound(f"upload job {job_id!r} does not exist")
    return job.public()
