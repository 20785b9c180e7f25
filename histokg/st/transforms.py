"""Training augmentations as MONAI dictionary transforms.

Images enter as channel-first float arrays (3, H, W) in [0, 1]; MONAI's spatial axes are then
(row, column). Flips and 90-degree rotations are label-preserving for H&E; the HED stain jitter
perturbs hematoxylin, eosin and DAB optical densities (Ruifrok & Johnston 2001 colour
deconvolution; Tellez et al. 2018 stain augmentation), which trains robustness to stain batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

# Build class_resolver's torch resolvers (used by pykeen) before MONAI defines LR schedulers whose
# names clash with torch's (LinearLR): importing pykeen after MONAI would otherwise fail with
# RegistrationNameConflict in the same process. class_resolver comes with pykeen.
with contextlib.suppress(ImportError):
    import class_resolver.contrib.torch  # noqa: F401
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, RandFlipd, RandomizableTransform, RandRotate90d

from histokg.keys import Batch

# Rows: stain optical-density vectors of hematoxylin, eosin and DAB (Ruifrok & Johnston 2001).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
_OD_FLOOR = 1e-6


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    hed_sigma: float = 0.05  # multiplicative jitter of each stain's concentration
    hed_bias: float = 0.02  # additive jitter of each stain's concentration
    prob: float = 0.5


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """Randomly scale and shift H, E and DAB concentrations of RGB images in [0, 1], shape (3, H, W)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        sigma: float = 0.05,
        bias: float = 0.02,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.sigma = sigma
        self.bias = bias
        self._alpha = np.ones(3)
        self._beta = np.zeros(3)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._alpha = self.R.uniform(1 - self.sigma, 1 + self.sigma, 3)
        self._beta = self.R.uniform(-self.bias, self.bias, 3)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = hed_jitter(d[key], self._alpha, self._beta)
        return d


def hed_jitter(image: torch.Tensor | np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> torch.Tensor:
    """Apply ``hed' = alpha * hed + beta`` in optical-density space to a (3, H, W) RGB image in [0, 1]."""
    img = torch.as_tensor(image, dtype=torch.float32)
    od = -torch.log10(img.clamp_min(_OD_FLOOR)).reshape(3, -1)  # (3, N)
    to_hed = torch.as_tensor(HED_FROM_RGB.T, dtype=torch.float32)  # od^T @ inv(M) per pixel
    to_rgb = torch.as_tensor(RGB_FROM_HED.T, dtype=torch.float32)
    hed = to_hed @ od
    hed = (
        hed * torch.as_tensor(alpha, dtype=torch.float32)[:, None]
        + torch.as_tensor(beta, dtype=torch.float32)[:, None]
    )
    rgb = torch.pow(10.0, -(to_rgb @ hed)).reshape(img.shape)
    return rgb.clamp(0.0, 1.0)


def build_transforms(cfg: AugmentConfig = AugmentConfig(), key: str = Batch.image) -> Compose:
    """The training augmentation pipeline for spot patches."""
    steps = []
    if cfg.flips:
        steps += [
            RandFlipd(keys=key, prob=cfg.prob, spatial_axis=0),
            RandFlipd(keys=key, prob=cfg.prob, spatial_axis=1),
        ]
    if cfg.rot90:
        steps.append(RandRotate90d(keys=key, prob=cfg.prob, max_k=3, spatial_axes=(0, 1)))
    if cfg.hed_sigma > 0 or cfg.hed_bias > 0:
        steps.append(RandHEDJitterd(keys=key, prob=cfg.prob, sigma=cfg.hed_sigma, bias=cfg.hed_bias))
    return Compose(steps)
