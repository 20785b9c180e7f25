"""Embeddings: every registered model trains on the tiny graph, beats the random baseline, round-trips."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pathways_kg.bundle import load_bundle
from pathways_kg.config import Component, EmbedConfig, TrainingConfig
from pathways_kg.errors import KGError
from pathways_kg.explore import nearest, plot_embeddings
from pathways_kg.models import MODELS, get_model
from pathways_kg.testing import TREES


def _distance(bundle, a: str, b: str) -> float:
    x = bundle.entity_vectors()
    return float(np.linalg.norm(x[bundle.entity_index[a]] - x[bundle.entity_index[b]]))


def test_transe_parent_nearer_to_children_than_to_unrelated(tiny_transe):
    """Known answer: after training, a pathway's sub-pathways sit nearer to it than the other tree does."""
    for parent, children in TREES.items():
        other = next(p for p in TREES if p != parent)
        unrelated = [f"pathway:R-HSA-{x}" for x in (other, *TREES[other])]
        to_children = [
            _distance(tiny_transe, f"pathway:R-HSA-{parent}", f"pathway:R-HSA-{c}") for c in children
        ]
        to_unrelated = [_distance(tiny_transe, f"pathway:R-HSA-{parent}", u) for u in unrelated]
        assert max(to_children) < min(to_unrelated), (to_children, to_unrelated)


def test_trained_beats_random_baseline(tiny_transe):
    m = tiny_transe.meta["metrics"]
    assert set(m) == {"trained", "random"}
    assert set(m["trained"]) == {"mrr", "hits_at_1", "hits_at_3", "hits_at_10", "amri"}
    assert m["trained"]["mrr"] > 2 * m["random"]["mrr"]
    assert m["trained"]["hits_at_10"] > m["random"]["hits_at_10"]


def test_bundle_files_and_metadata(tiny_transe):
    folder = tiny_transe.path
    assert sorted(p.name for p in folder.iterdir()) == [
        "bundle.json", "entities.safetensors", "entities.tsv", "relations.safetensors", "triples.tsv",
    ]  # fmt: skip
    meta = json.loads((folder / "bundle.json").read_text())
    for key in ("model", "model_kwargs", "embedding_dim", "seed", "epochs", "metrics", "graph", "entities",
                "relations", "versions", "train_seconds", "split"):  # fmt: skip
        assert key in meta
    assert len(meta["graph"]["sha256"]) == 64
    assert dict(meta["relations"])["member_of"] == "membership"
    assert dict(meta["entities"])["celltype:T cell"] == "celltype"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_trains_and_round_trips(name, tiny_graph_dir, tmp_path):
    from pathways_kg.embed import embed_graph

    cfg = EmbedConfig(
        model=Component(name, {"embedding_dim": 8}),
        training=TrainingConfig(epochs=60, batch_size=64, learning_rate=0.02),
    )
    trained = embed_graph(tiny_graph_dir, cfg, tmp_path / name)
    m = trained.meta["metrics"]
    assert m["trained"]["mrr"] > m["random"]["mrr"], m
    loaded = load_bundle(tmp_path / name)
    assert loaded.model == name and loaded.entity_ids == trained.entity_ids
    assert loaded.relation_families == trained.relation_families
    for key, value in trained.entity_tensors.items():
        np.testing.assert_array_equal(loaded.entity_tensors[key], value)
    n = len(loaded.entity_ids)
    storage = get_model(name).storage
    if storage == "complex":
        assert loaded.entity_tensors["entity"].shape == (n, 8, 2)
        assert loaded.entity_vectors().shape == (n, 16)
    elif storage == "gaussian":
        mean, var = loaded.gaussians()
        assert mean.shape == var.shape == (n, 8) and (var > 0).all()
        assert set(loaded.relation_tensors) == {"relation_mean", "relation_var"}
    else:
        assert loaded.entity_vectors().shape == (n, 8)
    near = nearest(loaded, "celltype:T cell", k=3)
    assert len(near["similarity"]) == 3 and near["subtype_of"][0][0].startswith("celltype:")


