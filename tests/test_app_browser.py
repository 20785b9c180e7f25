"""The page in a real headless browser (Debian's chromium through Playwright), against a real server.

Starts uvicorn on 127.0.0.1 over the test index and a `histokg predict` output (section S3's image
alone), then clicks: a slide -> its similar slides -> a region on the slide -> similar regions -> one of
them (which opens its slide), a pathway query with completion, and an upload; what a pathologist reads
(a scale bar and positions in um, the legend, the overlay's opacity, class colours that can be told
apart, an error that clears) and a slide predicted from H&E; all under the app's
Content-Security-Policy (a violation fails the test). Screenshots go to ``$HISTOKG_SCREENSHOTS``
(default: the test's tmp folder; ``docs/img`` holds the README's, ``app_*.png``).
"""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures)

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from retrieval_fixtures import (  # noqa: F401  (fixtures)
    built_index,
    kg_bundle,
    mix_table,
    predictions_dir,
    reference_h5ad,
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
def server(built_index, retrieval_ckpt, predictions_dir):
    import uvicorn

    from app.main import create_app

    port = free_port()
    application = create_app(built_index, checkpoint=retrieval_ckpt, predictions=[predictions_dir])
    config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning")
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
    expect(similar.first).to_contain_text("similarity")
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
    expect(first).to_contain_text("similarity")
    assert re.search(r"^\S+, x [\d,]+ µm, y [\d,]+ µm$", first.locator(".where").inner_text())
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
    expect(page.get_by_test_id("legend")).to_contain_text("HALLMARK_HYPOXIA: measured pathway score")
    assert page.is_visible("#colorbar")
    ticks = page.locator("#colorbar-ticks span")
    expect(ticks).to_have_count(3)
    page.select_option("#feature-source", "predicted")
    expect(page.get_by_test_id("legend")).to_contain_text("HALLMARK_HYPOXIA: predicted pathway score")

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
    expect(results.first).to_contain_text("mean score")
    expect(page.locator("#pathway-results li.note")).to_contain_text("rank score, 0-1")
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


PIXEL = """([i]) => {
  const o = state.overlay, c = document.getElementById('slide-canvas');
  const x = Math.round(o.x[i] * state.scale), y = Math.round(o.y[i] * state.scale);
  return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data).slice(0, 3);
}"""


def _lab(colours: list[str]) -> np.ndarray:
    from skimage.color import rgb2lab

    rgb = []
    for c in colours:
        if c.startswith("rgb"):
            rgb.append([int(v) for v in re.findall(r"\d+", c)[:3]])
        else:
            rgb.append([int(c[i : i + 2], 16) for i in (1, 3, 5)])
    return rgb2lab(np.asarray(rgb, float)[None] / 255.0)[0]


def min_delta_e(colours: list[str]) -> float:
    """The smallest CIE76 colour difference between two of ``colours`` (CSS rgb() or #rrggbb)."""
    lab = _lab(colours)
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def _open(page, slide_id: str, title: str) -> None:
    from playwright.sync_api import expect

    page.locator(f'#slides-panel button[data-slide-id="{slide_id}"]').click()
    expect(page.get_by_test_id("slide-title")).to_contain_text(title)
    page.wait_for_function(f"() => state.overlay && state.overlay.slide_id === {slide_id!r}")


def _colour_by(page, kind: str, name: str = "", source: str | None = None) -> None:
    page.select_option("#feature-kind", kind)
    if source:
        page.select_option("#feature-source", source)
    if name:
        page.fill("#feature-name", name)
        page.dispatch_event("#feature-name", "change")


def test_scale_bar_positions_in_um_legend_and_opacity(page, shots):
    from playwright.sync_api import expect

    _colour_by(page, "cluster")
    _open(page, "S2", "S2 (spots, ")
    mpp, scale = page.evaluate("() => [state.meta.mpp, state.scale]")
    assert 0.01 < mpp < 100
    # a scale bar of a round length in um (or mm), as long on screen as that length on the slide
    bar = page.get_by_test_id("scale-bar")
    expect(bar).to_be_visible()
    text = page.locator("#scale-bar-text").inner_text()
    m = re.fullmatch(r"(\d+) (µm|mm)", text)
    assert m, text
    length_um = int(m.group(1)) * (1000 if m.group(2) == "mm" else 1)
    width = page.locator("#scale-bar-line").bounding_box()["width"]
    assert width == pytest.approx(length_um / mpp * scale, abs=1.5) and 40 <= width <= 170

    # a click reads the position in um and the value of the region there
    i = page.evaluate("() => Math.floor(state.overlay.x.length / 2)")
    x, y, cat = page.evaluate(
        f"() => [state.overlay.x[{i}], state.overlay.y[{i}], state.overlay.categories[state.overlay.values[{i}]]]"
    )
    box = page.get_by_test_id("slide-canvas").bounding_box()
    page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)
    pos = page.get_by_test_id("position")
    expect(pos).to_contain_text("S2, x ")
    m = re.fullmatch(r"S2, x ([\d,]+) µm, y ([\d,]+) µm: (.+)", pos.inner_text())
    assert m, pos.inner_text()
    tol = mpp / scale + 1
    assert float(m.group(1).replace(",", "")) == pytest.approx(x * mpp, abs=tol)
    assert float(m.group(2).replace(",", "")) == pytest.approx(y * mpp, abs=tol)
    assert m.group(3) == cat
    expect(page.get_by_test_id("legend")).to_contain_text("Region prototype")
    expect(page.get_by_test_id("legend")).to_contain_text("not a diagnosis")

    # the categorical colours can be told apart (CIE76 Delta E between any two of the legend's swatches)
    swatches = page.eval_on_selector_all(
        "#legend .swatch", "es => es.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert len(swatches) >= 6 and min_delta_e(swatches) > 30, swatches

    # a gene: what the value is, its unit, and the colour scale's range and clipping
    gene = page.evaluate("() => state.meta.genes[0]")
    _colour_by(page, "gene", gene, source="measured")
    legend = page.get_by_test_id("legend")
    expect(legend).to_contain_text(f"{gene} (log1p CP10k): measured expression")
    expect(legend).to_contain_text("the 2nd to 98th percentile of this slide's measured and predicted values")
    expect(legend).to_contain_text("take the end colours")
    expect(legend).to_contain_text("per 10,000 counts")

    # the opacity slider: 0 shows the H&E alone, 1 the colours alone, 0.5 between
    slider = page.get_by_test_id("overlay-opacity")
    i = page.evaluate("() => state.overlay.values.findIndex(v => v !== null)")
    colour = page.evaluate(f"() => colour(state.overlay, {i})")
    want = [int(colour[k : k + 2], 16) for k in (1, 3, 5)]
    slider.focus()
    page.keyboard.press("Home")
    expect(page.locator("#opacity-value")).to_have_text("0%")
    under = np.array(page.evaluate(PIXEL, [i]))
    page.keyboard.press("End")
    expect(page.locator("#opacity-value")).to_have_text("100%")
    over = np.array(page.evaluate(PIXEL, [i]))
    assert np.abs(over - want).max() <= 2 and np.abs(under - want).max() > 20, (under, over, want)
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#opacity-value")).to_have_text("50%")
    half = np.array(page.evaluate(PIXEL, [i]))
    assert np.abs(half - (under + over) / 2).max() <= 3
    for _ in range(2):
        page.keyboard.press("ArrowRight")  # 60%, the default
    page.get_by_test_id("viewer").screenshot(path=str(shots / "app_scale_legend.png"))


def test_an_error_is_shown_then_cleared_by_a_valid_gene(page, shots):
    from playwright.sync_api import expect

    _open(page, "S1", "S1 (spots, ")
    _colour_by(page, "gene", "EPCAM", source="measured")
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("gene 'EPCAM' is outside the model's gene panel")
    page.get_by_test_id("viewer").screenshot(path=str(shots / "app_error.png"))
    gene = page.evaluate("() => state.meta.genes[1]")
    _colour_by(page, "gene", gene)
    expect(error).to_be_hidden()
    expect(page.get_by_test_id("legend")).to_contain_text(f"{gene} (log1p CP10k): measured expression")


def test_a_slide_predicted_from_he(page, shots):
    from playwright.sync_api import expect

    _colour_by(page, "cluster")
    expect(page.locator("#predicted-list button")).to_have_count(1)
    _open(page, "S3.predicted", "S3 - predicted from H&E")
    expect(page.get_by_test_id("slide-subtitle")).to_contain_text("nothing here was measured")
    expect(page.get_by_test_id("scale-bar")).to_be_visible()
    expect(page.get_by_test_id("legend")).to_contain_text("Cluster (predicted from H&E)")
    expect(page.get_by_test_id("similar-note")).to_contain_text("not in the index")
    expect(page.locator("#similar-slides li")).to_have_count(0)
    swatches = page.eval_on_selector_all(
        "#legend .swatch", "es => es.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert len(swatches) >= 2 and min_delta_e(swatches) > 30, swatches
    options = page.eval_on_selector_all("#feature-source option", "os => os.map(o => o.value)")
    assert options == ["predicted", "uncertainty"]
    gene = page.evaluate("() => state.meta.genes[0]")
    _colour_by(page, "gene", gene, source="predicted")
    legend = page.get_by_test_id("legend")
    expect(legend).to_contain_text(f"{gene} (log1p CP10k): predicted expression (from H&E)")
    expect(legend).to_contain_text("predicted from the H&E image alone by histokg predict")
    page.get_by_test_id("viewer").screenshot(path=str(shots / "app_predicted.png"))
    page.select_option("#feature-source", "uncertainty")
    expect(legend).to_contain_text("uncertainty: 90% interval half-width")
    pathway = page.evaluate("() => state.meta.pathways[0]")
    _colour_by(page, "kg", pathway, source="predicted")
    expect(legend).to_contain_text("predicted pathway score (from H&E)")
    before = page.inner_html("#similar-regions")
    box = page.get_by_test_id("slide-canvas").bounding_box()
    x, y, scale = page.evaluate("() => [state.overlay.x[0], state.overlay.y[0], state.scale]")
    page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)
    expect(page.get_by_test_id("position")).to_contain_text("S3, x ")
    expect(page.get_by_test_id("position")).to_contain_text("predicted pathway score (from H&E)")
    # a predicted slide is not searched: the click read a value and asked for no similar regions
    assert page.inner_html("#similar-regions") == before
    assert "similar regions" not in page.get_by_test_id("status").inner_text()
