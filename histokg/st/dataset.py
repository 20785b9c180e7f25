"""A torch Dataset of (spot patch, spot expression) pairs for training and embedding.

Slides are opened lazily in each process (DataLoader workers each get their own OpenSlide handle;
a handle is never shared across a fork). Expression is computed once up front: library-size
normalised to 10,000 and log1p-transformed, for a chosen gene panel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from histokg.errors import InputError
from histokg.keys import Batch, Key
from histokg.metrics import log1p_cp10k
from histokg.st.pairing import PairingConfig, open_library_slide, slide_paths
from histokg.wsi.slide import Slide

log = logging.getLogger(__name__)


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def log_normalize(counts: np.ndarray | sp.spmatrix, target_sum: float = 1e4) -> np.ndarray:
    """Dense float32 ``log1p(counts / total * target_sum)`` per spot (:func:`histokg.metrics.log1p_cp10k`)."""
    return _dense(log1p_cp10k(counts, target_sum))


# A section may lack some panel genes (legacy ST tables list only the genes detected in that section):
# those are measured zeros. When more than this fraction of the panel is absent, the data and the panel
# do not belong together, and filling them would fabricate the input.
MAX_MISSING_PANEL_FRACTION = 0.5


def panel_expression(
    adata: ad.AnnData,
    genes: Sequence[str] | None = None,
    layer: str | None = Key.layers.counts,
    source: str = "data",
) -> np.ndarray:
    """Log-normalised expression of ``genes`` (all genes if None), normalised over all genes of the spot.

    Counts come from ``layers[layer]`` (``X`` when ``layer`` is None or absent). Panel genes the data
    lacks are zeros (see :func:`panel_columns`).
    """
    counts = adata.layers[layer] if layer and layer in adata.layers else adata.X
    normalised = log1p_cp10k(counts)  # stays sparse: only the panel's columns are densified
    if genes is None:
        return _dense(normalised)
    return take_columns(normalised, panel_columns(genes, adata.var_names, source))


def take_columns(matrix, cols: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Dense ``matrix[:, cols]`` (sparse or dense input) with zero columns where ``cols`` is -1."""
    out = np.zeros((matrix.shape[0], len(cols)), dtype=dtype)
    present = cols >= 0
    if present.any():
        out[:, present] = _dense(matrix[:, cols[present]])
    return out


def panel_columns(genes: Sequence[str], available: Sequence[str], source: str = "data") -> np.ndarray:
    """Column of each panel gene in ``available``; -1 where absent (a measured zero).

    Logs how many panel genes are absent; raises :class:`InputError` when more than
    :data:`MAX_MISSING_PANEL_FRACTION` of the panel is absent (wrong panel, species or gene naming).
    """
    index: dict[str, int] = {}
    for i, g in enumerate(map(str, available)):
        index.setdefault(g, i)
    cols = np.array([index.get(str(g), -1) for g in genes], dtype=np.int64)
    missing = [str(g) for g, c in zip(genes, cols, strict=True) if c < 0]
    if len(missing) > MAX_MISSING_PANEL_FRACTION * len(cols):
        raise InputError(
            f"{source} lacks {len(missing)} of the {len(cols)} panel genes (e.g. {missing[:5]}); more than "
            f"{MAX_MISSING_PANEL_FRACTION:.0%} missing means the panel and the data do not match (species, "
            f"gene naming?); the data has {len(available)} genes (e.g. {list(map(str, available[:3]))})"
        )
    if missing:
        log.warning(
            "%s lacks %d of the %d panel genes (e.g. %s); they count as measured zeros",
            source,
            len(missing),
            len(cols),
            missing[:5],
        )
    return cols


def check_panel(genes: Sequence[str], available: Sequence[str], source: str = "gene panel") -> None:
    """Error naming how many panel genes the data lacks, with examples of each side (an explicit panel
    for training must be measured on the training slides)."""
    present = set(available)
    missing = [g for g in genes if g not in present]
    if missing:
        raise InputError(
            f"{source} does not match the data: {len(missing)} of {len(genes)} genes are absent "
            f"(e.g. {missing[:5]}); the data has {len(available)} genes (e.g. {list(available[:3])})"
        )


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
        self.adata = adata
        self.cfg = cfg
        self.transform = transform
        # slides (library -> path) win; else the recorded slide, or its namesake in slide_dir
        self.paths = slide_paths(adata, slides, slide_dir=slide_dir)
        self.spot_ids = np.asarray(adata.obs_names, dtype=object)
        self.libraries = adata.obs[Key.obs.library_id].astype(str).to_numpy()
        self.xy = np.asarray(adata.obsm[Key.obsm.spatial], dtype=np.float64)
        if expression is None:
            expression = panel_expression(adata, genes)
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
        """With ``aug_seed``, augmentation depends only on (seed, epoch, index): resumable and worker-proof."""
        self.epoch = epoch

    def read_image(self, index: int) -> np.ndarray:
        if self.patches is not None:
            return self.patches[index]
        lib = self.libraries[index]
        patch, _ = self.slide(lib).read_physical(tuple(self.xy[index]), self.cfg.patch_um, self.cfg.patch_px)
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
