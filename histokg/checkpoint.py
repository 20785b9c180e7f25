"""Trained checkpoints for inference: read one safely and rebuild its dual encoder (:func:`load_model`).

A checkpoint is what ``histokg train`` writes (:func:`histokg.train.checkpoint.save_checkpoint`): a
``torch.save`` dict of tensors and state dicts with ``format_version`` and ``meta_json``, a JSON object
holding the resolved training config, the gene panel (``genes``), the slides it trained and validated on
and ``n_expr_inputs``. It is read with ``torch.load(weights_only=True)``: nothing is ever unpickled.

Inference needs only this module, never :mod:`histokg.train`: the saved config's ``model`` section
builds the :class:`~histokg.models.DualEncoder` and its ``data`` section gives the patch geometry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from histokg.config import from_dict
from histokg.errors import ConfigError, InputError
from histokg.io import file_sha256, load_tensor_file
from histokg.keys import Key
from histokg.models import DualEncoder, ModelConfig, state_mismatch
from histokg.st.pairing import PairingConfig

FORMAT_VERSION = 1


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects; ``meta_json`` comes back as ``meta``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    payload = load_tensor_file(path, "checkpoint", map_location)
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise InputError(f"checkpoint {path} is not a histokg checkpoint of format {FORMAT_VERSION}")
    payload["meta"] = json.loads(payload.pop("meta_json"))
    return payload


@dataclass
class LoadedModel:
    """A trained dual encoder with the typed settings it was trained with.

    - ``model``: the :class:`~histokg.models.DualEncoder` in eval mode;
    - ``config``: its architecture (:class:`~histokg.models.ModelConfig`; ``image_weights`` cleared, since
      the checkpoint holds the tower's weights; ``config.expr_input`` says what the expression tower reads,
      ``config.image_extras`` what the image head reads beside the tower, standardised as
      :attr:`image_extras` says);
    - ``pairing``: the patch geometry it was trained on (:class:`~histokg.st.pairing.PairingConfig`);
    - ``genes``: the gene panel of its expression tower;
    - ``loss``: the loss's registered name; ``prior``: the KG prior settings
      (:class:`~histokg.priors.PriorConfig`, ``prior.bundle`` None when training used no bundle; a
      bundle path is resolved as :func:`resolve_saved_path` says, and :meth:`kg_bundle` fails naming
      where it looked when it is not found);
    - ``checkpoint``, ``sha256``: the file and its hash; ``meta``: the rest of the training metadata
      (slides, history) as saved.
    """

    model: DualEncoder
    config: ModelConfig
    pairing: PairingConfig
    genes: list[str]
    loss: str
    prior: Any
    checkpoint: Path
    sha256: str
    meta: dict
    bundle_error: str | None = None  # why the bundle the checkpoint names was not found

    def kg_bundle(self) -> Path | None:
        """The KG bundle training used, resolved; None when it used none; InputError naming the
        checkpoint, the saved path and where it was looked for when it is not there."""
        if self.bundle_error:
            raise InputError(self.bundle_error)
        return Path(self.prior.bundle) if self.prior.bundle else None

    @property
    def image_extras(self):
        """The per-patch extras the image head reads and their stored standardisation (fitted on the
        training spots): a :class:`~histokg.patch_stats.Standardisation`, or None (``config.image_extras``
        empty, as in every checkpoint before the option)."""
        extras = self.model.image.extras
        return extras.standardisation if extras is not None else None

    @property
    def params(self) -> dict:
        """What ``tl.embed`` records in ``uns["histokg"]["params"]``."""
        return {
            Key.params.model: self.config.image_encoder,
            Key.params.loss: self.loss,
            Key.params.checkpoint: str(self.checkpoint),
            Key.params.checkpoint_sha256: self.sha256,
            Key.params.patch_um: self.pairing.patch_um,
            Key.params.patch_px: self.pairing.patch_px,
            Key.params.mpp: self.pairing.target_mpp,
            Key.params.embed_dim: self.config.embed_dim,
            Key.params.genes: list(self.genes),
            Key.params.train_slides: self.meta.get("train_slides", []),
            Key.params.val_slides: self.meta.get("val_slides", []),
            Key.params.validation_chose: self.meta.get("validation_chose", True),
            Key.params.image_extras: list(self.config.image_extras),
        }


def saved_model_config(meta: dict, source: str) -> tuple[ModelConfig, PairingConfig]:
    """The architecture and patch geometry a checkpoint's saved config describes.

    ``image_weights`` is cleared: the checkpoint itself holds the image tower's weights.
    """
    config = meta.get("config")
    if not isinstance(config, dict):
        raise InputError(f"{source}: its metadata holds no training config")
    data = config.get("data") or {}
    try:
        model_cfg = from_dict(ModelConfig, config.get("model"), "model")
    except ConfigError as exc:
        raise InputError(f"{source}: its saved config is not valid ({exc})") from None
    geometry = {
        key: data[key]
        for key in ("patch_um", "patch_px", "stain_norm", "stain_target", "read_mpp")
        if key in data
    }
    try:  # PairingConfig checks the geometry against histokg.budget
        pairing = from_dict(PairingConfig, geometry, "data")
    except ConfigError as exc:
        shown = f"{geometry.get('patch_um')} um at {geometry.get('patch_px')} px"
        shown += f", stain {geometry.get('stain_norm', 'none')}"
        raise InputError(f"{source}: its saved patch geometry ({shown}) is not valid ({exc})") from None
    return replace(model_cfg, image_weights=None), pairing


def saved_prior_config(meta: dict, source: str):
    """The KG prior settings of a checkpoint's saved config (:class:`~histokg.priors.PriorConfig`)."""
    from histokg.priors import PriorConfig

    try:
        return from_dict(PriorConfig, meta["config"].get("prior") or {}, "prior")
    except ConfigError as exc:
        raise InputError(f"{source}: its saved prior config is not valid ({exc})") from None


