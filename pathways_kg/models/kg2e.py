"""KG2E (He et al. 2015): Gaussian embeddings (mean and diagonal variance), used by histokg's kg_gaussian."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pathways_kg.models.base import KGModel


class KG2E(KGModel):
    pykeen_name = "KG2E"
    storage = "gaussian"
    defaults = {"embedding_dim": 64}

    @classmethod
    def interaction_kwargs(cls, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return {"similarity": model_kwargs.get("dist_similarity")}
