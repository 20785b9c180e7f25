"""The training loop: dual encoder + contrastive loss (+ KG prior), validation by slide, checkpoints.

Single process or torchrun (DDP); mixed precision on GPU; gradient accumulation; AdamW with a
linear warm-up and cosine decay; early stopping on a validation metric; atomic checkpoints every
``checkpoint_every`` steps and at each epoch end, from which ``resume=True`` continues bit-for-bit.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import signal
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
from histokg.errors import ConfigError, HistokgError
from histokg.io import atomic_open, atomic_path, file_sha256, write_json
from histokg.losses import LOSSES, LossInputs, build_loss
from histokg.metrics import chance_recall, knn_predict, pearson_per_gene, retrieval_recall
from histokg.models import DualEncoder
from histokg.st.pairing import PairingConfig
from histokg.st.transforms import build_transforms
from histokg.train import distributed as dist_utils
from histokg.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from histokg.train.config import TrainConfig
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
from histokg.train.rundir import prepare_run_dir

log = logging.getLogger(__name__)

# Test hooks: simulate a killed run or a diverging loss at a given optimiser step.
FAULT_KILL_ENV = "HISTOKG_FAULT_KILL_AT_STEP"
FAULT_NAN_ENV = "HISTOKG_FAULT_NAN_AT_STEP"


class TrainingError(HistokgError):
    """Training cannot go on (e.g. the loss became NaN)."""


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

    def forward(self, batch: dict) -> torch.Tensor:
        f, g, scale = self.model(batch.get("image"), batch["expr"], batch.get("features"))
        f = dist_utils.gather_with_grad(f, self.info)
        g = dist_utils.gather_with_grad(g, self.info)
        inputs = LossInputs(img=f, expr=g, logit_scale=scale)
        if "kg" in batch:
            packed = dist_utils.gather_no_grad(batch["kg"], self.info)
            inputs.W = self.prior.pair_weights_from_packed(packed).to(f.device, torch.float32)
        if "g_mean" in batch:
            inputs.gauss_mean = dist_utils.gather_no_grad(batch["g_mean"], self.info)
            inputs.gauss_var = dist_utils.gather_no_grad(batch["g_var"], self.info)
        return self.loss(inputs)


def resolve_device(name: str, info: dist_utils.DistInfo) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if mode in ("fp16", "auto"):
        return torch.float16
    raise ConfigError(f"optim.amp: {mode!r} is not auto, bf16, fp16 or off")


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def param_groups(model: DualEncoder, loss: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: backbone at ``image_lr``; no weight decay on biases, norms and the temperature."""
    groups = {(b, d): [] for b in (True, False) for d in (True, False)}
    for name, p in list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss.named_parameters()]:
        if not p.requires_grad:
            continue
        backbone = name.startswith("image.backbone.")
        decay = p.ndim >= 2 and "log_logit_scale" not in name
        groups[(backbone, decay)].append(p)
    out = []
    for (backbone, decay), params in groups.items():
        if params:
            out.append(
                {
                    "params": params,
                    "lr": cfg.optim.image_lr if backbone else cfg.optim.lr,
                    "weight_decay": cfg.optim.weight_decay if decay else 0.0,
                }
            )
    return out


