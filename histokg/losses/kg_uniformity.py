"""Alignment + decoupled uniformity with a KG kernel (Dufumier et al., ICML 2023)."""

from __future__ import annotations

import math

import torch

from histokg.losses.base import ContrastiveLoss, check_float, offdiag_rownorm


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
        self.lam = check_float("lam", lam, 0.0, 0.5)
        self.t = check_float("t", t, 0.0, open_low=True)
        self.eps = check_float("eps", eps, 0.0, open_low=True)
        self.uniformity_weight = check_float("uniformity_weight", uniformity_weight, 0.0)

    def smoothing(self, W: torch.Tensor) -> torch.Tensor:
        """alpha = rownorm((K + eps I)^-1 K), K = (1 - lam) I + lam * rownorm(offdiag(sym(W)))."""
        n = W.shape[0]
        eye = torch.eye(n, dtype=W.dtype, device=W.device)
        if self.lam == 0.0:
            return eye
        K = (1.0 - self.lam) * eye + self.lam * offdiag_rownorm((W + W.T) / 2)
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
        return {"loss": loss, "alignment": align, "uniformity": unif}
