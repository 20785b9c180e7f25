"""Fixtures of the pathways_kg tests: the tiny hand-made graph, a TransE bundle trained on it, real sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathways_kg.testing import tiny_graph


@pytest.fixture(scope="session")
def tiny_graph_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_graph(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_transe(tiny_graph_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """TransE trained on the tiny graph (about a second), saved as a bundle."""
    from pathways_kg.config import Component, EmbedConfig, TrainingConfig
    from pathways_kg.embed import embed_graph

    cfg = EmbedConfig(
        model=Component("transe", {"embedding_dim": 16}),
        training=TrainingConfig(epochs=100, batch_size=64, learning_rate=0.02),
    )
    return embed_graph(tiny_graph_dir, cfg, tmp_path_factory.mktemp("bundle") / "transe")


@pytest.fixture
def panglao_path(shared_data: Path) -> Path:
    """PanglaoDB markers, read from the shared data (never copied into the project)."""
    return shared_data / "kg" / "PanglaoDB_markers_27_Mar_2020.tsv"
