"""The optimiser and learning-rate schedule of a run: AdamW parameter groups, warm-up + cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from histokg.train.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_lambda", "param_groups"]


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """The learning-rate factor by step: linear warm-up over ``warmup`` steps, then cosine to ``min_ratio``."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def param_groups(model: nn.Module, loss: nn.Module, optim: OptimConfig) -> list[dict]:
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
                    "lr": optim.image_lr if backbone else optim.lr,
                    "weight_decay": optim.weight_decay if decay else 0.0,
                }
            )
    return out


def build_optimizer(model: nn.Module, loss: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, loss, optim))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, optim: OptimConfig):
    """Warm-up + cosine decay over ``total_steps`` optimiser steps (``optim.warmup_steps``, ``optim.min_lr_ratio``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(optim.warmup_steps, total_steps, optim.min_lr_ratio)
    )
