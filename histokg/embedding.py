"""The one embedding routine: a dual encoder's image and expression embeddings of many observations.

Image embeddings always go patches -> backbone features (:func:`histokg.features.spot_features`, with
its cache; followed by the model's standardised per-patch extras, :mod:`histokg.patch_stats`, when it
has some) -> projection head, in batches; expression embeddings go the expression tower's inputs ->
expression tower. The trainer's validation, ``histokg bench``, :func:`histokg.tl.embed` (and through it
the retrieval index and the app's uploads) all call these, so an embedding means the same everywhere.
Outputs are float32, L2-normalised and checked finite.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from histokg.errors import InputError

__all__ = ["check_finite", "embed_expression", "embed_features", "embed_spots"]


def check_finite(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` when every value is finite; otherwise an :class:`InputError` naming ``what``."""
    if not np.isfinite(x).all():
        raise InputError(
            f"{what}: {int((~np.isfinite(x)).any(axis=1).sum())} of {len(x)} embeddings are not finite; "
            "the checkpoint or its inputs are broken"
        )
    return x


def _device(model: torch.nn.Module, device) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


def _run(fn, values: np.ndarray, batch_size: int, device, autocast) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, max(len(values), 1), batch_size):  # an empty input gives an empty (0, dim)
            x = torch.from_numpy(np.ascontiguousarray(values[start : start + batch_size], np.float32))
            with autocast():
                out.append(fn(x.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def embed_features(
    model,
    features: np.ndarray,
    *,
    batch_size: int = 1024,
    device=None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    what: str = "image embeddings",
) -> np.ndarray:
    """Image embeddings (n, embed_dim) of the image head's input ``features`` (n, d): the backbone's
    features, followed by the model's standardised extras where it has some (:func:`embed_spots`)."""
    device = _device(model, device)
    was_training = model.training
    model.eval()
    try:
        out = _run(lambda x: model.encode_image(None, x), features, batch_size, device, autocast)
    finally:
        model.train(was_training)
    return check_finite(out.astype(np.float32, copy=False), what)


def embed_expression(
    model,
    inputs: np.ndarray,
    *,
    batch_size: int = 1024,
    device=None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    what: str = "expression embeddings",
) -> np.ndarray:
    """Expression embeddings (n, embed_dim) of the expression tower's ``inputs`` (n, k)."""
    device = _device(model, device)
    was_training = model.training
    model.eval()
    try:
        out = _run(model.encode_expr, inputs, batch_size, device, autocast)
    finally:
        model.train(was_training)
    return check_finite(out.astype(np.float32, copy=False), what)


def embed_spots(
    model,
    adata: ad.AnnData,
    pairing,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    slide_dir: str | Path | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    dataset=None,
    progress: Callable[[int, int], None] | None = None,
    what: str = "image embeddings",
) -> np.ndarray:
    """Image embeddings of every observation's patch: features of ``model``'s own backbone (cached in
    ``cache_dir`` when given; under autocast to ``dtype`` when given), followed by the model's per-patch
    extras standardised as it stores them (``model.image_extras``: computed from the same patches), then
    its head."""
    from histokg.features import Extractor, FeatureCache, spot_features
    from histokg.patch_stats import extra_functions

    extras = model.image.extras
    device = _device(model, device)
    extractor = Extractor.of_model(
        model,
        device=device,
        dtype=dtype,
        backend="auto",
        model_dir=Path(cache_dir) / "onnx" if cache_dir else None,
    )
    feats = spot_features(
        adata,
        extractor,
        pairing,
        cache=FeatureCache(cache_dir) if cache_dir else None,
        extras=extra_functions(extras.names) if extras is not None else None,
        batch_size=batch_size,
        num_workers=num_workers,
        slide_dir=slide_dir,
        dataset=dataset,
        progress=progress,
    )
    head_input = feats.tower[0] if extras is None else extras.append(feats.tower[0], feats.extras)
    return embed_features(model, head_input, device=device, autocast=extractor.autocast, what=what)
