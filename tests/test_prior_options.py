"""PriorConfig options measured by `histokg bench`: score="zmean" and the activation-profile kernel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

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


def test_section_standardisation_removes_a_section_shift(bundle_dir):
    """standardise="section": each section is standardised on its own, so a section whose genes are all
    shifted (a batch effect) encodes like the same spots alone; "all" mixes the sections' statistics."""
    from histokg.priors import PriorError

    X, group = _counts(40)
    rng = np.random.default_rng(3)
    shifted = X + rng.poisson(2.0, size=(1, X.shape[1]))  # every spot of section B gains the same genes
    both = np.vstack([X, shifted])
    sections = np.array(["A"] * len(X) + ["B"] * len(X))
    cfg = PriorConfig(score="zmean", activation_weight=1.0, standardise="section")
    per_section = KGPrior.from_bundle(bundle_dir, GENES, cfg)
    got = per_section.encode(sp.csr_matrix(both), groups=sections).numpy()
    np.testing.assert_allclose(got[: len(X)], per_section.encode(sp.csr_matrix(X)).numpy(), atol=1e-5)
    np.testing.assert_allclose(got[len(X) :], per_section.encode(sp.csr_matrix(shifted)).numpy(), atol=1e-5)
    # the planted groups stay apart within section B, and B's spots pair with A's of the same group
    W = per_section.pair_weights_from_packed(torch.from_numpy(got)).numpy()
    g2 = np.concatenate([group, group])
    same_group = g2[:, None] == g2[None, :]
    cross = sections[:, None] != sections[None, :]
    assert W[cross & same_group].mean() > W[cross & ~same_group].mean()
    # without groups every spot is one section; "all" standardises over both sections together
    np.testing.assert_allclose(
        per_section.encode(both).numpy(), _plain(bundle_dir).encode(both).numpy(), atol=1e-6
    )
    assert not np.allclose(_plain(bundle_dir).encode(both, groups=sections).numpy(), got, atol=1e-3)
    with pytest.raises(PriorError, match="groups: 3 labels for 80 spots"):
        per_section.encode(both, groups=["A", "B", "A"])
    with pytest.raises(ConfigError, match="prior.standardise: 'slide'"):
        KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(standardise="slide"))


def _plain(bundle_dir) -> KGPrior:
    return KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(score="zmean", activation_weight=1.0))


def test_the_expression_control_centres_per_section_when_the_prior_does():
    from histokg.bench.prior import ExpressionKernel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 5)).astype(np.float32)
    shifted = np.vstack([x, x + 3.0])
    libs = np.array(["A"] * 10 + ["B"] * 10)
    per_section = ExpressionKernel(shifted.mean(0), per_section=True).encode(shifted, libs)
    np.testing.assert_allclose(per_section[:10], per_section[10:], atol=1e-5)  # the shift is gone
    overall = ExpressionKernel(shifted.mean(0)).encode(shifted, libs)
    assert np.abs(overall[:10] - overall[10:]).max() > 0.1
