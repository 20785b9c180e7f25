"""Colour and texture numbers of a patch, and the image head's extra inputs built from them.

- :func:`naive_features`: 26 numbers per (H, W, 3) uint8 patch: per-channel mean and standard deviation
  of RGB and of the haematoxylin/eosin/DAB channels (scikit-image ``rgb2hed``), grey-level gradient
  magnitude mean and standard deviation, background (near-white) and dark-pixel fractions, and a uniform
  local-binary-pattern histogram (P=8, R=1). ``histokg bench``'s ``naive_ridge`` baseline reads them, and
  they are the ``naive`` extra input of the image head.
- :data:`EXTRAS`: the image head's extra inputs by name (``model.image_extras``, ``ablations.image_inputs``
  of the bench): each a per-patch function computed beside the tower in
  :func:`histokg.features.spot_features` (cached under its versioned name), its width.
- :class:`Standardisation`: their mean and standard deviation (+1e-6) fitted on the training spots, and
  :meth:`Standardisation.append`: the standardised numbers concatenated after the tower's features (every
  view gets the same numbers). ``histokg train`` (stored in the checkpoint, :class:`histokg.models.ImageExtras`),
  the one embedding routine (:func:`histokg.embedding.embed_spots`) and ``histokg bench`` all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["EXTRAS", "N_NAIVE", "NAIVE", "PatchExtra", "Standardisation", "check_extras", "naive_features"]

N_NAIVE = 26
NAIVE = "naive-v1"  # the feature cache's name for naive_features (change it when the features change)


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


@dataclass(frozen=True)
class PatchExtra:
    """An extra input of the image head: its per-patch function, the cache's (versioned) name, its width."""

    name: str
    cache_name: str
    width: int
    fn: Callable[[np.ndarray], np.ndarray]


#: The image head's extra inputs, by the name configs use (``model.image_extras: [naive]``).
EXTRAS: dict[str, PatchExtra] = {"naive": PatchExtra("naive", NAIVE, N_NAIVE, naive_features)}


def check_extras(names: Iterable[str], key: str = "image_extras") -> None:
    """Refuse an unknown extra (``DataConfError`` naming ``key`` and the nearest valid name)."""
    from histokg.registry import unknown_name_message
    from pathways_kg.dataconf import check

    names = tuple(names)
    for name in names:
        check(name in EXTRAS, key, unknown_name_message("image extra", name, EXTRAS, plural="image extras"))
    check(len(set(names)) == len(names), key, f"lists an extra twice: {list(names)}")


def extras_width(names: Iterable[str]) -> int:
    """How many numbers ``names`` append to the tower's features."""
    return sum(EXTRAS[n].width for n in names)


def extra_functions(names: Iterable[str]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """What :func:`histokg.features.spot_features` computes beside the tower: cache name -> function."""
    return {EXTRAS[n].cache_name: EXTRAS[n].fn for n in names}


def raw_extras(found: Mapping[str, np.ndarray], names: Iterable[str]) -> np.ndarray:
    """The extras of ``names`` side by side (n, k), from ``spot_features``' ``extras`` (by cache name)."""
    return np.concatenate([np.asarray(found[EXTRAS[n].cache_name], np.float32) for n in names], axis=-1)


@dataclass(frozen=True)
class Standardisation:
    """Mean and standard deviation (+1e-6) of extra inputs, fitted on the training spots only."""

    names: tuple[str, ...]
    mean: np.ndarray  # (k,) float32
    sd: np.ndarray  # (k,) float32

    @classmethod
    def fit(cls, names: Iterable[str], raw: np.ndarray) -> Standardisation:
        """Fitted on ``raw`` (n_train, k): the training spots' extras (:func:`raw_extras`)."""
        raw = np.asarray(raw, np.float32)
        return cls(tuple(names), raw.mean(0), raw.std(0) + 1e-6)

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """(n, k) float32: ``raw`` minus the mean over the standard deviation."""
        return ((np.asarray(raw, np.float32) - self.mean) / self.sd).astype(np.float32)

    def append(self, features: np.ndarray, raw: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """``features`` (n, d) or (views, n, d) with the standardised ``raw`` (n, k), or ``spot_features``'
        extras by cache name, concatenated after them (the same numbers for every view)."""
        if isinstance(raw, Mapping):
            raw = raw_extras(raw, self.names)
        z = self.standardise(raw)
        if z.shape != (features.shape[-2], len(self.mean)):
            raise ValueError(f"extras of shape {z.shape} do not fit features of shape {features.shape}")
        return np.concatenate([features, np.broadcast_to(z, (*features.shape[:-2], *z.shape))], axis=-1)
