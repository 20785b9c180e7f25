"""What the bench computes per spot before any training: the frozen tower and the naive baseline's features.

Both come from the library's one feature path and cache (:mod:`histokg.features`: content-addressed
safetensors, keyed by the tower's weights, the patch geometry, the views, the slide file and the spots),
computed in one pass over the patches:

- **frozen tower features**: the timm backbone's pooled features of each spot's patch, for ``views``
  dihedral views (:func:`histokg.features.dihedral`);
- **naive colour/texture features** (the baseline, and the ``naive`` image input): the library's
  :func:`histokg.patch_stats.naive_features` (26 numbers per patch, cached as ``naive-v1``), which
  ``histokg train`` also computes for ``model.image_extras: [naive]``; imported here from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from histokg.patch_stats import N_NAIVE, NAIVE, naive_features
from histokg.wsi.stain import DEFAULT_TARGET

log = logging.getLogger(__name__)

__all__ = ["N_NAIVE", "NAIVE", "FeatureConfig", "feature_device", "naive_features", "train_device"]


@dataclass(frozen=True)
class FeatureConfig:
    """The frozen image tower and the patch geometry."""

    image_encoder: str = "tf_efficientnet_lite0"  # a timm architecture
    image_weights: str | None = "imagenet:tf_efficientnet_lite0"  # a named set or a local weights file
    patch_um: float = 112.0  # physical patch side (HEST-Benchmark: 112 um at 0.5 um/px = 224 px)
    patch_px: int = 224
    views: int = 1  # dihedral views per spot (1 = as read; 8 = all rotations and flips) for augmentation
    stain_jitter: float = (
        0.0  # > 0: views 1-7 also HED-jittered by this strength (histokg.features.hed_jitter)
    )
    # read every patch as a scan at this um/px would show it (resolution-matched folds: e.g. 3.4, her2st
    # patient A's scan, for patient C's 0.735 um/px sections); None: each slide's own resolution
    read_mpp: float | None = None
    # stain normalisation of every patch before the tower and the colour/texture numbers (none or reinhard:
    # each slide's tissue statistics onto stain_target; histokg.wsi.stain), as histokg train's data.stain_norm
    stain_norm: str = "none"
    stain_target: tuple[float, ...] = DEFAULT_TARGET
    # intermediate stages of the tower, spatially averaged, appended to its pooled features (indices into
    # timm's feature_info; histokg train's model.feature_stages)
    stages: tuple[int, ...] = ()
    batch_size: int = 32
    device: str = "auto"
    # the frozen tower's forward pass: auto (on the CPU OpenVINO, else ONNX Runtime; else PyTorch), torch,
    # onnx (ONNX Runtime) or openvino
    backend: str = "auto"

    def __post_init__(self) -> None:
        from histokg import budget
        from histokg.features import BACKENDS
        from histokg.models import check_stages
        from histokg.st.pairing import check_reading
        from pathways_kg.dataconf import DataConfError, check

        check(1 <= self.views <= 8, "views", f"must be in 1..8, got {self.views}")
        check(0 <= self.stain_jitter < 1, "stain_jitter", f"must be in [0, 1), got {self.stain_jitter}")
        check(
            self.stain_jitter == 0 or self.views > 1,
            "stain_jitter",
            "jitters views 1-7: set features.views to 2-8 as well",
        )
        budget.check_patch(self.patch_um, self.patch_px, error=DataConfError)
        check_reading(self.stain_norm, self.stain_target, self.read_mpp, check)
        check_stages(self.stages, check, "stages")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(
            self.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
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
