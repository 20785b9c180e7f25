"""Uploaded slides: checked before anything decodes them, then embedded in the background.

Checks, in order, each failing with a one-line reason: the size (streamed to disk, stopped at the
limit), the file name's suffix, the first bytes (JPEG, PNG or TIFF signature), the pixel count read
from the header only (a decompression bomb is refused before it is decoded), then opening it as a
slide and reading its thumbnail (a truncated TIFF fails here). The file is stored under a random
name; the client's file name is never used as a path.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokg.errors import InputError

log = logging.getLogger(__name__)

SUFFIXES = {
    ".svs": "tiff",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".ndpi": "tiff",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".png": "png",
}
SIGNATURES = {
    "jpeg": (b"\xff\xd8\xff",),
    "png": (b"\x89PNG\r\n\x1a\n",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}


class UploadError(InputError):
    """An upload that is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_suffix(filename: str | None) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix not in SUFFIXES:
        raise UploadError(
            f"file type {suffix or '(none)'!r} is not accepted; upload one of {sorted(SUFFIXES)}", 415
        )
    return suffix


def check_signature(path: Path, suffix: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(16)
    kind = SUFFIXES[suffix]
    if not any(head.startswith(sig) for sig in SIGNATURES[kind]):
        raise UploadError(f"the upload is not a {kind.upper()} image (its first bytes do not match)", 415)


def header_pixels(path: Path, suffix: str) -> tuple[int, int]:
    """Width and height from the header only (nothing is decoded)."""
    from PIL import Image

    if SUFFIXES[suffix] == "tiff":
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        except Exception as exc:  # tifffile raises many types for broken headers
            raise UploadError(f"the TIFF header cannot be read (truncated or corrupt): {exc}") from None
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # size is checked below, before any decoding
    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except Exception as exc:
        raise UploadError(f"the image header cannot be read: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def validate_upload(path: Path, suffix: str, *, max_pixels: int, mpp: float | None) -> dict:
    """Run every check on a stored upload; returns its width, height and MPP."""
    check_signature(path, suffix)
    width, height = header_pixels(path, suffix)
    if width <= 0 or height <= 0:
        raise UploadError(f"the image reports an empty size {width} x {height}")
    if width * height > max_pixels:
        raise UploadError(
            f"the image claims {width} x {height} = {width * height:,} pixels, more than the "
            f"{max_pixels:,} this server decodes (a decompression bomb or a too-large slide)",
            413,
        )
    from histokg.wsi import open_slide

    if SUFFIXES[suffix] != "tiff" and mpp is None:
        raise UploadError("a plain JPEG/PNG carries no microns per pixel: give the 'mpp' field")
    try:
        with open_slide(path, mpp=mpp) as slide:
            thumb, _ = slide.thumbnail(256)
            slide_mpp = float(slide.mpp)
            if not np.asarray(thumb).size:
                raise UploadError("the slide has no pixels")
    except UploadError:
        raise
    except InputError as exc:
        raise UploadError(_strip_path(str(exc), path)) from None
    except Exception as exc:  # a decoder failing on a corrupt file is the upload's fault
        raise UploadError(
            f"the slide cannot be read (corrupt or truncated): {_strip_path(str(exc), path)}"
        ) from None
    return {"width": width, "height": height, "mpp": slide_mpp}


def _strip_path(message: str, path: Path) -> str:
    """Error messages name the server's temporary file; show the client 'the upload' instead."""
    return message.replace(str(path), "the upload")


@dataclass
class Job:
    id: str
    status: str = "queued"  # queued, tiling, embedding, done, error
    progress: float = 0.0
    message: str = ""
    n_tiles: int = 0
    results: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def public(self) -> dict:
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": round(self.progress, 3),
            "message": self.message,
            "n_tiles": self.n_tiles,
            "results": self.results,
        }


class UploadJobs:
    """Embeds uploads one at a time in a background thread; at most ``max_pending`` wait."""

    def __init__(self, work_dir: Path, embed_fn, *, max_pending: int = 4) -> None:
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._embed_fn = embed_fn
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histokg-upload")
        self.max_pending = max_pending
        self.max_kept = 100

    def new_path(self, suffix: str) -> Path:
        return self.work_dir / f"{uuid.uuid4().hex}{suffix}"

    def submit(self, path: Path, mpp: float | None) -> Job:
        with self._lock:
            pending = sum(j.status in ("queued", "tiling", "embedding") for j in self._jobs.values())
            if pending >= self.max_pending:
                raise UploadError(f"{pending} uploads are already being embedded; try again later", 429)
            finished = [j for j in self._jobs.values() if j.status in ("done", "error")]
            for old in sorted(finished, key=lambda j: j.created)[: max(0, len(self._jobs) - self.max_kept)]:
                del self._jobs[old.id]  # keep the memory of past jobs bounded
            job = Job(uuid.uuid4().hex)
            self._jobs[job.id] = job
        self._pool.submit(self._run, job, path, mpp)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def _run(self, job: Job, path: Path, mpp: float | None) -> None:
        try:
            job.results = self._embed_fn(job, path, mpp)
            job.status, job.progress, job.message = "done", 1.0, f"{job.n_tiles} tiles embedded"
        except InputError as exc:
            job.status, job.message = "error", _strip_path(str(exc), path)
        except Exception:
            log.exception("upload %s failed", job.id)
            job.status, job.message = "error", "embedding failed (internal error)"
        finally:
            path.unlink(missing_ok=True)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
