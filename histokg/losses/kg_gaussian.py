"""InfoNCE + a KGV-style Gaussian regulariser from KG2E node Gaussians."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from histokg.errors import ConfigError
from histokg.losses.base import ContrastiveLoss, check_float, clip_loss, similarity


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
        self.gamma = check_float("gamma", gamma, 0.0)
        self.min_var = check_float("min_var", min_var, 0.0, open_low=True)
        self.init_std = check_float("init_std", init_std, 0.0, open_low=True)
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
        nce = clip_loss(similarity(f, g, scale))
        nll = self.nll(f, mean, var).mean() / f.shape[1]
        loss = nce + self.gamma * nll
        return {"loss": loss, "infonce": nce, "nll": nll}
