"""The training loop: dual encoder + contrastive loss (+ KG prior), validation by slide, checkpoints.

Single process or torchrun (DDP); mixed precision on GPU (:mod:`~histokg.train.precision`);
gradient accumulation; AdamW with a linear warm-up and cosine decay (:mod:`~histokg.train.optim`).
Checkpoints, early stopping and the fault hooks are callbacks (:mod:`~histokg.train.callbacks`):
atomic checkpoints every ``checkpoint_every`` steps and at each epoch end, from which ``resume=True``
continues bit-for-bit. Metrics go to CSV and TensorBoard (:mod:`~histokg.train.logs`) and
``curves.png`` (:mod:`~histokg.train.curves`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from histokg.checkpoint import load_checkpoint
from histokg.config import save_config, to_dict
from histokg.errors import ConfigError
from histokg.io import atomic_open, atomic_path, file_sha256, write_json
from histokg.keys import Batch, Key
from histokg.losses import LossInputs, build_loss, loss_registry
from histokg.metrics import chance_recall, knn_predict, pearson_per_gene, retrieval_recall
from histokg.models import DualEncoder
from histokg.st.pairing import PairingConfig
from histokg.st.transforms import build_transforms
from histokg.train import distributed as dist_utils
from histokg.train.callbacks import (
    FAULT_KILL_ENV,
    FAULT_NAN_ENV,
    CallbackList,
    LoopState,
    TrainingError,
    default_callbacks,
)
from histokg.train.checkpoint import rng_state, set_rng_state
from histokg.train.config import TrainConfig
from histokg.train.curves import plot_curves
from histokg.train.data import (
    ShardedBatchSampler,
    build_split,
    collate,
    data_hash,
    load_spots,
    read_panel,
    select_panel,
    split_slides,
)
from histokg.train.logs import MetricLogger
from histokg.train.optim import build_optimizer, build_scheduler, lr_lambda, param_groups
from histokg.train.precision import Precision, amp_dtype
from histokg.train.rundir import prepare_run_dir

__all__ = [
    "FAULT_KILL_ENV",
    "FAULT_NAN_ENV",
    "JointModule",
    "MetricLogger",
    "Trainer",
    "TrainResult",
    "TrainingError",
    "amp_dtype",
    "lr_lambda",
    "param_groups",
    "plot_curves",
    "seed_everything",
    "train",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    best_metric: float
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    steps: int = 0
    seconds: float = 0.0


class JointModule(nn.Module):
    """Model + loss in one module so that DDP sees every trainable parameter in ``forward``."""

    def __init__(self, model: DualEncoder, loss: nn.Module, prior, info: dist_utils.DistInfo):
        super().__init__()
        self.model = model
        self.loss = loss
        self.prior = prior
        self.info = info

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """The loss's named terms for ``batch`` (``"loss"`` is the total)."""
        f, g, scale = self.model(batch.get(Batch.image), batch[Batch.expr], batch.get(Batch.features))
        f = dist_utils.gather_with_grad(f, self.info)
        g = dist_utils.gather_with_grad(g, self.info)
        inputs = LossInputs(img=f, expr=g, logit_scale=scale)
        if Batch.kg in batch:
            packed = dist_utils.gather_no_grad(batch[Batch.kg], self.info)
            inputs.W = self.prior.pair_weights_from_packed(packed).to(f.device, torch.float32)
        if Batch.gauss_mean in batch:
            inputs.gauss_mean = dist_utils.gather_no_grad(batch[Batch.gauss_mean], self.info)
            inputs.gauss_var = dist_utils.gather_no_grad(batch[Batch.gauss_var], self.info)
        return self.loss(inputs)


