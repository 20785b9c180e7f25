"""ComplEx (Trouillon et al. 2016): a complex trilinear product."""

from __future__ import annotations

from pathways_kg.models.base import KGModel


class ComplEx(KGModel):
    pykeen_name = "ComplEx"
    storage = "complex"
    # pykeen's default normal initialisation leaves ComplEx at the random baseline after short training
    defaults = {
        "embedding_dim": 32,
        "entity_initializer": "xavier_uniform",
        "relation_initializer": "xavier_uniform",
    }
