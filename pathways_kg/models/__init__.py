"""KG embedding models: the registry of :class:`~pathways_kg.models.base.KGModel` classes, one per file.

Registered: ``transe`` (TransE), ``rotate`` (RotatE), ``complex`` (ComplEx), ``kg2e`` (KG2E), each a
pykeen model looked up by pykeen's ``model_resolver`` when it trains. How to add a model: one file
here with a ``KGModel`` subclass, plus its test case in ``tests/kg`` (a ``ModelCase`` subclass);
every module of this folder is imported below. Importing this package does not import pykeen. A
name is matched as every registry name is (:mod:`pathways_kg.registry`: any case, ``-``/``_`` ignored).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pathways_kg.models.base import KGModel
from pathways_kg.registry import Registry, import_modules, subclasses

__all__ = ["MODELS", "KGModel", "get_model", "make_interaction", "model_registry"]

import_modules(__name__, __path__)
#: every :class:`KGModel` subclass of this folder, by name (sorted)
model_registry: Registry[type[KGModel]] = Registry(
    sorted(subclasses(KGModel), key=lambda c: c.name), "KG model"
)
#: name -> model class, sorted by name
MODELS: dict[str, type[KGModel]] = model_registry.entries


def get_model(name: str, key: str = "") -> type[KGModel]:
    """The model registered as ``name`` (any case); an unknown name is a KGError naming ``key``."""
    return model_registry.lookup(name, where=key)


def make_interaction(name: str, model_kwargs: Mapping[str, Any]):
    """The pykeen interaction module that scores (h, r, t) for a registered model."""
    from pykeen.nn.modules import interaction_resolver

    spec = get_model(name)
    kwargs = {k: v for k, v in spec.interaction_kwargs(model_kwargs).items() if v is not None}
    return interaction_resolver.make(spec.pykeen_name, **kwargs)
