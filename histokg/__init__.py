"""histokg: one embedding space for H&E patches and spatial transcriptomics, guided by a knowledge graph.

Submodules load on first use so that ``import histokg`` stays fast:
``histokg.wsi`` (slides, tiling), ``histokg.st`` (readers, pairing, datasets), ``histokg.synth``
(synthetic studies), ``histokg.priors`` (KG pair weights), ``histokg.train``, ``histokg.tl``, ``histokg.pl``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "config",
    "errors",
    "io",
    "wsi",
    "st",
    "synth",
    "priors",
    "train",
    "models",
    "losses",
    "tl",
    "pl",
    "retrieval",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"histokg.{name}")
    raise AttributeError(f"module 'histokg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES))
