"""Uploaded slides: checked before anything decodes them, then embedded in the background, bounded.

Checks, in order, each failing with a one-line reason: the size (streamed to disk, stopped at the
limit), the file name's suffix, the first bytes (JPEG, PNG or TIFF signature), the pixel count read
from the header only (a decompression bomb is refused before it is decoded), the work the upload
would cost (:func:`upload_work`: its grid tiles at the model's patch geometry, from the header's
size and the MPP, before any decoding or tiling), then opening it as a slide and reading its
thumbnail (a truncated TIFF fails here). The file is stored under a random name; the client's file
name is never used as a path.

Every bound an upload has is one field of :class:`UploadLimits` (``create_app(max_upload_bytes=,
max_upload_pixels=, max_upload_tiles=, max_job_seconds=, max_pending_uploads=)``, ``histokg serve
--max-upload-mb, --max-upload-tiles, --max-job-seconds, --max-pending-uploads``): bytes, decoded
pixels (memory: 3 bytes a pixel), grid tiles (the tiling's own arrays, about 100 bytes a grid tile,
and the embedding's time), the seconds a job may run (:class:`JobClock`, checked before tiling and
after every embedded chunk) and the uploads being checked, waiting or embedding at once
(:meth:`UploadJobs.slot`: one more is refused with 429 before it is stored). One upload is decoded
for its checks at a time (:meth:`app.state.AppState.check_upload`) and one job embeds at a time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokg import budget
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


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may cost; beyond it the upload is refused before anything is decoded."""

    max_bytes: int = 200 * 2**20  # the file
    max_pixels: int = 200_000_000  # decoded level-0 pixels (memory: 3 bytes each)
    max_tiles: int = 5_000  # grid tiles at the model's patch geometry (tiling memory, embedding time)
    max_job_seconds: float = 300.0  # a job's running time, checked before tiling and after every chunk
    max_pending: int = 4  # uploads being checked, waiting or embedding at once

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_tiles", "max_job_seconds", "max_pending"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"upload limit {name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class UploadWork:
    """What tiling and embedding an upload costs, known from its header and MPP alone."""

    width: int
    height: int
    mpp: float
    patch_px: int
    target_mpp: float
    tiles: int  # grid tiles, the upper bound of the tissue tiles embedded

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def tile_px(self) -> float:
        """A tile's side in the upload's own pixels."""
        return self.patch_px * self.target_mpp / self.mpp

    def describe(self) -> str:
        return (
            f"{self.width} x {self.height} px at {self.mpp:g} um/px, cut into the model's "
            f"{self.patch_px}-px tiles at {self.target_mpp:g} um/px ({self.patch_px * self.target_mpp:g} um)"
        )


def upload_work(width: int, height: int, mpp: float, target_mpp: float, patch_px: int) -> UploadWork:
    """The grid :func:`histokg.wsi.tiling.tile_slide` would lay on a ``width`` x ``height`` image at
    ``mpp``, counted without building it (:func:`histokg.budget.tile_count`, as tile_slide counts it)."""
    tiles = budget.tile_count(width, height, mpp, target_mpp, patch_px)
    return UploadWork(int(width), int(height), float(mpp), int(patch_px), float(target_mpp), tiles)


def check_work(work: UploadWork, limits: UploadLimits) -> None:
    """Refuse an upload whose tiling would cost more than the server allows (413), or yield no tile (422)."""
    if work.tiles == 0:
        raise UploadError(f"the image is smaller than one tile: {work.describe()}", 422)
    if work.tiles > limits.max_tiles:
        raise UploadError(
            f"the upload would be cut into {work.tiles:,} tiles ({work.describe()}), more than the "
            f"{limits.max_tiles:,} tiles this server embeds per upload (max_upload_tiles); "
            "check its microns per pixel, or upload a smaller region",
            413,
        )


class JobClock:
    """The running time of one upload job against ``max_seconds``, from when the job starts running (its
    wait in the queue does not count): :meth:`check` is called from the embedding's progress callback
    (before tiling, then after every embedded chunk) and stops the job (an :class:`UploadError`) once it
    is over. ``now`` is the clock (a test passes its own)."""

    def __init__(self, max_seconds: float, now=time.monotonic) -> None:
        self.max_seconds = max_seconds
        self.now = now
        self.start = now()

    def check(self, stage: str, done: int, total: int) -> None:
        elapsed = self.now() - self.start
        if elapsed > self.max_seconds:
            where = f"with {done:,} of {total:,} tiles embedded" if total else f"while {stage}"
            raise UploadError(
                f"stopped after {elapsed:.1f} s, over the limit of {self.max_seconds:g} s per upload "
                f"(max_job_seconds), {where}; upload a smaller region",
                413,
            )


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


def validate_upload(path: Path, suffix: str, *, limits: UploadLimits, mpp: float | None, pairing) -> dict:
    """Run every check on a stored upload; returns its width, height, MPP and grid tiles.

    ``pairing`` is the model's patch geometry (``target_mpp``, ``patch_px``): the work is counted at it
    before the image is decoded (plain images: from the header and ``mpp``; TIFFs: from the header
    and the MPP in its tags, read by OpenSlide without decoding).
    """
    check_signature(path, suffix)
    width, height = header_pixels(path, suffix)
    if width <= 0 or height <= 0:
        raise UploadError(f"the image reports an empty size {width} x {height}")
    if width * height > limits.max_pixels:
        raise UploadError(
            f"the image claims {width} x {height} = {width * height:,} pixels, more than the "
            f"{limits.max_pixels:,} this server decodes (a decompression bomb or a too-large slide)",
            413,
        )
    from histokg.wsi import open_slide

    plain = SUFFIXES[suffix] != "tiff"
    if plain and mpp is None:
        raise UploadError("a plain JPEG/PNG carries no microns per pixel: give the 'mpp' field")
    if plain:  # opening a plain image decodes it: count its work first
        check_work(upload_work(width, height, mpp, pairing.target_mpp, pairing.patch_px), limits)
    try:
        with open_slide(path, mpp=mpp) as slide:
            slide_mpp = float(slide.mpp)
            work = upload_work(*slide.dimensions, slide_mpp, pairing.target_mpp, pairing.patch_px)
            check_work(work, limits)
            thumb, _ = slide.thumbnail(256)
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
    return {"width": width, "height": height, "mpp": slide_mpp, "grid_tiles": work.tiles}


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


ACTIVE = ("queued", "tiling", "embedding")


class UploadJobs:
    """Embeds uploads one at a time in a background thread; at most ``max_pending`` uploads are being
    checked, wait or run at once (:meth:`slot`)."""

    def __init__(self, work_dir: Path, embed_fn, *, max_pending: int = UploadLimits.max_pending) -> None:
        self.work_dir = work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._embed_fn = embed_fn
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="histokg-upload")
        self.max_pending = max_pending
        self.max_kept = 100
        self._reserved = 0  # uploads being stored and checked, not yet queued

    def new_path(self, suffix: str) -> Path:
        return self.work_dir / f"{uuid.uuid4().hex}{suffix}"

    def _pending(self) -> int:
        return self._reserved + sum(j.status in ACTIVE for j in self._jobs.values())

    @contextlib.contextmanager
    def slot(self):
        """Hold one of the ``max_pending`` places while an upload is stored and checked; yields
        ``submit(path, mpp) -> Job``, which turns the place into a queued job. Refused (429) at once
        when every place is taken, before the upload is stored or decoded."""
        with self._lock:
            pending = self._pending()
            if pending >= self.max_pending:
                raise UploadError(
                    f"{pending} upload{' is' if pending == 1 else 's are'} already being checked or "
                    f"embedded (at most {self.max_pending} at once); try again later",
                    429,
                )
            self._reserved += 1
        held = True

        def submit(path: Path, mpp: float | None) -> Job:
            nonlocal held
            with self._lock:
                self._reserved -= 1
                held = False
                job = self._add()
            self._pool.submit(self._run, job, path, mpp)
            return job

        try:
            yield submit
        finally:
            if held:
                with self._lock:
                    self._reserved -= 1

    def submit(self, path: Path, mpp: float | None) -> Job:
        """Queue a stored, checked upload (429 when ``max_pending`` jobs are pending)."""
        with self.slot() as submit:
            return submit(path, mpp)

    def _add(self) -> Job:
        finished = [j for j in self._jobs.values() if j.status in ("done", "error")]
        for old in sorted(finished, key=lambda j: j.created)[: max(0, len(self._jobs) - self.max_kept)]:
            del self._jobs[old.id]  # keep the memory of past jobs bounded
        job = Job(uuid.uuid4().hex)
        self._jobs[job.id] = job
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
