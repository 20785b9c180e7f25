"""Image-tower features of spot patches: the one feature path of histokg, with one on-disk cache.

Every consumer of a tower's features goes through here: training on a frozen tower, the trainer's
validation, ``histokg bench``, :func:`histokg.tl.embed` (and through it the retrieval index and the
web app's uploads).

- :class:`Extractor`: a timm backbone with its input normalisation (timm's data config mean and std on
  RGB in [0, 1]): uint8 patches (N, H, W, 3) in, pooled features (N, d) out. Its :attr:`~Extractor.identity`
  is the architecture plus the SHA-256 of the backbone's tensors, so any weights (a named set, a local
  file, a seed's random initialisation, the tower inside a checkpoint) key the cache by what they are.
- :func:`spot_features`: the features of every spot (or tile) of an AnnData, in ``obs`` order, for
  ``views`` dihedral views (view 0 = the patch as read; 1-3 rotations by 90 degrees; 4-7 the same after
  a horizontal flip; with ``stain_jitter`` > 0 views 1-7 are also stain-jittered, :func:`hed_jitter`), plus
  any ``extras`` (per-patch functions such as
  :func:`histokg.patch_stats.naive_features`) computed from the same patches in the same pass.
- :class:`FeatureCache`: safetensors files, one per section and kind, content-addressed by the
  extractor's identity, the patch geometry (um and px, a scan resolution, a stain normalisation), the
  views (and their stain jitter), the slide file (resolved path, size, modification time, MPP) and the
  spots (ids and centres); written atomically. A changed input never reuses stale features, and the
  file's own list of spot ids is checked on every read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from histokg.errors import InputError
from histokg.io import atomic_path
from histokg.keys import Key
from histokg.st.pairing import PairingConfig

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "Extractor", "FeatureCache", "SpotFeatures", "dihedral", "hed_jitter", "spot_features"]

# A function of one (H, W, 3) uint8 patch returning a 1-d float vector, computed beside the tower.
PatchFunction = Callable[[np.ndarray], np.ndarray]


def dihedral(patch: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0-7) of an (H, W, 3) patch: rotation by 90 * (view % 4) degrees, flipped for view >= 4."""
    out = patch[:, ::-1] if view >= 4 else patch
    return np.ascontiguousarray(np.rot90(out, k=view % 4, axes=(0, 1)))


