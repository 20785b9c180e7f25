"""histokg.priors on the tiny hand-made graph (pathways_kg.testing) with random and trained bundles."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from histokg.errors import ConfigError, InputError
from histokg.priors import KGPrior, PriorConfig
from pathways_kg.bundle import load_bundle
from pathways_kg.testing import CELL_MARKERS, all_genes, pathway_genes, random_bundle, tiny_graph

GENES = all_genes()


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    return tiny_graph(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def bundle_dir(graph_dir, tmp_path_factory):
    return random_bundle(graph_dir, tmp_path_factory.mktemp("b") / "transe", dim=16)


@pytest.fixture(scope="module")
def prior(bundle_dir):
    return KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(min_genes=5, min_markers=2))


def _expressing(*gene_lists: list[str], n_background: int = 0, seed: int = 0) -> np.ndarray:
    """One spot per gene list: those genes high, a little random background elsewhere."""
    rng = np.random.default_rng(seed)
    X = rng.poisson(0.2, size=(len(gene_lists), len(GENES))).astype(np.float32) if n_background else None
    X = np.zeros((len(gene_lists), len(GENES)), np.float32) if X is None else X
    index = {g: i for i, g in enumerate(GENES)}
    for row, genes in enumerate(gene_lists):
        X[row, [index[g] for g in genes]] = 20.0
    return X


def _col(prior: KGPrior, entity: str) -> int:
    return prior.entity_ids.index(entity)


def test_spot_expressing_a_set_scores_highest_on_it(prior):
    X = _expressing(pathway_genes("1002"), CELL_MARKERS["fibroblast"], n_background=1)
    A = prior.activations(X)
    assert A.shape == (2, len(prior.entity_ids)) and A.dtype == np.float32
    pathways = [
        i for i, e in enumerate(prior.entity_ids) if e.startswith("pathway:") and e != "pathway:R-HSA-1000"
    ]
    assert prior.entity_ids[pathways[int(np.argmax(A[0, pathways]))]] == "pathway:R-HSA-1002"
    cells = [i for i, t in enumerate(prior.entity_types) if t == "celltype"]
    assert prior.entity_ids[cells[int(np.argmax(A[1, cells]))]] == "celltype:fibroblast"


def test_propagation_and_composition(prior):
    X = _expressing(
        CELL_MARKERS["T cell"], CELL_MARKERS["B cell"] + CELL_MARKERS["T cell"][:2], n_background=1
    )
    A = prior.activations(X)
    t, b, lym = (_col(prior, f"celltype:{c}") for c in ("T cell", "B cell", "lymphocyte"))
    np.testing.assert_allclose(A[:, lym], np.maximum(A[:, t], A[:, b]), rtol=1e-6)  # parent = max of children
    inf = _col(prior, "phenotype:infiltrate")
    np.testing.assert_allclose(A[:, inf], (A[:, t] + A[:, b]) / 2, rtol=1e-6)  # phenotype = mean of its parts
    carcinoma, tumour = _col(prior, "phenotype:carcinoma"), _col(prior, "phenotype:tumour")
    np.testing.assert_allclose(A[:, tumour], A[:, carcinoma], rtol=1e-6)  # is_a parent of a single child
    parent = _col(prior, "pathway:R-HSA-1000")
    children = [_col(prior, f"pathway:R-HSA-{c}") for c in ("1001", "1002", "1003")]
    assert (A[:, parent] >= A[:, children].max(axis=1) - 1e-6).all()


def test_activations_vectorised_rank_invariant_and_sparse(prior):
    rng = np.random.default_rng(1)
    X = rng.poisson(1.0, size=(50, len(GENES))).astype(np.float32)
    A = prior.activations(X)
    np.testing.assert_allclose(prior.activations(sp.csr_matrix(X)), A, rtol=1e-6)
    np.testing.assert_allclose(prior.activations(np.log1p(X / X.sum(1, keepdims=True) * 1e4)), A, rtol=1e-5)
    np.testing.assert_allclose(prior.activations(X[7:8]), A[7:8], rtol=1e-6)  # rows are independent
    small_chunks = KGPrior.from_bundle(prior.bundle, GENES, PriorConfig(min_markers=2, chunk_size=8))
    np.testing.assert_allclose(small_chunks.activations(X), A, rtol=1e-6)


def test_pair_weights_properties(prior):
    rng = np.random.default_rng(2)
    X = rng.poisson(1.0, size=(32, len(GENES))).astype(np.float32)
    reps = prior.spot_representations(X)
    assert set(reps) == set(prior.families) >= {"membership", "marker", "composition", "hierarchical"}
    for family, z in reps.items():
        assert z.shape == (32, prior.family_dims[family])
        np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    W = prior.pair_weights({f: torch.from_numpy(z) for f, z in reps.items()})
    assert W.shape == (32, 32) and W.dtype == torch.float32
    assert torch.allclose(W, W.T, atol=1e-6) and (W >= 0).all()
    total = sum(prior.alpha.values())
    assert torch.allclose(W.diagonal(), torch.full((32,), total), atol=1e-5)  # S^r_ii = 1
    assert W.max() <= total + 1e-5


def test_alpha_weighting(bundle_dir, prior):
    X = np.random.default_rng(3).poisson(1.0, size=(16, len(GENES))).astype(np.float32)
    zero = KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(alpha={}, min_markers=2))
    assert torch.count_nonzero(zero.pair_weights_from_packed(zero.encode(X))) == 0
    only = {
        f: KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(alpha={f: 1.0}, min_markers=2))
        for f in ("marker", "membership")
    }
    both = KGPrior.from_bundle(
        bundle_dir,
        GENES,
        PriorConfig(alpha={"marker": 2.0, "membership": 0.5}, min_markers=2, normalize_alpha=False),
    )
    expected = 2.0 * only["marker"].pair_weights_from_packed(only["marker"].encode(X))
    expected += 0.5 * only["membership"].pair_weights_from_packed(only["membership"].encode(X))
    torch.testing.assert_close(both.pair_weights_from_packed(both.encode(X)), expected)
    normalized = KGPrior.from_bundle(
        bundle_dir, GENES, PriorConfig(alpha={"marker": 2.0, "membership": 0.5}, min_markers=2)
    )
    torch.testing.assert_close(normalized.pair_weights_from_packed(normalized.encode(X)), expected / 2.5)


def test_normalize_alpha_bounds_w_by_one(bundle_dir):
    X = np.random.default_rng(7).poisson(1.0, size=(12, len(GENES))).astype(np.float32)
    prior = KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(min_markers=2, normalize_alpha=True))
    assert sum(prior.alpha.values()) == pytest.approx(1.0)
    W = prior.pair_weights_from_packed(prior.encode(X))
    torch.testing.assert_close(W.diagonal(), torch.ones(12))
    assert W.max() <= 1.0 + 1e-6


def test_packed_matches_family_reps(prior):
    X = np.random.default_rng(4).poisson(1.0, size=(20, len(GENES))).astype(np.float32)
    packed = prior.encode(X)
    assert packed.shape == (20, prior.packed_dim) and packed.dtype == torch.float32
    reps = prior.spot_representations(prior.activations(X), from_activations=True)
    direct = prior.pair_weights({f: torch.from_numpy(z) for f, z in reps.items()})
    torch.testing.assert_close(prior.pair_weights_from_packed(packed), direct)
    torch.testing.assert_close(prior.pair_weights_from_packed(packed[5:9]), direct[5:9, 5:9])


def test_same_region_spots_weigh_more(prior):
    """Two T-cell-rich spots are KG-closer to each other than to a fibroblast-rich spot."""
    X = _expressing(CELL_MARKERS["T cell"], CELL_MARKERS["T cell"][:4] + CELL_MARKERS["B cell"][:1],
                    CELL_MARKERS["fibroblast"], n_background=1)  # fmt: skip
    W = prior.pair_weights_from_packed(prior.encode(X))
    assert W[0, 1] > W[0, 2] and W[0, 1] > W[1, 2]


def test_anndata_input_and_gene_order(prior):
    import anndata

    X = np.random.default_rng(5).poisson(1.0, size=(10, len(GENES))).astype(np.float32)
    order = np.random.default_rng(6).permutation(len(GENES))
    adata = anndata.AnnData(X[:, order])
    adata.var_names = [GENES[i] for i in order]
    np.testing.assert_allclose(prior.activations(adata), prior.activations(X), rtol=1e-6)
    direct = KGPrior.from_bundle(prior.bundle, adata.var_names, PriorConfig(min_markers=2))
    np.testing.assert_allclose(direct.activations(adata.X), prior.activations(X), rtol=1e-6)
    with pytest.raises(InputError, match="expression must be"):
        prior.activations(X[:, :5])


def test_missing_genes_use_overlap_and_error_without_overlap(bundle_dir):
    some = [g for g in GENES if not g.startswith(("GD", "GE", "GF"))] + ["UNRELATED1"]
    prior = KGPrior.from_bundle(bundle_dir, some, PriorConfig(min_markers=2))
    assert "pathway:R-HSA-2001" not in prior.entity_ids and "pathway:R-HSA-1001" in prior.entity_ids
    with pytest.raises(InputError, match="min_genes=5.*0 of the data's 3 genes"):
        KGPrior.from_bundle(bundle_dir, ["X1", "X2", "X3"], PriorConfig())


def test_config_errors(bundle_dir):
    with pytest.raises(ConfigError, match="did you mean 'membership'"):
        KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(alpha={"membershp": 1.0}))
    with pytest.raises(ConfigError, match="score"):
        KGPrior.from_bundle(bundle_dir, GENES, PriorConfig(score="zscore"))


def test_spot_gaussians(graph_dir, tmp_path, prior):
    with pytest.raises(InputError, match="needs a KG2E bundle"):
        prior.spot_gaussians(np.zeros((2, len(GENES))))
    kg2e = KGPrior.from_bundle(
        random_bundle(graph_dir, tmp_path / "kg2e", model="kg2e", dim=8), GENES, PriorConfig(min_markers=2)
    )
    X = _expressing(CELL_MARKERS["T cell"], CELL_MARKERS["fibroblast"], n_background=1)
    mean, var = kg2e.spot_gaussians(X)
    assert mean.shape == var.shape == (2, 8) and (var > 0).all()
    mu, _ = kg2e.bundle.gaussians()
    t_cell = mu[kg2e.bundle.entity_index["celltype:T cell"]]
    fib = mu[kg2e.bundle.entity_index["celltype:fibroblast"]]
    assert np.linalg.norm(mean[0] - t_cell) < np.linalg.norm(mean[0] - fib)


def test_complex_bundle_vectors(graph_dir, tmp_path):
    prior = KGPrior.from_bundle(
        random_bundle(graph_dir, tmp_path / "c", model="complex", dim=8), GENES, PriorConfig(min_markers=2)
    )
    assert all(d == 16 for d in prior.family_dims.values())  # real and imaginary parts


def test_trained_bundle_from_path(graph_dir, tmp_path):
    """End to end with a real (briefly trained) TransE bundle read from disk."""
    from pathways_kg.config import Component, EmbedConfig, TrainingConfig
    from pathways_kg.embed import embed_graph

    cfg = EmbedConfig(
        model=Component("transe", {"embedding_dim": 16}), training=TrainingConfig(epochs=40, batch_size=64)
    )
    embed_graph(graph_dir, cfg, tmp_path / "trained")
    prior = KGPrior.from_bundle(load_bundle(tmp_path / "trained"), GENES, PriorConfig(min_markers=2))
    X = _expressing(
        CELL_MARKERS["T cell"], CELL_MARKERS["T cell"][1:], CELL_MARKERS["tumour cell"], n_background=1
    )
    W = prior.pair_weights_from_packed(prior.encode(X))
    assert W[0, 1] > W[0, 2]
