"""Contrastive losses of the dual encoder, with and without a knowledge-graph (KG) prior.

Notation (``docs/losses.md`` has the long version): ``f`` (N, D) image embeddings and ``g`` (N, D)
expression embeddings, both L2-normalised; ``logit_scale`` = 1/tau; ``s = logit_scale * f @ g.T``
(row i: image i against every expression profile); ``W`` (N, N) the KG prior between the spots
of the batch, values in [0, 1]. Every KG loss reduces to its plain counterpart when its prior
strength is 0.

The losses are looked up by name in :data:`LOSSES` and built with :func:`build_loss`::

    loss = build_loss("kg_soft", embed_dim=128, lam=0.3)
    value = loss(LossInputs(img=f, expr=g, logit_scale=scale, W=W))

Every loss computes in float32 (or float64 when given float64) with autocast switched off, so
it is safe inside ``torch.autocast`` with bf16 or fp16, and works for any batch size N >= 1.
"""

from __future__ import annotations

import difflib
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
    "LOSSES",
    "BleepLoss",
    "ContrastiveLoss",
    "InfoNCELoss",
    "KGGaussianLoss",
    "KGNegativesLoss",
    "KGSoftLoss",
    "KGUniformityLoss",
    "LossInputs",
    "build_loss",
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


# ---------------------------------------------------------------------------------------- helpers
def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 kept (for exact tests)."""
    return torch.promote_types(x.dtype, torch.float32)


def _similarity(f: torch.Tensor, g: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """s_ij = logit_scale * f_i . g_j."""
    return scale * (f @ g.T)


def _targets(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def _clip_loss(s: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with identity targets: 0.5 * (CE(s, I) + CE(s^T, I))."""
    t = _targets(s.shape[0], s.device)
    return 0.5 * (F.cross_entropy(s, t) + F.cross_entropy(s.T, t))


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i sum_j -T_ij log_softmax(logits)_ij."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def _offdiag_softmax(W: torch.Tensor, tau: float) -> torch.Tensor:
    """Row softmax of W / tau over j != i (zero diagonal); for N = 1 all mass stays on the diagonal."""
    n = W.shape[0]
    if n == 1:
        return torch.ones_like(W)
    eye = torch.eye(n, dtype=torch.bool, device=W.device)
    return torch.softmax((W / tau).masked_fill(eye, float("-inf")), dim=-1)


def _offdiag_rownorm(W: torch.Tensor) -> torch.Tensor:
    """W with its diagonal removed, rows divided by their sums (rows without neighbours stay 0)."""
    off = W * (1.0 - torch.eye(W.shape[0], dtype=W.dtype, device=W.device))
    return off / off.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(W.dtype).tiny)


