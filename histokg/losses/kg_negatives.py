"""InfoNCE whose negatives are down-weighted by the KG prior."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from histokg.losses.base import ContrastiveLoss, check_float, identity_targets, similarity


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
        self.beta = check_float("beta", beta, 0.0)

    def log_weights(self, W: torch.Tensor) -> torch.Tensor:
        """log w_ij for j != i (mean-1 normalised per row), 0 on the diagonal."""
        n = W.shape[0]
        off = 1.0 - torch.eye(n, dtype=W.dtype, device=W.device)
        w = (1.0 - self.beta * W).clamp_min(self.eps) * off
        w = w / (w.sum(dim=-1, keepdim=True) / max(n - 1, 1))
        return torch.where(off.bool(), w, torch.ones_like(w)).log()

    def compute(self, f, g, scale, inputs):
        s = similarity(f, g, scale)
        W = self._prior(inputs, s.dtype)
        t = identity_targets(s.shape[0], s.device)
        loss = 0.5 * (
            F.cross_entropy(s + self.log_weights(W), t) + F.cross_entropy(s.T + self.log_weights(W.T), t)
        )
        return {"loss": loss, "kg_negatives": loss}
