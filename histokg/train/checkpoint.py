"""Writing training checkpoints (atomically) and the RNG states a resumed run restores.

A checkpoint holds everything a resumed run needs to continue bit-for-bit: model, loss and
optimiser parameters, scheduler and gradient-scaler state, the RNG states of Python, NumPy and
torch, the position (epoch, batch within the epoch, global step), early-stopping state, the
resolved config, the gene panel, and hashes of the data and the KG bundle. Reading one
(``torch.load(weights_only=True)``) and rebuilding its model are library level: :mod:`histokg.checkpoint`.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histokg.checkpoint import FORMAT_VERSION
from histokg.io import atomic_path

log = logging.getLogger(__name__)


def rng_state() -> dict[str, torch.Tensor]:
    """RNG states as tensors (so that weights-only loading can restore them)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(list(py_state), dtype=torch.int64),
        "python_meta": torch.tensor([py_version, -1 if py_gauss is None else 1], dtype=torch.int64),
        "python_gauss": torch.tensor([0.0 if py_gauss is None else py_gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    version, has_gauss = (int(v) for v in state["python_meta"])
    gauss = float(state["python_gauss"][0]) if has_gauss > 0 else None
    random.setstate((version, tuple(int(v) for v in state["python"]), gauss))
    pos, has_np_gauss = (int(v) for v in state["numpy_meta"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            pos,
            has_np_gauss,
            float(state["numpy_gauss"][0]),
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors, state dicts, JSON-able metadata) atomically."""
    path = Path(path)
    payload = dict(payload)
    payload["format_version"] = FORMAT_VERSION
    payload["meta_json"] = json.dumps(payload.pop("meta", {}))
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def with_absolute_paths(cfg):
    """``cfg`` with ``prior.bundle`` absolute, as the run's config.yaml and checkpoints record it: a
    checkpoint read from another folder finds its bundle (:func:`histokg.checkpoint.resolve_saved_path`)."""
    from dataclasses import replace

    if not cfg.prior.bundle or Path(cfg.prior.bundle).is_absolute():
        return cfg
    return replace(cfg, prior=replace(cfg.prior, bundle=str(Path(cfg.prior.bundle).resolve())))


def run_state(trainer, loop) -> dict[str, Any]:
    """The checkpoint of ``trainer``'s run at ``loop`` (weights, optimiser, schedule, RNG, counters, meta)."""
    from histokg.config import to_dict

    return {
        "model": trainer.model.state_dict(),
        "loss": trainer.loss.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.precision.scaler.state_dict(),
        "rng": rng_state(),
        "epoch": loop.epoch,
        "batch_in_epoch": loop.batch_in_epoch,
        "step": loop.step,
        "best_metric": loop.best_metric,
        "bad_epochs": loop.bad_epochs,
        "meta": {
            "config": to_dict(with_absolute_paths(trainer.cfg)),
            "genes": trainer.genes,
            "train_slides": trainer.train_libs,
            "val_slides": trainer.val_libs,
            "data_hash": trainer.data_hash,
            "kg_hash": trainer.kg_hash,
            "n_expr_inputs": int(trainer.train.expr_inputs.shape[1]),
            "history": loop.history,
        },
    }


def restore_state(trainer, ckpt: dict[str, Any]):
    """Load a checkpoint of ``trainer``'s run (same data and KG bundle); returns its ``LoopState``."""
    from histokg.train.callbacks import LoopState, TrainingError

    meta = ckpt["meta"]
    if meta["data_hash"] != trainer.data_hash:
        raise TrainingError(
            "cannot resume: the data or gene panel differ from the checkpoint's "
            f"(data hash {meta['data_hash'][:12]} vs {trainer.data_hash[:12]})"
        )
    if meta["kg_hash"] != trainer.kg_hash:
        raise TrainingError("cannot resume: the KG bundle differs from the checkpoint's")
    trainer.model.load_state_dict(ckpt["model"])
    trainer.loss.load_state_dict(ckpt["loss"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    trainer.precision.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return LoopState(
        epoch=ckpt["epoch"],
        batch_in_epoch=ckpt["batch_in_epoch"],
        step=ckpt["step"],
        best_metric=ckpt["best_metric"],
        bad_epochs=ckpt["bad_epochs"],
        history=meta["history"],
    )