def hed_jitter(patch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A stain-augmented copy of an (H, W, 3) uint8 patch (HED jitter, as Tellez et al. 2018 describe it):
    the patch's haematoxylin, eosin and DAB optical densities (scikit-image's colour deconvolution) are
    each scaled by U(1 - s, 1 + s) and shifted by U(-s, s) times the channel's mean density, then
    recomposed into RGB. ``strength`` 0 returns the patch unchanged."""
    if strength == 0:
        return patch
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(patch)
    scale = rng.uniform(1 - strength, 1 + strength, 3)
    shift = rng.uniform(-strength, strength, 3) * np.abs(hed).mean(axis=(0, 1))
    rgb = hed2rgb(hed * scale + shift)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _jitter_rng(spot_id: str, view: int) -> np.random.Generator:
    """The stain jitter's draw for one spot's view: the same on every run, machine and batch size."""
    import zlib

    return np.random.default_rng([zlib.crc32(str(spot_id).encode()), view])


def tensor_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state (names, dtypes, shapes and bytes of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


#: Feature backends: ``auto`` (on the CPU, a float32 tower exported to ONNX and run by OpenVINO where it is
#: installed, else by ONNX Runtime; PyTorch otherwise), ``torch``, ``onnx`` (ONNX Runtime), ``openvino``.
BACKENDS = ("auto", "torch", "onnx", "openvino")
#: The engine of each exported backend, in the order ``auto`` tries them, and its name in messages.
ENGINE_OF = {"openvino": "openvino", "onnx": "onnxruntime"}
ENGINE_NAME = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
#: Environment variable that decides ``auto`` (``torch`` or ``onnx``) for every extractor of a process.
BACKEND_ENV = "HISTOKG_FEATURE_BACKEND"
_ANNOUNCED: set[tuple[str, str]] = set()


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise InputError(f"features: unknown backend {name!r} (valid: {', '.join(BACKENDS)})")
    return name


class _UInt8Tower(nn.Module):
    """The backbone with its input normalisation in front: uint8 (N, H, W, 3) in (the graph ORT runs)."""

    def __init__(self, backbone: nn.Module, mean: torch.Tensor, std: torch.Tensor, stages=()):
        super().__init__()
        self.backbone, self.mean, self.std, self.stages = backbone, mean, std, tuple(stages)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        from histokg.models import normalise, pooled_features

        x = patches.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return pooled_features(self.backbone, normalise(x, self.mean, self.std), self.stages)


class Extractor:
    """A backbone and its input normalisation: uint8 patches in, pooled features out.

    ``dtype`` is the autocast dtype of the forward pass (the trainer's mixed precision on a GPU; None:
    float32); it is part of the identity. ``stages``: intermediate stages whose spatially averaged
    activations follow the pooled features (:func:`histokg.models.pooled_features`); part of the
    identity. Features always come back as float32 numpy arrays.

    ``backend`` runs the forward pass: ``torch``; ``onnx`` or ``openvino`` (on the CPU, the tower exported
    to ONNX once per identity and input size, cached in ``model_dir``, by default
    :func:`histokg.runtime.default_model_dir`, and run by ONNX Runtime or OpenVINO; see
    :mod:`histokg.runtime`); or ``auto``: for a float32 tower on the CPU, OpenVINO where it is installed,
    else ONNX Runtime; PyTorch otherwise; ``$HISTOKG_FEATURE_BACKEND`` decides ``auto`` when set. Where an
    exported tower cannot serve (a GPU, autocast, no engine installed, a failed export or run) PyTorch
    does, and a warning line says why. The backend is not part of :attr:`identity` (nor of the feature
    cache's key): all compute the same function, within 1e-4 (tests/test_onnx_backend.py), as thread
    counts or CPU kernels already differ; :attr:`backend` says which ran and the cache records it.

    On the CPU, batches pass through the tower ``micro_batch`` patches at a time (None:
    :func:`histokg.runtime.cpu_micro_batch`; 0: whole), whatever the backend: the caller's batch size is
    about reading; this one is about the CPU's caches.
    """

    def __init__(
        self,
        backbone: nn.Module,
        architecture: str,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        backend: str = "torch",
        model_dir: str | Path | None = None,
        stages: tuple[int, ...] = (),
        micro_batch: int | None = None,
    ):
        from histokg.models import input_stats, stage_widths
        from histokg.runtime import cpu_micro_batch

        self.backbone = backbone
        self.stages = tuple(stages)
        self.architecture = architecture
        self.device = torch.device(device)
        self.dtype = dtype
        mean, std = input_stats(backbone)
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.num_features = int(backbone.num_features) + sum(stage_widths(backbone, self.stages))
        self.model_dir = Path(model_dir) if model_dir else None
        self.micro_batch = cpu_micro_batch() if micro_batch is None else int(micro_batch)
        self.backend = self._choose(check_backend(backend))
        # (H, W) -> the exported tower's Runner, or None: PyTorch
        self._runners: dict[tuple[int, int], object] = {}

    @classmethod
    def create(
        cls,
        architecture: str,
        weights: str | Path | None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        seed: int = 0,
        backend: str = "auto",
        model_dir: str | Path | None = None,
        stages: tuple[int, ...] = (),
        micro_batch: int | None = None,
    ) -> Extractor:
        """A frozen backbone of ``architecture`` with ``weights`` (a named set, a local file, or None for a
        random initialisation drawn from ``seed``). Built on a forked RNG, so that creating it draws nothing
        from the caller's random stream."""
        from histokg.models import create_backbone, load_backbone_weights

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = create_backbone(architecture)
        if weights:
            load_backbone_weights(backbone, weights, architecture)
        for p in backbone.parameters():
            p.requires_grad_(False)
        return cls(
            backbone.eval().to(device),
            architecture,
            device=device,
            dtype=dtype,
            backend=backend,
            model_dir=model_dir,
            stages=stages,
            micro_batch=micro_batch,
        )

    @classmethod
    def of_model(
        cls,
        model,
        *,
        device=None,
        dtype: torch.dtype | None = None,
        backend: str = "torch",
        model_dir: str | Path | None = None,
    ) -> Extractor:
        """The backbone of a :class:`~histokg.models.DualEncoder` (shared, not copied). PyTorch by default:
        a model in training changes its weights; inference passes ``backend="auto"``. The model's
        ``feature_stages`` come with it."""
        device = device or next(model.parameters()).device
        return cls(
            model.image.backbone,
            model.cfg.image_encoder,
            device=device,
            dtype=dtype,
            backend=backend,
            model_dir=model_dir,
            stages=model.cfg.feature_stages,
        )

    def _choose(self, backend: str) -> str:
        """The backend that will run: ``torch``, ``openvino`` or ``onnx`` (a line in the log where an exported
        tower cannot)."""
        from histokg.runtime import engine_installed

        explicit = backend != "auto"
        if backend == "auto":
            env = os.environ.get(BACKEND_ENV, "auto")
            backend, explicit = check_backend(env), env != "auto"
        if backend == "torch":
            return "torch"
        if self.device.type != "cpu":
            why = f"the tower is on {self.device}"  # on a GPU PyTorch is the fast path: said when asked
        elif self.dtype is not None:
            why = f"the forward pass autocasts to {self.dtype}"
        else:
            wanted = list(ENGINE_OF) if backend == "auto" else [backend]
            for name in wanted:
                if engine_installed(ENGINE_OF[name]):
                    return name
            missing = " and ".join(ENGINE_OF[name] for name in wanted)
            why, explicit = f"{missing} {'is' if len(wanted) == 1 else 'are'} not installed", True
        (log.warning if explicit else log.debug)(
            "features: no exported tower for %s (%s); PyTorch runs it", self.architecture, why
        )
        return "torch"

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    @cached_property
    def identity(self) -> str:
        """Architecture and weights, as the cache key names them (computed once: a frozen tower)."""
        amp = f"|autocast={self.dtype}" if self.dtype is not None else ""
        stages = f"|stages={','.join(map(str, self.stages))}" if self.stages else ""
        return f"{self.architecture}|sha256:{tensor_digest(self.backbone)}{amp}{stages}"

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Features (N, d) float32 of uint8 patches (N, H, W, 3); the backbone runs in eval mode."""
        patches = np.ascontiguousarray(patches)
        step = self.pass_size or len(patches)
        if len(patches) <= step:
            return self._forward(patches)
        return np.concatenate([self._forward(patches[i : i + step]) for i in range(0, len(patches), step)])

    @property
    def pass_size(self) -> int:
        """Patches per forward pass: :attr:`micro_batch` on the CPU; 0 (the whole batch) on a GPU."""
        return max(self.micro_batch, 0) if self.device.type == "cpu" else 0

    def _forward(self, patches: np.ndarray) -> np.ndarray:
        runner = self._runner(patches) if self.backend != "torch" else None
        if runner is not None:
            try:
                return np.asarray(runner(patches), dtype=np.float32)
            except Exception as exc:  # the engines' own error types
                log.warning(
                    "features: %s failed on %s (%s); PyTorch runs it",
                    ENGINE_NAME[runner.engine],
                    self.architecture,
                    exc,
                )
                self._runners[patches.shape[1:3]] = None
        return self._torch(patches)

    def _runner(self, patches: np.ndarray):
        """The exported tower for this input size (exported or loaded once), or None: PyTorch."""
        if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[-1] != 3:
            return None
        size = patches.shape[1:3]
        if size not in self._runners:
            from histokg.runtime import default_model_dir, exported_tower

            folder = self.model_dir or default_model_dir()
            engine = ENGINE_OF[self.backend]
            was_training = self.backbone.training
            self.backbone.eval()
            try:
                runner, path = exported_tower(
                    _UInt8Tower(self.backbone, self.mean, self.std, self.stages),
                    self.identity,
                    size,
                    folder,
                    self._torch,
                    engine,
                )
                where = str(path or "in memory")
                (log.debug if (where, engine) in _ANNOUNCED else log.info)(
                    "features: %s runs in %s (%s)", self.architecture, ENGINE_NAME[engine], where
                )
                _ANNOUNCED.add((where, engine))  # once per process: tiled slides make an extractor per chunk
            except Exception as exc:  # export, graph check or engine
                log.warning(
                    "features: %s could not run in %s (%s: %s); PyTorch runs it",
                    self.architecture,
                    ENGINE_NAME[engine],
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                runner = None
            finally:
                self.backbone.train(was_training)
            self._runners[size] = runner
        return self._runners[size]

    @torch.no_grad()
    def _torch(self, patches: np.ndarray) -> np.ndarray:
        from histokg.models import normalise, pooled_features

        was_training = self.backbone.training
        self.backbone.eval()
        try:
            x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device)
            x = normalise(x.permute(0, 3, 1, 2).float().div_(255.0), self.mean, self.std)
            with self.autocast():
                out = pooled_features(self.backbone, x, self.stages)
        finally:
            self.backbone.train(was_training)
        return out.float().cpu().numpy()


@dataclass
class SpotFeatures:
    """Features of every observation, in ``obs`` order: ``tower`` (views, n, d) and ``extras`` name -> (n, k)."""

    tower: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)  # sections computed (not read from a cache)


def _libraries(adata: ad.AnnData) -> np.ndarray:
    if Key.obs.library_id not in adata.obs:
        raise InputError("features: the AnnData has no obs['library_id'] (not in the histokg contract)")
    return adata.obs[Key.obs.library_id].astype(str).to_numpy()


def spot_features(
    adata: ad.AnnData,
    extractor: Extractor,
    pairing: PairingConfig,
    *,
    views: int = 1,
    stain_jitter: float = 0.0,
    cache: FeatureCache | None = None,
    extras: Mapping[str, PatchFunction] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    slide_dir: str | Path | None = None,
    dataset=None,
    progress: Callable[[int, int], None] | None = None,
) -> SpotFeatures:
    """Tower features of every observation's patch (and ``extras`` of the same patches), section by section.

    With a ``cache``, a section whose files exist is read, not computed; computed sections are written.
    ``dataset`` (a :class:`~histokg.st.dataset.SpotPatchDataset` of ``adata``) reuses its open slides and
    in-memory patches. ``progress(done, total)`` is called after each chunk of patches read (a batch; on
    the CPU, a micro-batch, so that the tower starts on the first few patches). ``stain_jitter``
    (0 <= s < 1) jitters the stain of views 1-7 (:func:`hed_jitter`, one draw per spot and view); view 0,
    which validation, embedding and the extras use, stays the patch as read.
    """
    from histokg.st.dataset import SpotPatchDataset

    if not 1 <= views <= 8:
        raise InputError(f"features: views must be in 1..8, got {views}")
    if not 0 <= stain_jitter < 1:
        raise InputError(f"features: stain_jitter must be in [0, 1), got {stain_jitter}")
    extras = dict(extras or {})
    libs = _libraries(adata)
    own = dataset is None
    ds = dataset or SpotPatchDataset(
        adata, pairing, expression=np.zeros((adata.n_obs, 0), np.float32), slide_dir=slide_dir
    )
    tower = np.zeros((views, adata.n_obs, extractor.num_features), np.float32)
    extra_out: dict[str, np.ndarray] = {}
    computed: list[str] = []
    done = 0
    try:
        for lib in dict.fromkeys(libs):  # sections in order of first appearance
            rows = np.flatnonzero(libs == lib)
            view_spec = f"views={views}" + (f"|hed_jitter={stain_jitter:g}" if stain_jitter else "")
            keys = _keys(cache, ds, rows, lib, extractor, pairing, view_spec, extras) if cache else None
            found = cache.read(keys, ds.spot_ids[rows]) if cache else None
            if found is None:
                found = _compute(
                    ds,
                    rows,
                    extractor,
                    views,
                    stain_jitter,
                    extras,
                    batch_size,
                    num_workers,
                    lib,
                    progress,
                    done,
                )
                computed.append(lib)
                if cache:
                    cache.write(keys, ds.spot_ids[rows], found, extractor)
            section_tower, section_extras = found
            tower[:, rows] = section_tower
            for name, values in section_extras.items():
                extra_out.setdefault(name, np.zeros((adata.n_obs, values.shape[1]), np.float32))[rows] = (
                    values
                )
            done += len(rows)
    finally:
        if own:
            ds.close()
    return SpotFeatures(tower, extra_out, computed)


class _Patches(torch.utils.data.Dataset):
    """uint8 patches of chosen rows of a SpotPatchDataset (for a DataLoader with workers)."""

    def __init__(self, ds, rows: np.ndarray):
        self.ds, self.rows = ds, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ds.read_image(int(self.rows[i]))


def _batches(ds, rows: np.ndarray, batch_size: int, num_workers: int, depth: int = 2) -> Iterator[np.ndarray]:
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(
            _Patches(ds, rows),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=lambda items: np.stack(items),
        )
        yield from loader
        return
    batches = (
        np.stack([ds.read_image(int(i)) for i in rows[start : start + batch_size]])
        for start in range(0, len(rows), batch_size)
    )
    yield from read_ahead(batches, depth)


def read_ahead(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced by one background thread, up to ``depth`` ahead of the consumer.

    Reading a batch of patches (OpenSlide's decoding, OpenCV's and Pillow's resampling: all release
    the GIL) then overlaps the tower's forward pass on the previous batch, without the start-up and
    copying of DataLoader worker processes. Order is kept; an exception in the producer is raised
    here; closing the generator stops the thread after the item it is reading.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            buffer.put((end, exc))
            return
        buffer.put((end, None))

    thread = threading.Thread(target=produce, name="histokg-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = buffer.get()
            if exc is not None:
                raise exc
            if item is end:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a producer blocked on a full buffer see the stop
            with suppress(queue.Empty):
                buffer.get_nowait()
            thread.join(timeout=0.05)


def _compute(ds, rows, extractor, views, stain_jitter, extras, batch_size, num_workers, lib, progress, done):
    tower: list[list[np.ndarray]] = [[] for _ in range(views)]
    extra: dict[str, list[np.ndarray]] = {name: [] for name in extras}
    step = batch_size
    if 0 < extractor.pass_size < batch_size and num_workers == 0:
        step = extractor.pass_size  # read as the tower runs: it starts on the first few patches
    depth = 2 * -(-batch_size // step)  # up to two batches read ahead, whatever the step
    seen = 0
    for patches in tqdm(
        _batches(ds, rows, step, num_workers, depth),
        total=-(-len(rows) // step),
        desc=f"features {lib}",
        unit="batch",
        leave=False,
    ):
        for name, fn in extras.items():
            extra[name].extend(np.asarray(fn(p), np.float32) for p in patches)
        ids = ds.spot_ids[rows[seen : seen + len(patches)]]
        for view in range(views):
            if view == 0:
                batch = patches
            else:
                batch = np.stack([
                    hed_jitter(dihedral(p, view), _jitter_rng(spot, view), stain_jitter)
                    for p, spot in zip(patches, ids, strict=True)
                ])  # fmt: skip
            tower[view].append(extractor(batch))
        seen += len(patches)
        if progress is not None:
            progress(done + seen, len(ds))
    feats = np.stack([np.concatenate(v) for v in tower]).astype(np.float32)
    log.info("features of %s: %d spots x %d views x %d dims", lib, feats.shape[1], views, feats.shape[2])
    return feats, {name: np.stack(v).astype(np.float32) for name, v in extra.items()}


# --------------------------------------------------------------------------------------- the cache
def _slide_identity(ds, rows: np.ndarray, lib: str) -> str:
    """The slide file (as opened: resolved path, size, modification time), its MPP, and the spots."""
    path = Path(ds.paths[lib])
    stat = path.stat() if path.is_file() else None
    size = f"{stat.st_size}|{stat.st_mtime_ns}" if stat else "missing"
    meta = ds.adata.uns.get(Key.uns.spatial, {}).get(lib, {}).get(Key.uns.metadata, {})
    digest = hashlib.sha256(np.ascontiguousarray(ds.xy[rows], dtype=np.float64).tobytes())
    digest.update("\n".join(map(str, ds.spot_ids[rows])).encode())
    return f"{path.resolve()}|{size}|mpp={meta.get(Key.metadata.mpp)}|{digest.hexdigest()}"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _keys(cache, ds, rows, lib, extractor, pairing, view_spec, extras) -> dict[str, Path]:
    slide = _slide_identity(ds, rows, lib)
    geometry = (
        f"{pairing.patch_um}|{pairing.patch_px}"
        + (f"|scan_mpp={pairing.read_mpp}" if pairing.read_mpp else "")
        + pairing.stain_spec
    )
    safe_lib = "".join(c if c.isalnum() or c in "-_." else "_" for c in lib)[:64]
    out = {
        "tower": cache.folder
        / f"tower-{safe_lib}-{_key('tower', extractor.identity, geometry, view_spec, slide)}.safetensors"
    }
    for name in extras:
        out[name] = cache.folder / f"{name}-{safe_lib}-{_key(name, geometry, slide)}.safetensors"
    return out


class FeatureCache:
    """Feature files in ``folder`` (content-addressed; see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def read(self, paths: Mapping[str, Path], spot_ids: np.ndarray):
        """(tower, extras) when every file exists, else None."""
        if not all(p.is_file() for p in paths.values()):
            return None
        values = {name: self._read(path, spot_ids) for name, path in paths.items()}
        tower = values.pop("tower")
        return tower, values

    def write(self, paths: Mapping[str, Path], spot_ids: np.ndarray, found, extractor: Extractor) -> None:
        tower, extras = found
        self._write(
            paths["tower"], tower, spot_ids, {"extractor": extractor.identity, "backend": extractor.backend}
        )
        for name, values in extras.items():
            self._write(paths[name], values, spot_ids, {"kind": name})

    def _write(self, path: Path, values: np.ndarray, spot_ids: np.ndarray, meta: dict) -> None:
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"spots": json.dumps(list(map(str, spot_ids))), **{k: str(v) for k, v in meta.items()}}
        with atomic_path(path) as tmp:
            save_file({"values": np.ascontiguousarray(values)}, str(tmp), metadata=metadata)

    def _read(self, path: Path, spot_ids: np.ndarray) -> np.ndarray:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                spots = json.loads((fh.metadata() or {}).get("spots", "null"))
                values = fh.get_tensor("values")
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise InputError(f"feature cache {path} cannot be read ({exc}); delete the file") from None
        if spots != list(map(str, spot_ids)):
            raise InputError(f"feature cache {path}: its spots differ from the section's; delete the file")
        if not np.isfinite(values).all():
            raise InputError(f"feature cache {path} holds non-finite values; delete the file")
        return values
