"""What every loss shares: :class:`LossInputs`, the :class:`ContrastiveLoss` base class, helpers.

Notation (``docs/losses.md`` has the long version): ``f`` (N, D) image embeddings and ``g`` (N, D)
expression embeddings, both L2-normalised; ``logit_scale`` = 1/tau; ``s = logit_scale * f @ g.T``
(row i: image i against every expression profile); ``W`` (N, N) the KG prior between the spots
of the batch, values in [0, 1].
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from histokg.errors import ConfigError, InputError

__all__ = [
    "ContrastiveLoss",
    "LossInputs",
    "check_float",
    "clip_loss",
    "compute_dtype",
    "identity_targets",
    "offdiag_rownorm",
    "offdiag_softmax",
    "positive_int",
    "similarity",
    "soft_ce",
]


@dataclass
class LossInputs:
    """What a loss sees for one (global) batch of N paired spots."""

    img: torch.Tensor  # (N, D) L2-normalised image embeddings
    expr: torch.Tensor  # (N, D) L2-normalised expression embeddings
    logit_scale: torch.Tensor  # scalar, = 1/tau
    W: torch.Tensor | None = None  # (N, N) KG prior between spots, values in [0, 1]
    gauss_mean: torch.Tensor | None = None  # (N, k) KG-space Gaussian means (kg_gaussian)
    gauss_var: torch.Tensor | None = None  # (N, k) diagonal variances (kg_gaussian)


# ------------------------------------------------------------------- helpers shared by the losses
def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 kept (for exact tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def similarity(f: torch.Tensor, g: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """s_ij = logit_scale * f_i . g_j."""
    return scale * (f @ g.T)


def identity_targets(n: int, device: torch.device) -> torch.Tensor:
    """The class index of each row's positive: 0, 1, ..., n - 1."""
    return torch.arange(n, device=device)


