"""SigLIP's pairwise sigmoid loss (Zhai et al., ICCV 2023): every pair is its own binary problem."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histokg.losses.base import ContrastiveLoss, check_float, similarity


class SigLIPLoss(ContrastiveLoss):
    """Pairwise sigmoid loss (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023).

    ``z_ij = s_ij + b`` with a learnable bias ``b`` (init ``bias_init``); labels ``y_ij = 1`` for
    the pair i = j, -1 otherwise; ``L = -(1/N) sum_ij log sigmoid(y_ij z_ij)``. No softmax over the
    batch. ``bias_init`` = -10 as in the paper (there with ``logit_scale`` 10), so that the N - 1
    negatives of each row do not dominate the first steps. Symmetric in the two modalities
    (swapping them transposes ``s``); ``W`` is not used.
    """

    name = "siglip"

    def __init__(self, embed_dim: int, prior_dim: int | None = None, *, bias_init: float = -10.0):
        super().__init__(embed_dim, prior_dim)
        self.bias_init = check_float("bias_init", bias_init)
        self.bias = nn.Parameter(torch.tensor(self.bias_init))

    def compute(self, f, g, scale, inputs):
        z = similarity(f, g, scale) + self.bias.to(f.dtype)
        labels = 2.0 * torch.eye(z.shape[0], dtype=z.dtype, device=z.device) - 1.0
        loss = -F.logsigmoid(labels * z).sum() / z.shape[0]
        return {"loss": loss, "siglip": loss}
