"""Training data: split by slide, gene panel from the training slides, expression and KG inputs, sampler.

Validation is always a separate slide (never a random subset of spots: neighbouring spots share
tissue, so a spot split would leak). The gene panel (highly variable genes) is chosen on the
training slides alone and saved with the checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from histokg.errors import ConfigError
from histokg.keys import Batch, Key
from histokg.pp import check_panel, panel_genes, panel_log1p
from histokg.st.contract import check_spots, concat_sections, read_h5ad
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig
from histokg.train.config import DataConfig

log = logging.getLogger(__name__)


def feature_views(seed: int, epoch: int, n: int, views: int) -> torch.Tensor:
    """Which cached view each of ``n`` training spots reads in ``epoch`` (0 for all with one view).

    Depends only on (seed, epoch), so a run resumed mid-epoch reads the same views; ``histokg train``
    (:class:`ViewedFeatures`) and ``histokg bench`` (:func:`histokg.bench.engine.train_heads`) both draw here."""
    if views == 1:
        return torch.zeros(n, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randint(views, (n,), generator=gen)


class ViewedFeatures:
    """Cached features of several views per spot, (views, n, d), read as one (n, d) array per epoch: row ``i``
    is spot ``i``'s view :func:`feature_views` drew for the epoch (:meth:`set_epoch`)."""

    def __init__(self, features: np.ndarray, seed: int):
        if features.ndim != 3:
            raise ValueError(f"ViewedFeatures: expected (views, spots, dims), got shape {features.shape}")
        self.features = features
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.view_of = feature_views(self.seed, epoch, self.features.shape[1], self.features.shape[0]).numpy()

    def __len__(self) -> int:
        return self.features.shape[1]

    def __getitem__(self, index):
        return self.features[self.view_of[index], index]


def load_spots(cfg: DataConfig) -> ad.AnnData:
    """All spots of the configured study or .h5ad files (one AnnData, several libraries)."""
    if cfg.study and cfg.h5ad:
        raise ConfigError("data.study and data.h5ad are exclusive; give one")
    if cfg.study:
        from histokg.st.study import load_study

        path = Path(cfg.study)
        if not (path / "study.json").is_file():
            raise ConfigError(f"data.study: {path / 'study.json'} does not exist")
        adata = load_study(path)
    elif cfg.h5ad:
        parts = []
        for file in cfg.h5ad:
            if not Path(file).is_file():
                raise ConfigError(f"data.h5ad: {file} does not exist")
            part = read_h5ad(file)
            check_spots(part, f"data.h5ad: h5ad file {file}")
            parts.append(part)
        adata = concat_sections(parts) if len(parts) > 1 else parts[0]
    else:
        raise ConfigError("no training data: set data.study or data.h5ad")
    if cfg.in_tissue_only:
        in_tissue = adata.obs[Key.obs.in_tissue].to_numpy(bool)
        libs = adata.obs[Key.obs.library_id].astype(str).to_numpy()
        empty = sorted(set(libs) - set(libs[in_tissue]) - set(cfg.exclude_slides))
        if empty:
            raise ConfigError(
                f"data.in_tissue_only: no spot of {', '.join(map(repr, empty))} is marked as under tissue "
                "(obs['in_tissue']); exclude those slides (data.exclude_slides) or set data.in_tissue_only=false"
            )
        adata = adata[in_tissue].copy()
    return adata


def split_slides(adata: ad.AnnData, cfg: DataConfig) -> tuple[list[str], list[str]]:
    """Training and validation library ids."""
    libs = list(adata.obs[Key.obs.library_id].astype("category").cat.categories)
    unknown = [s for s in (*cfg.val_slides, *cfg.exclude_slides) if s not in libs]
    if unknown:
        raise ConfigError(
            f"data.val_slides/exclude_slides name unknown libraries {unknown}; the data has {libs}"
        )
    remaining = [lib for lib in libs if lib not in cfg.exclude_slides]
    val = list(cfg.val_slides) or remaining[-1:]
    train = [lib for lib in remaining if lib not in val]
    if not train:
        raise ConfigError(
            f"no training slide left: libraries {libs}, validation {val}, excluded {list(cfg.exclude_slides)}"
        )
    return train, val


