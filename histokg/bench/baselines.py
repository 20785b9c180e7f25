"""The baselines of ``histokg bench``: what a trained model must beat, fitted on the training slides only.

- ``mean``: the training mean for every held-out spot (constant: Pearson 0, the floor);
- ``naive_ridge``: 26 colour/texture numbers per patch (:func:`histokg.patch_stats.naive_features`),
  standardised, Ridge(alpha = 100 / (26 x genes));
- ``frozen_pca_ridge``: the HEST-Benchmark probe: standardised frozen features -> PCA -> Ridge;
- ``frozen_ridge_cv``: Ridge on standardised frozen features, alpha chosen by leave-one-training-slide-out;
- ``frozen_knn``: cosine kNN between standardised frozen features.

Each is a *predictor*: a function from training values (spots x genes) to held-out predictions, so the
scoring treats every method alike (:func:`histokg.bench.scoring.score_slide`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from histokg.bench.config import EvalConfig
from histokg.bench.folds import FoldData
from histokg.metrics import knn_predict

log = logging.getLogger(__name__)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ridge_predictor(train_x: np.ndarray, test_x: np.ndarray, alpha: Callable[[int], float]):
    """``values -> predictions``: sklearn Ridge (with intercept) from train_x to values, applied to test_x."""
    from sklearn.linear_model import Ridge

    def predict(values: np.ndarray) -> np.ndarray:
        model = Ridge(alpha=alpha(values.shape[1]))
        model.fit(train_x, values.astype(np.float64))
        return model.predict(test_x).astype(np.float32)

    return predict


def mean_predictor(n: int):
    """``values -> predictions``: the training mean for every held-out spot (the floor)."""

    def predict(values: np.ndarray) -> np.ndarray:
        return np.broadcast_to(values.mean(0), (n, values.shape[1])).astype(np.float32)

    return predict


def knn_predictor(query: np.ndarray, reference: np.ndarray, k: int, temperature: float):
    def predict(values: np.ndarray) -> np.ndarray:
        return knn_predict(query, reference, values, k=k, temperature=temperature)

    return predict


def baseline_predictor(name: str, data: FoldData, slide: str, cfg: EvalConfig):
    """``values -> predictions`` of baseline ``name`` for held-out ``slide``, fitted on the training slides."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    n_test = data.test_feats[slide].shape[1]
    if data.ledger is not None:
        data.ledger.fitted(f"baseline {name}", data.groups)
    if name == "mean":
        return mean_predictor(n_test)
    if name == "naive_ridge":
        sc = StandardScaler().fit(data.train_naive)
        x_tr, x_te = sc.transform(data.train_naive), sc.transform(data.test_naive[slide])
        return ridge_predictor(x_tr, x_te, lambda m, d=x_tr.shape[1]: 100.0 / (d * m))
    if name == "frozen_pca_ridge":
        sc = StandardScaler().fit(data.train_feats[0])
        dim = min(cfg.pca_dim, data.train_feats.shape[1] - 1, data.train_feats.shape[2])
        pca = PCA(n_components=dim, random_state=0).fit(sc.transform(data.train_feats[0]))
        x_tr = pca.transform(sc.transform(data.train_feats[0]))
        x_te = pca.transform(sc.transform(data.test_feats[slide][0]))
        return ridge_predictor(x_tr, x_te, lambda m, d=dim: 100.0 / (d * m))
    if name == "frozen_ridge_cv":
        return ridge_cv_predictor(
            data, data.train_feats[0], data.test_feats[slide][0], "frozen_ridge_cv alpha"
        )
    # frozen_knn: cosine kNN between standardised frozen features; k as configured, or chosen on the
    # training sections as the trained models' is (histokg.tl.predict.choose_params)
    sc = StandardScaler().fit(data.train_feats[0])
    ref = _unit(sc.transform(data.train_feats[0])).astype(np.float32)
    query = _unit(sc.transform(data.test_feats[slide][0])).astype(np.float32)
    k = cfg.k
    if k is None:
        if "frozen_knn k" not in data.alphas:
            from histokg.tl.predict import choose_params

            if data.ledger is not None:
                data.ledger.fitted("frozen_knn k (inner leave-one-training-slide-out)", data.groups)
            values = data.targets.train_values["panel"]
            data.alphas["frozen_knn k"] = choose_params(
                ref, ref, values, data.groups, temperature=cfg.temperature, alphas=(1.0,)
            )["k"]
        k = int(data.alphas["frozen_knn k"])
    return knn_predictor(query, ref, k, cfg.temperature)


def ridge_cv_predictor(data: FoldData, train_x: np.ndarray, test_x: np.ndarray, what: str):
    """Ridge on standardised ``train_x``, its alpha chosen by leave-one-training-slide-out (cached in
    ``data.alphas`` under ``what``, so every held-out slide of a fold uses the same one)."""
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train_x)
    x_tr, x_te = sc.transform(train_x), sc.transform(test_x)
    if what not in data.alphas:
        data.alphas[what] = cv_alpha(data, x_tr)
    return ridge_predictor(x_tr, x_te, lambda m, a=data.alphas[what]: a)


def cv_alpha(data: FoldData, x: np.ndarray) -> float:
    """Ridge alpha by leave-one-training-slide-out (mean Pearson over the model panel); training slides only
    (with a single training slide: three contiguous blocks of its spots)."""
    from histokg.metrics import pearson_per_gene
    from histokg.tl.predict import inner_groups

    y = data.targets.train_values["panel"].astype(np.float64)
    alphas = np.logspace(0, 5, 11)
    if data.ledger is not None:
        data.ledger.fitted("ridge alpha (inner leave-one-training-slide-out)", data.groups)
    labels = inner_groups(data.groups)  # one training section: three contiguous blocks of its spots
    groups = np.unique(labels)
    scores = np.zeros(len(alphas))
    for g in groups:
        held = labels == g
        for i, a in enumerate(alphas):
            pred = ridge_predictor(x[~held], x[held], lambda m, a=a: a)(y[~held])
            scores[i] += float(np.nanmean(pearson_per_gene(pred, y[held]))) / len(groups)
    best = float(alphas[int(np.argmax(scores))])
    log.info("frozen_ridge_cv: alpha %.3g (inner leave-one-slide-out Pearson %.3f)", best, scores.max())
    return best