def resolve_device(name: str, info: dist_utils.DistInfo) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """One training run: ``Trainer(cfg).fit(resume=...)``; ``callbacks`` replace the default ones."""

    def __init__(self, cfg: TrainConfig, callbacks: CallbackList | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.last_path = self.out / "checkpoints" / "last.pt"
        self.best_path = self.out / "checkpoints" / "best.pt"
        self.loss_cls = loss_registry.lookup(cfg.loss.name)
        if self.needs_bundle and not Path(cfg.prior.bundle).is_dir():  # TrainConfig checked that it is set
            raise ConfigError(f"prior.bundle: {cfg.prior.bundle} is not a KG bundle folder")
        self.info = dist_utils.init_distributed(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = resolve_device(cfg.device, self.info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.precision = Precision(cfg.optim.amp, self.device)
        self.callbacks = callbacks if callbacks is not None else default_callbacks(self)

    @property
    def needs_bundle(self) -> bool:
        """The loss or the expression tower's input needs the KG bundle."""
        cls = self.loss_cls
        return cls.needs_prior or cls.needs_gaussians or self.cfg.model.expr_input == "kg"

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Data, model, loss, optimiser and schedule, in this order (the order fixes the random draws)."""
        seed_everything(self.cfg.seed)
        self._setup_data()
        self._setup_model()
        self._setup_loader()
        self._setup_optimizer()

    def _setup_data(self) -> None:
        """Split the slides, choose the gene panel on the training slides, build both splits."""
        cfg = self.cfg
        spots = load_spots(cfg.data)
        train_libs, val_libs = split_slides(spots, cfg.data)
        lib = spots.obs[Key.obs.library_id].astype(str).to_numpy()
        train_ad = spots[np.isin(lib, train_libs)].copy()
        val_ad = spots[np.isin(lib, val_libs)].copy()
        self.genes = (
            read_panel(cfg.data.genes, list(spots.var_names))
            if cfg.data.genes
            else select_panel(train_ad, cfg.data.n_genes)
        )
        self.prior = None
        if self.needs_bundle:
            from histokg.priors import KGPrior

            self.prior = KGPrior.from_bundle(cfg.prior.bundle, list(spots.var_names), cfg.prior)
        pairing = PairingConfig(patch_um=cfg.data.patch_um, patch_px=cfg.data.patch_px)
        common = dict(
            prior=self.prior,
            expr_input=cfg.model.expr_input,
            needs_prior=self.loss_cls.needs_prior,
            needs_gaussians=self.loss_cls.needs_gaussians,
        )
        use_cache = self.use_feature_cache
        self.train = build_split(
            train_ad,
            self.genes,
            pairing,
            **common,
            cache_patches=cfg.data.cache_patches and not use_cache,
            load_images=not use_cache,
            transform=None if use_cache else build_transforms(cfg.data.augment),
            aug_seed=cfg.seed,
            desc="training",
        )
        self.val = build_split(
            val_ad,
            self.genes,
            pairing,
            **common,
            cache_patches=cfg.data.cache_patches and not use_cache,
            load_images=True,
            desc="validation",
        )
        self.train_libs, self.val_libs = train_libs, val_libs
        self.data_hash = data_hash(spots, self.genes)
        self.kg_hash = _bundle_hash(cfg.prior.bundle) if self.prior is not None else ""

    @property
    def use_feature_cache(self) -> bool:
        """A frozen backbone's features are computed once and cached (``model.cache_features``)."""
        m = self.cfg.model
        return m.freeze_image and m.unfreeze_last == 0 and m.cache_features

    def _setup_model(self) -> None:
        """The dual encoder and the loss (their parameters), and the module DDP wraps."""
        cfg = self.cfg
        self.model = DualEncoder(cfg.model, n_expr_inputs=self.train.expr_inputs.shape[1]).to(self.device)
        prior_dim = (
            self.train.dataset.extra[Batch.gauss_mean].shape[1] if self.loss_cls.needs_gaussians else None
        )
        self.loss = build_loss(cfg.loss.name, cfg.model.embed_dim, prior_dim, **cfg.loss.kwargs).to(
            self.device
        )
        if self.use_feature_cache:
            self._cache_features()
        self.joint = JointModule(self.model, self.loss, self.prior, self.info)
        if self.info.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.joint, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.ddp = self.joint

    def _setup_loader(self) -> None:
        """The sharded batch sampler and loader of the training split; steps per epoch."""
        cfg = self.cfg
        self.sampler = ShardedBatchSampler(
            len(self.train.dataset), cfg.optim.batch_size, cfg.seed, self.info.rank, self.info.world_size
        )
        self.loader = DataLoader(
            self.train.dataset,
            batch_sampler=self.sampler,
            num_workers=cfg.data.num_workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            # its own generator: creating an epoch's iterator must not consume the global RNG,
            # or a run resumed mid-epoch would draw different dropout masks
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch // cfg.optim.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"optim.grad_accum {cfg.optim.grad_accum} exceeds the {self.sampler.batches_per_epoch} batches of an epoch"
            )

    def _setup_optimizer(self) -> None:
        self.optimizer = build_optimizer(self.model, self.loss, self.cfg)
        self.scheduler = build_scheduler(
            self.optimizer, self.steps_per_epoch * self.cfg.optim.epochs, self.cfg
        )

    def _cache_features(self) -> None:
        """Frozen backbone: compute its features once per spot, on disk, and train only the heads."""
        from safetensors.torch import load_file, save_file

        cache_dir = self.out / "feature_cache"
        for split in (self.train, self.val):
            weights = self.cfg.model.image_weights or f"random-init-seed-{self.cfg.seed}"
            key = hashlib_short(
                f"{self.cfg.model.image_encoder}|{weights}|{self.data_hash}|{split.dataset.spot_ids[0]}|{len(split.dataset)}"
            )
            path = cache_dir / f"features-{key}.safetensors"
            if path.is_file():
                feats = load_file(str(path))[Batch.features]
            else:
                feats = self._backbone_features(split.dataset)
                with atomic_path(path) as tmp:
                    save_file({Batch.features: feats.contiguous()}, str(tmp))
            split.dataset.extra[Batch.features] = feats.numpy()
            split.dataset.load_images = False
            split.dataset.patches = None

    @torch.no_grad()
    def _backbone_features(self, dataset) -> torch.Tensor:
        self.model.eval()
        out = []
        for start in tqdm(range(0, len(dataset), 64), desc="caching backbone features", unit="batch"):
            imgs = torch.stack(
                [
                    torch.from_numpy(dataset.read_image(i).transpose(2, 0, 1).copy()).float() / 255
                    for i in range(start, min(start + 64, len(dataset)))
                ]
            )
            with self.precision.autocast():
                out.append(self.model.image.features(imgs.to(self.device)).float().cpu())
        return torch.cat(out)

    # ------------------------------------------------------------------ state
    def state(self, loop: LoopState) -> dict:
        """The checkpoint of the run at ``loop`` (weights, optimiser, schedule, RNG, counters, meta)."""
        return {
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": loop.epoch,
            "batch_in_epoch": loop.batch_in_epoch,
            "step": loop.step,
            "best_metric": loop.best_metric,
            "bad_epochs": loop.bad_epochs,
            "meta": {
                "config": to_dict(self.cfg),
                "genes": self.genes,
                "train_slides": self.train_libs,
                "val_slides": self.val_libs,
                "data_hash": self.data_hash,
                "kg_hash": self.kg_hash,
                "n_expr_inputs": int(self.train.expr_inputs.shape[1]),
                "history": loop.history,
            },
        }

    def restore(self, ckpt: dict) -> LoopState:
        """Load a checkpoint of this run (same data and KG bundle) and return where it stood."""
        meta = ckpt["meta"]
        if meta["data_hash"] != self.data_hash:
            raise TrainingError(
                f"cannot resume: the data or gene panel differ from the checkpoint's (data hash {meta['data_hash'][:12]} vs {self.data_hash[:12]})"
            )
        if meta["kg_hash"] != self.kg_hash:
            raise TrainingError("cannot resume: the KG bundle differs from the checkpoint's")
        self.model.load_state_dict(ckpt["model"])
        self.loss.load_state_dict(ckpt["loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.precision.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        return LoopState(
            epoch=ckpt["epoch"],
            batch_in_epoch=ckpt["batch_in_epoch"],
            step=ckpt["step"],
            best_metric=ckpt["best_metric"],
            bad_epochs=ckpt["bad_epochs"],
            history=meta["history"],
        )

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def embed(self, split, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Image and expression embeddings of every spot of a split (no augmentation)."""
        self.model.eval()
        ds = split.dataset
        transform, ds.transform = ds.transform, None
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=0)
        fs, gs = [], []
        try:
            for batch in loader:
                with self.precision.autocast():
                    img = batch[Batch.image].to(self.device) if Batch.image in batch else None
                    feats = batch[Batch.features].to(self.device) if Batch.features in batch else None
                    fs.append(self.model.encode_image(img, feats).cpu())
                    gs.append(self.model.encode_expr(batch[Batch.expr].to(self.device)).cpu())
        finally:
            ds.transform = transform
        self.model.train()
        return torch.cat(fs).numpy(), torch.cat(gs).numpy()

    def validate(self) -> dict[str, float]:
        f_val, g_val = self.embed(self.val)
        libs = self.val.adata.obs[Key.obs.library_id].astype(str).to_numpy()
        recalls = {k: [] for k in (1, 5, 10)}
        chance = []
        for lib in np.unique(libs):
            sel = libs == lib
            i2e = retrieval_recall(f_val[sel], g_val[sel])
            e2i = retrieval_recall(g_val[sel], f_val[sel])
            for k in recalls:
                recalls[k].append((i2e[k] + e2i[k]) / 2)
            chance.append(chance_recall(int(sel.sum()), 5))
        with torch.no_grad():
            self.model.eval()
            g_train = (
                self.model.encode_expr(torch.from_numpy(self.train.expr_inputs).to(self.device)).cpu().numpy()
            )
            self.model.train()
        pred = knn_predict(f_val, g_train, self.train.expression, k=10)
        pearson = float(np.nanmean(pearson_per_gene(pred, self.val.expression)))
        out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
        out["pearson"] = pearson
        out["chance_recall@5"] = float(np.mean(chance))
        return out

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> TrainResult:
        """Train for ``optim.epochs`` (or until early stopping); ``resume`` continues from last.pt."""
        if self.info.is_main:  # before any compute: a run folder is never mixed with another run's files
            prepare_run_dir(self.cfg, resume=resume, overwrite=overwrite)
        dist_utils.barrier(self.info)
        self.setup()
        self._write_run_inputs()
        loop = self._start(resume)
        self.logger = MetricLogger(self.out, loop.step, enabled=self.info.is_main)
        self.callbacks.on_fit_start(self, loop)
        started = time.perf_counter()
        self.model.train()
        try:
            while loop.epoch < self.cfg.optim.epochs and not loop.stop:
                self._train_epoch(loop)
                self._end_epoch(loop)
        except KeyboardInterrupt:
            self.callbacks.on_interrupt(self, loop)
            raise
        seconds = time.perf_counter() - started
        self.logger.close()
        result = TrainResult(
            self.out,
            self.last_path,
            self.best_path,
            loop.best_metric,
            loop.history,
            loop.stopped_early,
            loop.step,
            seconds,
        )
        if self.info.is_main:
            self._write_summary(loop, seconds)
        dist_utils.cleanup(self.info)
        return result

    def _write_run_inputs(self) -> None:
        """config.yaml and genes.txt in the run folder (main process)."""
        if self.info.is_main:
            save_config(self.cfg, self.out / "config.yaml")
            with atomic_open(self.out / "genes.txt", "w", encoding="utf-8") as fh:
                fh.write("\n".join(self.genes) + "\n")

    def _start(self, resume: bool) -> LoopState:
        """A fresh loop, or the one of ``checkpoints/last.pt`` restored."""
        if not resume:
            return LoopState()
        loop = self.restore(load_checkpoint(self.last_path, self.device))
        log.info(
            "resuming from %s at epoch %d, batch %d, step %d",
            self.last_path,
            loop.epoch,
            loop.batch_in_epoch,
            loop.step,
        )
        return loop

    def _train_epoch(self, loop: LoopState) -> None:
        """One pass over the training batches (from ``loop.batch_in_epoch`` when resumed mid-epoch)."""
        cfg = self.cfg
        first = loop.batch_in_epoch
        self.sampler.set_epoch(loop.epoch, first)
        self.train.dataset.set_epoch(loop.epoch)
        bar = tqdm(
            self.loader,
            desc=f"epoch {loop.epoch + 1}/{cfg.optim.epochs}",
            unit="batch",
            disable=not self.info.is_main,
            leave=False,
        )
        for offset, batch in enumerate(bar):
            loop.batch_in_epoch = first + offset + 1
            boundary = loop.batch_in_epoch % cfg.optim.grad_accum == 0
            terms = self._forward_backward(loop, batch, sync=boundary)
            if not boundary:
                continue
            self._optimizer_step(loop)
            row = self._log_step(loop, terms)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            self.callbacks.on_step_end(self, loop)

    def _forward_backward(self, loop: LoopState, batch: dict, sync: bool) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch, gradients accumulated (DDP syncs them only when ``sync``)."""
        batch = {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        no_sync = nullcontext() if sync or not self.info.enabled else self.ddp.no_sync()
        with no_sync:
            with self.precision.autocast():
                terms = self.ddp(batch)
            terms["loss"] = self.callbacks.on_loss(self, loop, terms["loss"])
            self.precision.scaler.scale(terms["loss"] / self.cfg.optim.grad_accum).backward()
        return terms

    def _optimizer_step(self, loop: LoopState) -> None:
        """Clip, step, advance the schedule; ``loop.step`` counts it."""
        scaler, optimizer = self.precision.scaler, self.optimizer
        loop.updating = True
        if self.cfg.optim.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], self.cfg.optim.grad_clip
            )
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        loop.step += 1
        loop.updating = False

    def _log_step(self, loop: LoopState, terms: dict[str, torch.Tensor]) -> dict:
        """One metrics.csv row: the last micro-batch's loss and its parts, learning rate, temperature."""
        row = {
            "step": loop.step,
            "epoch": loop.epoch + 1,
            "loss": float(terms["loss"].detach()),
            "lr": self.scheduler.get_last_lr()[0],
            "temperature": float(1.0 / self.model.logit_scale().detach()),
        }
        row.update({f"loss/{k}": float(v.detach()) for k, v in terms.items() if k != "loss"})
        self.logger.train(row, log_now=loop.step % self.cfg.log_every == 0)
        return row

    def _end_epoch(self, loop: LoopState) -> None:
        """Validate, log the epoch, then the callbacks (best metric, checkpoints, early stopping)."""
        metrics = self.validate()
        self.callbacks.on_validation_end(self, loop, metrics)
        loop.epoch, loop.batch_in_epoch = loop.epoch + 1, 0
        loop.history.append({"epoch": loop.epoch, "step": loop.step, **metrics})
        self.logger.val(loop.history[-1])
        log.info("epoch %d: %s", loop.epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        self.callbacks.on_epoch_end(self, loop)
        dist_utils.barrier(self.info)

    def _write_summary(self, loop: LoopState, seconds: float) -> None:
        """curves.png and summary.json."""
        plot_curves(self.out)
        best = loop.best_metric
        write_json(
            self.out / "summary.json",
            {
                "best_metric": best if math.isfinite(best) else None,  # JSON has no -Infinity
                "metric": self.cfg.early_stopping.metric,
                "steps": loop.step,
                "seconds": seconds,
                "stopped_early": loop.stopped_early,
                "history": loop.history,
                "train_slides": self.train_libs,
                "val_slides": self.val_libs,
            },
        )


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a dual encoder as ``cfg`` says.

    ``out_dir`` must not hold another run: ``resume`` continues the run there from
    ``checkpoints/last.pt`` (same config, ``optim.epochs`` may change), ``overwrite`` replaces it.
    """
    return Trainer(cfg).fit(resume=resume, overwrite=overwrite)


def hashlib_short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _bundle_hash(bundle: str | Path) -> str:
    """Hash of a KG bundle's files (the bundle is a small directory)."""
    path = Path(bundle)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()
