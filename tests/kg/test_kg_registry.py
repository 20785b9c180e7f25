"""The KG registries: every registered source and model has a test case; unknown names are named."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from kg_cases import ModelCase, SourceCase

from pathways_kg.config import SourcesConfig, load_config
from pathways_kg.errors import KGError
from pathways_kg.models import MODELS, get_model
from pathways_kg.sources import source_registry


def _cases(base: type) -> set[type]:
    """The ``cls`` of every case in ``tests/kg/test_kg_*.py`` (each imported, as pytest would)."""
    for path in sorted(Path(__file__).parent.glob("test_kg_*.py")):
        importlib.import_module(path.stem)
    found, todo = set(), list(base.__subclasses__())
    while todo:
        case = todo.pop()
        todo += case.__subclasses__()
        found.add(case.cls)
    return found


def test_every_registered_source_has_a_test_case():
    registered, cases = set(source_registry), _cases(SourceCase)
    assert registered - cases == set(), f"registered KG sources without a test case: {registered - cases}"
    assert cases - registered == set(), f"test cases of unregistered KG sources: {cases - registered}"
    assert {"reactome", "hallmark", "markers", "entities", "triples", "panglao"} <= set(source_registry.names)


def test_every_registered_model_has_a_test_case():
    registered, cases = set(MODELS.values()), _cases(ModelCase)
    assert registered - cases == set(), f"registered KG models without a test case: {registered - cases}"
    assert cases - registered == set(), f"test cases of unregistered KG models: {cases - registered}"
    assert {"transe", "rotate", "complex", "kg2e"} <= set(MODELS)


def test_the_names_users_type_resolve():
    for name in (
        "transe",
        "TransE",
        "rotate",
        "RotatE",
        "complex",
        "ComplEx",
        "kg2e",
        "KG2E",
        "KG-2E",
        "trans_e",
    ):
        assert get_model(name).name == name.lower().replace("-", "").replace("_", "")


def test_unknown_names_suggest_the_nearest():
    with pytest.raises(
        KGError,
        match=re.escape(
            "unknown KG model 'rotat'; did you mean 'rotate'? (valid KG models: complex, kg2e, rotate, transe)"
        ),
    ):
        get_model("rotat")
    with pytest.raises(
        KGError,
        match=re.escape("build.sources.add[0].name: unknown KG source 'halmark'; did you mean 'hallmark'?"),
    ):
        load_config(None, ["build.sources.add=[{name: halmark}]"])
    with pytest.raises(
        KGError, match=re.escape("embed.model.name: unknown KG model 'transx'; did you mean 'transe'?")
    ):
        from pathways_kg.embed import embed_graph

        embed_graph(".", load_config(None, ["embed.model.name=transx"]).embed)


def test_default_plan_is_the_shipped_sources_in_build_order():
    assert [part.name for part in SourcesConfig().plan()] == [
        "reactome", "hallmark", "markers", "entities", "triples", "triples", "triples",
    ]  # fmt: skip
    plan = SourcesConfig(reactome=False, panglao="p.tsv", extra=("x.tsv",)).plan()
    assert [part.name for part in plan] == ["hallmark", "markers", "entities", "triples", "triples", "triples",
                                            "panglao", "triples"]  # fmt: skip
    assert plan[-1].kwargs == {"path": "x.tsv"} and plan[-2].kwargs["path"] == "p.tsv"
