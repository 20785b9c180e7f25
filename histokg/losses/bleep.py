"""BLEEP's soft-target contrastive loss (targets from within-modality similarities)."""

from __future__ import annotations

import torch

from histokg.losses.base import ContrastiveLoss, check_float, similarity, soft_ce


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
        self.tau_prime = check_float("tau_prime", tau_prime, 0.0, open_low=True)

    def compute(self, f, g, scale, inputs):
        s = similarity(f, g, scale)
        with torch.no_grad():
            T = torch.softmax(((f @ f.T + g @ g.T) / 2) / self.tau_prime, dim=-1)
        loss = 0.5 * (soft_ce(s, T) + soft_ce(s.T, T.T))
        return {"loss": loss, "bleep": loss}