def resolve_saved_path(value: str, checkpoint: str | Path, meta: dict) -> tuple[Path | None, list[Path]]:
    """A path saved inside a checkpoint, found on this machine: (the path or None, where it looked).

    Absolute: as saved. Relative (checkpoints of earlier versions; ``histokg train`` now saves
    absolute paths): in the checkpoint's own folder, in its run folder (``RUN/checkpoints/x.pt``: RUN),
    and in the folder training ran in (where the saved ``out_dir``, when relative, ends at RUN); never
    in the current folder, which may hold another file of the same name.
    """
    saved = Path(value)
    if saved.is_absolute():
        return (saved if saved.exists() else None), [saved]
    ckpt = Path(checkpoint).resolve()
    places = [ckpt.parent]
    if ckpt.parent.name == "checkpoints":
        run = ckpt.parent.parent
        places.append(run)
        out_dir = Path(str((meta.get("config") or {}).get("out_dir") or ""))
        if (
            str(out_dir) not in ("", ".")
            and not out_dir.is_absolute()
            and run.parts[-len(out_dir.parts) :] == out_dir.parts
        ):
            places.append(Path(*run.parts[: -len(out_dir.parts)]))
    tried = [p / saved for p in dict.fromkeys(places)]
    return next((p for p in tried if p.exists()), None), tried


def _resolve_bundle(prior, checkpoint: Path, meta: dict, source: str):
    """``prior`` with its bundle path resolved (:func:`resolve_saved_path`); (prior, error or None)."""
    if not prior.bundle:
        return prior, None
    found, tried = resolve_saved_path(prior.bundle, checkpoint, meta)
    if found is not None:
        return replace(prior, bundle=str(found)), None
    where = ", ".join(str(p) for p in tried)
    return prior, (
        f"{source} names the KG bundle {prior.bundle!r} (prior.bundle), which is not there ({where}); "
        "give the bundle's path (index build/add: --bundle), or put it back"
    )


def checkpoint_bundle(checkpoint: str | Path) -> Path | None:
    """The KG bundle a checkpoint was trained with, resolved; None when it names none; InputError
    naming what is missing otherwise. Reads the checkpoint, builds no model."""
    checkpoint = Path(checkpoint)
    source = f"checkpoint {checkpoint}"
    meta = load_checkpoint(checkpoint)["meta"]
    if not isinstance(meta.get("config"), dict):
        raise InputError(f"{source}: its metadata holds no training config")
    prior, error = _resolve_bundle(saved_prior_config(meta, source), checkpoint, meta, source)
    if error:
        raise InputError(error)
    return Path(prior.bundle) if prior.bundle else None


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the dual encoder of a ``histokg train`` checkpoint (weights-only loading).

    Returns a :class:`LoadedModel`: the model on ``device`` in eval mode with its typed settings (model
    config, patch geometry, gene panel, loss, prior), checkpoint hash and metadata. Errors name the
    checkpoint and what does not fit.
    """
    checkpoint = Path(checkpoint)
    source = f"checkpoint {checkpoint}"
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    missing = [f"meta.{key}" for key in ("config", "genes", "n_expr_inputs") if key not in meta]
    missing += [] if "model" in ckpt else ["model"]
    if missing:
        raise InputError(f"{source}: it lacks {', '.join(missing)} (not a checkpoint of `histokg train`)")
    model_cfg, pairing = saved_model_config(meta, source)
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: draw nothing from the caller's RNG
        model = DualEncoder(model_cfg, int(meta["n_expr_inputs"]))
    load_weights(model, ckpt["model"], source)
    model.to(device).eval()
    loss = str((meta["config"].get("loss") or {}).get("name", ""))
    prior, bundle_error = _resolve_bundle(saved_prior_config(meta, source), checkpoint, meta, source)
    return LoadedModel(
        model=model,
        config=model_cfg,
        pairing=pairing,
        genes=list(meta["genes"]),
        loss=loss,
        prior=prior,
        checkpoint=checkpoint,
        sha256=file_sha256(checkpoint),
        meta=meta,
        bundle_error=bundle_error,
    )


def load_weights(model: torch.nn.Module, state: dict, source: str) -> None:
    """``model.load_state_dict(state)`` with an error that names the first mismatching keys (not 100 lines)."""
    problems = state_mismatch(model.state_dict(), state)
    if problems:
        raise InputError(
            f"{source}: its weights do not fit the model its saved config describes: {'; '.join(problems)}"
        )
    model.load_state_dict(state)
