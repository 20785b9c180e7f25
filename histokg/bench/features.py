"""Per-spot image features computed once per (weights, patch geometry, slide) and shared by every run.

Two kinds, both cached on disk (safetensors, content-addressed; atomic writes):

- **frozen tower features**: the timm backbone's pooled features (``num_classes=0``) of each spot's
  patch, for ``views`` dihedral views (view 0 = the patch as read; 1-3 rotations by 90 degrees; 4-7 the
  same after a horizontal flip). The key holds the architecture, the weights' identity (a named set's
  package version, a file's sha256), the patch size in um and px, the views, the slide file (path,
  size, modification time) and the spot centres, so a changed input never reuses stale features.
- **naive colour/texture features** (the baseline): per-channel mean and standard deviation of RGB
  and of the haematoxylin/eosin/DAB channels (scikit-image ``rgb2hed``), grey-level gradient
  magnitude mean and standard deviation, background (near-white) and dark-pixel fractions, and a
  uniform local-binary-pattern histogram (P=8, R=1): 26 numbers per patch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from tqdm.auto import tqdm

from histokg.errors import InputError
from histokg.io import atomic_path, file_sha256
from histokg.keys import Key

log = logging.getLogger(__name__)

N_NAIVE = 26


@dataclass(frozen=True)
class FeatureConfig:
    """The frozen image tower and the patch geometry."""

    image_encoder: str = "tf_efficientnet_lite0"  # a timm architecture
    image_weights: str | None = "imagenet:tf_efficientnet_lite0"  # a named set or a local weights file
    patch_um: float = 112.0  # physical patch side (HEST-Benchmark: 112 um at 0.5 um/px = 224 px)
    patch_px: int = 224
    views: int = 1  # dihedral views per spot (1 = as read; 8 = all rotations and flips) for augmentation
    batch_size: int = 32
    device: str = "auto"

    def __post_init__(self) -> None:
        from pathways_kg.dataconf import check

        check(1 <= self.views <= 8, "views", f"must be in 1..8, got {self.views}")
        check(self.patch_px >= 8, "patch_px", f"must be >= 8, got {self.patch_px}")
        check(self.patch_um > 0, "patch_um", f"must be > 0, got {self.patch_um}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


def weights_identity(cfg: FeatureConfig) -> str:
    from histokg import pretrained

    if cfg.image_weights is None:
        return "random-init-seed-0"
    if pretrained.is_named(cfg.image_weights):
        return pretrained.identity(cfg.image_weights)
    path = Path(cfg.image_weights)
    if not path.is_file():
        raise InputError(f"features.image_weights: {path} does not exist")
    return f"file:{file_sha256(path)}"


def _slide_identity(adata: ad.AnnData, lib: str) -> str:
    meta = adata.uns[Key.uns.spatial][lib][Key.uns.metadata]
    path = Path(str(meta.get(Key.metadata.source_image_path)))
    stat = path.stat() if path.is_file() else None
    xy = np.ascontiguousarray(np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64))
    digest = hashlib.sha256(xy.tobytes())
    digest.update("\n".join(map(str, adata.obs_names)).encode())
    size = f"{stat.st_size}|{stat.st_mtime_ns}" if stat else "missing"
    return f"{path.resolve()}|{size}|mpp={meta.get(Key.metadata.mpp)}|{digest.hexdigest()}"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def dihedral(patch: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0-7) of an (H, W, 3) patch: rotation by 90 * (view % 4) degrees, flipped for view >= 4."""
    out = patch[:, ::-1] if view >= 4 else patch
    return np.ascontiguousarray(np.rot90(out, k=view % 4, axes=(0, 1)))


