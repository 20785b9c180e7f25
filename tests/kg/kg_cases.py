"""Generic test cases of the KG registries (the pattern of pykeen's tests/cases.py).

- :class:`SourceCase`: a subclass names a registered source (``cls``), writes a small valid input
  (:meth:`SourceCase.fixture`) and one with a bad row (:meth:`SourceCase.malformed`); the generic
  tests check that it is registered and made by name from the config, adds typed triples that pass
  the schema with its provenance, is deterministic, and names the file and row of a bad input.
- :class:`ModelCase`: a subclass names a registered model; the tiny graph embeds for 2 epochs to
  finite vectors of the configured dimension, the same twice with one seed.

``test_kg_registry.py`` fails when a registered name has no case.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pathways_kg.config import BuildConfig, Component, EmbedConfig, SourcesConfig, TrainingConfig, check_build
from pathways_kg.errors import KGError
from pathways_kg.graph import validate
from pathways_kg.models import MODELS, KGModel, get_model
from pathways_kg.sources import GraphBuilder, Source, get_source, make_source, source_registry


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class SourceCase:
    """Generic tests of one registered KG source."""

    cls: type[Source]
    declares_only = False  # True: the source declares entities and adds no triples

    def fixture(self, folder: Path) -> dict[str, Any]:
        """Write a small valid input into ``folder``; return the source's keyword arguments."""
        raise NotImplementedError

    def malformed(self, folder: Path) -> tuple[dict[str, Any], Path, int]:
        """Write an input with one bad row; return the keyword arguments, the file and the line at fault."""
        raise NotImplementedError

    def prepare(self, builder: GraphBuilder) -> None:
        """Add what the source expects the graph to have already (default: nothing)."""

    def _build(self, kwargs: dict[str, Any]) -> tuple[Source, GraphBuilder, int, int]:
        builder = GraphBuilder()
        self.prepare(builder)
        n_entities, n_edges = len(builder.graph.entities), len(builder.graph.edges)
        source = make_source(self.cls.name, kwargs)
        source.add_to(builder)
        return source, builder, n_entities, n_edges

    def test_registered_under_its_name(self):
        assert source_registry.entries[self.cls.name] is self.cls
        assert get_source(self.cls.name.upper()) is self.cls

    def test_made_by_name_from_the_config(self, tmp_path):
        kwargs = self.fixture(tmp_path)
        check_build(BuildConfig(sources=SourcesConfig(add=(Component(self.cls.name, kwargs),))))
        assert isinstance(make_source(self.cls.name, kwargs), self.cls)
        bad = SourcesConfig(add=(Component(self.cls.name, {**kwargs, "pth": "x"}),))
        with pytest.raises(
            KGError,
            match=rf"build\.sources\.add\[0\]\.kwargs: KG source '{self.cls.name}': unknown kwarg 'pth'",
        ):
            check_build(BuildConfig(sources=bad))

    def test_produces_typed_triples_with_provenance(self, tmp_path):
        source, builder, n_entities, n_edges = self._build(self.fixture(tmp_path))
        graph = builder.graph
        entities = list(graph.entities.values())[n_entities:]
        edges = graph.edges[n_edges:]
        validate(graph)  # relations and entity types fit the schema; no dangling genes or duplicates
        if self.declares_only:
            assert entities and not edges
        else:
            assert edges, "the source added no triples"
            assert graph.sources[source.provenance.name] == {
                "licence": source.provenance.licence,
                "citation": source.provenance.citation,
            }
            assert any(e.source == source.provenance.name for e in edges)
        for item in (*entities, *edges):  # each fact traces back to the fixture's files
            assert str(tmp_path) in item.origin, item
            assert item.source in graph.sources or item.source == source.provenance.name, item
        for e in entities:
            assert e.source == source.provenance.name

    def test_deterministic(self, tmp_path):
        kwargs = self.fixture(tmp_path)
        first, second = self._build(kwargs)[1].graph, self._build(kwargs)[1].graph
        assert first.edges == second.edges and first.entities == second.entities

    def test_malformed_file_names_the_file_and_row(self, tmp_path):
        kwargs, path, line = self.malformed(tmp_path)
        with pytest.raises(KGError, match=re.escape(f"{path}:{line}:")):
            self._build(kwargs)

    def test_missing_file_is_named(self, tmp_path):
        missing = tmp_path / "missing.txt"
        with pytest.raises(KGError, match=re.escape(f"{missing}: file does not exist")):
            self._build({**self.fixture(tmp_path), "path": missing})


class ModelCase:
    """Generic tests of one registered KG embedding model (needs the ``tiny_graph_dir`` fixture)."""

    cls: type[KGModel]
    dim = 6

    def config(self, seed: int = 7) -> EmbedConfig:
        return EmbedConfig(
            model=Component(self.cls.name, {"embedding_dim": self.dim}),
            training=TrainingConfig(epochs=2, batch_size=64),
            seed=seed,
            device="cpu",
        )

    def test_registered_under_its_name(self):
        assert MODELS[self.cls.name] is self.cls
        assert get_model(self.cls.name.upper()) is self.cls

    def test_defaults_are_arguments_of_the_pykeen_model(self):
        from pykeen.models import model_resolver

        from pathways_kg.registry import check_kwargs

        pykeen_model = model_resolver.lookup(self.cls.pykeen_name)
        check_kwargs(
            pykeen_model, self.cls.defaults, self.cls.name, keyword_only=False, skip=("triples_factory",)
        )
        assert self.cls.storage in ("real", "complex", "gaussian")

    def test_embeds_to_finite_vectors_of_the_configured_dim(self, tiny_graph_dir):
        from pathways_kg.embed import embed_graph

        first = embed_graph(tiny_graph_dir, self.config())
        n, m = len(first.entity_ids), len(first.relation_ids)
        assert first.model == self.cls.name and first.meta["embedding_dim"] == self.dim
        for rows, tensors in ((n, first.entity_tensors), (m, first.relation_tensors)):
            for key, value in tensors.items():
                assert value.shape[:2] == (rows, self.dim), key
                assert np.isfinite(value).all(), key
        assert first.entity_vectors().shape == (n, first.meta["vector_dim"])
        again = embed_graph(tiny_graph_dir, self.config())
        for key, value in first.entity_tensors.items():
            np.testing.assert_array_equal(again.entity_tensors[key], value)
        other = embed_graph(tiny_graph_dir, self.config(seed=8))
        assert not np.array_equal(other.entity_vectors(), first.entity_vectors())

    def test_scores_triples_of_a_bundle(self, tiny_graph_dir, tmp_path):
        from pathways_kg.bundle import load_bundle
        from pathways_kg.explore import nearest
        from pathways_kg.testing import random_bundle

        bundle = load_bundle(random_bundle(tiny_graph_dir, tmp_path / "b", model=self.cls.name, dim=self.dim))
        near = nearest(bundle, "celltype:T cell", k=3)
        assert near["subtype_of"] and all(np.isfinite(s) for items in near.values() for _, s in items)
