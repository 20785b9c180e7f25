"""The training loop: dual encoder + contrastive loss (+ KG prior), validation by slide, checkpoints.

Single process or torchrun (DDP); mixed precision on GPU (:mod:`~histokg.train.precision`);
gradient accumulation; AdamW with a linear warm-up and cosine decay (:mod:`~histokg.train.optim`).
Checkpoints, early stopping and the fault hooks are callbacks (:mod:`~histokg.train.callbacks`):
atomic checkpoints every ``checkpoint_every`` steps and at each epoch end, from which ``resume=True``
continues bit-for-bit. Metrics go to CSV and TensorBoard (:mod:`~histokg.train.logs`) and
``curves.png`` (:mod:`~histokg.train.curves`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from histokg.checkpoint import load_checkpoint
from histokg.config import save_config
from histokg.errors import ConfigError
from histokg.features import Extractor, FeatureCache, spot_features
from histokg.io import atomic_open, output_lock
from histokg.keys import Batch, Key
from histokg.losses import build_loss, loss_registry
from histokg.models import DualEncoder
from histokg.patch_stats import extra_functions, raw_extras
from histokg.train import distributed as dist_utils
from histokg.train.callbacks import CallbackList, LoopState, TrainingError, default_callbacks
from histokg.train.checkpoint import restore_state, run_state, with_absolute_paths
from histokg.train.config import TrainConfig
from histokg.train.curves import plot_curves
from histokg.train.data import ShardedBatchSampler, ViewedFeatures, collate, prepare_data
from histokg.train.engine import JointModule, StepParts, run_epoch, seed_everything
from histokg.train.logs import MetricLogger, write_summary
from histokg.train.optim import build_optimizer, build_scheduler
from histokg.train.precision import Precision
from histokg.train.rundir import prepare_run_dir
from histokg.train.validation import validate

__all__ = ["Trainer", "TrainResult", "TrainingError", "train"]

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


class Trainer:
    """One training run: ``Trainer(cfg).fit(resume=...)``; ``callbacks`` replace the default ones."""

    def __init__(self, cfg: TrainConfig, callbacks: CallbackList | None = None):
        self.cfg = cfg = with_absolute_paths(cfg)  # config.yaml and checkpoints record where the bundle is
        self.out = Path(cfg.out_dir)
        self.last_path = self.out / "checkpoints" / "last.pt"
        self.best_path = self.out / "checkpoints" / "best.pt"
        self.loss_cls = loss_registry.lookup(cfg.loss.name)
        if self.needs_bundle and not Path(cfg.prior.bundle).is_dir():  # TrainConfig checked that it is set
            raise ConfigError(f"prior.bundle: {cfg.prior.bundle} is not a KG bundle folder")
        self.info = dist_utils.init_distributed(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = dist_utils.resolve_device(cfg.device, self.info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.precision = Precision(cfg.optim.amp, self.device)
        self.callbacks = callbacks if callbacks is not None else default_callbacks(self)

    @property
    def needs_bundle(self) -> bool:
        """The loss, the expression tower's input or its gene-set regulariser needs the KG bundle."""
        cls = self.loss_cls
        return (
            cls.needs_prior
            or cls.needs_gaussians
            or self.cfg.model.expr_input == "kg"
            or self.cfg.optim.gene_set_reg > 0
        )

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
        data = prepare_data(
            self.cfg, self.loss_cls, needs_bundle=self.needs_bundle, images=not self.use_feature_cache
        )
        self.train, self.val, self.genes, self.prior = data.train, data.val, data.genes, data.prior
        self.train_libs, self.val_libs = data.train_libs, data.val_libs
        self.data_hash, self.kg_hash = data.data_hash, data.kg_hash

    @property
    def use_feature_cache(self) -> bool:
        """A frozen backbone's features are computed once and cached (``model.cache_features``)."""
        m = self.cfg.model
        return m.freeze_image and m.unfreeze_last == 0 and m.cache_features

    def _setup_model(self) -> None:
        """The dual encoder and the loss (their parameters), and the module DDP wraps.

        On cached features the heads are drawn first and the frozen backbone (built on a forked RNG) is
        attached afterwards, so that the trained parameters start where ``histokg bench``'s do.
        """
        cfg = self.cfg
        n_expr = self.train.expr_inputs.shape[1]
        if self.use_feature_cache:
            extractor = Extractor.create(
                cfg.model.image_encoder,
                cfg.model.image_weights,
                device=self.device,
                dtype=self.precision.dtype,
                seed=cfg.seed,
                model_dir=self.out / "feature_cache" / "onnx",
                stages=cfg.model.feature_stages,
            )
            found = self._cache_features(extractor)
            self.model = DualEncoder(cfg.model, n_expr, image_features=extractor.num_features)
            self.model.image.attach_backbone(extractor.backbone, cfg.model)
            self._feed_features(found)
        else:
            self.model = DualEncoder(cfg.model, n_expr)
        self.model.to(self.device)
        prior_dim = (
            self.train.dataset.extra[Batch.gauss_mean].shape[1] if self.loss_cls.needs_gaussians else None
        )
        self.loss = build_loss(cfg.loss.name, cfg.model.embed_dim, prior_dim, **cfg.loss.kwargs).to(
            self.device
        )
        reg = cfg.optim.gene_set_reg
        self.joint = JointModule(
            self.model,
            self.loss,
            self.prior,
            self.info,
            gene_sets=self.prior.gene_set_incidence(self.genes)[0] if reg > 0 else None,
            gene_set_reg=reg,
        )
        if self.info.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.joint, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.ddp = self.joint

    def _setup_loader(self) -> None:
        """The sharded batch sampler and loader of the training split; steps per epoch."""
        cfg = self.cfg
        groups = None
        if cfg.optim.batches == "within_slide":  # each batch from one training slide
            groups = self.train.adata.obs[Key.obs.library_id].astype(str).to_numpy()
        self.sampler = ShardedBatchSampler(
            len(self.train.dataset), cfg.optim.batch_size, cfg.seed, self.info.rank, self.info.world_size,
            groups=groups,
        )  # fmt: skip
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
        """AdamW and its schedule, and the engine's :class:`~histokg.train.engine.StepParts`."""
        optim = self.cfg.optim
        self.optimizer = build_optimizer(self.model, self.loss, optim)
        self.scheduler = build_scheduler(self.optimizer, self.steps_per_epoch * optim.epochs, optim)
        self.parts = StepParts(
            joint=self.joint,
            module=self.ddp,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            precision=self.precision,
            callbacks=self.callbacks,
            device=self.device,
            grad_accum=optim.grad_accum,
            grad_clip=optim.grad_clip,
        )

    def _cache_features(self, extractor) -> list:
        """Frozen backbone: its features of every spot (and the ``model.image_extras`` of the same patches),
        computed once (cached in the run folder, keyed by the tower's weights, patch geometry, slide and
        spots); one :class:`~histokg.features.SpotFeatures` per split (training, validation)."""
        cache = FeatureCache(self.out / "feature_cache")
        extras = extra_functions(self.cfg.model.image_extras)
        return [
            spot_features(
                split.adata,
                extractor,
                split.dataset.cfg,
                cache=cache,
                extras=extras,
                views=views,
                stain_jitter=self.cfg.model.feature_stain_jitter if views > 1 else 0.0,
                batch_size=64,
                dataset=split.dataset,
            )
            for split, views in ((self.train, self.cfg.model.feature_views), (self.val, 1))
        ]

    def _feed_features(self, found: list) -> None:
        """The heads read the cached features instead of patches: the tower's, followed by the extras
        standardised on the training spots only (stored in the model, so its checkpoint embeds alike)."""
        extras = self.model.image.extras
        if extras is not None:
            extras.fit(raw_extras(found[0].extras, extras.names))
        for split, feats in zip((self.train, self.val), found, strict=True):
            head_input = feats.tower if extras is None else extras.append(feats.tower, feats.extras)
            split.dataset.extra[Batch.features] = (
                ViewedFeatures(head_input, self.cfg.seed) if len(head_input) > 1 else head_input[0]
            )
            split.dataset.load_images = False
            split.dataset.patches = None

    # ------------------------------------------------------------------ state
    def state(self, loop: LoopState) -> dict:
        """The checkpoint of the run at ``loop`` (:func:`~histokg.train.checkpoint.run_state`)."""
        return run_state(self, loop)

    def restore(self, ckpt: dict) -> LoopState:
        """Load a checkpoint of this run (same data and KG bundle) and return where it stood."""
        return restore_state(self, ckpt)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Retrieval and kNN-prediction metrics on the validation slides (:mod:`~histokg.train.validation`)."""
        return validate(self.joint, self.val, self.train, self.precision)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> TrainResult:
        """Train for ``optim.epochs`` (or until early stopping); ``resume`` continues from last.pt.

        The main process holds the run folder's lock (:func:`histokg.io.output_lock`) for the whole run:
        a second run into the same folder refuses at once, naming this one.
        """
        lock = (
            output_lock(self.out, "histokg train", label="out_dir")
            if self.info.is_main
            else contextlib.nullcontext()
        )
        with lock:
            return self._fit(resume, overwrite)

    def _fit(self, resume: bool, overwrite: bool) -> TrainResult:
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
            plot_curves(self.out)
            write_summary(
                self.out, loop, seconds, self.cfg.early_stopping.metric, self.train_libs, self.val_libs
            )
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
        self.sampler.set_epoch(loop.epoch, loop.batch_in_epoch)
        self.train.dataset.set_epoch(loop.epoch)
        bar = tqdm(
            self.loader,
            desc=f"epoch {loop.epoch + 1}/{self.cfg.optim.epochs}",
            unit="batch",
            disable=not self.info.is_main,
            leave=False,
        )
        run_epoch(self, self.parts, loop, bar, log_step=lambda lp, terms: self._log_step(lp, terms, bar))

    def _log_step(self, loop: LoopState, terms: dict[str, torch.Tensor], bar=None) -> None:
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
        if bar is not None:
            bar.set_postfix(loss=f"{row['loss']:.3f}")

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


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a dual encoder as ``cfg`` says.

    ``out_dir`` must not hold another run: ``resume`` continues the run there from
    ``checkpoints/last.pt`` (same config, ``optim.epochs`` may change), ``overwrite`` replaces it.
    """
    return Trainer(cfg).fit(resume=resume, overwrite=overwrite)
