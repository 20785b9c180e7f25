"""The page in a real headless browser (Debian's chromium through Playwright), against a real server.

Starts uvicorn on 127.0.0.1 over the test index, then clicks: a slide -> its similar slides -> a
region on the slide -> similar regions -> one of them (which opens its slide), a pathway query
with completion, and an upload; all under the app's Content-Security-Policy (a violation fails the test). Screenshots go to ``$HISTOKG_SCREENSHOTS`` (default: the test's tmp folder).
"""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures)

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from retrieval_fixtures import (  # noqa: F401  (fixtures)
    built_index,
    kg_bundle,
    mix_table,
    retrieval_ckpt,
)

from histokg.testing import free_port

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("HISTOKG_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def server(built_index, retrieval_ckpt):
    import uvicorn

    from app.main import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(built_index, checkpoint=retrieval_ckpt), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1500, "height": 950})
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        # the page runs under the app's Content-Security-Policy: anything it refuses is an error here
        pg.on(
            "console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None
        )
        pg.goto(server)
        yield pg
        browser.close()
        assert not errors, errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("HISTOKG_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_slide_similar_slides_region_similar_regions(page, shots):
    from playwright.sync_api import expect

    slides = page.locator("#slide-list button")
    expect(slides).to_have_count(9)
    page.locator('#slide-list button[data-slide-id="S1"]').click()
    expect(page.get_by_test_id("slide-title")).to_contain_text("S1 (spots, ")
    similar = page.locator("#similar-slides li")
    expect(similar).to_have_count(5)
    expect(similar.first).to_contain_text("score")
    assert "S1" not in [similar.nth(i).get_attribute("data-slide-id") for i in range(5)]
    expect(page.get_by_test_id("legend")).to_contain_text("prototype 0")  # categorical legend of the clusters
    swatch = page.eval_on_selector("#legend .swatch", "e => getComputedStyle(e).backgroundColor")
    assert swatch not in ("", "rgba(0, 0, 0, 0)", "transparent"), swatch  # coloured under the CSP
    page.screenshot(path=str(shots / "1_slide.png"))

    # drag a rectangle over the middle of the slide: similar regions from other slides
    box = page.get_by_test_id("slide-canvas").bounding_box()
    cx, cy = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5
    page.mouse.move(cx - 30, cy - 30)
    page.mouse.down()
    page.mouse.move(cx + 30, cy + 30, steps=5)
    page.mouse.up()
    regions = page.locator("#similar-regions li")
    expect(regions).to_have_count(8)
    expect(page.get_by_test_id("status")).to_contain_text("similar regions")
    first = regions.first
    expect(first).to_contain_text("score")
    target = first.get_attribute("data-slide-id")
    assert target and target != "S1"
    # the region crops are real images
    page.wait_for_function(
        "() => [...document.querySelectorAll('#similar-regions img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    page.screenshot(path=str(shots / "2_similar_regions.png"))

    first.click()
    expect(page.get_by_test_id("slide-title")).to_contain_text(f"{target} (")
    page.screenshot(path=str(shots / "3_region_slide.png"))


def test_colour_by_gene_and_pathway_query(page, shots):
    from playwright.sync_api import expect

    page.locator('#slide-list button[data-slide-id="S2"]').click()
    expect(page.get_by_test_id("slide-title")).to_contain_text("S2 (spots, ")
    page.select_option("#feature-kind", "kg")
    page.fill("#feature-name", "pathway:HALLMARK_HYPOXIA")
    page.dispatch_event("#feature-name", "change")
    expect(page.get_by_test_id("legend")).to_contain_text("HALLMARK_HYPOXIA - measured")
    assert page.is_visible("#colorbar")
    ticks = page.locator("#colorbar-ticks span")
    expect(ticks).to_have_count(3)
    page.select_option("#feature-source", "predicted")
    expect(page.get_by_test_id("legend")).to_contain_text("HALLMARK_HYPOXIA - predicted")

    page.fill("#pathway-input", "hypox")
    page.dispatch_event("#pathway-input", "input")
    page.wait_for_function("() => document.querySelectorAll('#pathway-options option').length > 0")
    options = page.locator("#pathway-options option")
    values = [options.nth(i).get_attribute("value") for i in range(options.count())]
    assert "pathway:HALLMARK_HYPOXIA" in values
    page.fill("#pathway-input", "hypoxia")  # as the placeholder says
    page.click("#pathway-go")
    results = page.locator("#pathway-results li[data-slide-id]")
    expect(results).to_have_count(9)
    expect(results.first).to_contain_text("mean activation")
    page.screenshot(path=str(shots / "4_pathway.png"))


def test_upload_from_the_page(page, shots, tmp_path):
    """A same-origin upload from the page passes the server's Origin check and is embedded."""
    from playwright.sync_api import expect
    from test_app import _jpeg

    path = tmp_path / "small.jpg"
    path.write_bytes(_jpeg())
    page.set_input_files("#upload-file", str(path))
    page.fill("#upload-mpp", "0.5")
    page.click("#upload-go")
    expect(page.locator("#upload-text")).to_contain_text("most similar slides", timeout=120_000)
    expect(page.locator("#upload-results li")).to_have_count(5)
    page.screenshot(path=str(shots / "5_upload.png"))
