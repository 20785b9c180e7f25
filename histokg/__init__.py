"""histokg: one embedding space for H&E patches and spatial transcriptomics, guided by a knowledge graph.

Submodules load on first use so that ``import histokg`` stays fast:
``histokg.wsi`` (slides, tiling), ``histokg.st`` (readers, pairing, datasets), ``histokg.synth``
(synthetic studies), ``histokg.priors`` (KG pair weights), ``histokg.train``, ``histokg.tl``, ``histokg.pl``.

``histokg.load_model(checkpoint, device="cpu")`` rebuilds a trained dual encoder from a ``histokg train``
checkpoint (weights-only loading) and returns a :class:`~histokg.checkpoint.LoadedModel`: the model in
eval mode, its gene panel, patch geometry, checkpoint SHA-256 and saved metadata (training config
included). Inference never imports ``histokg.train``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports it on first use
    from histokg.checkpoint import load_model as load_model

__version__ = "0.1.0"

_SUBMODULES = {
    "checkpoint",
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

_FUNCTIONS = {"load_model": "histokg.checkpoint"}  # public functions, imported on first use


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"histokg.{name}")
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'histokg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBMODULES) + list(_FUNCTIONS))
