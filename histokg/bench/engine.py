"""One benchmark run: train the dual encoder's heads on cached frozen-tower features with one loss.

The components are the trainer's own (:class:`histokg.models.DualEncoder`, :func:`histokg.losses.build_loss`,
:class:`histokg.train.trainer.JointModule` with the KG prior W per batch, AdamW parameter groups, warm-up
+ cosine schedule, gradient clipping, :class:`histokg.train.data.ShardedBatchSampler`); only the image
backbone is replaced by its cached features, so a run costs seconds. Every loss gets the same model,
data, panel, budget (fixed epochs, no early stopping: no held-out slide ever chooses a checkpoint) and
seeds. With several cached views per spot, each (epoch, spot) draws one view (feature-level augmentation).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from histokg.config import Component
from histokg.errors import ConfigError
from histokg.keys import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadsConfig:
    """The trained part (projection heads, expression tower, temperature) and its budget."""

    embed_dim: int = 128
    expr_hidden: tuple[int, ...] = (256,)
    dropout: float = 0.1
    expr_input: str = "genes"  # "genes" (the HVG panel, log1p CP10k) or "kg" (KG activations)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    init_temperature: float = 0.07
    device: str = "cpu"

    def __post_init__(self) -> None:
        from pathways_kg.dataconf import check

        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")
        check(self.expr_input in ("genes", "kg"), "expr_input", f"{self.expr_input!r} is not 'genes' or 'kg'")
        check(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr}")


@dataclass
class RunInputs:
    """What one fold feeds every run (shared by all losses and seeds)."""

    features: np.ndarray  # (views, n_train, d) frozen tower features of the training spots
    expr_inputs: np.ndarray  # (n_train, k) what the expression tower sees
    kg: np.ndarray | None = None  # (n_train, packed) KG prior representations (W per batch)
    g_mean: np.ndarray | None = None  # (n_train, d_kg) KG2E Gaussians (kg_gaussian)
    g_var: np.ndarray | None = None
    prior: object | None = None  # histokg.priors.KGPrior for W


class HeadModel(nn.Module):
    """DualEncoder minus its backbone: image head on features, expression tower, logit scale."""

    def __init__(self, n_features: int, n_expr: int, cfg: HeadsConfig):
        super().__init__()
        from histokg.models import ExprTower, ModelConfig, mlp

        mcfg = ModelConfig(
            embed_dim=cfg.embed_dim,
            expr_hidden=tuple(cfg.expr_hidden),
            dropout=cfg.dropout,
            init_temperature=cfg.init_temperature,
        )
        self.image_head = mlp([n_features, cfg.embed_dim, cfg.embed_dim], cfg.dropout)  # = ImageTower.head
        self.expr = ExprTower(n_expr, mcfg)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self._max_log_scale = math.log(mcfg.max_logit_scale)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=self._max_log_scale).exp()

    def encode_image(self, images=None, features: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.normalize(self.image_head(features).float(), dim=-1)

    def encode_expr(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.expr(x).float(), dim=-1)

    def forward(self, images, expr: torch.Tensor, features: torch.Tensor | None = None):
        return self.encode_image(None, features), self.encode_expr(expr), self.logit_scale()


def _optim_cfg(cfg: HeadsConfig):
    from histokg.train.config import OptimConfig, TrainConfig

    optim = OptimConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        image_lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        grad_clip=cfg.grad_clip,
    )
    return dataclasses.replace(TrainConfig(), optim=optim)


def train_heads(
    inputs: RunInputs, loss_spec: Component, cfg: HeadsConfig, seed: int
) -> tuple[HeadModel, dict]:
    """Train one model; returns it (eval mode) and a few training facts (steps, last loss)."""
    from histokg.losses import build_loss, loss_registry
    from histokg.train import distributed as dist_utils
    from histokg.train.data import ShardedBatchSampler
    from histokg.train.optim import build_optimizer, build_scheduler
    from histokg.train.trainer import JointModule, seed_everything

    cls = loss_registry.lookup(loss_spec.name)  # an unknown name: ConfigError naming the nearest
    if cls.needs_prior and inputs.kg is None:
        raise ConfigError(f"loss {loss_spec.name!r} needs the KG prior, which this fold does not have")
    if cls.needs_gaussians and inputs.g_mean is None:
        raise ConfigError(f"loss {loss_spec.name!r} needs KG2E Gaussians, which this fold does not have")
    seed_everything(seed)
    device = torch.device(cfg.device)
    views, n, d = inputs.features.shape
    model = HeadModel(d, inputs.expr_inputs.shape[1], cfg).to(device)
    prior_dim = inputs.g_mean.shape[1] if cls.needs_gaussians else None
    loss = build_loss(loss_spec.name, cfg.embed_dim, prior_dim, **dict(loss_spec.kwargs)).to(device)
    joint = JointModule(model, loss, inputs.prior, dist_utils.DistInfo())
    tcfg = _optim_cfg(cfg)
    optimizer = build_optimizer(model, loss, tcfg)
    sampler = ShardedBatchSampler(n, min(cfg.batch_size, n), seed)
    total = sampler.batches_per_epoch * cfg.epochs
    scheduler = build_scheduler(optimizer, total, tcfg)
    feats = torch.from_numpy(np.ascontiguousarray(inputs.features, dtype=np.float32))
    expr = torch.from_numpy(np.ascontiguousarray(inputs.expr_inputs, dtype=np.float32))
    extra = {
        key: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        for key, value in (
            (Batch.kg, inputs.kg),
            (Batch.gauss_mean, inputs.g_mean),
            (Batch.gauss_var, inputs.g_var),
        )
        if value is not None
        and (key == Batch.kg and cls.needs_prior or key != Batch.kg and cls.needs_gaussians)
    }
    gen = torch.Generator().manual_seed(seed)
    model.train()
    last = float("nan")
    steps = 0
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        view_of = torch.randint(views, (n,), generator=gen) if views > 1 else torch.zeros(n, dtype=torch.long)
        for idx in sampler:
            idx_t = torch.as_tensor(idx)
            batch = {
                Batch.features: feats[view_of[idx_t], idx_t].to(device),
                Batch.expr: expr[idx_t].to(device),
            }
            batch.update({k: v[idx_t].to(device) for k, v in extra.items()})
            value = joint(batch)["loss"]
            if not torch.isfinite(value):
                raise FloatingPointError(f"loss {loss_spec.name} became {float(value)} at step {steps + 1}")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip
                )
            optimizer.step()
            scheduler.step()
            steps += 1
            last = float(value.detach())
    model.eval()
    return model, {
        "steps": steps,
        "final_loss": last,
        "temperature": float(1.0 / model.logit_scale().detach()),
    }


@torch.no_grad()
def embed_images(model: HeadModel, features: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Image embeddings of view 0 of ``features`` (views, n, d)."""
    x = torch.from_numpy(np.ascontiguousarray(features[0], dtype=np.float32)).to(device)
    return model.encode_image(None, x).cpu().numpy()


@torch.no_grad()
def embed_expression(model: HeadModel, expr_inputs: np.ndarray, device: str = "cpu") -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(expr_inputs, dtype=np.float32)).to(device)
    return model.encode_expr(x).cpu().numpy()