def clip_loss(s: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with identity targets: 0.5 * (CE(s, I) + CE(s^T, I))."""
    t = identity_targets(s.shape[0], s.device)
    return 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i sum_j -T_ij log_softmax(logits)_ij."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def offdiag_softmax(W: torch.Tensor, tau: float) -> torch.Tensor:
    """Row softmax of W / tau over j != i (zero diagonal); for N = 1 all mass stays on the diagonal."""
    n = W.shape[0]
    if n == 1:
        return torch.ones_like(W)
    eye = torch.eye(n, dtype=torch.bool, device=W.device)
    return torch.softmax((W / tau).masked_fill(eye, float("-inf")), dim=-1)


def offdiag_rownorm(W: torch.Tensor) -> torch.Tensor:
    """W with its diagonal removed, rows divided by their sums (rows without neighbours stay 0)."""
    off = W * (1.0 - torch.eye(W.shape[0], dtype=W.dtype, device=W.device))
    return off / off.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)


def check_float(
    name: str, value: float, low: float | None = None, high: float | None = None, *, open_low=False
) -> float:
    """Validate a numeric kwarg (a number, or a string such as YAML's ``1e-2``); return it as a float."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"loss kwarg {name}={value!r} must be a finite number")
    value = number
    if low is not None and (value < low or (open_low and value == low)):
        raise ConfigError(f"loss kwarg {name}={value!r} must be {'>' if open_low else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"loss kwarg {name}={value!r} must be <= {high}")
    return value


def positive_int(field: str, value: object, loss: str) -> int:
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ConfigError(f"loss {loss!r}: {field} must be a positive integer, got {value!r}")
    return number


# ----------------------------------------------------------------------------------- base class
class ContrastiveLoss(nn.Module):
    """Base class: checks inputs, switches autocast off, casts to float32, calls :meth:`compute`.

    Subclasses set ``name`` (the registry name, recorded in configs), optionally ``synonyms`` (other
    names the registry accepts), ``needs_prior`` (needs ``W``) and
    ``needs_gaussians`` (needs ``gauss_mean`` and ``gauss_var``), take their hyper-parameters as
    keyword-only arguments of ``__init__`` (that is what :func:`~histokg.losses.build_loss`
    accepts), and implement :meth:`compute`. Calling the loss returns a dict of named scalar
    terms: ``"loss"``, the total to minimise, and its parts for logging (as open_clip's losses
    do with ``output_dict=True``).
    """

    name: ClassVar[str] = ""
    synonyms: ClassVar[tuple[str, ...]] = ()
    needs_prior: ClassVar[bool] = False
    needs_gaussians: ClassVar[bool] = False

    def __init__(self, embed_dim: int, prior_dim: int | None = None):
        super().__init__()
        self.embed_dim = positive_int("embed_dim", embed_dim, self.name)
        self.prior_dim = None if prior_dim is None else positive_int("prior_dim", prior_dim, self.name)

    def forward(self, inputs: LossInputs) -> dict[str, torch.Tensor]:
        self._check(inputs)
        dtype = compute_dtype(inputs.img)
        with torch.autocast(device_type=inputs.img.device.type, enabled=False):
            f = inputs.img.to(dtype)
            g = inputs.expr.to(dtype)
            scale = inputs.logit_scale.to(dtype).reshape(())
            terms = self.compute(f, g, scale, inputs)
        if "loss" not in terms:
            raise TypeError(f"{type(self).__name__}.compute must return a dict with a 'loss' entry")
        return terms

    def compute(
        self, f: torch.Tensor, g: torch.Tensor, scale: torch.Tensor, inputs: LossInputs
    ) -> dict[str, torch.Tensor]:
        """``{"loss": total, part: value, ...}`` for the float32 (or float64) ``f``, ``g``, ``scale``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ input checks
    def _check(self, inputs: LossInputs) -> None:
        img, expr = inputs.img, inputs.expr
        if img.ndim != 2 or img.shape != expr.shape:
            raise InputError(
                f"loss {self.name!r}: img and expr must both be (N, D), got {tuple(img.shape)} and {tuple(expr.shape)}"
            )
        if img.shape[0] < 1:
            raise InputError(f"loss {self.name!r}: empty batch")
        if inputs.logit_scale.numel() != 1:
            raise InputError(
                f"loss {self.name!r}: logit_scale must be a scalar, got shape {tuple(inputs.logit_scale.shape)}"
            )
        n = img.shape[0]
        if self.needs_prior:
            if inputs.W is None:
                raise InputError(
                    f"loss {self.name!r} needs the KG prior W (LossInputs.W), which is missing (None)"
                )
            if tuple(inputs.W.shape) != (n, n):
                raise InputError(
                    f"loss {self.name!r}: W must be ({n}, {n}) for a batch of {n}, got {tuple(inputs.W.shape)}"
                )
        if self.needs_gaussians:
            if img.shape[1] != self.embed_dim:
                raise InputError(
                    f"loss {self.name!r} was built for embed_dim={self.embed_dim}, got embeddings of size {img.shape[1]}"
                )
            for field_name in ("gauss_mean", "gauss_var"):
                value = getattr(inputs, field_name)
                if value is None:
                    raise InputError(
                        f"loss {self.name!r} needs LossInputs.{field_name}, which is missing (None)"
                    )
                if tuple(value.shape) != (n, self.prior_dim):
                    raise InputError(
                        f"loss {self.name!r}: {field_name} must be ({n}, {self.prior_dim}), got {tuple(value.shape)}"
                    )

    @staticmethod
    def _prior(inputs: LossInputs, dtype: torch.dtype) -> torch.Tensor:
        """The prior as a detached matrix of the compute dtype."""
        assert inputs.W is not None
        return inputs.W.detach().to(dtype)

    def extra_repr(self) -> str:
        params = inspect.signature(type(self).__init__).parameters
        names = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
        return ", ".join(f"{p}={getattr(self, p)!r}" for p in names)
