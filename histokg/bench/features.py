"""What the bench computes per spot before any training: the frozen tower and the naive baseline's features.

Both come from the library's one feature path and cache (:mod:`histokg.features`: content-addressed
safetensors, keyed by the tower's weights, the patch geometry, the views, the slide file and the spots),
computed in one pass over the patches:

- **frozen tower features**: the timm backbone's pooled features of each spot's patch, for ``views``
  dihedral views (:func:`histokg.features.dihedral`);
- **naive colour/texture features** (the baseline, :func:`naive_features`, cached as ``naive-v1``):
  per-channel mean and standard deviation of RGB and of the haematoxylin/eosin/DAB channels
  (scikit-image ``rgb2hed``), grey-level gradient magnitude mean and standard deviation, background
  (near-white) and dark-pixel fractions, and a uniform local-binary-pattern histogram (P=8, R=1): 26
  numbers per patch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

N_NAIVE = 26
NAIVE = "naive-v1"  # the cache's name for naive_features (change it when the features change)


@dataclass(frozen=True)
class FeatureConfig:
    """The frozen image tower and the patch geometry."""

    image_encoder: str = "tf_efficientnet_lite0"  # a timm architecture
    image_weights: str | None = "imagenet:tf_efficientnet_lite0"  # a named set or a local weights file
    patch_um: float = 112.0  # physical patch side (HEST-Benchmark: 112 um at 0.5 um/px = 224 px)
    patch_px: int = 224
    views: int = 1  # dihedral views per spot (1 = as read; 8 = all rotations and flips) for augmentation
    # read every patch as a scan at this um/px would show it (resolution-matched folds: e.g. 3.4, her2st
    # patient A's scan, for patient C's 0.735 um/px sections); None: each slide's own resolution
    read_mpp: float | None = None
    batch_size: int = 32
    device: str = "auto"
    # the frozen tower's forward pass: auto (ONNX Runtime on the CPU, else PyTorch), torch or onnx
    backend: str = "auto"

    def __post_init__(self) -> None:
        from histokg import budget
        from histokg.features import BACKENDS
        from pathways_kg.dataconf import DataConfError, check

        check(1 <= self.views <= 8, "views", f"must be in 1..8, got {self.views}")
        budget.check_patch(self.patch_um, self.patch_px, error=DataConfError)
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            self.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
        )
        check(
            self.read_mpp is None or 0.05 <= self.read_mpp <= 50,
            "read_mpp",
            f"must be None or a scan resolution in 0.05..50 um/px, got {self.read_mpp}",
        )


def feature_device(name: str) -> torch.device:
    """``features.device``: ``auto`` is the GPU where there is one (:func:`histokg.devices.resolve_device`)."""
    from histokg.devices import resolve_device
    from histokg.errors import ConfigError

    return resolve_device(name, what="features.device", error=ConfigError)


def train_device(name: str) -> torch.device:
    """``heads.device`` (where the heads train), as :func:`feature_device` resolves it."""
    from histokg.devices import resolve_device
    from histokg.errors import ConfigError

    return resolve_device(name, what="heads.device", error=ConfigError)


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
