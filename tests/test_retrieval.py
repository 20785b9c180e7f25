"""histokg.retrieval: metrics, FAISS indexes, building, adding, querying, Dask, the CLI."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures)

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from retrieval_fixtures import (  # noqa: F401  (fixtures)
    built_index,
    kg_bundle,
    mix_table,
    retrieval_ckpt,
)

from histokg.cli import cli, main
from histokg.errors import InputError
from histokg.io import file_sha256
from histokg.retrieval import faiss_index as fi
from histokg.retrieval import query as q
from histokg.retrieval.evaluate import average_precision, retrieval_metrics
from histokg.retrieval.ids import check_slide_id, safe_slide_id
from histokg.retrieval.index import RetrievalIndex
from histokg.retrieval.shards import SlideShard, specs_from_table

# --------------------------------------------------------------------------- metrics


def test_average_precision_by_hand():
    assert average_precision([True, False, True]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert average_precision([False, False, True]) == pytest.approx(1 / 3)
    assert np.isnan(average_precision([False, False]))


def test_retrieval_metrics_by_hand():
    # two labels on a line: a0, a1 close together, b0, b1 close together, b2 far from everything
    x = fi.normalize(np.array([[1, 0.1], [1, 0.2], [0.1, 1], [0.2, 1], [0.7, 0.7]], np.float32))
    labels = ["a", "a", "b", "b", "b"]
    m = retrieval_metrics(x, labels, vote_k=1)
    assert m["hit@1"] == pytest.approx(4 / 5)  # b2's nearest is ambiguous: at 45 degrees it is nearer a1
    assert m["n_queries"] == 5 and m["protocol"] == "leave-one-slide-out"
    # leaving out the patient: a0 and a1 share a patient, so a0 can no longer find a1
    mp = retrieval_metrics(x, labels, patients=["p", "p", None, None, None], vote_k=1)
    assert mp["per_label_MV"]["a"] == 0.0 and mp["protocol"] == "leave-one-patient-out"
    assert mp["n_without_relevant"] == 2


def test_majority_vote_at_5_needs_three_of_five():
    rng = np.random.default_rng(0)
    centres = fi.normalize(rng.normal(size=(3, 16)))
    x = fi.normalize(np.repeat(centres, 5, axis=0) + 0.05 * rng.normal(size=(15, 16)))
    labels = np.repeat(["a", "b", "c"], 5)
    m = retrieval_metrics(x, labels)
    assert m["mMV@5"] == 1.0 and m["mAP"] == 1.0 and m["hit@1"] == 1.0
    shuffled = retrieval_metrics(x, rng.permutation(labels))
    assert shuffled["mAP"] < 0.7


# --------------------------------------------------------------------------- FAISS


def test_faiss_kinds_agree_with_exact(tmp_path):
    rng = np.random.default_rng(1)
    x = fi.normalize(rng.normal(size=(4000, 32)))
    ids = np.arange(4000, dtype=np.int64) + (7 << 32)
    queries = fi.normalize(x[:50] + 0.1 * rng.normal(size=(50, 32)))
    exact = fi.make_index("flat", 32)
    fi.add(exact, x, ids)
    _, truth = fi.search(exact, queries, 10)
    for kind in ("hnsw", "ivf"):
        index = fi.make_index(kind, 32, x)
        fi.add(index, x, ids)
        back = fi.load(fi.save(index, tmp_path / f"{kind}.faiss"))
        assert fi.index_kind(back) == kind and back.ntotal == 4000
        _, found = fi.search(back, queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
        assert recall > 0.7, (kind, recall)  # uniform random vectors: the hardest case
        fi.set_search_effort(back, nprobe=fi.ivf_nlist(4000), ef_search=512)
        _, found = fi.search(back, queries, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
        assert recall > 0.97, (kind, recall)
    assert fi.resolve_kind("auto", 10) == "flat" and fi.resolve_kind("auto", 10**6) == "hnsw"
    with pytest.raises(InputError, match="kind 'annoy'"):
        fi.resolve_kind("annoy", 10)
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(InputError, match="cannot be read by faiss"):
        fi.load(tmp_path / "bad.faiss")


def test_slide_ids():
    assert check_slide_id("C2_HE.v1-a") == "C2_HE.v1-a"
    for bad in ("../etc", "a/b", ".hidden", "a..b", "", "x" * 129, "a\x00b", "C:\\x"):
        with pytest.raises(InputError):
            check_slide_id(bad)
    assert safe_slide_id("../my slide/01.svs") == "my_slide_01.svs"


# --------------------------------------------------------------------------- what the app asks of the library


def test_embed_regions_reports_progress_and_refuses_a_slide_without_tissue(
    retrieval_ckpt, cmu_slide, tmp_path
):
    from PIL import Image

    from histokg.checkpoint import load_model
    from histokg.retrieval.regions import embed_regions

    model = load_model(retrieval_ckpt)
    calls = []
    vectors = embed_regions(model, cmu_slide, progress=lambda *args: calls.append(args))
    n = len(vectors)
    assert n > 30 and vectors.shape == (n, model.params["embed_dim"])
    assert calls[:2] == [("tiling", 0, 0), ("embedding", 0, n)] and calls[-1] == ("embedding", n, n)
    done = [c[1] for c in calls[1:]]
    assert done == sorted(done) and len(done) >= 3 and {c[0] for c in calls[1:]} == {"embedding"}
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (600, 600), (255, 255, 255)).save(blank)
    with pytest.raises(InputError, match="blank.png"):  # an empty tissue mask, or no tissue tiles
        embed_regions(model, blank, mpp=0.5)


def test_colour_scale():
    from histokg.retrieval.overlay import colour_scale

    values = np.arange(101, dtype=float)
    assert colour_scale(values[:50], np.array([np.nan]), values[50:]) == (2.0, 98.0)
    assert colour_scale(np.array([3.0, 3.0])) == (3.0, 3.0 + 1e-6)
    assert colour_scale(np.array([np.nan, np.inf])) == (0.0, 1.0)


# --------------------------------------------------------------------------- index


def test_index_build_and_queries(built_index, retrieval_ckpt):
    index = RetrievalIndex.load(built_index)
    assert index.checkpoint_sha256 == file_sha256(retrieval_ckpt)
    assert set(index.slide_ids) == {
        "S1",
        "S2",
        "S3",
        *(f"{m}-{i}" for m in ("carcinoma", "benign", "inflamed") for i in (1, 2)),
    }
    kinds = {s["slide_id"]: s["kind"] for s in index.manifest["slides"]}
    assert kinds["S1"] == "spots" and kinds["benign-1"] == "tiles"
    assert index.n_regions == sum(s["n_regions"] for s in index.manifest["slides"])
    assert index.manifest["entities"] and index.manifest["genes"]

    for descriptor in ("mean", "prototypes", "kg"):
        res = q.similar_slides(index, "carcinoma-1", k=4, descriptor=descriptor)
        assert len(res) == 4 and "carcinoma-1" not in [r["slide_id"] for r in res]
        assert all(a["score"] >= b["score"] for a, b in zip(res, res[1:], strict=False))
    # the study's sections share patient P1: leaving the patient out removes them
    res = q.similar_slides(index, "S1", k=8, exclude_patient=True)
    assert not {"S2", "S3"} & {r["slide_id"] for r in res} and len(res) == 6

    # a region query in level-0 pixels and in microns is the same query (0.5 um/px)
    box_px = q.Box(600, 600, 1000, 1000, "px")
    a = q.similar_regions(index, "S1", box_px, k=5)
    b = q.similar_regions(index, "S1", q.Box(300, 300, 500, 500, "um"), k=5)
    assert a["query"]["regions"] == b["query"]["regions"] and len(a["query"]["regions"]) >= 1
    assert [r["region_id"] for r in a["results"]] == [r["region_id"] for r in b["results"]]
    assert all(r["slide_id"] != "S1" for r in a["results"])
    # the query region itself is the best match when searching its own slide
    own = q.similar_regions(index, "S1", box_px, k=3, target_slide="S1", exclude_query_slide=False)
    assert own["results"][0]["region_id"] >> 32 == index.slide_meta("S1")["ordinal"]
    shard = index.shard("S1")
    q_vec = fi.normalize(shard.vectors[a["query"]["regions"]].mean(axis=0))
    assert own["results"][0]["score"] == pytest.approx(float((shard.vectors @ q_vec).max()), abs=1e-5)
    with pytest.raises(InputError, match="covers none"):
        q.similar_regions(index, "S1", q.Box(10**6, 10**6, 10**6 + 10, 10**6 + 10))
    with pytest.raises(InputError, match="x1 must exceed x0"):
        q.Box(5, 5, 1, 9)
    with pytest.raises(InputError, match="not in the index"):
        q.similar_slides(index, "S9")


def test_pathway_query_and_values(built_index):
    index = RetrievalIndex.load(built_index)
    hits = q.find_entities(index, "hypox")
    assert hits and all("hypox" in (h["label"] + h["id"]).lower() for h in hits)
    entity = next(h["id"] for h in hits if h["id"] == "pathway:HALLMARK_HYPOXIA")
    res = q.slides_by_entity(index, "hallmark_hypoxia", k=20)
    assert res["entity"] == entity and len(res["results"]) == 9
    sources = {r["slide_id"]: r["source"] for r in res["results"]}
    assert sources["S1"] == "measured" and sources["benign-1"] == "predicted"
    # the ranking is the mean measured activation of the spots
    s1 = index.shard("S1")
    expected = float(np.nanmean(s1.kg[:, s1.entities.index(entity)]))
    assert next(r["score"] for r in res["results"] if r["slide_id"] == "S1") == pytest.approx(
        expected, rel=1e-5
    )
    within = q.slides_by_entity(index, entity, within="invasive carcinoma")
    assert all(r["n_regions"] <= index.slide_meta(r["slide_id"])["n_regions"] for r in within["results"])
    with pytest.raises(InputError, match="did you mean"):
        q.slides_by_entity(index, "hypoxya")
    # measured and predicted values of one gene on a slide with counts; predicted values come from other slides
    gene = index.manifest["genes"][0]
    measured = q.region_values(index, "S2", f"gene:{gene}")
    predicted = q.region_values(index, "S2", f"gene:{gene}", source="predicted")
    assert measured.shape == predicted.shape == (index.slide_meta("S2")["n_regions"],)
    with pytest.raises(InputError, match="no measured"):
        q.region_values(index, "benign-1", f"gene:{gene}")
    clusters = q.region_values(index, "benign-1", "cluster")
    assert clusters.max() < len(index.prototypes)


ENTITIES = {
    "pathway:HALLMARK_HYPOXIA": "HALLMARK_HYPOXIA",
    "pathway:HALLMARK_GLYCOLYSIS": "HALLMARK_GLYCOLYSIS",
    "pathway:R-HSA-70171": "Glycolysis",
    "pathway:R-HSA-1234174": "Cellular-response-to-hypoxia",
    "celltype:T cell": "T cell",
    "celltype:CD4 T cell": "CD4 T cell",
    "phenotype:invasive carcinoma": "invasive carcinoma",
}


def test_entity_names_resolve_what_a_person_types():
    from histokg.retrieval.entities import EntityNames, resolve_label

    names = EntityNames(list(ENTITIES), ENTITIES)
    typed = {
        "hypoxia": "pathway:HALLMARK_HYPOXIA",  # the README's example and the page's placeholder
        "Hypoxia": "pathway:HALLMARK_HYPOXIA",
        " hallmark hypoxia ": "pathway:HALLMARK_HYPOXIA",
        "HALLMARK-HYPOXIA": "pathway:HALLMARK_HYPOXIA",
        "pathway:HALLMARK_HYPOXIA": "pathway:HALLMARK_HYPOXIA",
        "cellular response to hypoxia": "pathway:R-HSA-1234174",
        "R-HSA-1234174": "pathway:R-HSA-1234174",
        "REACTOME_GLYCOLYSIS": "pathway:R-HSA-70171",
        "hallmark_glycolysis": "pathway:HALLMARK_GLYCOLYSIS",
        "t cell": "celltype:T cell",
        "T-Cell": "celltype:T cell",
        "cd4_t_cell": "celltype:CD4 T cell",
        "celltype:t cell": "celltype:T cell",
        "Invasive Carcinoma": "phenotype:invasive carcinoma",
    }
    for text, entity in typed.items():
        assert names.resolve(text) == entity, text
    # several entities: refused with the candidates, never one picked silently
    with pytest.raises(InputError, match="matches 2 entities") as err:
        names.resolve("glycolysis")
    assert "pathway:HALLMARK_GLYCOLYSIS" in str(err.value) and "pathway:R-HSA-70171" in str(err.value)
    with pytest.raises(InputError, match="did you mean 'HALLMARK_HYPOXIA'"):
        names.resolve("hypoxya")
    with pytest.raises(InputError, match="empty name"):
        names.resolve("  ")
    labels = ["invasive carcinoma", "stroma"]
    assert resolve_label("Invasive_Carcinoma", labels) == "invasive carcinoma"
    with pytest.raises(InputError, match="did you mean 'stroma'"):
        resolve_label("strom", labels)


def test_pathway_names_as_typed_reach_queries_overlays_and_the_cli(built_index, capsys):
    from histokg.retrieval.overlay import slide_overlay

    index = RetrievalIndex.load(built_index)
    res = q.slides_by_entity(index, "hypoxia", within="Invasive Carcinoma", k=3)
    assert res["entity"] == "pathway:HALLMARK_HYPOXIA" and res["within"] == "invasive carcinoma"
    assert res["results"]
    over = slide_overlay(index, "S1", "kg:Hypoxia")
    assert over["feature"] == "kg:pathway:HALLMARK_HYPOXIA" and over["label"] == "HALLMARK_HYPOXIA"
    np.testing.assert_array_equal(
        q.region_values(index, "S1", "kg:hypoxia"),
        q.region_values(index, "S1", "kg:pathway:HALLMARK_HYPOXIA"),
    )
    args = ["--pathway", "hypoxia", "--within", "invasive carcinoma", "-k", "2"]
    main(["index", "query", str(built_index), *args])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("slides by HALLMARK_HYPOXIA (pathway:HALLMARK_HYPOXIA)")
    for args, message in (
        (["--pathway", "hypoxya"], "did you mean 'HALLMARK_HYPOXIA'"),
        (["--pathway", "hypoxia", "--within", "carcinom"], "did you mean 'invasive carcinoma'"),
    ):
        with pytest.raises(SystemExit) as err:
            main(["index", "query", str(built_index), *args])
        msg = capsys.readouterr().err.strip()
        assert err.value.code == 2 and len(msg.splitlines()) == 1 and message in msg, msg


def test_add_without_rebuild_and_checkpoint_guard(built_index, tmp_path):
    index = RetrievalIndex.load(built_index)
    shards = {s: index.shard_path(s) for s in index.slide_ids}
    first = [shards[s] for s in ("S1", "S2", "carcinoma-1", "benign-1")]
    small = RetrievalIndex.create(tmp_path / "small", first, n_prototypes=4)
    assert small.n_regions == sum(len(SlideShard.load(p)) for p in first)
    protos = small.prototypes.copy()
    small.add([shards["inflamed-1"], shards["S3"]])
    again = RetrievalIndex.load(tmp_path / "small")
    assert again.n_regions == small.n_regions and "inflamed-1" in again.slide_ids
    np.testing.assert_array_equal(again.prototypes, protos)  # no rebuild
    # regions of the added slide are found by the region index
    v = again.shard("inflamed-1").vectors[3]
    _, ids = fi.search(again.regions, v[None], 1)
    assert int(ids[0, 0]) >> 32 == again.slide_meta("inflamed-1")["ordinal"]
    with pytest.raises(InputError, match="already in the index"):
        again.add([shards["S1"]])
    # a shard made with another checkpoint is refused, naming the slide
    other = SlideShard.load(shards["inflamed-2"])
    other.meta["checkpoint_sha256"] = "f" * 64
    other.save(tmp_path / "other" / "shards" / "inflamed-2.npz")
    with pytest.raises(
        InputError, match="inflamed-2 was embedded with checkpoint ffffffffffff.*cannot be mixed"
    ):
        again.add([tmp_path / "other" / "shards" / "inflamed-2.npz"])
    assert RetrievalIndex.load(tmp_path / "small").n_regions == again.n_regions


def test_dask_build_is_resumable(mix_table, retrieval_ckpt, tmp_path, caplog):
    from histokg.retrieval.build import add_to_index, build_index, embed_slides
    from histokg.retrieval.generations import staging_dir

    specs = specs_from_table(mix_table)
    out = tmp_path / "idx"
    embed_slides(specs[:2], retrieval_ckpt, staging_dir(out), scheduler="threads", n_workers=2)
    first = staging_dir(out) / "shards" / f"{specs[0].slide_id}.npz"
    stamp = first.stat().st_mtime_ns
    (staging_dir(out) / "shards" / f"{specs[1].slide_id}.npz").unlink()  # killed before it finished
    with caplog.at_level("INFO", logger="histokg.retrieval.build"):
        index = build_index(specs[:2], retrieval_ckpt, out, scheduler="threads", n_prototypes=4)
    assert "1 of 2 slides already embedded" in caplog.text
    assert index.shard_path(specs[0].slide_id).stat().st_mtime_ns == stamp and len(index.slide_ids) == 2
    assert not staging_dir(out).exists()  # the staged shards went into the index
    caplog.clear()
    with caplog.at_level("INFO", logger="histokg.retrieval.build"):  # a rebuild reuses the index's shards
        build_index(specs[:2], retrieval_ckpt, out, scheduler="sync", n_prototypes=4, overwrite=True)
    assert "2 of 2 slides already embedded" in caplog.text
    index = add_to_index(out, specs[2:3], retrieval_ckpt, scheduler="sync")
    assert len(index.slide_ids) == 3
    wrong = tmp_path / "other.pt"
    shutil.copyfile(retrieval_ckpt, wrong)
    with open(wrong, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(InputError, match="is not the index's checkpoint"):
        add_to_index(out, specs[3:4], wrong, scheduler="sync")


def test_cli_index(built_index, mix_table, retrieval_ckpt, tmp_path, capsys):
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res.output

    out = run(
        "index", "query", built_index, "--slide", "carcinoma-2", "-k", "3", "--descriptor", "prototypes"
    )
    assert out.splitlines()[0].startswith("slides like carcinoma-2") and len(out.splitlines()) == 4
    out = run("index", "query", built_index, "--slide", "S1", "--box", "600,600,1000,1000", "-k", "2")
    assert "regions like" in out and len(out.splitlines()) == 3
    out = run("index", "query", built_index, "--pathway", "HALLMARK_HYPOXIA", "-k", "3")
    assert "HALLMARK_HYPOXIA" in out.splitlines()[0] and len(out.splitlines()) == 4
    out = run("index", "evaluate", built_index, "--label", "mix", "-o", tmp_path / "m.json")
    assert "mMV@5" in out and (tmp_path / "m.json").is_file()
    out = run("index", "info", built_index)
    assert "9 slides" in out
    idx = tmp_path / "cli_idx"
    specs = specs_from_table(mix_table)
    table = tmp_path / "two.csv"
    table.write_text(
        "path,slide_id,mix\n"
        + "\n".join(f"{s.path},{s.slide_id},{s.labels['mix']}" for s in specs[:2])
        + "\n"
    )
    run(
        "index",
        "build",
        "--table",
        table,
        "--checkpoint",
        retrieval_ckpt,
        "-o",
        idx,
        "--scheduler",
        "sync",
        "--prototypes",
        "4",
    )
    assert "2 slides" in run("index", "info", idx)
    # the same slides through the library's feature cache: the tower's features land there, same vectors
    cached = tmp_path / "cli_idx_cached"
    run("index", "build", "--table", table, "--checkpoint", retrieval_ckpt, "-o", cached, "--scheduler", "sync",
        "--prototypes", "4", "--feature-cache", tmp_path / "features")  # fmt: skip
    assert len(list((tmp_path / "features").glob("tower-*.safetensors"))) == 2
    for spec in specs[:2]:
        a = RetrievalIndex.load(idx).shard(spec.slide_id).vectors
        b = RetrievalIndex.load(cached).shard(spec.slide_id).vectors
        np.testing.assert_allclose(a, b, atol=1e-6)
    # user errors: one line on stderr, exit status 2
    for args in (
        ["index", "query", str(built_index), "--slide", "nope"],
        ["index", "query", str(built_index), "--slide", "S1", "--box", "1,2,3"],
        [
            "index",
            "build",
            "--table",
            str(table),
            "--checkpoint",
            str(retrieval_ckpt),
            "-o",
            str(idx),
            "--scheduler",
            "sync",
        ],
    ):
        with pytest.raises(SystemExit) as err:
            main(args)
        assert err.value.code == 2
        msg = capsys.readouterr().err.strip()
        assert msg.startswith("error:") and len(msg.splitlines()) == 1, msg