def read_panel(path: str | Path, available: Sequence[str]) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data.genes: {path} does not exist")
    genes = [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    check_panel(genes, available, f"gene panel {path}")
    return genes


def data_hash(adata: ad.AnnData, genes: Sequence[str]) -> str:
    """Identity of the training data: spot ids, slides, MPPs and the gene panel."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, adata.obs_names)).encode())
    h.update("\n".join(genes).encode())
    for lib, entry in sorted(adata.uns.get(Key.uns.spatial, {}).items()):
        meta = entry.get(Key.uns.metadata, {})
        path, mpp = meta.get(Key.metadata.source_image_path), meta.get(Key.metadata.mpp)
        h.update(f"{lib}|{path}|{mpp}".encode())
    return h.hexdigest()


def bundle_hash(bundle: str | Path) -> str:
    """Hash of a KG bundle's files (the bundle is a small directory)."""
    from histokg.io import file_sha256

    path = Path(bundle)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()


@dataclass
class SplitData:
    """Everything one split feeds the model."""

    adata: ad.AnnData
    dataset: SpotPatchDataset
    expr_inputs: np.ndarray  # what the expression tower sees
    expression: np.ndarray  # log-normalised panel expression (prediction targets)


def build_split(
    adata: ad.AnnData,
    genes: list[str],
    pairing: PairingConfig,
    *,
    prior=None,
    expr_input: str = "genes",
    needs_prior: bool = False,
    needs_gaussians: bool = False,
    cache_patches: bool = False,
    load_images: bool = True,
    transform=None,
    aug_seed: int | None = None,
    desc: str = "",
) -> SplitData:
    expression = panel_log1p(adata, genes)
    extra: dict[str, np.ndarray] = {}
    counts = adata.layers[Key.layers.counts]
    if expr_input == "kg":
        if prior is None:
            raise ConfigError("model.expr_input = 'kg' needs a KG bundle (prior.bundle)")
        inputs = np.asarray(prior.activations(counts), dtype=np.float32)
    elif expr_input == "genes":
        inputs = expression
    else:
        raise ConfigError(f"model.expr_input: {expr_input!r} is not 'genes' or 'kg'")
    if needs_prior:
        sections = adata.obs[Key.obs.library_id].astype(str).to_numpy()  # prior.standardise="section"
        extra[Batch.kg] = prior.encode(counts, groups=sections).cpu().numpy().astype(np.float32)
    if needs_gaussians:
        mean, var = prior.spot_gaussians(counts)
        extra[Batch.gauss_mean] = np.asarray(mean, np.float32)
        extra[Batch.gauss_var] = np.asarray(var, np.float32)
    dataset = SpotPatchDataset(
        adata,
        pairing,
        expression=inputs,
        transform=transform,
        extra=extra,
        load_images=load_images,
        aug_seed=aug_seed,
    )
    if cache_patches and load_images:
        dataset.patches = np.stack(
            [
                dataset.read_image(i)
                for i in tqdm(range(len(dataset)), desc=f"caching {desc} patches", unit="spot")
            ]
        )
    return SplitData(adata, dataset, inputs, expression)


class ShardedBatchSampler(Sampler[list[int]]):
    """Per-epoch shuffled batches, identical for any world size.

    The epoch's permutation comes from ``seed + epoch``; global batch ``g`` is
    ``perm[g * B * world : (g + 1) * B * world]`` and rank ``r`` takes its ``r``-th slice of ``B``.
    So N ranks with batch B see, together, exactly the batches one process with batch N*B sees.
    ``start_batch`` skips batches already done when resuming mid-epoch.

    With ``groups`` (one slide index per spot: ``optim.batches: within_slide``) every global batch holds
    spots of one slide, so a spot's negatives come from its own section and the contrast cannot be won by
    telling sections apart (a batch effect). Each epoch shuffles every slide's spots, cuts them into
    global batches (a slide's remainder sits the epoch out) and shuffles the order of the batches.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
        groups: Sequence[int] | np.ndarray | None = None,
    ):  # fmt: skip
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_batch = 0, 0
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and len(self.groups) != n:
            raise ValueError(f"groups has {len(self.groups)} entries for {n} spots")
        if self.groups is not None:
            names, counts = np.unique(self.groups, return_counts=True)
            small = [
                f"{g} ({c} spots)" for g, c in zip(names, counts, strict=True) if c < batch_size * world_size
            ]
            if small and len(small) < len(names):
                log.warning(
                    "optim.batches: within_slide: %s hold fewer spots than one batch (%d x %d processes) and "
                    "never train; lower optim.batch_size or use mixed batches",
                    ", ".join(map(str, small)), batch_size, world_size,
                )  # fmt: skip
        if self.batches_per_epoch == 0:
            within = " of any one slide (optim.batches: within_slide)" if self.groups is not None else ""
            raise ConfigError(
                f"optim.batch_size {batch_size} x {world_size} processes exceeds the {n} training spots{within}"
            )

    @property
    def batches_per_epoch(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.groups is None:
            return self.n // global_batch
        return int(sum(c // global_batch for c in np.unique(self.groups, return_counts=True)[1]))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _global_batches(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        global_batch = self.batch_size * self.world_size
        if self.groups is None:
            perm = torch.randperm(self.n, generator=gen).tolist()
            return [perm[g * global_batch : (g + 1) * global_batch] for g in range(self.batches_per_epoch)]
        batches = []
        for group in np.unique(self.groups):
            members = np.flatnonzero(self.groups == group)
            members = members[torch.randperm(len(members), generator=gen).numpy()].tolist()
            batches += [
                members[i : i + global_batch] for i in range(0, len(members) - global_batch + 1, global_batch)
            ]
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[i] for i in order]

    def __iter__(self):
        for chunk in self._global_batches()[self.start_batch :]:
            yield chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep string fields as lists."""
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


@dataclass
class RunData:
    """The data of one training run: both splits, the gene panel, the KG prior and the identities that a
    resumed run must match."""

    train: SplitData
    val: SplitData
    genes: list[str]
    prior: object | None
    train_libs: list[str]
    val_libs: list[str]
    data_hash: str
    kg_hash: str


def prepare_data(cfg, loss_cls, *, needs_bundle: bool, images: bool = True) -> RunData:
    """Spots of ``cfg.data`` split by slide, the panel chosen on the training slides, the KG prior where
    the loss or the expression input needs it, and both splits (``images=False``: the training split
    reads no patches, its features come from the cache; augmentation only with images)."""
    from histokg.st.transforms import build_transforms

    spots = load_spots(cfg.data)
    train_libs, val_libs = split_slides(spots, cfg.data)
    lib = spots.obs[Key.obs.library_id].astype(str).to_numpy()
    train_ad = spots[np.isin(lib, train_libs)].copy()
    val_ad = spots[np.isin(lib, val_libs)].copy()
    genes = (
        read_panel(cfg.data.genes, list(spots.var_names))
        if cfg.data.genes
        else panel_genes(train_ad, cfg.data.n_genes)
    )
    prior = None
    if needs_bundle:
        from histokg.priors import KGPrior

        prior = KGPrior.from_bundle(cfg.prior.bundle, list(spots.var_names), cfg.prior)
    pairing = PairingConfig(
        patch_um=cfg.data.patch_um,
        patch_px=cfg.data.patch_px,
        stain_norm=cfg.data.stain_norm,
        stain_target=cfg.data.stain_target,
        read_mpp=cfg.data.read_mpp,
    )
    common = dict(
        prior=prior,
        expr_input=cfg.model.expr_input,
        needs_prior=loss_cls.needs_prior,
        needs_gaussians=loss_cls.needs_gaussians,
        cache_patches=cfg.data.cache_patches and images,
    )
    train = build_split(
        train_ad,
        genes,
        pairing,
        **common,
        load_images=images,
        transform=build_transforms(cfg.data.augment) if images else None,
        aug_seed=cfg.seed,
        desc="training",
    )
    val = build_split(val_ad, genes, pairing, **common, load_images=True, desc="validation")
    kg_hash = bundle_hash(cfg.prior.bundle) if prior is not None else ""
    return RunData(train, val, genes, prior, train_libs, val_libs, data_hash(spots, genes), kg_hash)
