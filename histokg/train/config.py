"""Configuration schema of ``histokg train`` (filled from ``configs/train/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from histokg.config import Component
from histokg.models import ModelConfig
from histokg.priors import PriorConfig
from histokg.st.transforms import AugmentConfig


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
    in_tissue_only: bool = True
    cache_patches: bool = True  # read each spot's patch once into memory (small studies)
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


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


@dataclass(frozen=True)
class EarlyStoppingConfig:
    metric: str = "recall@5"  # recall@1/5/10 (mean of both directions) or pearson
    patience: int = 3  # epochs without improvement before stopping (0 = never stop early)
    min_delta: float = 0.0


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