class Trainer:
    """One training run. ``Trainer(cfg).fit(resume=...)``."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        if cfg.loss.name not in LOSSES:
            build_loss(cfg.loss.name, cfg.model.embed_dim)  # raises with the nearest valid name
        self.loss_cls = LOSSES[cfg.loss.name]
        needs_bundle = (
            self.loss_cls.needs_prior or self.loss_cls.needs_gaussians or cfg.model.expr_input == "kg"
        )
        if needs_bundle and not Path(cfg.prior.bundle).is_dir():  # TrainConfig checked that it is set
            raise ConfigError(f"prior.bundle: {cfg.prior.bundle} is not a KG bundle folder")
        self.info = dist_utils.init_distributed(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = resolve_device(cfg.device, self.info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp = amp_dtype(cfg.optim.amp, self.device)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        spots = load_spots(cfg.data)
        train_libs, val_libs = split_slides(spots, cfg.data)
        lib = spots.obs["library_id"].astype(str).to_numpy()
        train_ad = spots[np.isin(lib, train_libs)].copy()
        val_ad = spots[np.isin(lib, val_libs)].copy()
        self.genes = (
            read_panel(cfg.data.genes, list(spots.var_names))
            if cfg.data.genes
            else select_panel(train_ad, cfg.data.n_genes)
        )
        self.prior = None
        needs_prior = self.loss_cls.needs_prior
        needs_gauss = self.loss_cls.needs_gaussians
        if needs_prior or needs_gauss or cfg.model.expr_input == "kg":
            from histokg.priors import KGPrior

            self.prior = KGPrior.from_bundle(cfg.prior.bundle, list(spots.var_names), cfg.prior)
        pairing = PairingConfig(patch_um=cfg.data.patch_um, patch_px=cfg.data.patch_px)
        use_cache = cfg.model.freeze_image and cfg.model.unfreeze_last == 0 and cfg.model.cache_features
        common = dict(
            prior=self.prior,
            expr_input=cfg.model.expr_input,
            needs_prior=needs_prior,
            needs_gaussians=needs_gauss,
        )
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

        self.model = DualEncoder(cfg.model, n_expr_inputs=self.train.expr_inputs.shape[1]).to(self.device)
        prior_dim = self.train.dataset.extra["g_mean"].shape[1] if needs_gauss else None
        self.loss = build_loss(cfg.loss.name, cfg.model.embed_dim, prior_dim, **cfg.loss.kwargs).to(
            self.device
        )
        if use_cache:
            self._cache_features()
        self.joint = JointModule(self.model, self.loss, self.prior, self.info)
        if self.info.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.joint, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        else:
            self.ddp = self.joint
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
        total = self.steps_per_epoch * cfg.optim.epochs
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.loss, cfg))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.warmup_steps, total, cfg.optim.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

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
                feats = load_file(str(path))["features"]
            else:
                feats = self._backbone_features(split.dataset)
                with atomic_path(path) as tmp:
                    save_file({"features": feats.contiguous()}, str(tmp))
            split.dataset.extra["features"] = feats.numpy()
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
            with self._autocast():
                out.append(self.model.image.features(imgs.to(self.device)).float().cpu())
        return torch.cat(out)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    # ------------------------------------------------------------------ state
    def state(self, epoch: int, batch_in_epoch: int, step: int, best: float, bad: int, history: list) -> dict:
        return {
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "best_metric": best,
            "bad_epochs": bad,
            "meta": {
                "config": to_dict(self.cfg),
                "genes": self.genes,
                "train_slides": self.train_libs,
                "val_slides": self.val_libs,
                "data_hash": self.data_hash,
                "kg_hash": self.kg_hash,
                "n_expr_inputs": int(self.train.expr_inputs.shape[1]),
                "history": history,
            },
        }

    def restore(self, ckpt: dict) -> tuple[int, int, int, float, int, list]:
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
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        return (
            ckpt["epoch"],
            ckpt["batch_in_epoch"],
            ckpt["step"],
            ckpt["best_metric"],
            ckpt["bad_epochs"],
            meta["history"],
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
                with self._autocast():
                    img = batch["image"].to(self.device) if "image" in batch else None
                    feats = batch["features"].to(self.device) if "features" in batch else None
                    fs.append(self.model.encode_image(img, feats).cpu())
                    gs.append(self.model.encode_expr(batch["expr"].to(self.device)).cpu())
        finally:
            ds.transform = transform
        self.model.train()
        return torch.cat(fs).numpy(), torch.cat(gs).numpy()

    def validate(self) -> dict[str, float]:
        f_val, g_val = self.embed(self.val)
        libs = self.val.adata.obs["library_id"].astype(str).to_numpy()
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
        cfg = self.cfg
        main = self.info.is_main
        if main:  # before any compute: a run folder is never mixed with another run's files
            prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
        dist_utils.barrier(self.info)
        self.setup()
        ckpt_dir = self.out / "checkpoints"
        last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
        if main:
            save_config(cfg, self.out / "config.yaml")
            with atomic_open(self.out / "genes.txt", "w", encoding="utf-8") as fh:
                fh.write("\n".join(self.genes) + "\n")
        start_epoch, start_batch, step, best, bad, history = 0, 0, 0, -math.inf, 0, []
        if resume:
            start_epoch, start_batch, step, best, bad, history = self.restore(
                load_checkpoint(last_path, self.device)
            )
            log.info(
                "resuming from %s at epoch %d, batch %d, step %d", last_path, start_epoch, start_batch, step
            )
        logger = MetricLogger(self.out, step, enabled=main)
        kill_at = int(os.environ.get(FAULT_KILL_ENV, "-1"))
        nan_at = int(os.environ.get(FAULT_NAN_ENV, "-1"))
        accum = cfg.optim.grad_accum
        stopped_early = False
        started = time.perf_counter()
        self.model.train()
        for epoch in range(start_epoch, cfg.optim.epochs):
            first = start_batch if epoch == start_epoch else 0
            self.sampler.set_epoch(epoch, first)
            self.train.dataset.set_epoch(epoch)
            bar = tqdm(
                self.loader,
                desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                unit="batch",
                disable=not main,
                leave=False,
            )
            for offset, batch in enumerate(bar):
                batch_index = first + offset
                batch = {
                    k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                }
                boundary = (batch_index + 1) % accum == 0
                sync = nullcontext() if boundary or not self.info.enabled else self.ddp.no_sync()
                with sync:
                    with self._autocast():
                        loss = self.ddp(batch)
                    if nan_at >= 0 and step + 1 == nan_at:
                        loss = loss * float("nan")
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}, batch {batch_index + 1}); "
                            f"training stopped. The last good checkpoint is {last_path if last_path.exists() else 'none yet'}; "
                            "lower optim.lr or check the inputs"
                        )
                    self.scaler.scale(loss / accum).backward()
                if not boundary:
                    continue
                if cfg.optim.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(
                        [p for g in self.optimizer.param_groups for p in g["params"]], cfg.optim.grad_clip
                    )
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                step += 1
                terms = dict(getattr(self.loss, "last_terms", {}) or {})
                row = {
                    "step": step,
                    "epoch": epoch + 1,
                    "loss": float(loss.detach()),
                    "lr": self.scheduler.get_last_lr()[0],
                    "temperature": float(1.0 / self.model.logit_scale().detach()),
                }
                row.update({f"loss/{k}": v for k, v in terms.items()})
                logger.train(row, log_now=step % cfg.log_every == 0)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                if main and step % cfg.checkpoint_every == 0:
                    save_checkpoint(last_path, self.state(epoch, batch_index + 1, step, best, bad, history))
                if step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            metrics = self.validate()
            metric = metrics[cfg.early_stopping.metric]
            improved = metric > best + cfg.early_stopping.min_delta
            if improved:
                best, bad = metric, 0
            else:
                bad += 1
            history.append({"epoch": epoch + 1, "step": step, **metrics})
            logger.val(history[-1])
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            if main:
                state = self.state(epoch + 1, 0, step, best, bad, history)
                save_checkpoint(last_path, state)
                if improved:
                    save_checkpoint(best_path, state)
            dist_utils.barrier(self.info)
            if cfg.early_stopping.patience and bad >= cfg.early_stopping.patience:
                stopped_early = True
                log.info(
                    "early stopping after epoch %d: no %s improvement for %d epochs",
                    epoch + 1,
                    cfg.early_stopping.metric,
                    bad,
                )
                break
        seconds = time.perf_counter() - started
        logger.close()
        result = TrainResult(self.out, last_path, best_path, best, history, stopped_early, step, seconds)
        if main:
            plot_curves(self.out)
            write_json(
                self.out / "summary.json",
                {
                    "best_metric": best if math.isfinite(best) else None,  # JSON has no -Infinity
                    "metric": cfg.early_stopping.metric,
                    "steps": step,
                    "seconds": seconds,
                    "stopped_early": stopped_early,
                    "history": history,
                    "train_slides": self.train_libs,
                    "val_slides": self.val_libs,
                },
            )
        dist_utils.cleanup(self.info)
        return result


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a dual encoder as ``cfg`` says.

    ``out_dir`` must not hold another run: ``resume`` continues the run there from
    ``checkpoints/last.pt`` (same config, ``optim.epochs`` may change), ``overwrite`` replaces it.
    """
    return Trainer(cfg).fit(resume=resume, overwrite=overwrite)


