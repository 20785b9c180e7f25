"""The :class:`KGModel` base: how pathways_kg trains, stores and scores one pykeen model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pathways_kg.registry import normalize


class KGModel:
    """A registered KG embedding model; subclasses are specs (class attributes), never instantiated.

    Registered under the lower-cased class name (``TransE`` -> ``transe``). ``pykeen_name`` is the
    pykeen model trained (pykeen's ``model_resolver`` name); ``storage`` says how its parameters are
    stored in a bundle (``real``: one real matrix; ``complex``: real pairs ``(n, d, 2)``;
    ``gaussian``: mean and diagonal variance); ``defaults`` are its keyword arguments unless the
    config gives others.
    """

    name: ClassVar[str]
    pykeen_name: ClassVar[str]
    storage: ClassVar[str]  # "real" | "complex" | "gaussian"
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = normalize(cls.__name__).removesuffix("kgmodel")

    @classmethod
    def interaction_kwargs(cls, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the pykeen interaction (scoring function), from a bundle's model kwargs."""
        return {}
