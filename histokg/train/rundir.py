"""A training run's folder: refuse to mix runs, resume only the same run, check outputs before compute.

``histokg train`` into a folder that already holds a run refuses unless told to ``resume`` it (the
config must be the run's own, except for ``optim.epochs``) or to ``overwrite`` it (the old run's files
are removed first, so the two never mix). Every check runs before data are read or a model is built.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from histokg.config import load_config, read_yaml, to_dict
from histokg.errors import ConfigError, InputError
from histokg.io import check_output_dir, claim_output_dir
from histokg.train.config import TrainConfig

log = logging.getLogger(__name__)

# What a run writes (histokg.train.trainer). feature_cache/ is content-addressed and survives an overwrite.
RUN_FILES = ("config.yaml", "genes.txt", "metrics.csv", "val_metrics.csv", "summary.json", "curves.png")
RUN_DIRS = ("checkpoints", "tensorboard")
# Keys a resumed run may change: more (or fewer) epochs, and where the folder now lives.
RESUMABLE_KEYS = ("optim.epochs", "out_dir")
# Keys that hold paths: saved absolute (histokg.train.checkpoint.with_absolute_paths), compared resolved.
PATH_KEYS = ("prior.bundle",)


def holds_run(out: str | Path) -> bool:
    """Whether folder ``out`` holds (part of) a training run."""
    out = Path(out)
    return any((out / name).exists() for name in (*RUN_FILES, *RUN_DIRS))


def prepare_run_dir(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check (and for ``overwrite`` clear) ``cfg.out_dir`` before any compute; returns the folder."""
    out = Path(cfg.out_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: continue the run or replace it")
    existing = out.is_dir() and holds_run(out)
    if resume:
        if not existing:
            raise InputError(f"--resume: {out} holds no training run to continue")
        if not (out / "checkpoints" / "last.pt").is_file():
            raise InputError(f"--resume: {out} has no checkpoints/last.pt to continue from")
        differences = config_differences(read_yaml(out / "config.yaml"), cfg)
        if differences:
            raise ConfigError(
                f"--resume: the config differs from the run's own {out / 'config.yaml'} in "
                f"{'; '.join(differences[:5])}{' ...' if len(differences) > 5 else ''}; only "
                f"{' and '.join(RESUMABLE_KEYS)} may change when resuming (start a new run for the rest)"
            )
        return check_output_dir(out, "out_dir")
    return claim_output_dir(
        out,
        (*RUN_FILES, *RUN_DIRS),
        what="a training run",
        overwrite=overwrite,
        label="out_dir",
        hint="pass --resume to continue it, --overwrite to replace it, or choose another out_dir",
        folders=RUN_DIRS,
        inputs=run_inputs(cfg),
    )


def run_outputs(out: str | Path) -> list[Path]:
    """The files and folders a run writes in folder ``out``."""
    return [Path(out) / name for name in (*RUN_FILES, *RUN_DIRS)]


def run_inputs(cfg: TrainConfig) -> list[str]:
    """The files and folders a run reads (data, gene list, KG bundle, image weights): never its outputs."""
    paths = [cfg.data.study, *cfg.data.h5ad, cfg.data.genes, cfg.prior.bundle, cfg.model.image_weights]
    return [p for p in paths if p and Path(p).exists()]  # a weights *name* (imagenet:...) is no path


def config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``"key: saved -> new"`` for every key whose value differs, except :data:`RESUMABLE_KEYS`; paths
    (:data:`PATH_KEYS`) compare resolved (runs before absolute paths were saved still resume)."""
    old = _paths_resolved(_flatten(saved))
    new = _paths_resolved(_flatten(yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))))
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in RESUMABLE_KEYS]
    return [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in keys
        if old.get(k) != new.get(k)
    ]


def resume_config(run_dir: str | Path, config_path: Path | None, overrides: Iterable[str]) -> TrainConfig:
    """The config of the run in ``run_dir`` (its saved config.yaml), with a file and overrides on top."""
    run_dir = Path(run_dir)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise InputError(f"--resume: {run_dir} holds no training run (no config.yaml)")
    cfg = load_config(TrainConfig, config_path, overrides, base=read_yaml(saved))
    return dataclasses.replace(cfg, out_dir=str(run_dir))


def _paths_resolved(flat: dict[str, Any]) -> dict[str, Any]:
    return {
        k: str(Path(v).resolve()) if k in PATH_KEYS and isinstance(v, str) and v else v
        for k, v in flat.items()
    }


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree and not _is_leaf_mapping(prefix):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _is_leaf_mapping(prefix: str) -> bool:
    return prefix.endswith(".kwargs")  # a component's kwargs compare as one value
