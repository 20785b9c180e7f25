"""Slide descriptors: the checks every registered descriptor passes, on a tiny synthetic index.

``DescriptorCase`` holds the shared checks (pykeen's ``tests/cases.py`` pattern, as ``LossTestCase``
and ``ReaderContract``); each registered descriptor has one subclass, and
``test_every_registered_descriptor_has_a_case`` fails while one is missing. The index is built from
synthetic shards (no model, no slides): 3 planted slide groups, each a different mix of 6 region
clusters, with KG activations that follow the clusters (one slide without them, so that its
activations are transferred), so every descriptor has something to find.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import histokg.retrieval.descriptors as descriptors_package
from histokg.errors import InputError
from histokg.retrieval import query as q
from histokg.retrieval.descriptors import (
    SlideDescriptor,
    descriptor_names,
    descriptor_registry,
    get_descriptor,
    region_descriptor_names,
)
from histokg.retrieval.descriptors.kg import KGDescriptor, kg_profiles
from histokg.retrieval.descriptors.mean import MeanDescriptor
from histokg.retrieval.descriptors.prototypes import PrototypeDescriptor, assign
from histokg.retrieval.evaluate import slide_retrieval_metrics
from histokg.retrieval.index import RetrievalIndex
from histokg.retrieval.shards import SlideShard
from histokg.retrieval.values import slide_kg_means
from histokg.retrieval.vectors import normalize

DIM = 16
N_CLUSTERS = 6
GROUPS = ("carcinoma", "benign", "inflamed")
PER_GROUP = 3
ENTITIES = ["pathway:A", "pathway:B", "celltype:T", "celltype:B"]
NO_KG = "inflamed-3"  # a slide without measured activations: its kg profile is transferred


def synthetic_shards(root: Path, *, with_kg: bool = True, seed: int = 0) -> list[Path]:
    """Shards of 9 slides: group g draws its regions mostly from clusters 2g and 2g + 1."""
    rng = np.random.default_rng(seed)
    centres = normalize(rng.normal(size=(N_CLUSTERS, DIM)))
    profiles = rng.uniform(0.0, 1.0, size=(N_CLUSTERS, len(ENTITIES)))
    paths = []
    for g, group in enumerate(GROUPS):
        weights = np.full(N_CLUSTERS, 0.05)
        weights[[2 * g, 2 * g + 1]] = 0.4
        for i in range(1, PER_GROUP + 1):
            slide_id = f"{group}-{i}"
            n = int(rng.integers(40, 60))
            cluster = rng.choice(N_CLUSTERS, size=n, p=weights / weights.sum())
            vectors = normalize(centres[cluster] + 0.15 * rng.normal(size=(n, DIM)))
            shard = SlideShard(
                meta={
                    "slide_id": slide_id,
                    "checkpoint_sha256": "0" * 64,
                    "kind": "tiles",
                    "n_regions": n,
                    "slide_mpp": 0.5,
                    "region_diameter_px": 20.0,
                    "patient": None,
                    "labels": {"mix": group},
                },
                vectors=vectors,
                coords=rng.uniform(0, 2000, size=(n, 2)).astype(np.float32),
                names=np.asarray([f"{slide_id}_{j}" for j in range(n)]),
                labels=np.asarray([f"cluster {c}" for c in cluster]),
            )
            if with_kg and slide_id != NO_KG:
                shard.kg = (profiles[cluster] + 0.05 * rng.normal(size=(n, len(ENTITIES)))).astype(np.float32)
                shard.entities = list(ENTITIES)
            paths.append(shard.save(root / "shards" / f"{slide_id}.npz"))
    return paths


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("descriptors")
    RetrievalIndex.create(root / "idx", synthetic_shards(root), n_prototypes=N_CLUSTERS)
    return root / "idx"


@pytest.fixture(scope="module")
def index(index_dir) -> RetrievalIndex:
    return RetrievalIndex.load(index_dir)


class DescriptorCase:
    """The checks every slide descriptor must pass; one subclass per registered descriptor.

    A subclass sets ``cls`` (the descriptor class) and may add checks of its own formula.
    ``min_hit1``: the hit@1 the descriptor reaches on the planted groups (leave-one-slide-out).
    """

    cls: type[SlideDescriptor]
    min_hit1: float = 1.0

    # ------------------------------------------------------------------ the shared checks
    def test_is_registered_under_a_plain_name(self):
        name = self.cls.name
        assert name in descriptor_names() and get_descriptor(name) is self.cls
        assert issubclass(self.cls, SlideDescriptor) and self.cls.summary
        assert name.isidentifier() and name == name.lower()  # usable in a URL and on the command line
        assert (name in region_descriptor_names()) == self.cls.from_regions

    def test_one_finite_unit_row_per_slide(self, index):
        desc = index.descriptor(self.cls.name)
        assert isinstance(desc, self.cls) and desc.available()
        ids, mat = index.descriptors(self.cls.name)
        assert ids == index.slide_ids and mat.dtype == np.float32
        assert mat.ndim == 2 and mat.shape[0] == len(ids) and mat.shape[1] >= 1
        assert np.isfinite(mat).all()
        np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)

    def test_deterministic_and_the_same_after_save_and_load(self, index_dir, tmp_path):
        first = RetrievalIndex.load(index_dir).descriptors(self.cls.name)[1]
        np.testing.assert_array_equal(first, RetrievalIndex.load(index_dir).descriptors(self.cls.name)[1])
        # an index as created (in memory) and as loaded back from its files give the same descriptors
        root = tmp_path / "again"
        created = RetrievalIndex.create(root / "idx", synthetic_shards(root), n_prototypes=N_CLUSTERS)
        made = created.descriptors(self.cls.name)[1]
        np.testing.assert_allclose(made, RetrievalIndex.load(root / "idx").descriptors(self.cls.name)[1])
        np.testing.assert_allclose(made, first, atol=1e-6)  # and the same data gives the same index

    def test_self_query_follows_the_protocol(self, index):
        desc = index.descriptor(self.cls.name)
        ids, mat = index.descriptors(self.cls.name)
        for i, slide in enumerate(ids):
            res = q.similar_slides(index, slide, k=len(ids), descriptor=self.cls.name)
            assert [r["slide_id"] for r in res].count(slide) == 0 and len(res) == len(ids) - 1
            scores = [r["score"] for r in res]
            assert scores == sorted(scores, reverse=True)
            expected = desc.similarity(mat, mat[i])
            assert scores[0] == pytest.approx(float(np.delete(expected, i).max()), abs=1e-6)
            assert expected[i] == pytest.approx(expected.max(), abs=1e-6)  # nothing beats the slide itself
        vectors = index.shard(ids[0]).vectors
        if self.cls.from_regions:  # the slide's own regions, as if new, find the slide itself first
            np.testing.assert_allclose(desc.describe(vectors), mat[0], atol=1e-6)
            assert (
                q.similar_to_vectors(index, vectors, k=1, descriptor=self.cls.name)[0]["slide_id"] == ids[0]
            )
        else:
            with pytest.raises(InputError, match="cannot describe regions outside the index") as err:
                desc.describe(vectors)
            assert len(str(err.value).splitlines()) == 1

    def test_finds_the_planted_groups(self, index):
        m = slide_retrieval_metrics(index, label="mix", descriptor=self.cls.name)
        assert m["descriptor"] == self.cls.name and m["n_queries"] == len(index.slide_ids)
        assert m["hit@1"] >= self.min_hit1, m

    def test_the_cli_and_the_app_accept_it(self, index_dir):
        from fastapi.testclient import TestClient

        from app.main import create_app
        from histokg.cli import cli

        name = self.cls.name
        runner = CliRunner()
        out = runner.invoke(
            cli, ["index", "query", str(index_dir), "--slide", "benign-1", "--descriptor", name]
        )
        assert out.exit_code == 0 and out.output.startswith(f"slides like benign-1 ({name} descriptor)"), (
            out.output
        )
        help_text = runner.invoke(cli, ["index", "query", "--help"]).output
        assert name in help_text
        out = runner.invoke(cli, ["index", "evaluate", str(index_dir), "--label", "mix"])
        assert out.exit_code == 0 and any(line.split()[0] == name for line in out.output.splitlines()[1:])
        app = create_app(index_dir)  # served on loopback only: the client names 127.0.0.1 as its Host
        with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as client:
            res = client.get("/api/slides/benign-1/similar", params={"descriptor": name, "k": 3})
            assert res.status_code == 200, res.text
            assert res.json()["descriptor"] == name and len(res.json()["results"]) == 3
            schema = client.get("/openapi.json").json()
            params = schema["paths"]["/api/slides/{slide_id}/similar"]["get"]["parameters"]
            assert name in next(p for p in params if p["name"] == "descriptor")["schema"]["enum"]


class TestMeanDescriptor(DescriptorCase):
    cls = MeanDescriptor

    def test_is_the_mean_of_centred_regions(self, index):
        vectors = index.shard("carcinoma-2").vectors
        centred = normalize(vectors - index.center)
        expected = normalize(centred.mean(axis=0))
        np.testing.assert_allclose(index.describe_vectors(vectors, "mean"), expected, atol=1e-6)


class TestPrototypeDescriptor(DescriptorCase):
    cls = PrototypeDescriptor

    def test_is_the_square_root_of_the_soft_prototype_histogram(self, index):
        vectors = index.shard("benign-3").vectors
        soft = assign(normalize(vectors - index.center), index.prototypes, index.prototype_temperature)
        hist = soft.mean(axis=0)
        np.testing.assert_allclose(
            index.describe_vectors(vectors, "prototypes"), normalize(np.sqrt(hist)), atol=1e-6
        )
        ids, mat = index.descriptors("prototypes")
        assert (mat >= 0).all() and mat.shape[1] == len(index.prototypes)


class TestKGDescriptor(DescriptorCase):
    cls = KGDescriptor

    def test_is_the_z_scored_kg_profile(self, index):
        means = slide_kg_means(index)
        assert np.isfinite(means[index.slide_ids.index(NO_KG)]).all()  # transferred from the others
        np.testing.assert_allclose(index.descriptors("kg")[1], kg_profiles(means), atol=1e-6)

    def test_is_unavailable_without_kg_activations(self, tmp_path):
        from histokg.cli import cli

        idx = RetrievalIndex.create(
            tmp_path / "idx", synthetic_shards(tmp_path, with_kg=False), n_prototypes=4
        )
        assert not idx.descriptor("kg").available()
        with pytest.raises(InputError, match="no KG activations"):
            idx.descriptors("kg")
        out = CliRunner().invoke(cli, ["index", "evaluate", str(idx.path), "--label", "mix"])
        assert out.exit_code == 0 and "kg" not in [line.split()[0] for line in out.output.splitlines()[1:]]


# --------------------------------------------------------------------------- the registry


def test_every_registered_descriptor_has_a_case():
    """The meta-test: a descriptor added to histokg.retrieval.descriptors without its case fails here."""
    cases = {case.cls for case in DescriptorCase.__subclasses__()}
    registered = set(descriptor_registry.entries.values())
    assert registered - cases == set(), f"descriptors without a DescriptorCase: {registered - cases}"
    assert cases - registered == set(), f"cases of unregistered descriptors: {cases - registered}"
    assert {"mean", "prototypes", "kg"} <= set(descriptor_names())


def test_every_module_of_the_package_is_found_without_being_listed():
    """A new descriptor is one module: the package imports every module, the registry finds its class."""
    modules = {m.name for m in pkgutil.iter_modules(descriptors_package.__path__)} - {"base"}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in descriptor_registry.entries.values()} == modules


def test_built_in_descriptors_come_first_in_their_order():
    assert descriptor_names()[:3] == ["mean", "prototypes", "kg"]
    assert region_descriptor_names()[:2] == ["mean", "prototypes"] and "kg" not in region_descriptor_names()


def test_an_unknown_descriptor_is_one_line_with_the_nearest_name(index, index_dir, capsys):
    from histokg.cli import main

    with pytest.raises(InputError, match="descriptor 'protoypes'.*'prototypes'"):
        index.descriptors("protoypes")
    with pytest.raises(InputError, match="unknown descriptor"):
        q.similar_slides(index, "benign-1", descriptor="nope")
    with pytest.raises(SystemExit) as err:
        main(["index", "query", str(index_dir), "--slide", "benign-1", "--descriptor", "protoypes"])
    msg = capsys.readouterr().err.strip()
    assert err.value.code == 2 and len(msg.splitlines()) == 1
    assert msg.startswith("error: unknown descriptor 'protoypes'; did you mean 'prototypes'?")
    # the naming rule: case and separators do not matter
    main(["index", "query", str(index_dir), "--slide", "benign-1", "--descriptor", "PROTO-TYPES", "-k", "2"])
    assert "(prototypes descriptor)" in capsys.readouterr().out
