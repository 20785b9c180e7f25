"""Training callbacks: what happens around the loop's steps and epochs (pykeen's training callbacks pattern).

The :class:`~histokg.train.trainer.Trainer` calls the hooks of one :class:`CallbackList`, in order:

- ``on_fit_start(trainer, loop)`` once the model is built (and restored when resuming);
- ``on_loss(trainer, loop, loss)`` for each micro-batch's loss before its backward pass; returns the loss;
- ``on_step_end(trainer, loop)`` after each optimiser step (``loop.step`` counts it);
- ``on_validation_end(trainer, loop, metrics)`` after each epoch's validation;
- ``on_epoch_end(trainer, loop)`` after that epoch is logged; ``loop.stop = True`` ends training;
- ``on_interrupt(trainer, loop)`` when the run is interrupted (KeyboardInterrupt), before it propagates.

The default list (:func:`default_callbacks`): :class:`NonFiniteLoss`, :class:`EarlyStopping`,
:class:`Checkpointing` (last/best, every ``checkpoint_every`` steps and at each epoch end, and on an
interrupt). Tests add :class:`FaultInjection` (a killed run, a diverging loss) with
:func:`inject_faults`. Checkpointing saves the best checkpoint when ``loop.improved``, which
EarlyStopping sets in ``on_validation_end``; it runs after EarlyStopping, so the epoch-end checkpoint
knows whether the validation slides ended the run (``meta["validation_chose"]``: true for best.pt and
for the last.pt of an early-stopped run, false for a last.pt that ran its fixed epochs).
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from histokg.errors import HistokgError
from histokg.train.checkpoint import rng_state, save_checkpoint

if TYPE_CHECKING:
    from histokg.train.trainer import Trainer

__all__ = [
    "CallbackList",
    "Checkpointing",
    "EarlyStopping",
    "FaultInjection",
    "LoopState",
    "NonFiniteLoss",
    "TrainingCallback",
    "TrainingError",
    "default_callbacks",
    "inject_faults",
]

log = logging.getLogger("histokg.train.trainer")  # the trainer's logger, as before the split


class TrainingError(HistokgError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint stores (the first six fields) and what callbacks read or set."""

    epoch: int = 0  # the current epoch, from 0 (at an epoch's end: the epochs done)
    batch_in_epoch: int = 0  # batches of the current epoch consumed so far
    step: int = 0  # optimiser steps done
    best_metric: float = -math.inf
    bad_epochs: int = 0  # epochs since the best metric last improved
    history: list[dict] = field(default_factory=list)  # one row of validation metrics per epoch
    improved: bool = False  # the last validation improved on the best metric
    stop: bool = False  # set by a callback to end training after this epoch
    stopped_early: bool = False
    updating: bool = False  # inside an optimiser update (the state is not consistent)


class TrainingCallback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer: Trainer, loop: LoopState) -> None:
        pass

    def on_loss(self, trainer: Trainer, loop: LoopState, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def on_step_end(self, trainer: Trainer, loop: LoopState) -> None:
        pass

    def on_validation_end(self, trainer: Trainer, loop: LoopState, metrics: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, loop: LoopState) -> None:
        pass

    def on_interrupt(self, trainer: Trainer, loop: LoopState) -> None:
        pass


class CallbackList(TrainingCallback):
    """Several callbacks called in order (``on_loss`` passes each one's result to the next)."""

    def __init__(self, callbacks: Iterable[TrainingCallback] = ()):
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer, loop):
        for cb in self.callbacks:
            cb.on_fit_start(trainer, loop)

    def on_loss(self, trainer, loop, loss):
        for cb in self.callbacks:
            loss = cb.on_loss(trainer, loop, loss)
        return loss

    def on_step_end(self, trainer, loop):
        for cb in self.callbacks:
            cb.on_step_end(trainer, loop)

    def on_validation_end(self, trainer, loop, metrics):
        for cb in self.callbacks:
            cb.on_validation_end(trainer, loop, metrics)

    def on_epoch_end(self, trainer, loop):
        for cb in self.callbacks:
            cb.on_epoch_end(trainer, loop)

    def on_interrupt(self, trainer, loop):
        for cb in self.callbacks:
            cb.on_interrupt(trainer, loop)


class FaultInjection(TrainingCallback):
    """For tests only (never in the default list): a NaN loss at optimiser step ``nan_at``, SIGKILL after
    step ``kill_at`` (after that step's checkpoint, if any). Add it with :func:`inject_faults`."""

    def __init__(self, *, kill_at: int | None = None, nan_at: int | None = None) -> None:
        self.kill_at = kill_at
        self.nan_at = nan_at

    def on_loss(self, trainer, loop, loss):
        if self.nan_at is not None and loop.step + 1 == self.nan_at:
            return loss * float("nan")
        return loss

    def on_step_end(self, trainer, loop):
        if loop.step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def inject_faults(trainer: Trainer, *, kill_at: int | None = None, nan_at: int | None = None) -> None:
    """Add a :class:`FaultInjection` to ``trainer``'s callbacks where it tests what it should: after
    :class:`Checkpointing` (a killed step keeps its checkpoint) and before :class:`NonFiniteLoss` (which
    must see the injected NaN)."""
    callbacks = trainer.callbacks.callbacks
    at = next((i for i, cb in enumerate(callbacks) if isinstance(cb, NonFiniteLoss)), len(callbacks))
    callbacks.insert(at, FaultInjection(kill_at=kill_at, nan_at=nan_at))