def _check_float(
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


def _positive_int(field: str, value: object, loss: str) -> int:
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

    Subclasses set ``name``, ``needs_prior`` (needs ``W``) and ``needs_gaussians`` (needs
    ``gauss_mean`` and ``gauss_var``), take their hyper-parameters as keyword-only arguments of
    ``__init__`` (that is what :func:`build_loss` accepts), and implement :meth:`compute`, which
    returns the scalar loss and a dict of named parts for logging. ``forward`` stores those parts
    as floats in ``last_terms``.
    """

    name: ClassVar[str] = ""
    needs_prior: ClassVar[bool] = False
    needs_gaussians: ClassVar[bool] = False

    def __init__(self, embed_dim: int, prior_dim: int | None = None):
        super().__init__()
        self.embed_dim = _positive_int("embed_dim", embed_dim, self.name)
        self.prior_dim = None if prior_dim is None else _positive_int("prior_dim", prior_dim, self.name)
        self.last_terms: dict[str, float] = {}

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self._check(inputs)
        dtype = _compute_dtype(inputs.img)
        with torch.autocast(device_type=inputs.img.device.type, enabled=False):
            f = inputs.img.to(dtype)
            g = inputs.expr.to(dtype)
            scale = inputs.logit_scale.to(dtype).reshape(())
            loss, terms = self.compute(f, g, scale, inputs)
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return loss

    def compute(
        self, f: torch.Tensor, g: torch.Tensor, scale: torch.Tensor, inputs: LossInputs
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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


# --------------------------------------------------------------------------------------- losses
class InfoNCELoss(ContrastiveLoss):
    """Symmetric InfoNCE / CLIP loss (Radford et al., ICML 2021), targets = identity.

    ``L = 0.5 * (CE(s, I) + CE(s^T, I))`` with ``CE(s, I) = mean_i [-s_ii + log sum_j exp(s_ij)]``.
    """

    name = "infonce"

    def compute(self, f, g, scale, inputs):
        loss = _clip_loss(_similarity(f, g, scale))
        return loss, {"infonce": loss}


class BleepLoss(ContrastiveLoss):
    """BLEEP soft-target contrastive loss (Xie et al., NeurIPS 2023), the baseline to beat.

    Targets from the within-modality similarities, detached:
    ``T = softmax(((f f^T + g g^T) / 2) / tau_prime, dim=-1)``;
    ``L = 0.5 * (softCE(s, T) + softCE(s^T, T^T))`` with
    ``softCE(z, T) = mean_i sum_j -T_ij log_softmax(z)_ij``.
    ``tau_prime`` sets how sharp the targets are. The paper uses 1.0 on unnormalised projections;
    on histokg's L2-normalised embeddings similarities lie in [-1, 1], so the default is 0.05 (at 1.0
    the targets are nearly uniform and the model barely learns: recall@5 1.3x chance vs 4.6x at 0.05
    on the synthetic study).
    """

    name = "bleep"

    def __init__(self, embed_dim: int, prior_dim: int | None = None, *, tau_prime: float = 0.05):
        super().__init__(embed_dim, prior_dim)
        self.tau_prime = _check_float("tau_prime", tau_prime, 0.0, open_low=True)

    def compute(self, f, g, scale, inputs):
        s = _similarity(f, g, scale)
        with torch.no_grad():
            T = torch.softmax(((f @ f.T + g @ g.T) / 2) / self.tau_prime, dim=-1)
        loss = 0.5 * (_soft_ce(s, T) + _soft_ce(s.T, T.T))
        return loss, {"bleep": loss}


class KGSoftLoss(ContrastiveLoss):
    """InfoNCE with KG soft targets (label smoothing towards KG neighbours).

    ``T = (1 - lam) I + lam * P`` with ``P_ij = softmax_{j != i}(W_ij / tau_kg)`` (diagonal set to
    -inf before the softmax, so P has a zero diagonal and rows summing to 1), detached;
    ``L = 0.5 * (softCE(s, T) + softCE(s^T, T_t))`` where ``T_t`` is built the same way from W^T.
    ``lam`` in [0, 1] (default 0.3): ``lam = 0`` is exactly InfoNCE. ``tau_kg`` > 0 (default 0.1)
    sharpens the prior. For N = 1, P = I (no other spot). In the spirit of knowledge-guided
    soft-label contrastive learning; the formula is histokg's (DESIGN.md, "The losses").
    """

    name = "kg_soft"
    needs_prior = True

    def __init__(
        self, embed_dim: int, prior_dim: int | None = None, *, lam: float = 0.3, tau_kg: float = 0.1
    ):
        super().__init__(embed_dim, prior_dim)
        self.lam = _check_float("lam", lam, 0.0, 1.0)
        self.tau_kg = _check_float("tau_kg", tau_kg, 0.0, open_low=True)

    def soft_targets(self, W: torch.Tensor) -> torch.Tensor:
        """T = (1 - lam) I + lam * offdiag_softmax(W / tau_kg), rows sum to 1."""
        eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return (1.0 - self.lam) * eye + self.lam * _offdiag_softmax(W, self.tau_kg)

    def compute(self, f, g, scale, inputs):
        s = _similarity(f, g, scale)
        W = self._prior(inputs, s.dtype)
        T, T_t = self.soft_targets(W), self.soft_targets(W.T)
        loss = 0.5 * (_soft_ce(s, T) + _soft_ce(s.T, T_t))
        return loss, {"kg_soft": loss}


class KGNegativesLoss(ContrastiveLoss):
    """InfoNCE whose negatives are down-weighted by the KG prior (KG-aware negative weighting).

    For anchor i and negative j != i: ``w_ij = max(1 - beta * W_ij, eps)``, then divided by the
    mean of ``w_ij`` over the N - 1 negatives of row i (so the weights average 1 per row);
    ``loss_i = -s_ii + log(exp(s_ii) + sum_{j != i} w_ij exp(s_ij))``, computed as a cross-entropy
    of ``s + log w`` (log w_ii = 0), i.e. a stable logsumexp. Averaged over i and symmetrised over
    the two directions (the expression -> image direction uses W^T). ``beta`` >= 0 (default 0.5);
    ``beta = 0``, W = 0 or any constant W give exactly InfoNCE. KG-related pairs are pushed apart
    less, in the spirit of debiased / weighted-negative contrastive learning (Chuang et al.,
    NeurIPS 2020); the weighting itself is histokg's (DESIGN.md).
    """

    name = "kg_negatives"
    needs_prior = True
    eps: ClassVar[float] = 1e-4

    def __init__(self, embed_dim: int, prior_dim: int | None = None, *, beta: float = 0.5):
        super().__init__(embed_dim, prior_dim)
        self.beta = _check_float("beta", beta, 0.0)

    def log_weights(self, W: torch.Tensor) -> torch.Tensor:
        """log w_ij for j != i (mean-1 normalised per row), 0 on the diagonal."""
        n = W.shape[0]
        off = 1.0 - torch.eye(n, dtype=W.dtype, device=W.device)
        w = (1.0 - self.beta * W).clamp_min(self.eps) * off
        w = w / (w.sum(dim=-1, keepdim=True) / max(n - 1, 1))
        return torch.where(off.bool(), w, torch.ones_like(w)).log()

    def compute(self, f, g, scale, inputs):
        s = _similarity(f, g, scale)
        W = self._prior(inputs, s.dtype)
        t = _targets(s.shape[0], s.device)
        loss = 0.5 * (
            F.cross_entropy(s + self.log_weights(W), t) + F.cross_entropy(s.T + self.log_weights(W.T), t)
        )
        return loss, {"kg_negatives": loss}


class KGUniformityLoss(ContrastiveLoss):
    """Alignment + decoupled uniformity with a KG kernel (Dufumier et al., ICML 2023,
    "Integrating prior knowledge in contrastive learning with kernel").

    Centroids ``mu_i = (f_i + g_i) / 2``. Kernel from the prior:
    ``K = (1 - lam) I + lam * P`` with ``P = rownorm(W without its diagonal)`` (W symmetrised
    first). ``P = D^-1 W`` is similar to the symmetric ``D^-1/2 W D^-1/2`` whose spectrum lies in
    [-1, 1], so for ``lam <= 0.5`` K has a real spectrum in [1 - 2 lam, 1], i.e. K is similar to a
    positive semi-definite kernel; ``lam`` is therefore restricted to [0, 0.5].
    Kernel (conditional mean embedding) smoothing: ``alpha = rownorm((K + eps I)^-1 K)``; since
    ``K 1 = 1`` (for spots with at least one neighbour) the row sums before normalisation are all
    ``1 / (1 + eps)``. ``mu' = alpha mu``.
    ``uniformity = log mean_{i<j} exp(-t ||mu'_i - mu'_j||^2)``,
    ``alignment = mean_i ||f_i - g_i||^2``, ``L = alignment + uniformity_weight * uniformity``.

    ``eps`` is the ridge of the estimator (the paper's ``n * lambda``): eps -> 0 gives alpha -> I
    (no smoothing at all), eps -> inf gives alpha -> K. The default eps = 1.0 keeps a real KG
    smoothing at the default lam = 0.3 (a ridge of 1e-2 would leave alpha within ~1% of I).
    ``lam = 0`` gives alpha = I: plain decoupled uniformity + alignment. The uniformity term is 0
    for N = 1 (no pairs). ``logit_scale`` is unused (added with weight 0 so that DDP sees it used).
    """

    name = "kg_uniformity"
    needs_prior = True

    def __init__(
        self,
        embed_dim: int,
        prior_dim: int | None = None,
        *,
        lam: float = 0.3,
        t: float = 2.0,
        eps: float = 1.0,
        uniformity_weight: float = 1.0,
    ):
        super().__init__(embed_dim, prior_dim)
        self.lam = _check_float("lam", lam, 0.0, 0.5)
        self.t = _check_float("t", t, 0.0, open_low=True)
        self.eps = _check_float("eps", eps, 0.0, open_low=True)
        self.uniformity_weight = _check_float("uniformity_weight", uniformity_weight, 0.0)

    def smoothing(self, W: torch.Tensor) -> torch.Tensor:
        """alpha = rownorm((K + eps I)^-1 K), K = (1 - lam) I + lam * rownorm(offdiag(sym(W)))."""
        n = W.shape[0]
        eye = torch.eye(n, dtype=W.dtype, device=W.device)
        if self.lam == 0.0:
            return eye
        K = (1.0 - self.lam) * eye + self.lam * _offdiag_rownorm((W + W.T) / 2)
        alpha = torch.linalg.solve(K + self.eps * eye, K)
        return alpha / alpha.sum(dim=-1, keepdim=True)

    def uniformity(self, mu: torch.Tensor) -> torch.Tensor:
        """log mean_{i<j} exp(-t ||mu_i - mu_j||^2), via logsumexp over the upper triangle."""
        n = mu.shape[0]
        if n < 2:
            return mu.sum() * 0.0
        sq = mu.pow(2).sum(dim=-1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * (mu @ mu.T)).clamp_min(0.0)
        iu = torch.triu_indices(n, n, offset=1, device=mu.device)
        return torch.logsumexp(-self.t * d2[iu[0], iu[1]], dim=0) - math.log(n * (n - 1) / 2)

    def compute(self, f, g, scale, inputs):
        W = self._prior(inputs, f.dtype)
        with torch.no_grad():
            alpha = self.smoothing(W)
        mu = alpha @ ((f + g) / 2)
        align = (f - g).pow(2).sum(dim=-1).mean()
        unif = self.uniformity(mu)
        loss = align + self.uniformity_weight * unif + 0.0 * scale
        return loss, {"alignment": align, "uniformity": unif}


class KGGaussianLoss(ContrastiveLoss):
    """InfoNCE + a KGV-style Gaussian regulariser (KG2E node Gaussians; cf. arXiv 2410.15981).

    Each spot i brings a diagonal Gaussian from KG space: mean ``m_i`` and variances ``v_i``
    (N, k). The loss owns a projection ``P: R^k -> R^D`` (``proj``, no bias) and a relation
    translation ``r`` in R^D (init 0). In the joint space:
    ``mu_i = normalize(P m_i)``, ``sigma2_i = (P ** 2) v_i + min_var`` (the diagonal of
    ``P diag(v_i) P^T`` plus a floor); the translated image embedding should be likely under it:
    ``nll_i = 0.5 * sum_d [(f_i + r - mu_i)_d^2 / sigma2_id + log sigma2_id]``.
    ``L = infonce + gamma * mean_i nll_i / D``. ``gamma`` >= 0 (default 0.1); ``gamma = 0`` gives
    exactly InfoNCE in value and in the gradients w.r.t. f, g and logit_scale (the regulariser is
    still evaluated, with weight 0, so that DDP sees the loss parameters used).
    """

    name = "kg_gaussian"
    needs_gaussians = True

    def __init__(
        self,
        embed_dim: int,
        prior_dim: int | None = None,
        *,
        gamma: float = 0.1,
        min_var: float = 1e-2,
        init_std: float = 0.02,
        seed: int = 0,
    ):
        if prior_dim is None:
            raise ConfigError("loss 'kg_gaussian' needs prior_dim (the size k of the KG Gaussians), got None")
        super().__init__(embed_dim, prior_dim)
        self.gamma = _check_float("gamma", gamma, 0.0)
        self.min_var = _check_float("min_var", min_var, 0.0, open_low=True)
        self.init_std = _check_float("init_std", init_std, 0.0, open_low=True)
        try:
            self.seed = operator.index(seed)
        except TypeError:
            raise ConfigError(f"loss kwarg seed={seed!r} must be an integer") from None
        self.proj = nn.Linear(self.prior_dim, self.embed_dim, bias=False)
        self.r = nn.Parameter(torch.zeros(self.embed_dim))
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.embed_dim, self.prior_dim, generator=gen) * self.init_std)

    def nll(self, f: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Per-spot Gaussian negative log-likelihood (without the constant), shape (N,)."""
        P = self.proj.weight.to(f.dtype)
        mu = F.normalize(mean @ P.T, dim=-1)
        sigma2 = var @ P.pow(2).T + self.min_var
        diff = f + self.r.to(f.dtype) - mu
        return 0.5 * (diff.pow(2) / sigma2 + sigma2.log()).sum(dim=-1)

    def compute(self, f, g, scale, inputs):
        assert inputs.gauss_mean is not None and inputs.gauss_var is not None
        mean = inputs.gauss_mean.detach().to(f.dtype)
        var = inputs.gauss_var.detach().to(f.dtype).clamp_min(0.0)
        nce = _clip_loss(_similarity(f, g, scale))
        nll = self.nll(f, mean, var).mean() / f.shape[1]
        loss = nce + self.gamma * nll
        return loss, {"infonce": nce, "nll": nll}


# ------------------------------------------------------------------------------------- registry
LOSSES: dict[str, type[ContrastiveLoss]] = {
    cls.name: cls
    for cls in (InfoNCELoss, BleepLoss, KGSoftLoss, KGNegativesLoss, KGUniformityLoss, KGGaussianLoss)
}


def loss_kwargs(name: str) -> dict[str, object]:
    """The keyword arguments a registered loss accepts, with their defaults."""
    params = inspect.signature(LOSSES[name].__init__).parameters
    return {p: v.default for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}


def build_loss(name: str, embed_dim: int, prior_dim: int | None = None, **kwargs) -> ContrastiveLoss:
    """Build the registered loss ``name``; ``prior_dim`` is the KG Gaussian size k (kg_gaussian only).

    Raises :class:`~histokg.errors.ConfigError` (a ValueError) for an unknown name or kwarg,
    naming it, suggesting the nearest valid one and listing the valid ones.
    """
    if name not in LOSSES:
        near = difflib.get_close_matches(str(name), list(LOSSES), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown loss {name!r}{hint}; valid losses: {', '.join(LOSSES)}")
    valid = loss_kwargs(name)
    for key in kwargs:
        if key not in valid:
            near = difflib.get_close_matches(key, list(valid), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            allowed = ", ".join(valid) if valid else "none"
            raise ConfigError(f"loss {name!r} got an unknown kwarg {key!r}{hint}; valid kwargs: {allowed}")
    return LOSSES[name](embed_dim, prior_dim, **kwargs)
