"""CPU inference at the hardware's speed: thread counts, micro-batches, and frozen towers exported to ONNX
and run by OpenVINO or ONNX Runtime.

- :func:`usable_cpus`: the CPUs this process may run on (``os.sched_getaffinity``: taskset, cgroup cpusets,
  Slurm and container limits), not ``os.cpu_count()`` (the machine's).
- :func:`configure_threads`: torch's intra-op threads, by default :func:`usable_cpus` (the CLI calls it once,
  ``histokg bench`` with its ``threads``). :func:`session_options` and :func:`openvino_config` give ONNX
  Runtime and OpenVINO the same count (torch's, capped by the usable CPUs); ONNX Runtime gets one
  inter-op thread and no busy-wait spinning, OpenVINO one stream and no pinning, so a shared machine
  slows down gracefully instead of collapsing under threads that spin for work.
- :func:`cpu_micro_batch`: how many patches go through a tower at once on the CPU (small batches keep
  activations in the caches).
- :func:`exported_tower`: a module exported once per (weights identity, input size) with a dynamic batch
  dimension, cached content-addressed in a folder (one sub-folder per identity hash; files written
  atomically, so two processes exporting the same tower both leave a whole file), loaded by one of
  :data:`ENGINES` and checked against PyTorch on a probe batch. :class:`histokg.features.Extractor` is
  its one user.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from histokg.errors import InputError
from histokg.io import atomic_path, write_json

log = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "ORT_TOLERANCE",
    "Runner",
    "configure_threads",
    "cpu_micro_batch",
    "default_model_dir",
    "exported_tower",
    "load_runner",
    "openvino_config",
    "ort_threads",
    "session_options",
    "usable_cpus",
]

OPSET = 17
#: Largest |ORT - PyTorch| accepted on the probe batch, absolute plus relative to the features' scale.
ORT_TOLERANCE = 1e-3
INPUT, OUTPUT = "patches", "features"
#: Engines that run an exported tower on the CPU (each named as the module it needs), fastest first on
#: the development machine (benchmarks/frozen_features.py).
ENGINES = ("openvino", "onnxruntime")
#: Patches per forward pass on the CPU: small batches keep a depthwise-convolution tower's activations in
#: the caches (EfficientNet-Lite0 at 224 px against batch 32: eager PyTorch about 2x the images/s, ONNX
#: Runtime and OpenVINO about 1.2x; ResNet-50 and ViT-S/16 within 5 %). ``$HISTOKG_CPU_MICRO_BATCH``
#: overrides it (0: the whole batch).
CPU_MICRO_BATCH = 4
MICRO_BATCH_ENV = "HISTOKG_CPU_MICRO_BATCH"


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def cpu_micro_batch() -> int:
    """Patches per forward pass on the CPU: ``$HISTOKG_CPU_MICRO_BATCH`` or :data:`CPU_MICRO_BATCH`
    (0: no splitting)."""
    raw = os.environ.get(MICRO_BATCH_ENV, "").strip()
    if not raw:
        return CPU_MICRO_BATCH
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InputError(f"${MICRO_BATCH_ENV}: {raw!r} is not a whole number >= 0")
    return value


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


@dataclass(frozen=True)
class Runner:
    """An exported tower loaded by one engine: uint8 patches (N, H, W, 3) in, features (N, d) out."""

    engine: str
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        return self.run(patches)


def engine_installed(engine: str) -> bool:
    return importlib.util.find_spec(engine) is not None


def openvino_config(threads: int | None = None) -> dict:
    """OpenVINO's CPU settings: ``threads`` inference threads (None: :func:`ort_threads`), one stream,
    float32 arithmetic (on CPUs with bf16 or AMX it would otherwise compute in bf16 and miss the parity
    with PyTorch), no pinning of threads to cores (a shared machine's scheduler places them)."""
    return {
        "INFERENCE_NUM_THREADS": threads or ort_threads(),
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False,
    }


@lru_cache(maxsize=1)
def _openvino_core():
    import openvino as ov

    return ov.Core()


def load_runner(source: str | bytes, engine: str, threads: int | None = None) -> Runner:
    """The exported graph ``source`` (a file path or ONNX bytes) loaded by ``engine``."""
    threads = threads or ort_threads()
    if engine == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])
        return Runner(engine, lambda x: session.run(None, {INPUT: x})[0])
    if engine == "openvino":
        core = _openvino_core()
        model = core.read_model(source if isinstance(source, str) else io.BytesIO(source))
        compiled = core.compile_model(model, "CPU", openvino_config(threads))
        lock = threading.Lock()  # the compiled model's one infer request: a cached runner is shared

        def run(x: np.ndarray) -> np.ndarray:
            with lock:  # share_outputs=False: a copy, not the request's reused output buffer
                return compiled(x, share_inputs=True, share_outputs=False)[0]

        return Runner(engine, run)
    raise ValueError(f"unknown engine {engine!r} (valid: {', '.join(ENGINES)})")


