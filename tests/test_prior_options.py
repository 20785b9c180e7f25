"""PriorConfig options measured by `histokg bench`: score="zmean" and the activation-profile kernel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from histokg.errors import ConfigError
from histokg.priors import ACTIVATION_KERNEL, KGPrior, PriorConfig
from pathways_kg.testing import CELL_MARKERS, all_genes, pathway_genes, random_bundle, tiny_graph

GENES = all_genes()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    graph = tiny_graph(tmp_path_factory.mktemp("tiny"))
    return random_bundle(graph, tmp_path_factory.mktemp("b") / "transe", dim=16)


def _counts(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sparse Poisson counts; the first half of the spots raise pathway 1002, the rest fibroblast markers."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(0.3, size=(n, len(GENES))).astype(np.float64)
    index = {g: i for i, g in enumerate(GENES)}
    group = np.arange(n) < n // 2
    X[np.ix_(group, [index[g] for g in pathway_genes("1002")])] += rng.poisson(4, (group.sum(), 10))
    X[np.ix_(~group, [index[g] for g in CELL_MARKERS["fibroblast"]])] += rng.poisson(4, ((~group).sum(), 5))
    return X, group


def test_zmean_scores_ignore_library_size_and_find_the_raised_set(bundle_dir):
    prior = KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(score="zmean"))
    X, group = _counts()
    A = prior.activations(X)
    assert "pathway:R-HSA-1002" in prior.scored_directly and "pathway:R-HSA-1000" in prior.entity_ids
    col = prior.entity_ids.index("pathway:R-HSA-1002")
    assert A[group, col].mean() > A[~group, col].mean() + 0.5
    fib = prior.entity_ids.index("celltype:fibroblast")
    assert A[~group, fib].mean() > A[group, fib].mean() + 0.5
    # CP10k first: doubling every count of a spot changes nothing
    X2 = X.copy()
    X2[0] *= 2
    np.testing.assert_allclose(prior.activations(X2)[0], A[0], atol=1e-5)
    # sparse input and small chunks give the same scores (gene statistics use every spot, not a chunk)
    chunked = KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(score="zmean", chunk_size=7))
    np.testing.assert_allclose(chunked.activations(sp.csr_matrix(X)), A, atol=1e-5)


def test_activation_kernel_is_one_more_weighted_kernel(bundle_dir):
    X, group = _counts()
    plain = KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(score="zmean"))
    both = KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(score="zmean", activation_weight=1.0))
    assert ACTIVATION_KERNEL not in plain.kernels and both.kernels == (*plain.families, ACTIVATION_KERNEL)
    assert both.packed_dim == plain.packed_dim + len(both.entity_ids)
    assert abs(sum(both.alpha.values()) - 1.0) < 1e-9
    packed = both.encode(X)
    assert packed.shape == (len(X), both.packed_dim)
    # the family part of the packing is unchanged
    np.testing.assert_allclose(packed[:, : plain.packed_dim].numpy(), plain.encode(X).numpy(), atol=1e-6)
    W = both.pair_weights_from_packed(packed).numpy()
    assert np.allclose(W, W.T, atol=1e-6) and np.allclose(np.diag(W), 1.0, atol=1e-5)
    assert W.min() >= 0 and W.max() <= 1 + 1e-6
    # on its own the activation kernel separates the two planted groups
    S = both.pair_weights({ACTIVATION_KERNEL: both.unpack(packed)[ACTIVATION_KERNEL]}).numpy()
    same = group[:, None] == group[None, :]
    assert S[same].mean() > S[~same].mean()


def test_new_options_are_checked(bundle_dir):
    with pytest.raises(ConfigError, match="'zmean'"):
        KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(score="zcore"))
    with pytest.raises(ConfigError, match="activation_weight"):
        KGPrior.from_bundle(bundle_dir, GENES, dataclasses.replace(PriorConfig(), activation_weight=-1.0))