def test_registry_errors_and_bad_model_kwargs(tiny_graph_dir):
    from pathways_kg.embed import embed_graph

    with pytest.raises(KGError, match="did you mean 'rotate'"):
        get_model("rotat")
    cfg = EmbedConfig(model=Component("transe", {"embeding_dim": 8}))
    with pytest.raises(KGError, match="unknown kwarg 'embeding_dim'; did you mean 'embedding_dim'"):
        embed_graph(tiny_graph_dir, cfg)


def test_nearest_per_relation_and_plot(tiny_transe, tmp_path):
    near = nearest(tiny_transe, "phenotype:carcinoma", k=2)
    assert {"similarity", "composed_of", "has_hallmark", "is_a", "adjacent_to"} <= set(near)
    assert all(t.startswith("celltype:") for t, _ in near["composed_of"])
    with pytest.raises(KGError, match="did you mean 'phenotype:carcinoma'"):
        nearest(tiny_transe, "phenotype:carcinom")
    out = plot_embeddings(tiny_transe, tmp_path / "map.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_bundle_checks(tiny_transe, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_transe.path, copy)
    with open(copy / "triples.tsv", "a", encoding="utf-8") as fh:
        fh.write("gene:GA01\tmember_of\tpathway:R-HSA-1002\tmembership\tx\tx\t\n")
    with pytest.raises(KGError, match="sha256 differs"):
        load_bundle(copy)
    (copy / "bundle.json").unlink()
    with pytest.raises(KGError, match="not an embedding bundle"):
        load_bundle(copy)
    with pytest.raises(KGError, match="not an embedding bundle"):
        load_bundle(tmp_path / "nothing")


def _quick_cfg(epochs: int = 4) -> EmbedConfig:
    return EmbedConfig(
        model=Component("transe", {"embedding_dim": 8}),
        training=TrainingConfig(epochs=epochs, batch_size=64),
        device="cpu",
    )


def test_progress_bars_show_epochs_loss_and_evaluation(tiny_graph_dir, capsys):
    from pathways_kg.embed import embed_graph

    embed_graph(tiny_graph_dir, _quick_cfg(), progress=True)
    err = capsys.readouterr().err
    assert "training transe" in err and "4/4" in err and "epoch" in err
    assert re.search(r"loss=\d", err), err[-500:]
    assert "evaluating trained transe" in err and "evaluating random transe (baseline)" in err


def test_no_bars_when_not_a_terminal_but_epochs_logged(tiny_graph_dir, capsys, caplog):
    import logging

    from pathways_kg.embed import embed_graph

    with caplog.at_level(logging.INFO, logger="pathways_kg.embed"):
        embed_graph(tiny_graph_dir, _quick_cfg(3))  # progress=None: stderr is captured, not a terminal
    assert "training transe" not in capsys.readouterr().err
    assert [r.getMessage().split(":")[0] for r in caplog.records if "loss" in r.getMessage()] == [
        "epoch 1/3", "epoch 2/3", "epoch 3/3",
    ]  # fmt: skip


def test_config_values_checked_before_training(tiny_graph_dir):
    import dataclasses

    from pathways_kg.config import EvaluationConfig
    from pathways_kg.embed import embed_graph

    cfg = dataclasses.replace(_quick_cfg(), training=TrainingConfig(epochs=0))
    with pytest.raises(KGError, match=r"embed\.training\.epochs: must be at least 1, got 0"):
        embed_graph(tiny_graph_dir, cfg)
    cfg = dataclasses.replace(_quick_cfg(), evaluation=EvaluationConfig(split=(0.5, 0.5, 0.0)))
    with pytest.raises(
        KGError, match=r"embed\.evaluation\.split: must be three ratios in \(0, 1\) that sum to 1"
    ):
        embed_graph(tiny_graph_dir, cfg)
    cfg = dataclasses.replace(_quick_cfg(), training=TrainingConfig(loss=Component("softplus", {"marg": 1})))
    with pytest.raises(KGError, match="embed.training.loss 'softplus': unknown kwarg 'marg'"):
        embed_graph(tiny_graph_dir, cfg)