@lru_cache(maxsize=8)
def _cached_runner(path: str, mtime_ns: int, threads: int, engine: str) -> Runner:
    """One runner per file, version, thread count and engine in a process (tiled slides make many
    extractors)."""
    return load_runner(path, engine, threads)


#: Cached runners (``_cached_runner``'s arguments) already compared with PyTorch in this process: checked
#: once, not by every extractor that loads the file (the file's name holds the weights' identity).
_CHECKED: set[tuple[str, int, int, str]] = set()


def probe_batch(size: tuple[int, int], n: int = 2) -> np.ndarray:
    """A fixed batch of uint8 patches (noise around a tissue-like pink) to compare backends on."""
    rng = np.random.default_rng(0)
    base = np.array([200, 140, 180], np.int16)
    return np.clip(base + rng.integers(-60, 60, (n, *size, 3)), 0, 255).astype(np.uint8)


def exported_tower(
    module: nn.Module,
    identity: str,
    size: tuple[int, int],
    folder: str | Path,
    reference: Callable[[np.ndarray], np.ndarray],
    engine: str = "onnxruntime",
) -> tuple[Runner, Path | None]:
    """``module`` (uint8 (N, H, W, 3) -> features) at input ``size``, exported to ONNX and run by ``engine``.

    A cached file in ``folder`` is loaded; else the module is exported, and the file is written atomically
    with a ``meta.json`` beside it. A runner is compared with ``reference`` (the PyTorch path) on
    :func:`probe_batch` when it is exported, and a cached file once per process and engine: a difference
    above :data:`ORT_TOLERANCE` raises. An unwritable
    folder is logged and the graph kept in memory. Export and engine errors propagate: the caller falls
    back to PyTorch and says so. Returns the runner and the file (None: in memory).
    """
    path = model_path(folder, identity, size)
    threads = ort_threads()
    runner = source = key = None
    if path.is_file():
        try:
            key = (str(path), path.stat().st_mtime_ns, threads, engine)
            runner, source = _cached_runner(*key), path
        except Exception as exc:  # a file the engine cannot read: export it again (replaced atomically)
            key = None
            log.warning("ONNX tower %s cannot be loaded (%s); exporting it again", path, exc)
    probe = probe_batch(size)
    if runner is None:
        data = export_onnx(module, torch.from_numpy(probe))
        runner = load_runner(data, engine, threads)
        source = _write_tower(path, data, identity, size)
        if source is not None:
            log.info("exported the tower to %s", path)
    if key not in _CHECKED:  # a fresh export (key None) is always checked
        want = reference(probe)
        diff = float(np.abs(runner(probe) - want).max())
        if not diff <= ORT_TOLERANCE * (1.0 + float(np.abs(want).max())):
            raise RuntimeError(f"{engine} differs from PyTorch by {diff:.3g} on a probe batch")
        log.debug("%s runs %s (probe max |difference to torch| %.2g)", engine, source or "in memory", diff)
        if key is not None:
            _CHECKED.add(key)
    return runner, source


def _write_tower(path: Path, data: bytes, identity: str, size: tuple[int, int]) -> Path | None:
    """Write an exported graph and its ``meta.json``; None (logged) where the folder cannot be written."""
    meta = {"identity": identity, "input": [None, *size, 3], "opset": OPSET, "torch": torch.__version__}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path.with_suffix(".json"), meta)  # first: a cached tower always has its meta beside it
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        log.warning("ONNX tower not cached (%s cannot be written: %s); kept in memory", path, exc)
        return None
    return path


def read_meta(path: Path) -> dict:
    """The ``meta.json`` beside a cached tower (empty when absent)."""
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() else {}
