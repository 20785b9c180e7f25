"""The web app through FastAPI's test client: the API, the page, and hostile inputs."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures)

from __future__ import annotations

import io
import re
import struct
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from retrieval_fixtures import (  # noqa: F401  (fixtures)
    built_index,
    kg_bundle,
    mix_table,
    predictions_dir,
    reference_h5ad,
    retrieval_ckpt,
)

from app.main import create_app

MAX_UPLOAD = 3 * 2**20
BASE = "http://127.0.0.1:8000"  # the server answers only to the hosts it serves (loopback by default)
MAX_TILES = 5_000


@pytest.fixture(scope="module")
def client(built_index, retrieval_ckpt, predictions_dir, tmp_path_factory):
    app = create_app(
        built_index,
        checkpoint=retrieval_ckpt,
        predictions=[predictions_dir],
        max_upload_bytes=MAX_UPLOAD,
        max_upload_pixels=20_000_000,
        max_upload_tiles=MAX_TILES,
        work_dir=tmp_path_factory.mktemp("uploads"),
    )
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        yield c


def ok(response, status=200):
    assert response.status_code == status, response.text
    return response.json()


def assert_json_error(response, statuses):
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    for leak in ("Traceback", 'File "', "root:x:", "/work/", "site-packages"):
        assert leak not in response.text, response.text
    return body["error"]


# --------------------------------------------------------------------------- the API


def test_openapi_and_page(client):
    schema = ok(client.get("/openapi.json"))
    paths = set(schema["paths"])
    for p in (
        "/api/slides",
        "/api/slides/{slide_id}",
        "/api/slides/{slide_id}/overlay",
        "/api/slides/{slide_id}/similar",
        "/api/slides/{slide_id}/regions/similar",
        "/api/pathways",
        "/api/pathways/slides",
        "/api/uploads",
        "/api/uploads/{job_id}",
    ):
        assert p in paths, p
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="slide-canvas"' in page.text and "/static/app.js" in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "similarRegions" in js.text
    assert_json_error(client.get("/static/../main.py"), {404})


def test_slides_overlay_and_thumbnails(client, built_index):
    slides = ok(client.get("/api/slides"))["slides"]
    assert len([s for s in slides if s["origin"] == "index"]) == 9
    meta = ok(client.get("/api/slides/S1"))
    assert meta["measured"] == {"genes": True, "kg": True, "labels": True} and meta["genes"]
    thumb = client.get("/api/slides/S1/thumbnail")
    assert thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == tuple(meta["thumbnail_size"])
    clusters = ok(client.get("/api/slides/benign-1/overlay", params={"feature": "cluster"}))
    assert clusters["kind"] == "categorical" and len(clusters["values"]) == len(clusters["x"])
    gene = meta["genes"][0]
    measured = ok(
        client.get("/api/slides/S1/overlay", params={"feature": f"gene:{gene}", "source": "measured"})
    )
    predicted = ok(
        client.get("/api/slides/S1/overlay", params={"feature": f"gene:{gene}", "source": "predicted"})
    )
    # one colour scale for measured and predicted values
    assert (measured["vmin"], measured["vmax"]) == (predicted["vmin"], predicted["vmax"])
    assert measured["values"] != predicted["values"] and measured["sources"] == ["measured", "predicted"]
    tiles = ok(
        client.get("/api/slides/carcinoma-1/overlay", params={"feature": "kg:pathway:HALLMARK_HYPOXIA"})
    )
    assert tiles["source"] == "predicted" and tiles["label"] == "HALLMARK_HYPOXIA"
    assert_json_error(
        client.get(
            "/api/slides/carcinoma-1/overlay", params={"feature": f"gene:{gene}", "source": "measured"}
        ),
        {400},
    )


def test_similar_slides_and_regions(client):
    res = ok(client.get("/api/slides/carcinoma-1/similar", params={"k": 3, "descriptor": "mean"}))
    assert [r["slide_id"] for r in res["results"]].count("carcinoma-1") == 0 and len(res["results"]) == 3
    assert res["results"][0]["thumbnail_url"].endswith("/thumbnail")
    res = ok(
        client.get(
            "/api/slides/S1/regions/similar", params={"x0": 600, "y0": 600, "x1": 1000, "y1": 1000, "k": 4}
        )
    )
    assert len(res["results"]) == 4 and all(r["slide_id"] != "S1" for r in res["results"])
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True)
    img = client.get(res["results"][0]["thumbnail_url"], params={"size": 96})
    assert img.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(img.content)).size == (96, 96)
    target = ok(
        client.get(
            "/api/slides/S1/regions/similar",
            params={"x0": 300, "y0": 300, "x1": 500, "y1": 500, "units": "um", "target": "benign-2", "k": 2},
        )
    )
    assert {r["slide_id"] for r in target["results"]} == {"benign-2"}


def test_pathways(client):
    comp = ok(client.get("/api/pathways", params={"q": "hypox"}))["results"]
    assert any(r["id"] == "pathway:HALLMARK_HYPOXIA" for r in comp)
    res = ok(client.get("/api/pathways/slides", params={"name": "HALLMARK_HYPOXIA", "within": "stroma"}))
    assert res["entity"] == "pathway:HALLMARK_HYPOXIA" and res["results"]
    assert {r["source"] for r in res["results"]} == {"measured", "predicted"}
    assert "did you mean" in assert_json_error(
        client.get("/api/pathways/slides", params={"name": "hypoxya"}), {400}
    )


def test_pathway_and_cell_type_names_as_a_person_types_them(client):
    # the page's placeholder "e.g. hypoxia" and the README's `--pathway hypoxia`
    res = ok(client.get("/api/pathways/slides", params={"name": "hypoxia", "within": "Invasive Carcinoma"}))
    assert res["entity"] == "pathway:HALLMARK_HYPOXIA" and res["within"] == "invasive carcinoma"
    assert res["results"]
    assert (
        ok(client.get("/api/pathways", params={"q": "hypoxia"}))["results"][0]["id"]
        == "pathway:HALLMARK_HYPOXIA"
    )
    # colouring by a cell type whose id has a space, or by a name as typed
    over = ok(client.get("/api/slides/S1/overlay", params={"feature": "kg:t cell"}))
    assert over["feature"] == "kg:celltype:T cell" and over["label"] == "T cell"
    over = ok(client.get("/api/slides/S1/overlay", params={"feature": "kg:celltype:T cell"}))
    assert over["feature"] == "kg:celltype:T cell"
    assert "did you mean 'stroma'" in assert_json_error(
        client.get("/api/pathways/slides", params={"name": "hypoxia", "within": "strom"}), {400}
    )


# --------------------------------------------------------------------------- what the page tells a pathologist


def test_slides_carry_their_mpp_and_regions_their_position_in_um(client):
    rows = {r["slide_id"]: r for r in ok(client.get("/api/slides"))["slides"]}
    from histokg.retrieval.index import RetrievalIndex

    index = client.app.state.index
    assert isinstance(index, RetrievalIndex)
    for sid in index.slide_ids:
        mpp = index.slide_meta(sid)["slide_mpp"]
        assert rows[sid]["mpp"] == pytest.approx(mpp) and 0.01 < mpp < 100
        assert ok(client.get(f"/api/slides/{sid}"))["mpp"] == pytest.approx(mpp)
    x, y = (float(v) for v in index.shard("S1").coords[0])
    box = {"x0": x - 50, "y0": y - 50, "x1": x + 50, "y1": y + 50}
    res = ok(client.get("/api/slides/S1/regions/similar", params=box))
    for r in res["results"]:
        assert r["mpp"] == pytest.approx(index.slide_meta(r["slide_id"])["slide_mpp"])


def test_overlay_legend_says_what_the_values_are_and_how_the_scale_is_clipped(client):
    gene = ok(client.get("/api/slides/S1"))["genes"][0]
    measured = ok(
        client.get("/api/slides/S1/overlay", params={"feature": f"gene:{gene}", "source": "measured"})
    )
    predicted = ok(
        client.get("/api/slides/S1/overlay", params={"feature": f"gene:{gene}", "source": "predicted"})
    )
    assert measured["value"]["what"] == "measured expression" and measured["value"]["unit"] == "log1p CP10k"
    assert predicted["value"]["what"] == "predicted expression"
    assert "10 most similar regions" in predicted["value"]["definition"]
    for over in (measured, predicted):
        scale = over["scale"]
        assert scale["clip_percentiles"] == [2.0, 98.0]
        assert scale["over"] == "this slide's measured and predicted values"
        values = np.array([v for v in over["values"] if v is not None])
        both = np.concatenate(
            [values, [v for v in (predicted if over is measured else measured)["values"] if v is not None]]
        )
        assert (scale["vmin"], scale["vmax"]) == pytest.approx(tuple(np.percentile(both, [2, 98])), abs=1e-4)
        assert scale["n_below"] == int((values < scale["vmin"] - 1e-9).sum()) and scale["n"] == len(values)
        assert scale["n_above"] == int((values > scale["vmax"] + 1e-9).sum())
    kg = ok(client.get("/api/slides/S1/overlay", params={"feature": "kg:hypoxia"}))
    assert kg["value"]["what"] == "measured pathway score" and kg["value"]["unit"] == "rank score, 0-1"
    clusters = ok(client.get("/api/slides/S1/overlay", params={"feature": "cluster"}))
    assert (
        clusters["legend"]["title"] == "Region prototype" and "not a diagnosis" in clusters["legend"]["note"]
    )
    assert len(clusters["colours"]) == len(clusters["categories"]) == len(set(clusters["colours"]))


def test_a_gene_outside_the_panel_says_so_and_names_near_genes(client):
    genes = ok(client.get("/api/slides/S1"))["genes"]
    for source in ("measured", "predicted"):
        err = assert_json_error(
            client.get("/api/slides/S1/overlay", params={"feature": "gene:EPCAM", "source": source}), {400}
        )
        assert (
            err.startswith("gene 'EPCAM' is outside the model's gene panel") and f"{len(genes)} genes" in err
        )
        assert "include" in err or "did you mean" in err  # names panel genes, never the whole list
    typo = genes[0][:-1] + ("Z" if genes[0][-1] != "Z" else "Y")
    err = assert_json_error(client.get("/api/slides/S1/overlay", params={"feature": f"gene:{typo}"}), {400})
    assert f"did you mean {genes[0]!r}" in err


def test_predicted_slides_from_histokg_predict(client, predictions_dir):
    from histokg import keys
    from histokg.keys import Key
    from histokg.st.contract import read_h5ad

    adata = read_h5ad(predictions_dir / "S3" / "predicted.h5ad")
    rows = {r["slide_id"]: r for r in ok(client.get("/api/slides"))["slides"]}
    assert rows["S3.predicted"]["origin"] == "predicted" and rows["S3"]["origin"] == "index"
    assert rows["S3.predicted"]["name"] == "S3" and rows["S3.predicted"]["n_regions"] == adata.n_obs
    assert ok(client.get("/api/info"))["n_predicted"] == 1
    meta = ok(client.get("/api/slides/S3.predicted"))
    entry = adata.uns["spatial"]["S3"]
    assert meta["mpp"] == pytest.approx(entry["metadata"]["mpp"]) and meta["kind"] == "spots"
    assert meta["genes"] == list(adata.var_names) and len(meta["pathways"]) == 8
    assert meta["predicted"]["reference_slides"] == ["S1", "S2"] and meta["predicted"]["method"] == "blend"
    thumb = client.get("/api/slides/S3.predicted/thumbnail")
    assert Image.open(io.BytesIO(thumb.content)).size == tuple(meta["thumbnail_size"])
    gene = meta["genes"][3]
    over = ok(client.get("/api/slides/S3.predicted/overlay", params={"feature": f"gene:{gene}"}))
    assert over["source"] == "predicted" and over["sources"] == ["predicted", "uncertainty"]
    assert (
        over["value"]["what"] == "predicted expression (from H&E)" and "S1, S2" in over["value"]["definition"]
    )
    np.testing.assert_allclose(over["values"], adata.X[:, 3], atol=1e-4)
    np.testing.assert_allclose(np.c_[over["x"], over["y"]], adata.obsm["spatial"], atol=0.05)
    hw = ok(
        client.get(
            "/api/slides/S3.predicted/overlay", params={"feature": f"gene:{gene}", "source": "uncertainty"}
        )
    )
    np.testing.assert_allclose(
        hw["values"], adata.layers[keys.interval_key(Key.layers.pred_blend)][:, 3], atol=1e-4
    )
    assert (
        hw["value"]["what"] == "uncertainty: 90% interval half-width"
        and "90% of the time" in hw["value"]["definition"]
    )
    assert hw["scale"]["over"] == "this slide's interval half-widths"
    pathway = meta["pathways"][0]
    kg = ok(
        client.get(
            "/api/slides/S3.predicted/overlay", params={"feature": "kg:" + pathway.split(":", 1)[1].lower()}
        )
    )
    assert kg["feature"] == f"kg:{pathway}" and kg["value"]["what"] == "predicted pathway score (from H&E)"
    np.testing.assert_allclose(kg["values"], adata.obsm["pred_pathways"][pathway], atol=1e-4)
    clusters = ok(client.get("/api/slides/S3.predicted/overlay", params={"feature": "cluster"}))
    assert clusters["kind"] == "categorical" and clusters["legend"]["title"] == "Cluster (predicted from H&E)"
    assert len(clusters["categories"]) == adata.obs["histokg_leiden"].nunique()
    # what a predicted slide cannot answer, said in words
    measured = client.get(
        "/api/slides/S3.predicted/overlay", params={"feature": f"gene:{gene}", "source": "measured"}
    )
    assert "nothing on it was measured" in assert_json_error(measured, {400})
    err = assert_json_error(
        client.get("/api/slides/S3.predicted/overlay", params={"feature": "gene:EPCAM"}), {400}
    )
    assert "outside the model's gene panel" in err
    assert "not in the index" in assert_json_error(client.get("/api/slides/S3.predicted/similar"), {400})
    box = {"x0": 0, "y0": 0, "x1": 100, "y1": 100}
    assert_json_error(client.get("/api/slides/S3.predicted/regions/similar", params=box), {400})
    assert "intervals are given" in assert_json_error(
        client.get("/api/slides/S1/overlay", params={"feature": f"gene:{gene}", "source": "uncertainty"}),
        {400},
    )
    assert_json_error(client.get("/api/slides/S4.predicted"), {404})


def test_predictions_are_checked_when_the_server_starts(
    built_index, predictions_dir, reference_h5ad, tmp_path
):
    from histokg.cli import main
    from histokg.errors import InputError

    with pytest.raises(InputError, match="not an output of histokg predict"):
        create_app(built_index, predictions=[reference_h5ad])
    with pytest.raises(InputError, match="'S3.predicted' is also that of"):
        create_app(built_index, predictions=[predictions_dir, predictions_dir / "S3"])
    with pytest.raises(InputError, match="no predicted.h5ad in it"):
        create_app(built_index, predictions=[tmp_path])
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(built_index), "--predictions", str(reference_h5ad)])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------- hostile inputs


def test_unknown_ids(client):
    assert "not in the index" in assert_json_error(client.get("/api/slides/S99"), {404})
    assert_json_error(client.get("/api/slides/S99/similar"), {404})
    assert_json_error(client.get("/api/slides/S99/thumbnail"), {404})
    assert_json_error(client.get("/api/regions/999999999999/thumbnail"), {404})
    assert_json_error(client.get(f"/api/regions/{(0 << 32) + 10**6}/thumbnail"), {404})
    assert_json_error(client.get("/api/uploads/" + "0" * 32), {404})
    assert_json_error(client.get("/api/nothing/here"), {404})
    assert_json_error(
        client.get(
            "/api/slides/S1/regions/similar", params={"x0": 0, "y0": 0, "x1": 1, "y1": 1, "target": "S99"}
        ),
        {404},
    )


TRAVERSAL = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "/etc/passwd",
    "..\\..\\windows",
    "S1/../../x",
    "%2e%2e",
    "....//",
]


@pytest.mark.parametrize("evil", TRAVERSAL)
def test_path_traversal_everywhere(client, evil):
    region = {"x0": 0, "y0": 0, "x1": 10, "y1": 10}
    requests = [
        f"/api/slides/{evil}",
        f"/api/slides/{evil}/thumbnail",
        f"/api/slides/{evil}/overlay",
        f"/api/slides/{evil}/similar",
        f"/api/uploads/{evil}",
        f"/api/regions/{evil}/thumbnail",
        f"/static/{evil}",
    ]
    for url in requests:
        assert_json_error(client.get(url), {400, 404, 422})
    params = [
        ("/api/slides/S1/overlay", {"feature": f"gene:{evil}"}),
        ("/api/slides/S1/overlay", {"feature": f"kg:{evil}"}),
        ("/api/slides/S1/overlay", {"feature": evil}),
        ("/api/slides/S1/overlay", {"source": evil}),
        ("/api/slides/S1/similar", {"descriptor": evil}),
        ("/api/slides/S1/regions/similar", {**region, "target": evil}),
        ("/api/slides/S1/regions/similar", {**region, "units": evil}),
        ("/api/pathways", {"q": evil}),
        ("/api/pathways/slides", {"name": evil}),
        ("/api/pathways/slides", {"name": "HALLMARK_HYPOXIA", "within": evil}),
    ]
    for url, p in params:
        r = client.get(url, params=p)
        if r.status_code == 200:  # free text that is searched, never opened: an empty answer is fine
            assert url == "/api/pathways" and r.json()["results"] == [], r.text
        else:
            assert_json_error(r, {400, 404, 422})


def test_wrong_types_and_bounds(client):
    cases = [
        ("/api/slides/S1/similar", {"k": "abc"}),
        ("/api/slides/S1/similar", {"k": 0}),
        ("/api/slides/S1/similar", {"k": 10**9}),
        ("/api/slides/S1/similar", {"exclude_patient": "maybe"}),
        ("/api/slides/S1/regions/similar", {"x0": "nan", "y0": 0, "x1": 5, "y1": 5}),
        ("/api/slides/S1/regions/similar", {"x0": "1e400", "y0": 0, "x1": 5, "y1": 5}),
        ("/api/slides/S1/regions/similar", {"x0": 5, "y0": 0, "x1": 1, "y1": 5}),
        ("/api/slides/S1/regions/similar", {"x0": 1}),
        ("/api/regions/-5/thumbnail", {}),
        ("/api/regions/abc/thumbnail", {}),
        ("/api/regions/1/thumbnail", {"size": 100000}),
        ("/api/pathways", {"q": "x" * 500}),
        ("/api/pathways", {"limit": -1}),
        ("/api/slides/S1/overlay", {"feature": "gene:" + "A" * 300}),
    ]
    for url, params in cases:
        assert_json_error(client.get(url, params=params), {400, 404, 422})
    msg = assert_json_error(client.get("/api/slides/S1/similar", params={"k": "abc"}), {422})
    assert "k" in msg and "integer" in msg
    # request bodies are bounded everywhere (a GET with a large body, a POST to a GET route)
    assert_json_error(client.request("GET", "/api/slides", content=b"x" * 200_000), {413})
    assert_json_error(client.post("/api/slides", json={"a": 1}), {405})


def test_internal_errors_are_json_without_trace(client, monkeypatch):
    from histokg.retrieval import query

    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail /work/main/x.py")

    monkeypatch.setattr(query, "similar_slides", boom)
    res = client.get("/api/slides/S1/similar")
    assert assert_json_error(res, {500}) == "internal server error"
    assert res.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in res.headers


# --------------------------------------------------------------------------- uploads


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height (1-bit), with a tiny compressed body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + width // 8) * 8, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _tiff(tmp_path, size=1600) -> bytes:
    from histokg.wsi.pyramid import write_pyramid

    rng = np.random.default_rng(0)
    img = (200 + rng.integers(-40, 40, size=(size, size, 3))).clip(0, 255).astype(np.uint8)
    img[400:1200, 400:1200] = (150, 60, 140)
    path = write_pyramid(img, tmp_path / "slide.tiff", 0.5)
    return path.read_bytes()


def upload(client, name, data, **form):
    return client.post("/api/uploads", files={"file": (name, data, "application/octet-stream")}, data=form)


def test_hostile_uploads(client, tmp_path):
    # oversized: refused from Content-Length before it is read
    assert "limit" in assert_json_error(
        upload(client, "big.svs", b"II*\x00" + b"\0" * (MAX_UPLOAD + 100_000)), {413}
    )
    # a decompression bomb: 100k x 100k pixels in a few hundred bytes, refused from the header
    bomb = _png_bomb(100_000, 100_000)
    assert len(bomb) < 50_000
    assert "decompression bomb" in assert_json_error(upload(client, "bomb.png", bomb, mpp="0.5"), {413})
    # a truncated TIFF
    good = _tiff(tmp_path)
    msg = assert_json_error(upload(client, "cut.tiff", good[: len(good) // 3]), {400})
    assert "truncated" in msg or "corrupt" in msg
    assert "slide.tiff" not in msg and str(tmp_path) not in msg
    # not an image at all, with an image name; an unaccepted type; an empty file
    assert "not a PNG" in assert_json_error(upload(client, "x.png", b"#!/bin/sh\nrm -rf /\n"), {415})
    assert "not accepted" in assert_json_error(upload(client, "x.exe", b"MZ\x90\x00"), {415})
    assert "not accepted" in assert_json_error(upload(client, "../../etc/passwd", b"root:x:0:0"), {415})
    assert "empty" in assert_json_error(upload(client, "x.tiff", b""), {400})
    # a plain image needs its microns per pixel; wrong types of form fields
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 150)).save(buf, format="PNG")
    assert "mpp" in assert_json_error(upload(client, "small.png", buf.getvalue()), {400})
    assert_json_error(upload(client, "small.png", buf.getvalue(), mpp="abc"), {422})
    assert_json_error(upload(client, "small.png", buf.getvalue(), mpp="-1"), {422})
    assert_json_error(client.post("/api/uploads", data={"mpp": "0.5"}), {422})
    assert_json_error(
        client.post(
            "/api/uploads",
            content=b"--x\r\nnonsense",
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        {400, 422},
    )
    assert list(client.app.state.jobs.work_dir.iterdir()) == []  # refused uploads leave nothing behind


def test_upload_embeds_and_queries(client, cmu_slide):
    job = ok(upload(client, "CMU-1-Small-Region.svs", cmu_slide.read_bytes()), 202)
    # the job may have started by the time the answer is built
    assert job["status"] in ("queued", "tiling", "embedding") and job["image"]["width"] == 2220
    deadline = time.time() + 120
    seen = set()
    while time.time() < deadline:
        st = ok(client.get(job["status_url"]))
        seen.add(st["status"])
        if st["status"] in ("done", "error"):
            break
        time.sleep(0.2)
    assert st["status"] == "done", st
    assert st["n_tiles"] > 30 and st["progress"] == 1.0
    assert {"mean", "prototypes"} <= set(st["results"]) and len(st["results"]["mean"]) == 5
    assert seen & {"queued", "tiling", "embedding"}


# --------------------------------------------------------------------------- who may talk to the server


def test_host_header_must_be_one_the_server_serves(client):
    # DNS rebinding: a name an attacker re-points at 127.0.0.1 still sends its own name as the Host
    for host in (
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "a b",
    ):
        for url in ("/", "/api/slides", "/api/slides/S1/thumbnail"):
            msg = assert_json_error(client.get(url, headers={"host": host}), {400})
            assert "not a host this server serves" in msg and "--allowed-host" in msg, msg
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "localhost.:8000", "[::1]:8000"):
        ok(client.get("/api/info", headers={"host": host}))


def test_allowed_hosts_and_origins_by_hand():
    from app.security import AllowedHosts, parse_host, same_origin

    assert parse_host("LocalHost.:8000") == ("localhost", 8000) and parse_host("[::1]") == ("[::1]", None)
    for bad in ("", "a b", "x:99999", "evil.example/x", "x:y", "@evil"):
        assert parse_host(bad) is None, bad
    hosts = AllowedHosts(["127.0.0.1:8000", "slides.lab.example"])
    assert hosts.allows(("127.0.0.1", 8000)) and not hosts.allows(("127.0.0.1", 8001))
    assert hosts.allows(("slides.lab.example", 443)) and not hosts.allows(("localhost", 8000))
    with pytest.raises(ValueError, match="not a host name"):
        AllowedHosts(["http://x"])
    here = ("127.0.0.1", 8000)
    assert same_origin("http://127.0.0.1:8000", "http", here)
    assert same_origin("http://localhost", "http", ("localhost", None))
    assert same_origin("http://localhost:80", "http", ("localhost", None))
    for other in ("null", "http://127.0.0.1:8001", "https://127.0.0.1:8000", "http://localhost:8000",
                  "http://evil.example", "http://127.0.0.1:8000/x", "file://", "javascript:alert(1)"):  # fmt: skip
        assert not same_origin(other, "http", here), other


def _small_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 150)).save(buf, format="PNG")
    return buf.getvalue()


def test_cross_origin_state_changes_are_refused(client):
    # CSRF: a page on another origin posts a form to the app; the browser names that page's origin
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999", "http://localhost:8000"):
        res = client.post(
            "/api/uploads",
            files={"file": ("x.png", _small_png())},
            data={"mpp": "0.5"},
            headers={"origin": origin},
        )
        assert "cross-origin request refused" in assert_json_error(res, {403})
    res = client.post(
        "/api/uploads", files={"file": ("x.png", _small_png())}, headers={"sec-fetch-site": "cross-site"}
    )
    assert "cross-origin" in assert_json_error(res, {403})
    assert list(client.app.state.jobs.work_dir.iterdir()) == []  # nothing was stored
    # the page's own origin, and clients that are not browsers (no Origin), reach the upload's checks
    res = client.post("/api/uploads", files={"file": ("x.exe", b"MZ")}, headers={"origin": BASE})
    assert "not accepted" in assert_json_error(res, {415})
    assert "not accepted" in assert_json_error(
        client.post("/api/uploads", files={"file": ("x.exe", b"MZ")}), {415}
    )
    # reading is not a state change: a GET with a foreign Origin is answered (the browser keeps it from the page)
    ok(client.get("/api/info", headers={"origin": "http://evil.example"}))


def test_every_answer_carries_the_security_headers(client):
    answers = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/api/slides"),
        client.get("/api/slides/S1/thumbnail"),
        client.get("/api/nothing"),
        client.get("/api/slides/S1/similar", params={"k": "abc"}),
        client.get("/api/slides", headers={"host": "evil.example"}),
        client.post("/api/uploads", headers={"origin": "http://evil.example"}),
        client.request("GET", "/api/slides", content=b"x" * 200_000),
    ]
    for res in answers:
        assert res.headers["x-content-type-options"] == "nosniff", res.request.url
        assert res.headers["x-frame-options"] == "DENY"
        csp = res.headers["content-security-policy"]
        assert (
            "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "img-src 'self' data:" in csp
        )
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    # the page has nothing inline for the policy to refuse: no inline script, style or handler
    page = client.get("/").text + client.get("/static/app.js").text
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", client.get("/").text)


def test_openapi_page_runs_under_its_own_policy(client):
    res = client.get("/docs")
    assert res.status_code == 200 and "swagger-ui" in res.text
    csp = res.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", res.text, flags=re.S)
    assert scripts and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    import base64
    import hashlib

    for script in scripts:  # the one inline script is allowed by its hash, nothing else inline
        assert base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() in csp
    assert client.get("/redoc").status_code == 404
    assert "no such endpoint" not in client.get("/openapi.json").text


# --------------------------------------------------------------------------- what an upload may cost


def _jpeg(size: int = 600) -> bytes:
    """A small JPEG of tissue on glass (tens of KB)."""
    rng = np.random.default_rng(1)
    img = np.full((size, size, 3), 235.0)
    img[size // 6 : -size // 6, size // 6 : -size // 6] = (170, 80, 160)
    img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=70)
    return buf.getvalue()


def test_uploads_are_bounded_by_their_tiles_before_anything_is_decoded(client, tmp_path, monkeypatch):
    import histokg.wsi
    from histokg.wsi.pyramid import write_pyramid

    opened = []
    real_open = histokg.wsi.open_slide
    monkeypatch.setattr(histokg.wsi, "open_slide", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    jpeg = _jpeg()
    # issue 17: a small JPEG at mpp=50 (allowed by the API) is a 30 mm slide, tens of thousands of tiles
    msg = assert_json_error(upload(client, "wide.jpg", jpeg, mpp="50"), {413})
    assert re.search(r"cut into [\d,]+ tiles", msg) and f"more than the {MAX_TILES:,} tiles" in msg, msg
    assert "600 x 600 px at 50 um/px" in msg and "max_upload_tiles" in msg
    assert opened == []  # counted from the header: the image was never decoded
    # a TIFF whose own resolution tags say 40 um/px: counted from its header and tags
    tiff = write_pyramid(
        np.asarray(Image.open(io.BytesIO(jpeg))), tmp_path / "coarse.tiff", 40.0
    ).read_bytes()
    assert "at 40 um/px" in assert_json_error(upload(client, "coarse.tiff", tiff), {413})
    # 999 um/px (beyond the form's 50, but a TIFF's tags may say so): millions of tiles, counted, not built
    # (histokg's own writer refuses such an MPP since the budget checks: the file is made past that check)
    with monkeypatch.context() as m:
        m.setattr(histokg.wsi.pyramid.budget, "check_mpp", lambda value, what: float(value))
        path = write_pyramid(np.asarray(Image.open(io.BytesIO(jpeg))), tmp_path / "c2.tiff", 999.0)
    msg = assert_json_error(upload(client, "coarse.tiff", path.read_bytes()), {400, 413, 422})
    assert "999" in msg and ("not plausible" in msg or "tiles" in msg), msg
    # an image smaller than one tile would only fail in the background: refused at once
    assert "smaller than one tile" in assert_json_error(
        upload(client, "tiny.png", _small_png(), mpp="0.1"), {422}
    )
    assert list(client.app.state.jobs.work_dir.iterdir()) == []
    # the same JPEG at a plausible MPP is a few tiles, and is accepted
    job = ok(upload(client, "ok.jpg", jpeg, mpp="0.5"), 202)
    assert 0 < job["image"]["grid_tiles"] <= MAX_TILES
    _wait(client, job)


def _wait(client, job, seconds=120) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        st = ok(client.get(job["status_url"]))
        if st["status"] in ("done", "error"):
            return st
        time.sleep(0.2)
    raise AssertionError(f"upload job still running after {seconds} s: {st}")


def test_a_job_clock_stops_a_job_over_its_time():
    from app.uploads import JobClock, UploadError

    now = iter([100.0, 101.0, 104.0, 106.0])
    clock = JobClock(5.0, now=lambda: next(now))  # started at 100
    clock.check("tiling", 0, 0)  # 1 s
    clock.check("embedding", 32, 640)  # 4 s
    with pytest.raises(
        UploadError, match=r"stopped after 6\.0 s, over the limit of 5 s .* with 64 of 640 tiles"
    ):
        clock.check("embedding", 64, 640)
    late = JobClock(1.0, now=iter([0.0, 2.0]).__next__)
    with pytest.raises(UploadError, match="while tiling") as err:
        late.check("tiling", 0, 0)
    assert err.value.status == 413


def test_an_upload_job_over_its_time_is_stopped(
    built_index, retrieval_ckpt, cmu_slide, tmp_path, monkeypatch
):
    import itertools

    import app.state
    from app.uploads import JobClock

    ticks = itertools.count()  # a clock that advances 1 s whenever it is read: start, tiling, 0 of n, chunk 1
    monkeypatch.setattr(app.state, "JobClock", lambda limit: JobClock(limit, now=lambda: float(next(ticks))))
    application = create_app(
        built_index, checkpoint=retrieval_ckpt, max_job_seconds=2.5, work_dir=tmp_path / "up"
    )
    with TestClient(application, base_url=BASE, raise_server_exceptions=False) as c:
        assert ok(c.get("/api/info"))["max_job_seconds"] == 2.5
        st = _wait(c, ok(upload(c, "CMU-1-Small-Region.svs", cmu_slide.read_bytes()), 202))
    assert st["status"] == "error" and "stopped after 3.0 s, over the limit of 2.5 s" in st["message"], st
    assert "max_job_seconds" in st["message"] and not st["results"]
    assert re.search(r"with [1-9][\d,]* of [1-9][\d,]* tiles embedded", st["message"]), st
    assert list((tmp_path / "up").iterdir()) == []  # the upload is removed
    with pytest.raises(ValueError, match="max_tiles must be a positive"):
        create_app(built_index, max_upload_tiles=0)
    with pytest.raises(ValueError, match="max_job_seconds must be a positive"):
        create_app(built_index, max_job_seconds=float("inf"))


def test_too_many_pending_uploads_are_refused_before_they_are_stored(built_index, retrieval_ckpt, tmp_path):
    import threading

    application = create_app(
        built_index, checkpoint=retrieval_ckpt, max_pending_uploads=2, work_dir=tmp_path / "up"
    )
    jobs = application.state.jobs
    release = threading.Event()
    jobs._embed_fn = lambda job, path, mpp: release.wait(60) and {}  # a job that runs until released
    jpeg = _jpeg()
    try:
        with TestClient(application, base_url=BASE, raise_server_exceptions=False) as c:
            assert ok(c.get("/api/info"))["max_pending_uploads"] == 2
            first = ok(upload(c, "a.jpg", jpeg, mpp="0.5"), 202)
            ok(upload(c, "b.jpg", jpeg, mpp="0.5"), 202)  # one running, one queued
            msg = assert_json_error(upload(c, "c.jpg", jpeg, mpp="0.5"), {429})
            assert "2 uploads are already being checked or embedded (at most 2 at once)" in msg, msg
            assert len(list((tmp_path / "up").iterdir())) == 2  # the third was never stored
            # an upload being stored and checked holds a place too (before it is a job)
            release.set()
            assert _wait(c, first)["status"] == "done"
            while sum(j.status in ("queued", "tiling", "embedding") for j in jobs._jobs.values()):
                time.sleep(0.05)
            with jobs.slot(), jobs.slot():
                assert_json_error(upload(c, "d.jpg", jpeg, mpp="0.5"), {429})
            ok(upload(c, "e.jpg", jpeg, mpp="0.5"), 202)  # places given back when the checks end
    finally:
        release.set()


def test_serve_options(built_index, monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from histokg.cli import cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: seen.update(app=application, **kw))
    out = CliRunner().invoke(cli, ["serve", str(built_index)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000  # loopback unless told otherwise
    with TestClient(seen["app"], base_url=BASE) as c:
        info = ok(c.get("/api/info"))
        assert (info["max_upload_tiles"], info["max_job_seconds"], info["max_pending_uploads"]) == (
            5_000,
            300,
            4,
        )
        assert c.get("/api/info", headers={"host": "localhost:8001"}).status_code == 400  # another port
    args = ["serve", str(built_index), "--port", "8123", "--allowed-host", "slides.lab.example",
            "--allowed-host", "10.0.0.7:9000", "--max-upload-tiles", "77", "--max-job-seconds", "12",
            "--max-pending-uploads", "2", "--max-upload-mb", "1"]  # fmt: skip
    out = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert out.exit_code == 0 and "serving Host" in out.output and "slides.lab.example" in out.output
    with TestClient(seen["app"], base_url="http://127.0.0.1:8123") as c:
        info = ok(c.get("/api/info"))
        assert (info["max_upload_tiles"], info["max_job_seconds"], info["max_pending_uploads"]) == (77, 12, 2)
        assert info["max_upload_bytes"] == 2**20
        for host in ("slides.lab.example", "slides.lab.example:443", "10.0.0.7:9000", "localhost:8123"):
            ok(c.get("/api/info", headers={"host": host}))
        for host in ("10.0.0.7:9001", "localhost:8000", "evil.example:8123"):
            assert_json_error(c.get("/api/info", headers={"host": host}), {400})
    out = CliRunner().invoke(cli, ["serve", str(built_index), "--allowed-host", "http://x/"])
    assert out.exit_code == 2 and "--allowed-host" in out.output and "not a host name" in out.output
    for bad in (["--max-upload-tiles", "0"], ["--max-job-seconds", "0"], ["--max-pending-uploads", "0"]):
        assert CliRunner().invoke(cli, ["serve", str(built_index), *bad]).exit_code == 2
