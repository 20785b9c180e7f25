"""InfoNCE with KG soft targets (label smoothing towards KG neighbours)."""

from __future__ import annotations

import torch

from histokg.losses.base import ContrastiveLoss, check_float, offdiag_softmax, similarity, soft_ce


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
        self.lam = check_float("lam", lam, 0.0, 1.0)
        self.tau_kg = check_float("tau_kg", tau_kg, 0.0, open_low=True)

    def soft_targets(self, W: torch.Tensor) -> torch.Tensor:
        """T = (1 - lam) I + lam * offdiag_softmax(W / tau_kg), rows sum to 1."""
        eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return (1.0 - self.lam) * eye + self.lam * offdiag_softmax(W, self.tau_kg)

    def compute(self, f, g, scale, inputs):
        s = similarity(f, g, scale)
        W = self._prior(inputs, s.dtype)
        T, T_t = self.soft_targets(W), self.soft_targets(W.T)
        loss = 0.5 * (soft_ce(s, T) + soft_ce(s.T, T_t))
        return {"loss": loss, "kg_soft": loss}
