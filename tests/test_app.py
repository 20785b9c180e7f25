"""The web app through FastAPI's test client: the API, the page, and hostile inputs."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures)

from __future__ import annotations

import io
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
    retrieval_ckpt,
)

from app.main import create_app

MAX_UPLOAD = 3 * 2**20


@pytest.fixture(scope="module")
def client(built_index, retrieval_ckpt, tmp_path_factory):
    app = create_app(
        built_index,
        checkpoint=retrieval_ckpt,
        max_upload_bytes=MAX_UPLOAD,
        max_upload_pixels=20_000_000,
        work_dir=tmp_path_factory.mktemp("uploads"),
    )
    with TestClient(app, raise_server_exceptions=False) as c:
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
    assert len(slides) == 9
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
    msg = assert_json_error(client.get("/api/slides/S1/similar"), {500})
    assert msg == "internal server error"


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
    assert job["status"] == "queued" and job["image"]["width"] == 2220
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
