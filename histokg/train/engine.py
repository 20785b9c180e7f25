"""The training engine: the model-plus-loss module and the one epoch loop of every training in histokg.

:class:`JointModule` holds the dual encoder, the loss and the KG prior (so that DDP sees every trainable
parameter in ``forward``), gathers the embeddings of the global batch with gradients and computes the
prior's pair weights W for it. :func:`run_epoch` runs a stream of batches through it: forward under
autocast, the callbacks' ``on_loss``, backward (scaled for fp16, divided over gradient accumulation),
then at each accumulation boundary gradient clipping, the optimiser and schedule step, the step's log
row and the callbacks' ``on_step_end``.

``histokg train`` (:class:`~histokg.train.trainer.Trainer`) and ``histokg bench`` (its heads on cached
features, :mod:`histokg.bench.engine`) both train through :func:`run_epoch`: what the bench measures is
what ``histokg train`` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from histokg.keys import Batch
from histokg.losses import LossInputs
from histokg.train import distributed as dist_utils
from histokg.train.callbacks import CallbackList, LoopState
from histokg.train.precision import Precision

__all__ = ["JointModule", "StepParts", "gene_set_penalty", "run_epoch", "seed_everything"]


def gene_set_penalty(weight: torch.Tensor, incidence: torch.Tensor) -> torch.Tensor:
    """Mean over (gene set, member gene) pairs of the squared distance between the gene's column of
    ``weight`` (hidden x genes: the expression tower's first layer) and its set's mean column.
    ``incidence`` is the 0/1 (sets x genes) matrix of :meth:`histokg.priors.KGPrior.gene_set_incidence`.

    With n_s genes in set s and d_g sets holding gene g:
    sum_s sum_{g in s} |w_g - c_s|^2 = sum_g d_g |w_g|^2 - sum_s n_s |c_s|^2, c_s = (sum_{g in s} w_g) / n_s.
    """
    sizes = incidence.sum(dim=1)
    degree = incidence.sum(dim=0)
    sums = weight @ incidence.T  # hidden x sets
    total = (degree * weight.pow(2).sum(dim=0)).sum() - (sums.pow(2).sum(dim=0) / sizes).sum()
    return total.clamp_min(0) / sizes.sum()


class JointModule(nn.Module):
    """Model + loss in one module so that DDP sees every trainable parameter in ``forward``.

    ``gene_sets`` (a 0/1 sets x panel-genes matrix) with ``gene_set_reg`` > 0 adds the term
    ``gene_set_reg`` x :func:`gene_set_penalty` of the expression tower's first layer to the loss
    (``optim.gene_set_reg``; the term is reported as ``gene_set_reg``)."""

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        prior,
        info: dist_utils.DistInfo,
        *,
        gene_sets: np.ndarray | None = None,
        gene_set_reg: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.loss = loss
        self.prior = prior
        self.info = info
        self.gene_set_reg = float(gene_set_reg)
        if self.gene_set_reg > 0:
            if gene_sets is None or len(gene_sets) == 0:
                from histokg.errors import ConfigError

                raise ConfigError(
                    "optim.gene_set_reg: no KG gene set holds two or more of the expression tower's genes"
                )
            device = next(model.parameters()).device
            sets = torch.as_tensor(gene_sets, dtype=torch.float32, device=device)
            self.register_buffer("gene_sets", sets, persistent=False)

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
        terms = self.loss(inputs)
        if self.gene_set_reg > 0:
            first = self.model.expr.net[0].weight  # hidden x genes
            reg = self.gene_set_reg * gene_set_penalty(first.float(), self.gene_sets)
            terms = {**terms, "gene_set_reg": reg.detach(), "loss": terms["loss"] + reg}
        return terms

    def embed(
        self, features: np.ndarray, expr_inputs: np.ndarray, *, autocast=nullcontext
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image embeddings of backbone ``features`` and expression embeddings of ``expr_inputs``, for
        evaluation (the library's one embedding routine, :mod:`histokg.embedding`)."""
        from histokg.embedding import embed_expression, embed_features

        return (
            embed_features(self.model, features, autocast=autocast),
            embed_expression(self.model, expr_inputs, autocast=autocast),
        )


@dataclass
class StepParts:
    """What one optimiser step needs: the module to call (``module``: the JointModule or its DDP wrapper),
    optimiser, schedule, precision, callbacks, gradient accumulation and clipping, and the device."""

    joint: JointModule
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: Precision
    callbacks: CallbackList
    device: torch.device
    grad_accum: int = 1
    grad_clip: float = 0.0

    @property
    def distributed(self) -> bool:
        return self.joint.info.enabled


def run_epoch(
    owner,
    parts: StepParts,
    loop: LoopState,
    batches: Iterable[dict],
    *,
    log_step: Callable[[LoopState, dict[str, torch.Tensor]], None] | None = None,
) -> None:
    """Train on ``batches`` (the rest of epoch ``loop.epoch``, from ``loop.batch_in_epoch`` when resumed).

    ``owner`` (the trainer, or the bench's run) is what the callbacks receive. ``loop`` counts batches
    and optimiser steps; ``log_step(loop, terms)`` is called after each step, before ``on_step_end``.
    """
    first = loop.batch_in_epoch
    for offset, batch in enumerate(batches):
        loop.batch_in_epoch = first + offset + 1
        boundary = loop.batch_in_epoch % parts.grad_accum == 0
        terms = forward_backward(owner, parts, loop, batch, sync=boundary)
        if not boundary:
            continue
        optimizer_step(parts, loop)
        if log_step is not None:
            log_step(loop, terms)
        parts.callbacks.on_step_end(owner, loop)


def forward_backward(
    owner, parts: StepParts, loop: LoopState, batch: dict, sync: bool
) -> dict[str, torch.Tensor]:
    """Loss terms of one micro-batch, gradients accumulated (DDP syncs them only when ``sync``)."""
    batch = {
        k: v.to(parts.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
    no_sync = nullcontext() if sync or not parts.distributed else parts.module.no_sync()
    with no_sync:
        with parts.precision.autocast():
            terms = parts.module(batch)
        terms["loss"] = parts.callbacks.on_loss(owner, loop, terms["loss"])
        parts.precision.scaler.scale(terms["loss"] / parts.grad_accum).backward()
    return terms


def optimizer_step(parts: StepParts, loop: LoopState) -> None:
    """Clip, step, advance the schedule; ``loop.step`` counts it."""
    scaler, optimizer = parts.precision.scaler, parts.optimizer
    loop.updating = True
    if parts.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], parts.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    loop.step += 1
    loop.updating = False


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
