"""A torch Dataset of (spot patch, spot expression) pairs for training and embedding.

Slides are opened lazily in each process (DataLoader workers each get their own OpenSlide handle;
a handle is never shared across a fork). Expression is computed once up front: log1p CP10k of a
chosen gene panel (:func:`histokg.pp.panel_log1p`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from torch.utils.data import Dataset

from histokg.errors import InputError
from histokg.keys import Batch, Key
from histokg.pp import panel_log1p
from histokg.st.contract import check_spots
from histokg.st.pairing import PairingConfig, open_library_slide, slide_paths
from histokg.wsi.slide import Slide

log = logging.getLogger(__name__)


class SpotPatchDataset(Dataset):
    """Yields dicts with the keys of :class:`histokg.keys.Batch`: ``image`` (3, H, W) float in [0, 1],
    ``expr``, ``spot_id``, ``slide_id``, ``index``, and one per ``extra`` array (the KG inputs)."""

    def __init__(
        self,
        adata: ad.AnnData,
        cfg: PairingConfig = PairingConfig(),
        *,
        expression: np.ndarray | None = None,
        genes: Sequence[str] | None = None,
        transform: Callable[[dict], dict] | None = None,
        slides: Mapping[str, str | Path] | None = None,
        extra: Mapping[str, np.ndarray] | None = None,
        load_images: bool = True,
        aug_seed: int | None = None,
        slide_dir: str | Path | None = None,
    ):
        check_spots(adata, "the AnnData given to SpotPatchDataset")
        self.adata = adata
        self.cfg = cfg
        self.transform = transform
        # slides (library -> path) win; else the recorded slide, or its namesake in slide_dir
        self.paths = slide_paths(adata, slides, slide_dir=slide_dir)
        self.spot_ids = np.asarray(adata.obs_names, dtype=object)
        self.libraries = adata.obs[Key.obs.library_id].astype(str).to_numpy()
        self.xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
        if expression is None:
            expression = panel_log1p(adata, genes)
        if len(expression) != adata.n_obs:
            raise InputError(f"expression has {len(expression)} rows for {adata.n_obs} spots")
        self.expression = np.ascontiguousarray(expression, dtype=np.float32)
        self.extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
        self.load_images = load_images
        self.patches: np.ndarray | None = None  # optional in-memory cache of every spot's patch
        self.aug_seed = aug_seed
        self.epoch = 0
        self._handles: dict[str, Slide] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.spot_ids)

    def slide(self, lib: str) -> Slide:
        """This process's handle on a library's slide."""
        if os.getpid() != self._pid:  # forked into a worker: never reuse the parent's handles
            self._handles = {}
            self._pid = os.getpid()
        if lib not in self._handles:
            self._handles[lib] = open_library_slide(self.adata, lib, self.paths[lib])
        return self._handles[lib]

    def set_epoch(self, epoch: int) -> None:
        """With ``aug_seed``, augmentation depends only on (seed, epoch, index): resumable and worker-proof.
        ``extra`` values with a ``set_epoch`` of their own (:class:`histokg.train.data.ViewedFeatures`) follow."""
        self.epoch = epoch
        for values in self.extra.values():
            if hasattr(values, "set_epoch"):
                values.set_epoch(epoch)

    def read_image(self, index: int) -> np.ndarray:
        if self.patches is not None:
            return self.patches[index]
        lib = self.libraries[index]
        slide = self.slide(lib)
        patch, _ = slide.read_physical(
            tuple(self.xy[index]), self.cfg.patch_um, self.cfg.patch_px, scan_mpp=self.cfg.read_mpp
        )
        target = self.cfg.stain
        if target is not None:  # data.stain_norm: the slide's tissue statistics onto the target's
            from histokg.wsi.stain import reinhard, stats_of

            patch = reinhard(patch, stats_of(slide), target)
        return patch

    def __getitem__(self, index: int) -> dict:
        item = {
            Batch.expr: torch.from_numpy(self.expression[index]),
            Batch.spot_id: str(self.spot_ids[index]),
            Batch.slide_id: str(self.libraries[index]),
            Batch.index: index,
        }
        for key, values in self.extra.items():
            item[key] = torch.as_tensor(values[index])
        if not self.load_images:
            return item
        patch = self.read_image(index)
        item[Batch.image] = (
            torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1))).float().div_(255.0)
        )
        if self.transform is not None:
            if self.aug_seed is not None and hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(
                    seed=(self.aug_seed * 1_000_003 + self.epoch * 10_007 + index) % 2**32
                )
            item = self.transform(item)
            image = item[Batch.image]
            item[Batch.image] = (
                image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
            ).float()
        return item

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # handles never travel to spawned workers
        return state
