"""Validation of a training run on its held-out slides: retrieval recall both ways and kNN prediction.

Per validation slide, recall@1/5/10 of image -> expression and expression -> image retrieval (averaged
over both directions; the whole slide is the pool), its chance level, and the mean Pearson per gene of
a kNN prediction of the panel's expression from the training spots. Embeddings come from the library's
one routine (:mod:`histokg.embedding`): backbone features (cached, or computed now by the model's
current backbone), then the heads.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from histokg.embedding import embed_expression
from histokg.keys import Batch, Key
from histokg.metrics import chance_recall, knn_predict, pearson_per_gene, retrieval_recall

__all__ = ["split_features", "validate"]


def split_features(model, split, dtype=None, batch_size: int = 128) -> np.ndarray:
    """Backbone features (n, d) of a split's spots: its cached features, or its patches through the
    model's backbone now (no augmentation)."""
    if Batch.features in split.dataset.extra:
        return np.asarray(split.dataset.extra[Batch.features], np.float32)
    from histokg.features import Extractor, spot_features

    extractor = Extractor.of_model(model, dtype=dtype)
    return spot_features(
        split.adata, extractor, split.dataset.cfg, dataset=split.dataset, batch_size=batch_size
    ).tower[0]


def validate(joint, val, train, precision=None) -> dict[str, float]:
    """The metrics of the model in ``joint`` on the ``val`` split (kNN reference: the ``train`` split),
    under ``precision``'s autocast (a :class:`~histokg.train.precision.Precision`; None: float32)."""
    model = joint.model
    autocast = precision.autocast if precision is not None else nullcontext
    dtype = precision.dtype if precision is not None else None
    f_val, g_val = joint.embed(split_features(model, val, dtype), val.expr_inputs, autocast=autocast)
    libs = val.adata.obs[Key.obs.library_id].astype(str).to_numpy()
    recalls: dict[int, list[float]] = {k: [] for k in (1, 5, 10)}
    chance = []
    for lib in np.unique(libs):
        sel = libs == lib
        i2e = retrieval_recall(f_val[sel], g_val[sel])
        e2i = retrieval_recall(g_val[sel], f_val[sel])
        for k in recalls:
            recalls[k].append((i2e[k] + e2i[k]) / 2)
        chance.append(chance_recall(int(sel.sum()), 5))
    g_train = embed_expression(model, train.expr_inputs, autocast=autocast)
    pred = knn_predict(f_val, g_train, train.expression, k=10)
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    out["pearson"] = float(np.nanmean(pearson_per_gene(pred, val.expression)))
    out["chance_recall@5"] = float(np.mean(chance))
    return out
