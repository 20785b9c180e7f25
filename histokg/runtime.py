"""CPU inference at the hardware's speed: thread counts, and frozen towers run by ONNX Runtime.

- :func:`usable_cpus`: the CPUs this process may run on (``os.sched_getaffinity``: taskset, cgroup cpusets,
  Slurm and container limits), not ``os.cpu_count()`` (the machine's).
- :func:`configure_threads`: torch's intra-op threads, by default :func:`usable_cpus` (the CLI calls it once,
  ``histokg bench`` with its ``threads``). :func:`session_options` gives ONNX Runtime the same count
  (torch's, capped by the usable CPUs), one inter-op thread and no busy-wait spinning, so a shared
  machine slows down gracefully instead of collapsing under threads that spin for work.
- :func:`onnx_session`: a module exported once per (weights identity, input size) with a dynamic batch
  dimension, checked against PyTorch on a probe batch, and cached content-addressed in a folder (one
  sub-folder per identity hash; files written atomically, so two processes exporting the same tower
  both leave a whole file). :class:`histokg.features.Extractor` is its one user.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from histokg.io import atomic_path, write_json

log = logging.getLogger(__name__)

__all__ = [
    "ORT_TOLERANCE",
    "configure_threads",
    "default_model_dir",
    "onnx_session",
    "ort_threads",
    "session_options",
    "usable_cpus",
]

OPSET = 17
#: Largest |ORT - PyTorch| accepted on the probe batch, absolute plus relative to the features' scale.
ORT_TOLERANCE = 1e-3
INPUT, OUTPUT = "patches", "features"


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (None or 0: :func:`usable_cpus`); returns the count."""
    n = int(threads) if threads else usable_cpus()
    torch.set_num_threads(n)
    return n


def ort_threads() -> int:
    """ONNX Runtime's intra-op threads: torch's count (one knob for both), capped by the usable CPUs."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


def session_options(threads: int | None = None):
    """ORT session options: ``threads`` intra-op threads (None: :func:`ort_threads`), one inter-op thread,
    sequential execution, no spinning while waiting for work, all graph optimisations."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or ort_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only
    return opts


def default_model_dir() -> Path:
    """Where exported towers go when no feature cache names a folder: ``$HISTOKG_CACHE_DIR/onnx``, else
    ``$XDG_CACHE_HOME/histokg/onnx``, else ``~/.cache/histokg/onnx``."""
    if os.environ.get("HISTOKG_CACHE_DIR"):
        return Path(os.environ["HISTOKG_CACHE_DIR"]) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "histokg" / "onnx"


def _digest(*parts: str, n: int = 20) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:n]


def model_path(folder: str | Path, identity: str, size: tuple[int, int]) -> Path:
    """The cached file of ``identity`` at input ``size`` (H, W): everything the exported graph depends on
    is in its name (identity, size, dynamic batch, uint8 NHWC input, opset, the exporting torch)."""
    h, w = size
    key = _digest(
        identity, f"{h}x{w}", "batch=dynamic", "input=uint8-nhwc", f"opset={OPSET}", torch.__version__
    )
    return Path(folder) / _digest(identity) / f"tower-{h}x{w}-{key}.onnx"


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` (uint8 (N, H, W, 3) in) as ONNX bytes, the batch dimension dynamic.

    The TorchScript exporter (``dynamo=False``; the dynamo one needs ``onnxscript``); its deprecation and
    tracer warnings go to the debug log: the probe in :func:`onnx_session` checks what it traced.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "n"}, OUTPUT: {0: "n"}},
            opset_version=OPSET,
        )
    for w in caught:
        log.debug("onnx export: %s", str(w.message).splitlines()[0])
    return buf.getvalue()


@lru_cache(maxsize=8)
def _cached_session(path: str, mtime_ns: int, threads: int):
    """One session per file, version and thread count in a process (tiled slides make many extractors)."""
    import onnxruntime as ort

    return ort.InferenceSession(path, session_options(threads), providers=["CPUExecutionProvider"])


def probe_batch(size: tuple[int, int], n: int = 2) -> np.ndarray:
    """A fixed batch of uint8 patches (noise around a tissue-like pink) to compare backends on."""
    rng = np.random.default_rng(0)
    base = np.array([200, 140, 180], np.int16)
    return np.clip(base + rng.integers(-60, 60, (n, *size, 3)), 0, 255).astype(np.uint8)


def onnx_session(
    module: nn.Module,
    identity: str,
    size: tuple[int, int],
    folder: str | Path,
    reference: Callable[[np.ndarray], np.ndarray],
):
    """An ORT CPU session of ``module`` (uint8 (N, H, W, 3) -> features) at input ``size``.

    A cached file in ``folder`` is loaded; else the module is exported, compared with ``reference`` (the
    PyTorch path) on :func:`probe_batch` (a difference above :data:`ORT_TOLERANCE` raises) and written
    atomically with a ``meta.json`` beside it. An unwritable folder is logged and the session kept in
    memory. Export and session errors propagate: the caller falls back to PyTorch and says so.
    """
    import onnxruntime as ort

    path = model_path(folder, identity, size)
    threads = ort_threads()
    if path.is_file():
        try:
            return _cached_session(str(path), path.stat().st_mtime_ns, threads), path
        except Exception as exc:  # a file ORT cannot read: export it again (replaced atomically)
            log.warning("ONNX tower %s cannot be loaded (%s); exporting it again", path, exc)
    probe = probe_batch(size)
    data = export_onnx(module, torch.from_numpy(probe))
    session = ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
    want = reference(probe)
    got = session.run(None, {INPUT: probe})[0]
    diff = float(np.abs(got - want).max())
    scale = float(np.abs(want).max())
    if not diff <= ORT_TOLERANCE * (1.0 + scale):
        raise RuntimeError(f"the exported tower differs from PyTorch by {diff:.3g} on a probe batch")
    meta = {
        "identity": identity,
        "input": [None, *size, 3],
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "probe_max_abs_diff": diff,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path.with_suffix(".json"), meta)  # first: a cached tower always has its meta beside it
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        log.warning("ONNX tower not cached (%s cannot be written: %s); kept in memory", path, exc)
        return session, None
    log.info("exported the tower to %s (probe max |ORT - torch| %.2g)", path, diff)
    return session, path


def read_meta(path: Path) -> dict:
    """The ``meta.json`` beside a cached tower (empty when absent)."""
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() else {}
