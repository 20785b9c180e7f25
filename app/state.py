"""What the app holds while it runs: the index, the slides ``histokg predict`` wrote, the upload limits
and jobs, and the upload model.

:class:`AppState` lives on ``app.state.histokg``; routes reach it through :func:`app.deps.get_state`.
Uploads are embedded by the library (:func:`histokg.retrieval.regions.embed_regions`) with the
index's checkpoint, which the server checks by hash before it accepts any upload. Their bounds are
:class:`app.uploads.UploadLimits`; a job's time is checked in the embedding's progress callback.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from app.uploads import Job, JobClock, UploadJobs, UploadLimits, validate_upload
from app.urls import with_thumbs
from histokg.io import file_sha256
from histokg.predict.view import PredictedSlide, load_predictions
from histokg.retrieval import query as q
from histokg.retrieval.descriptors import region_descriptor_names
from histokg.retrieval.index import RetrievalIndex

UPLOAD_LIBRARY = "upload"  # the library id of an upload's tiles
UPLOAD_RESULTS_K = 5  # similar slides per descriptor in an upload's results


class AppState:
    def __init__(
        self,
        index: RetrievalIndex,
        checkpoint: str | Path | None,
        limits: UploadLimits,
        work_dir: str | Path | None,
        predictions: Iterable[str | Path] = (),
    ) -> None:
        self.index = index
        # slides predicted from H&E, named by the operator (never by a client), by slide id
        self.predicted: dict[str, PredictedSlide] = load_predictions(list(predictions), set(index.slide_ids))
        self.limits = limits
        self.max_upload_bytes = limits.max_bytes
        self.checkpoint = Path(checkpoint) if checkpoint else Path(index.manifest.get("checkpoint") or "")
        self.upload_reason = _upload_reason(self.checkpoint, index.checkpoint_sha256)
        self._tmp = None
        if work_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="histokg-uploads-")
            work_dir = self._tmp
        self.jobs = UploadJobs(Path(work_dir), self.embed_upload, max_pending=limits.max_pending)
        self._model = None
        self._model_lock = threading.Lock()
        self._check_lock = threading.Lock()

    def model(self):
        with self._model_lock:  # the first uploads may ask at once: one load
            if self._model is None:
                from histokg.checkpoint import load_model

                self._model = load_model(self.checkpoint)
        return self._model

    def pairing(self):
        """The upload model's patch geometry (``target_mpp``, ``patch_px``), which uploads are counted at."""
        return self.model().pairing

    def check_upload(self, *args, **kwargs) -> dict:
        """:func:`app.uploads.validate_upload`, one upload at a time: its checks open (and, for a plain
        image, decode) the upload, so at most one upload is decoded for its checks while one job embeds."""
        with self._check_lock:
            return validate_upload(*args, **kwargs)

    def embed_upload(self, job: Job, path: Path, mpp: float | None) -> dict:
        """Embed an upload (job progress follows it) and rank the index's slides by every descriptor
        that describes new regions."""
        from histokg.retrieval.regions import embed_regions

        clock = JobClock(self.limits.max_job_seconds)

        def progress(stage: str, done: int, total: int) -> None:
            job.status = stage
            if stage == "embedding":
                job.n_tiles = total
                job.progress = min(0.99, done / total)
            clock.check(stage, done, total)  # stops the job (between chunks) once it is over its time

        vectors = embed_regions(self.model(), path, mpp=mpp, progress=progress, library_id=UPLOAD_LIBRARY)
        return {
            name: with_thumbs(q.similar_to_vectors(self.index, vectors, k=UPLOAD_RESULTS_K, descriptor=name))
            for name in region_descriptor_names()
        }

    def close(self) -> None:
        self.jobs.shutdown()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _upload_reason(checkpoint: Path, index_sha256: str) -> str:
    """Why uploads are off ("" when they are on)."""
    if not checkpoint.is_file():
        return "uploads are off: the index's checkpoint is not available to the server"
    if file_sha256(checkpoint) != index_sha256:
        return "uploads are off: the given checkpoint is not the one the index was built with"
    return ""