class NonFiniteLoss(TrainingCallback):
    """Stops training with a :class:`TrainingError` when a loss is NaN or infinite, naming the last good checkpoint."""

    def on_loss(self, trainer, loop, loss):
        if not torch.isfinite(loss):
            last = getattr(trainer, "last_path", None)  # the bench's runs keep no checkpoints
            kept = f" The last good checkpoint is {last if last.exists() else 'none yet'};" if last else ""
            raise TrainingError(
                f"loss became {loss.item()} at step {loop.step + 1} (epoch {loop.epoch + 1}, batch {loop.batch_in_epoch}); "
                f"training stopped.{kept} lower optim.lr or check the inputs"
            )
        return loss


class EarlyStopping(TrainingCallback):
    """Tracks the best validation metric (``early_stopping.metric``; best.pt follows it) and stops
    after ``patience`` epochs without an improvement of more than ``min_delta`` (0: never)."""

    def __init__(self, metric: str, patience: int, min_delta: float):
        self.metric, self.patience, self.min_delta = metric, patience, min_delta

    def on_validation_end(self, trainer, loop, metrics):
        value = metrics[self.metric]
        loop.improved = value > loop.best_metric + self.min_delta
        if loop.improved:
            loop.best_metric, loop.bad_epochs = value, 0
        else:
            loop.bad_epochs += 1

    def on_epoch_end(self, trainer, loop):
        if self.patience and loop.bad_epochs >= self.patience:
            loop.stop = loop.stopped_early = True
            log.info(
                "early stopping after epoch %d: no %s improvement for %d epochs",
                loop.epoch,
                self.metric,
                loop.bad_epochs,
            )


class Checkpointing(TrainingCallback):
    """``checkpoints/last.pt`` every ``every`` steps and at each epoch end, ``best.pt`` when the metric
    improved; on an interrupt, last.pt as of the last completed step (main process only).

    A run resumed from any of these continues bit-for-bit: what changes between two steps (the
    random generators, the batch-norm statistics of a partial step) is kept as it was at the step.
    """

    def __init__(self, every: int):
        self.every = every
        self._buffers: list[str] = []  # the model's saved buffers (e.g. batch-norm statistics)
        self._at_step: dict | None = None  # the loop, RNG and buffers at the last completed step

    def on_fit_start(self, trainer, loop):
        saved = trainer.model.state_dict()
        self._buffers = [name for name, _ in trainer.model.named_buffers() if name in saved]
        self._remember(trainer, loop)

    def on_step_end(self, trainer, loop):
        if trainer.info.is_main and loop.step % self.every == 0:
            save_checkpoint(trainer.last_path, trainer.state(loop))
        self._remember(trainer, loop)

    def on_epoch_end(self, trainer, loop):
        if trainer.info.is_main:
            state = trainer.state(loop)
            save_checkpoint(trainer.last_path, validation_chose(state, loop.stopped_early))
            if loop.improved:
                save_checkpoint(trainer.best_path, validation_chose(state, True))
        self._remember(trainer, loop)

    def on_interrupt(self, trainer, loop):
        if not trainer.info.is_main or self._at_step is None:
            return
        if loop.updating:
            log.warning("interrupted inside an optimiser update: %s is left as it was", trainer.last_path)
            return
        saved = self._at_step
        state = trainer.state(saved["loop"])
        state["rng"] = saved["rng"]
        state["model"] = {**state["model"], **saved["buffers"]}
        save_checkpoint(trainer.last_path, state)
        log.warning(
            "interrupted: saved %s at step %d; continue with --resume", trainer.last_path, saved["loop"].step
        )

    def _remember(self, trainer, loop) -> None:
        if not trainer.info.is_main:
            return
        saved = trainer.model.state_dict()
        self._at_step = {
            "loop": LoopState(
                loop.epoch,
                loop.batch_in_epoch,
                loop.step,
                loop.best_metric,
                loop.bad_epochs,
                list(loop.history),
            ),
            "rng": rng_state(),
            "buffers": {name: saved[name].clone() for name in self._buffers},
        }


def validation_chose(state: dict, chose: bool) -> dict:
    """``state`` with ``meta["validation_chose"]``: whether the validation slides chose this checkpoint
    (best.pt, or the end of an early-stopped run), so that evaluating on them is optimistic."""
    return {**state, "meta": {**state["meta"], "validation_chose": bool(chose)}}


def default_callbacks(trainer: Trainer) -> CallbackList:
    """The non-finite-loss stop, early stopping and checkpoints, as ``trainer.cfg`` says (early stopping
    decides before the epoch-end checkpoint is written, which records whether it did)."""
    cfg = trainer.cfg
    return CallbackList(
        [
            NonFiniteLoss(),
            EarlyStopping(
                cfg.early_stopping.metric, cfg.early_stopping.patience, cfg.early_stopping.min_delta
            ),
            Checkpointing(cfg.checkpoint_every),
        ]
    )
