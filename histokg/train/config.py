"""Configuration schema of ``histokg train`` (filled from ``configs/train/*.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from histokg import budget
from histokg.config import Component, check
from histokg.models import ModelConfig
from histokg.priors import PriorConfig
from histokg.st.pairing import check_reading
from histokg.st.transforms import AugmentConfig
from histokg.wsi.stain import DEFAULT_TARGET
from pathways_kg.dataconf import DataConfError


@dataclass(frozen=True)
class DataConfig:
    """Which spots train and validate, and what each one feeds the towers."""

    study: str | None = None  # a study folder with study.json (e.g. from `histokg synth`)
    h5ad: tuple[str, ...] = ()  # or paired .h5ad files following the AnnData contract
    val_slides: tuple[str, ...] = ()  # library ids for validation (default: the last library)
    exclude_slides: tuple[str, ...] = ()  # library ids kept out of training and validation (test slides)
    n_genes: int = 256  # highly variable genes, chosen on the training slides only
    genes: str | None = None  # or an explicit panel: a file with one gene per line
    patch_um: float = 112.0
    patch_px: int = 224
    # stain normalisation of every patch (histokg.wsi.stain): none, or reinhard (each slide's tissue colour
    # statistics in CIELAB moved onto stain_target: mean L, a, b then std L, a, b; the default target is
    # the OpenSlide test slide CMU-1-Small-Region's tissue). Recorded in the checkpoint: embedding and
    # prediction normalise new slides the same way
    stain_norm: str = "none"
    stain_target: tuple[float, ...] = DEFAULT_TARGET
    # read every patch as a scan at this um/px would show it (resolution matching: e.g. 3.4 to train for
    # low-resolution scans such as her2st patient A's); None: each slide's own resolution. Recorded in the
    # checkpoint, so new slides are read the same way
    read_mpp: float | None = None
    in_tissue_only: bool = True
    cache_patches: bool = True  # read each spot's patch once into memory (small studies)
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check(self.n_genes >= 1, "n_genes", f"must be >= 1, got {self.n_genes}")
        budget.check_patch(self.patch_um, self.patch_px, error=DataConfError)
        check_reading(self.stain_norm, self.stain_target, self.read_mpp, check)
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        shared = sorted(set(self.val_slides) & set(self.exclude_slides))
        check(not shared, "val_slides", f"{shared} are also in exclude_slides")


BATCHINGS = ("mixed", "within_slide")  # optim.batches


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 10
    batch_size: int = 64  # per process; the global batch is batch_size x world size
    grad_accum: int = 1
    lr: float = 1e-3  # heads, expression tower, temperature
    image_lr: float = 1e-4  # image backbone
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05  # cosine decays to lr x this
    grad_clip: float = 1.0  # max gradient norm (0 = off)
    amp: str = "auto"  # auto (bf16/fp16 on GPU, off on CPU), bf16, fp16, off
    # mixed: batches drawn from all training spots; within_slide: each batch from one slide, so a spot's
    # negatives are spots of its own section (batch-aware contrast: section identity cannot win the loss)
    batches: str = "mixed"
    # > 0: a KG-regularised expression tower. Its first layer's weights of genes that share a KG gene set
    # (pathway or cell-type markers) are pulled towards the set's mean, with this weight (genes of one
    # pathway share structure; histokg.train.engine.gene_set_penalty). Needs prior.bundle and expr_input genes
    gene_set_reg: float = 0.0

    def __post_init__(self) -> None:
        check(
            math.isfinite(self.gene_set_reg) and self.gene_set_reg >= 0,
            "gene_set_reg",
            f"must be a finite number >= 0, got {self.gene_set_reg}",
        )
        check(self.batches in BATCHINGS, "batches", f"{self.batches!r} is not one of {', '.join(BATCHINGS)}")
        for key in ("epochs", "batch_size", "grad_accum"):
            value = getattr(self, key)
            check(value >= 1, key, f"must be >= 1, got {value}")
        for key in ("lr", "image_lr"):
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, key, f"must be a finite number >= 0, got {value}")
        check(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = off)")
        check(
            self.amp in ("auto", "bf16", "fp16", "off"), "amp", f"{self.amp!r} is not auto, bf16, fp16 or off"
        )


@dataclass(frozen=True)
class EarlyStoppingConfig:
    metric: str = "recall@5"  # recall@1/5/10 (mean of both directions) or pearson
    patience: int = 3  # epochs without improvement before stopping (0 = never stop early)
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        metrics = ("recall@1", "recall@5", "recall@10", "pearson")
        check(self.metric in metrics, "metric", f"{self.metric!r} is not one of {', '.join(metrics)}")
        check(self.patience >= 0, "patience", f"must be >= 0 (0 = never stop early), got {self.patience}")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    out_dir: str = "runs/train"
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: Component = field(default_factory=lambda: Component("infonce"))
    prior: PriorConfig = field(default_factory=PriorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint_every: int = 50  # optimiser steps between mid-epoch checkpoints
    log_every: int = 10  # optimiser steps between log lines

    def __post_init__(self) -> None:
        from histokg.losses import loss_registry
        from histokg.registry import unknown_name_message

        check(
            self.loss.name in loss_registry,
            "loss.name",
            unknown_name_message("loss", self.loss.name, loss_registry.names, plural="losses"),
        )
        loss = loss_registry.lookup(self.loss.name)
        check(
            self.optim.gene_set_reg == 0 or self.model.expr_input == "genes",
            "optim.gene_set_reg",
            "regularises the expression tower's gene weights: it needs model.expr_input genes",
        )
        if self.optim.gene_set_reg > 0:
            check(
                bool(self.prior.bundle),
                "prior.bundle",
                "optim.gene_set_reg needs a KG bundle (its gene sets); set prior.bundle",
            )
        if loss.needs_prior or loss.needs_gaussians or self.model.expr_input == "kg":
            check(
                bool(self.prior.bundle),
                "prior.bundle",
                f"loss.name {self.loss.name!r} (or model.expr_input 'kg') needs a KG bundle; set prior.bundle "
                "(e.g. runs/demo/kg/bundle, built by `histokg demo` or `pathways-kg embed`)",
            )
        check(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        check(bool(str(self.out_dir).strip()), "out_dir", "must name a folder")
