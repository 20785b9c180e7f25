"""Bundle integrity: tensor and graph hashes, non-finite values, malformed bundle.json, unreadable files."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from pathways_kg.bundle import load_bundle, save_bundle, tensor_sha256
from pathways_kg.errors import KGError
from pathways_kg.testing import random_bundle


@pytest.fixture(scope="module")
def bundles(tiny_graph_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {m: random_bundle(tiny_graph_dir, root / m, model=m, dim=4) for m in ("transe", "kg2e")}


@pytest.fixture
def bundle(bundles, tmp_path) -> Path:
    """A fresh copy of a TransE bundle that a test may damage."""
    return Path(shutil.copytree(bundles["transe"], tmp_path / "bundle"))


def _rewrite(file: Path, change) -> None:
    """Rewrite a safetensors file with the same keys after ``change(tensors)``."""
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


def _edit_meta(folder: Path, change) -> None:
    meta = json.loads((folder / "bundle.json").read_text())
    change(meta)
    (folder / "bundle.json").write_text(json.dumps(meta))


def test_hashes_recorded_and_round_trip(bundles):
    meta = json.loads((bundles["kg2e"] / "bundle.json").read_text())
    assert set(meta["tensors"]) == {"entities.safetensors", "relations.safetensors"}
    entry = meta["tensors"]["entities.safetensors"]["entity_var"]
    assert entry["dtype"] == "float32" and len(entry["sha256"]) == 64
    assert len(meta["graph"]["sha256"]) == 64 and len(meta["graph"]["entities_sha256"]) == 64
    loaded = load_bundle(bundles["kg2e"])
    assert tensor_sha256(loaded.entity_tensors["entity_var"]) == entry["sha256"]
    assert entry["shape"] == list(loaded.entity_tensors["entity_var"].shape)


def test_changed_tensor_value_is_refused(bundle):
    def flip(t):
        t["entity"][3, 1] += 0.5

    _rewrite(bundle / "entities.safetensors", flip)
    msg = re.escape(
        f"{bundle / 'entities.safetensors'}: tensor 'entity' differs from its sha256 in bundle.json"
    )
    with pytest.raises(KGError, match=msg):
        load_bundle(bundle)


def test_relation_tensor_change_is_refused(bundle):
    def flip(t):
        t["relation"] = -t["relation"]

    _rewrite(bundle / "relations.safetensors", flip)
    with pytest.raises(KGError, match=r"relations\.safetensors: tensor 'relation' differs from its sha256"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("value", "counts"),
    [(np.nan, r"non-finite values \(1 NaN, 0 Inf\)"), (np.inf, r"non-finite values \(0 NaN, 1 Inf\)")],
)
def test_non_finite_tensor_is_refused(bundle, value, counts):
    def poison(t):
        t["entity"][2, 0] = value

    _rewrite(bundle / "entities.safetensors", poison)
    msg = (
        re.escape(f"{bundle / 'entities.safetensors'}: tensor 'entity' holds ") + counts + r".*index \(2, 0\)"
    )
    with pytest.raises(KGError, match=msg):
        load_bundle(bundle)


def test_edited_graph_files_are_refused(bundle):
    original = (bundle / "triples.tsv").read_text()
    with open(bundle / "triples.tsv", "a", encoding="utf-8") as fh:
        fh.write("gene:GA01\tmember_of\tpathway:R-HSA-1002\tmembership\tx\tx\t\n")
    with pytest.raises(
        KGError, match=re.escape(f"{bundle / 'triples.tsv'}: sha256 differs from bundle.json graph.sha256")
    ):
        load_bundle(bundle)
    (bundle / "triples.tsv").write_text(original)
    (bundle / "entities.tsv").write_text((bundle / "entities.tsv").read_text().replace("T cell", "T-cell"))
    with pytest.raises(
        KGError, match=r"entities\.tsv: sha256 differs from bundle.json graph\.entities_sha256"
    ):
        load_bundle(bundle)


def test_bundle_without_hashes_loads_with_warning(bundle, caplog):
    _edit_meta(bundle, lambda m: m.pop("tensors"))
    with caplog.at_level(logging.WARNING, logger="pathways_kg.bundle"):
        loaded = load_bundle(bundle)
    assert loaded.entity_vectors().shape[1] == 4
    assert "cannot be verified" in caplog.text and str(bundle / "bundle.json") in caplog.text

    def poison(t):
        t["entity"][0, 0] = np.nan

    _rewrite(bundle / "entities.safetensors", poison)  # non-finite values are still refused
    with pytest.raises(KGError, match=r"tensor 'entity' holds non-finite values \(1 NaN"):
        load_bundle(bundle)


def test_save_refuses_non_finite_tensors(bundles, tmp_path):
    import dataclasses

    b = load_bundle(bundles["transe"])
    bad = b.entity_tensors["entity"].copy()
    bad[1, 2] = np.nan
    with pytest.raises(
        KGError, match=r"out/entities\.safetensors: tensor 'entity' holds non-finite values \(1 NaN"
    ):
        save_bundle(dataclasses.replace(b, entity_tensors={"entity": bad}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("entities"), "bundle.json: missing key 'entities'"),
        (lambda m: m.pop("relations"), "bundle.json: missing key 'relations'"),
        (lambda m: m.pop("model"), "bundle.json: missing key 'model'"),
        (_set("model", "transx"), "bundle.json: unknown KG model 'transx'; did you mean 'transe'?"),
        (_set("format", "other/2"), "bundle.json: unsupported bundle format 'other/2'"),
        (_set("entities", "gene:A"), "bundle.json: 'entities' must be a non-empty list of [id, type] pairs"),
        (
            lambda m: m["entities"].__setitem__(0, ["gene:A"]),
            "bundle.json: entities[0] must be an [id, type] pair",
        ),
        (lambda m: m["entities"][0].__setitem__(1, "gen"), "has unknown type 'gen'; did you mean 'gene'?"),
        (lambda m: m["entities"].append(m["entities"][0]), "entities lists"),
        (lambda m: m["relations"][0].__setitem__(0, "member"), "relations[0]: unknown relation 'member'"),
        (lambda m: m["relations"][0].__setitem__(1, "spatiall"), "family 'causal', not 'spatiall'"),
        (lambda m: m["entities"].pop(), "entities.safetensors: tensor 'entity' has"),
        (_set("model_kwargs", [1]), "bundle.json: 'model_kwargs' must be an object, got [1]"),
        (
            _set("metrics", {"trained": {"mrr": "high"}}),
            "bundle.json: metrics.trained must map metric names to numbers",
        ),
        (
            _set("tensors", {"entities.safetensors": {}}),
            "bundle.json: 'tensors' must map entities.safetensors",
        ),
    ],
)
def test_malformed_bundle_json(bundle, change, message):
    _edit_meta(bundle, change)
    with pytest.raises(KGError, match=re.escape(message)):
        load_bundle(bundle)


def test_bundle_json_not_an_object_or_not_json(bundle):
    (bundle / "bundle.json").write_text("[1, 2]")
    with pytest.raises(KGError, match=r"bundle\.json: expected a JSON object, got list"):
        load_bundle(bundle)
    (bundle / "bundle.json").write_text('{"format": ')
    with pytest.raises(KGError, match=r"bundle\.json:1: invalid JSON"):
        load_bundle(bundle)


def test_missing_or_unreadable_safetensors(bundle):
    (bundle / "relations.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(KGError, match=r"relations\.safetensors: cannot read as safetensors"):
        load_bundle(bundle)
    (bundle / "relations.safetensors").unlink()
    with pytest.raises(KGError, match=r"relations\.safetensors: missing"):
        load_bundle(bundle)


def test_wrong_keys_or_shapes(bundle, bundles, tmp_path):
    def rename(t):
        t["entity_vec"] = t.pop("entity")

    _rewrite(bundle / "entities.safetensors", rename)
    with pytest.raises(KGError, match=r"tensor keys differ from bundle.json tensors.entities.safetensors"):
        load_bundle(bundle)
    _edit_meta(bundle, lambda m: m.pop("tensors"))  # an unverifiable bundle is still checked for shapes
    with pytest.raises(KGError, match=r"entities\.safetensors: lacks tensor 'entity' for model 'transe'"):
        load_bundle(bundle)
    kg2e = Path(shutil.copytree(bundles["kg2e"], tmp_path / "kg2e"))
    _edit_meta(kg2e, lambda m: m.pop("tensors"))

    def negative(t):
        t["entity_var"][0, 0] = -1.0

    _rewrite(kg2e / "entities.safetensors", negative)
    with pytest.raises(KGError, match=r"tensor 'entity_var' holds non-positive variances"):
        load_bundle(kg2e)