# --------------------------------------------------------------------------- logging and plots


class MetricLogger:
    """CSV (training steps and validation epochs) and TensorBoard, from the main process only."""

    def __init__(self, out: Path, resume_step: int, enabled: bool):
        self.enabled = enabled
        self.out = out
        if not enabled:
            return
        self.train_csv = out / "metrics.csv"
        self.val_csv = out / "val_metrics.csv"
        for path in (self.train_csv, self.val_csv):
            _truncate_csv(path, resume_step)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step if resume_step else None)

    def train(self, row: dict, log_now: bool) -> None:
        if not self.enabled:
            return
        _append_csv(self.train_csv, row)
        for k, v in row.items():
            if k not in ("step", "epoch"):
                self.tb.add_scalar(f"train/{k}", v, row["step"])
        if log_now:
            log.info(
                "step %d: loss %.4f lr %.2e temperature %.4f",
                row["step"],
                row["loss"],
                row["lr"],
                row["temperature"],
            )

    def val(self, row: dict) -> None:
        if not self.enabled:
            return
        _append_csv(self.val_csv, row)
        for k, v in row.items():
            if k not in ("step", "epoch"):
                self.tb.add_scalar(f"val/{k}", v, row["step"])

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row), extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a resumed run logs them again)."""
    if not path.exists():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if int(r["step"]) <= step]
    if len(keep) == len(rows):
        return
    path.unlink()
    for r in keep:
        _append_csv(path, r)


def plot_curves(out: Path) -> Path | None:
    """``curves.png``: training loss and temperature by step, validation metrics by epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not (out / "metrics.csv").exists():
        return None
    tr = pd.read_csv(out / "metrics.csv")
    va = pd.read_csv(out / "val_metrics.csv") if (out / "val_metrics.csv").exists() else None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(tr["step"], tr["loss"], lw=0.8)
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    axes[1].plot(tr["step"], tr["temperature"], lw=0.8, color="tab:orange")
    axes[1].set(xlabel="step", ylabel="temperature", title="learned temperature")
    if va is not None and len(va):
        for col in ("recall@1", "recall@5", "recall@10", "pearson"):
            axes[2].plot(va["epoch"], va[col], marker="o", label=col)
        if "chance_recall@5" in va:
            axes[2].plot(va["epoch"], va["chance_recall@5"], ls="--", color="grey", label="chance recall@5")
        axes[2].set(xlabel="epoch", title="validation (held-out slide)")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


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
