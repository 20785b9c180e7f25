"""One benchmark run: train the dual encoder's heads on cached frozen-tower features with one loss.

Training goes through the product's own engine (:func:`histokg.train.engine.run_epoch`, the loop
``histokg train`` runs): the :class:`~histokg.models.DualEncoder` built on cached features (its heads; the
same parameters, drawn in the same order, as ``histokg train`` with ``model.cache_features``), the loss
registry, :class:`~histokg.train.engine.JointModule` with the KG prior W per batch, AdamW parameter groups,
warm-up + cosine schedule, gradient clipping, :class:`~histokg.train.data.ShardedBatchSampler`, and the
:class:`~histokg.train.callbacks.NonFiniteLoss` callback. Every loss gets the same model, data, panel,
budget (fixed epochs, no early stopping: no held-out slide ever chooses a checkpoint) and seeds. With
several cached views per spot, each (epoch, spot) draws one view (feature-level augmentation, drawn by
:func:`histokg.train.data.feature_views` as ``histokg train`` with ``model.feature_views`` draws it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from histokg.bench.config import HeadsConfig
from histokg.bench.features import train_device
from histokg.config import Component
from histokg.errors import ConfigError
from histokg.keys import Batch
from histokg.train.callbacks import CallbackList, LoopState, NonFiniteLoss, TrainingCallback
from histokg.train.engine import JointModule, StepParts, run_epoch, seed_everything

log = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """What one fold feeds every run (shared by all losses and seeds)."""

    features: np.ndarray  # (views, n_train, d) frozen tower features of the training spots
    expr_inputs: np.ndarray  # (n_train, k) what the expression tower sees
    kg: np.ndarray | None = None  # (n_train, packed) KG prior representations (W per batch)
    g_mean: np.ndarray | None = None  # (n_train, d_kg) KG2E Gaussians (kg_gaussian)
    g_var: np.ndarray | None = None
    prior: object | None = None  # histokg.priors.KGPrior for W
    groups: np.ndarray | None = None  # (n_train,) training section of each spot (heads.batches: within_slide)
    genes: list[str] | None = None  # the expression tower's input genes (heads.gene_set_reg), None: not genes


def model_config(cfg: HeadsConfig):
    """The :class:`~histokg.models.ModelConfig` of the heads ``cfg`` describes (on cached features)."""
    from histokg.models import ModelConfig

    return ModelConfig(
        embed_dim=cfg.embed_dim,
        expr_hidden=tuple(cfg.expr_hidden),
        dropout=cfg.dropout,
        init_temperature=cfg.init_temperature,
        expr_input=cfg.expr_input,
        freeze_image=True,
        cache_features=True,
    )


def optim_config(cfg: HeadsConfig):
    """The :class:`~histokg.train.config.OptimConfig` of the heads' budget (one learning rate, float32)."""
    from histokg.train.config import OptimConfig

    return OptimConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        image_lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        grad_clip=cfg.grad_clip,
        amp="off",
        batches=cfg.batches,
        gene_set_reg=cfg.gene_set_reg,
    )


def train_config(cfg: HeadsConfig, **settings):
    """The ``histokg train`` config that trains these heads the same way (cached features of a frozen tower,
    fixed epochs, no early stopping); ``settings`` fill the rest (``data``, ``prior``, ``out_dir``...)."""
    from histokg.train.config import EarlyStoppingConfig, TrainConfig

    return TrainConfig(
        model=model_config(cfg),
        optim=optim_config(cfg),
        early_stopping=EarlyStoppingConfig(patience=0),
        device=cfg.device,
        **settings,
    )


class _Budget(TrainingCallback):
    """The bench's budget: a fixed number of epochs for every loss, no early stopping, no checkpoints;
    records the steps taken and the last loss."""

    def __init__(self) -> None:
        self.steps = 0
        self.last = float("nan")

    def on_loss(self, owner, loop, loss):
        self.last = float(loss.detach())
        return loss

    def on_step_end(self, owner, loop):
        self.steps = loop.step