class FeatureCache:
    """Frozen-tower and naive features of whole sections, computed once and kept in ``folder``."""

    def __init__(self, folder: str | Path, cfg: FeatureConfig):
        self.folder = Path(folder)
        self.cfg = cfg
        self._weights_id = weights_identity(cfg)
        self._backbone = None
        self.computed: list[str] = []  # sections computed (not read from the cache) in this process
        self.seconds = 0.0

    # ------------------------------------------------------------------ public
    def section(self, adata: ad.AnnData, lib: str) -> tuple[np.ndarray, np.ndarray]:
        """(tower features (views, n, d), naive features (n, 26)) of one section's spots, in obs order."""
        cfg = self.cfg
        slide_id = _slide_identity(adata, lib)
        geometry = f"{cfg.patch_um}|{cfg.patch_px}"
        tower_key = _key(
            "tower", cfg.image_encoder, self._weights_id, geometry, f"views={cfg.views}", slide_id
        )
        naive_key = _key("naive-v1", geometry, slide_id)
        tower_path = self.folder / f"tower-{lib}-{tower_key}.safetensors"
        naive_path = self.folder / f"naive-{lib}-{naive_key}.safetensors"
        if tower_path.is_file() and naive_path.is_file():
            return self._read(tower_path, adata), self._read(naive_path, adata)
        import time

        start = time.perf_counter()
        tower, naive = self._compute(adata, lib)
        self.seconds += time.perf_counter() - start
        self.computed.append(lib)
        self._write(
            tower_path, tower, adata, {"image_encoder": cfg.image_encoder, "weights": self._weights_id}
        )
        self._write(naive_path, naive, adata, {"kind": "naive colour/texture v1"})
        return tower, naive

    # ------------------------------------------------------------------ compute
    def backbone(self) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.device]:
        if self._backbone is None:
            import timm

            from histokg.models import create_backbone, load_backbone_weights

            model = create_backbone(self.cfg.image_encoder)
            if self.cfg.image_weights:
                load_backbone_weights(model, self.cfg.image_weights, self.cfg.image_encoder)
            data_cfg = timm.data.resolve_data_config({}, model=model)
            device = _device(self.cfg.device)
            mean = torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1).to(device)
            std = torch.tensor(data_cfg["std"]).view(1, 3, 1, 1).to(device)
            self._backbone = (model.eval().to(device), mean, std, device)
        return self._backbone

    @torch.no_grad()
    def _compute(self, adata: ad.AnnData, lib: str) -> tuple[np.ndarray, np.ndarray]:
        from histokg.st.dataset import SpotPatchDataset
        from histokg.st.pairing import PairingConfig

        cfg = self.cfg
        model, mean, std, device = self.backbone()
        sub = (
            adata[adata.obs[Key.obs.library_id].astype(str).to_numpy() == lib]
            if Key.obs.library_id in adata.obs
            else adata
        )
        if sub.n_obs != adata.n_obs:
            raise InputError(f"features: section {lib} AnnData holds other libraries too")
        ds = SpotPatchDataset(
            adata,
            PairingConfig(patch_um=cfg.patch_um, patch_px=cfg.patch_px),
            expression=np.zeros((adata.n_obs, 1), np.float32),
        )
        tower: list[list[np.ndarray]] = [[] for _ in range(cfg.views)]
        naive = []
        starts = range(0, len(ds), cfg.batch_size)
        try:
            for start in tqdm(starts, desc=f"features {lib}", unit="batch", leave=False):
                patches = [ds.read_image(i) for i in range(start, min(start + cfg.batch_size, len(ds)))]
                naive.extend(naive_features(p) for p in patches)
                for view in range(cfg.views):
                    batch = np.stack([dihedral(p, view) for p in patches])
                    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0).to(device)
                    tower[view].append(model((x - mean) / std).float().cpu().numpy())
        finally:
            ds.close()
        feats = np.stack([np.concatenate(v) for v in tower]).astype(np.float32)
        log.info(
            "features of %s: %d spots x %d views x %d dims",
            lib,
            feats.shape[1],
            feats.shape[0],
            feats.shape[2],
        )
        return feats, np.stack(naive).astype(np.float32)

    # ------------------------------------------------------------------ disk
    def _write(self, path: Path, values: np.ndarray, adata: ad.AnnData, meta: dict) -> None:
        from safetensors.numpy import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "spots": json.dumps(list(map(str, adata.obs_names))),
            **{k: str(v) for k, v in meta.items()},
        }
        with atomic_path(path) as tmp:
            save_file({"values": np.ascontiguousarray(values)}, str(tmp), metadata=metadata)

    def _read(self, path: Path, adata: ad.AnnData) -> np.ndarray:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            spots = json.loads(fh.metadata()["spots"])
            values = fh.get_tensor("values")
        if spots != list(map(str, adata.obs_names)):
            raise InputError(f"feature cache {path}: its spots differ from the section's; delete the file")
        return values


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def naive_features(patch: np.ndarray) -> np.ndarray:
    """26 colour/texture numbers of an (H, W, 3) uint8 patch (see the module docstring)."""
    from skimage.color import rgb2gray, rgb2hed
    from skimage.feature import local_binary_pattern
    from skimage.filters import sobel

    rgb = patch.astype(np.float32) / 255.0
    hed = rgb2hed(patch)
    grey = rgb2gray(patch)
    grad = sobel(grey)
    lbp = local_binary_pattern((grey * 255).astype(np.uint8), P=8, R=1, method="uniform")
    hist = np.bincount(lbp.astype(np.int64).ravel(), minlength=10)[:10] / lbp.size
    out = [
        rgb.reshape(-1, 3).mean(0),
        rgb.reshape(-1, 3).std(0),
        hed.reshape(-1, 3).mean(0),
        hed.reshape(-1, 3).std(0),
        [grad.mean(), grad.std(), float((grey > 0.85).mean()), float((grey < 0.35).mean())],
        hist,
    ]
    return np.concatenate([np.asarray(o, dtype=np.float32).ravel() for o in out])
