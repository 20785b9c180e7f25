"""The wheel works off the checkout: ``python -m build`` makes an sdist and, from it, a wheel; a fresh venv
holding only that wheel runs ``histokg``, reads the KG data it ships and serves the page from its own files.

The heavy dependencies (torch, scanpy, ...) are not installed again: the venv sees this interpreter's
site-packages through a ``.pth`` line, which adds the folder to ``sys.path`` without running the ``.pth``
files inside it (so an editable install of the checkout there stays inactive), and after the venv's own
site-packages, so the wheel's copy is the one imported. Every command runs from a folder outside the
checkout without PYTHONPATH, and each check asserts the files came from the venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from retrieval_fixtures import built_index, kg_bundle, mix_table, retrieval_ckpt  # noqa: F401  (fixtures)
from test_package_data import REPO, packaged_files

from histokg.testing import free_port, wait_for_http

pytestmark = pytest.mark.slow

# Not part of a source tree the wheel is built from (the build copies the rest).
SKIP_IN_COPY = shutil.ignore_patterns(
    ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"
)

KG_SCRIPT = """
import json, sys
import app, histokg, pathways_kg
from pathways_kg.build import build_graph
from pathways_kg.config import BuildConfig
from pathways_kg.io import data_path
from histokg.retrieval.demo import histokg_command
summary = build_graph(BuildConfig()).summary()
print(json.dumps({
    "modules": [m.__file__ for m in (histokg, pathways_kg, app)],
    "data": str(data_path("ReactomePathways.gmt")),
    "n_entities": summary["n_entities"], "n_edges": summary["n_edges"],
    "edges_by_source": summary["edges_by_source"], "command": histokg_command(),
}))
"""


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(venv, its site-packages, environment to run it in) with the freshly built wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    shutil.copytree(REPO, src, ignore=SKIP_IN_COPY)
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1 and list(dist.glob("*.tar.gz")), sorted(p.name for p in dist.iterdir())
    shipped = {str(p.relative_to(REPO)) for p in packaged_files()[0]}
    with zipfile.ZipFile(wheels[0]) as whl:
        in_wheel = {n for n in whl.namelist() if ".dist-info/" not in n}
    assert in_wheel == shipped, f"wheel vs pyproject: {sorted(in_wheel ^ shipped)}"

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        "--no-index",
    ]
    subprocess.run([*install, str(wheels[0])], check=True, capture_output=True, timeout=300)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, env={}, timeout=60,
    ).stdout.strip()  # fmt: skip
    site = Path(purelib)
    (site / "histokg_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, site, env


def test_the_installed_wheel_runs_the_cli_and_reads_its_kg_data(wheel_venv, tmp_path):
    venv, site, env = wheel_venv
    help_text = subprocess.run(
        [str(venv / "bin" / "histokg"), "demo", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert help_text.returncode == 0, help_text.stderr
    assert "--out" in help_text.stdout and "synthetic study" in help_text.stdout

    off_path = {**env, "PATH": env["PATH"].split(os.pathsep, 1)[1]}  # the venv's bin/ not on PATH
    run = subprocess.run(
        [str(venv / "bin" / "python"), "-c", KG_SCRIPT],
        cwd=tmp_path, env=off_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for path in [*got["modules"], got["data"]]:
        assert Path(path).is_relative_to(site), f"{path} is not the installed wheel's (in {site})"
    # what the demo says to run to start the app: this venv's script, not the checkout's .venv/bin/histokg
    assert got["command"] == str(venv / "bin" / "histokg")

    from pathways_kg.build import build_graph
    from pathways_kg.config import BuildConfig

    here = build_graph(BuildConfig()).summary()  # the same graph from the checkout's copy of the data
    assert (got["n_entities"], got["n_edges"]) == (here["n_entities"], here["n_edges"])
    assert got["edges_by_source"] == here["edges_by_source"]


def test_the_installed_wheel_serves_the_page_from_its_own_files(wheel_venv, built_index, tmp_path):  # noqa: F811
    venv, site, env = wheel_venv
    static = site / "app" / "static"
    assert sorted(p.name for p in static.iterdir()) == ["app.js", "index.html", "style.css"]
    marker = f"<!-- served from {static} -->\n"
    with (static / "index.html").open(
        "a", encoding="utf-8"
    ) as fh:  # the venv's copy only, not the checkout's
        fh.write(marker)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(venv / "bin" / "histokg"), "serve", str(built_index), "--port", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(base + "/", server, timeout=180)
        except RuntimeError as exc:
            pytest.fail(f"histokg serve from the wheel: {exc}\n{log.read_text()}")
        status, page = _get(base + "/")
        assert status == 200 and page.decode().endswith(marker)
        assert page.decode().startswith((REPO / "app" / "static" / "index.html").read_text(encoding="utf-8"))
        for name in ("app.js", "style.css"):
            status, body = _get(f"{base}/static/{name}")
            assert status == 200 and body == (static / name).read_bytes() != b""
        status, info = _get(base + "/api/info")
        assert status == 200 and json.loads(info)["n_slides"] > 0 and json.loads(info)["uploads"], info
    finally:
        server.terminate()
        server.wait(timeout=30)