def feature_batches(inputs: RunInputs, idx_batches, view_of: torch.Tensor, tensors: dict):
    """Batches of the training spots in ``idx_batches``: one cached view of each spot's features, its
    expression input and its KG inputs."""
    feats = tensors[Batch.features]
    for idx in idx_batches:
        idx_t = torch.as_tensor(idx)
        batch = {Batch.features: feats[view_of[idx_t], idx_t]}
        batch.update({k: v[idx_t] for k, v in tensors.items() if k != Batch.features})
        yield batch


def train_heads(
    inputs: RunInputs, loss_spec: Component, cfg: HeadsConfig, seed: int
) -> tuple[JointModule, dict]:
    """Train one model through the training engine (:func:`histokg.train.engine.run_epoch`); returns the
    model-plus-loss module (eval mode) and a few training facts (steps, last loss, temperature)."""
    from histokg.losses import build_loss, loss_registry
    from histokg.models import DualEncoder
    from histokg.train import distributed as dist_utils
    from histokg.train.data import ShardedBatchSampler, feature_views
    from histokg.train.optim import build_optimizer, build_scheduler
    from histokg.train.precision import Precision

    cls = loss_registry.lookup(loss_spec.name)  # an unknown name: ConfigError naming the nearest
    if cls.needs_prior and inputs.kg is None:
        raise ConfigError(f"loss {loss_spec.name!r} needs the KG prior, which this fold does not have")
    if cls.needs_gaussians and inputs.g_mean is None:
        raise ConfigError(f"loss {loss_spec.name!r} needs KG2E Gaussians, which this fold does not have")
    seed_everything(seed)
    device = train_device(cfg.device)
    views, n, d = inputs.features.shape
    optim = optim_config(cfg)
    model = DualEncoder(model_config(cfg), inputs.expr_inputs.shape[1], image_features=d).to(device)
    prior_dim = inputs.g_mean.shape[1] if cls.needs_gaussians else None
    loss = build_loss(loss_spec.name, cfg.embed_dim, prior_dim, **dict(loss_spec.kwargs)).to(device)
    gene_sets = None
    if cfg.gene_set_reg > 0:
        if inputs.prior is None or inputs.genes is None:
            raise ConfigError(
                "heads.gene_set_reg needs the KG prior's gene sets and an expression input of genes"
            )
        gene_sets = inputs.prior.gene_set_incidence(inputs.genes)[0]
    joint = JointModule(
        model, loss, inputs.prior, dist_utils.DistInfo(), gene_sets=gene_sets, gene_set_reg=cfg.gene_set_reg
    )
    optimizer = build_optimizer(model, loss, optim)
    if cfg.batches == "within_slide" and inputs.groups is None:
        raise ConfigError(
            "heads.batches: within_slide needs the training section of each spot (RunInputs.groups)"
        )
    groups = inputs.groups if cfg.batches == "within_slide" else None
    sampler = ShardedBatchSampler(n, min(cfg.batch_size, n), seed, groups=groups)
    scheduler = build_scheduler(optimizer, sampler.batches_per_epoch * cfg.epochs, optim)
    budget = _Budget()
    parts = StepParts(
        joint=joint,
        module=joint,
        optimizer=optimizer,
        scheduler=scheduler,
        precision=Precision(optim.amp, device),
        callbacks=CallbackList([NonFiniteLoss(), budget]),
        device=device,
        grad_clip=cfg.grad_clip,
    )
    tensors = {
        key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        for key, value in (
            (Batch.features, inputs.features),
            (Batch.expr, inputs.expr_inputs),
            (Batch.kg, inputs.kg if cls.needs_prior else None),
            (Batch.gauss_mean, inputs.g_mean if cls.needs_gaussians else None),
            (Batch.gauss_var, inputs.g_var if cls.needs_gaussians else None),
        )
        if value is not None
    }
    loop = LoopState()
    model.train()
    for epoch in range(cfg.epochs):
        loop.epoch, loop.batch_in_epoch = epoch, 0
        sampler.set_epoch(epoch)
        view_of = feature_views(seed, epoch, n, views)  # as histokg train's model.feature_views
        run_epoch(None, parts, loop, feature_batches(inputs, sampler, view_of, tensors))
    model.eval()
    return joint, {
        "steps": budget.steps,
        "final_loss": budget.last,
        "temperature": float(1.0 / model.logit_scale().detach()),
    }
