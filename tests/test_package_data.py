"""What an installed wheel ships: every file the code reads at run time is package data (pyproject's
``[tool.setuptools.package-data]``), read through its package, never through the checkout.

Checked from setuptools' reading of pyproject.toml, without building (tests/test_wheel.py builds and
installs the wheel): a data file added to a package folder but left out of the package data, a static
file the page links that is not shipped, or a module that reads a path relative to the checkout fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[1]

# Modules that use their own ``__file__``, and why that is not data read from the checkout. A new one
# must ship what it reads as package data (and be checked below) or say why it reads nothing.
OWN_FILE_USERS = {
    "app/routes/pages.py": "serves app/static, package data of `app` (checked below)",
    "histokg/testing.py": "looks for the tests' shared/data beside a checkout; never shipped data",
    "histokg/workflow.py": "the Snakemake workflow's default training config, a path relative to the folder "
    "snakemake runs in (workflow/Snakefile and config/ live in a checkout, not in the wheel)",
}


def setuptools_config() -> dict:
    return read_configuration(REPO / "pyproject.toml", expand=True)["tool"]["setuptools"]


def packaged_files() -> tuple[set[Path], set[str]]:
    """The files a wheel would hold (modules and package data, as paths in the checkout) and its
    packages, following pyproject.toml as setuptools reads it."""
    config = setuptools_config()
    packages = set(config["packages"])
    patterns = config.get("package-data", {})
    files: set[Path] = set()
    for package in packages:
        folder = REPO.joinpath(*package.split("."))
        files |= set(folder.glob("*.py"))
        for pattern in [*patterns.get(package, []), *patterns.get("*", [])]:
            files |= {p for p in folder.glob(pattern) if p.is_file()}
    return files, packages


def top_level_packages() -> list[Path]:
    return sorted({REPO / name.split(".")[0] for name in setuptools_config()["packages"]})


def package_sources() -> list[Path]:
    return sorted(
        p for top in top_level_packages() for p in top.rglob("*.py") if "__pycache__" not in p.parts
    )


def test_every_file_in_a_package_folder_is_shipped():
    files, packages = packaged_files()
    assert {"histokg", "pathways_kg", "app"} <= packages
    in_folders = {
        p
        for top in top_level_packages()
        for p in top.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    left_out = sorted(str(p.relative_to(REPO)) for p in in_folders - files)
    assert not left_out, f"in a package folder but not in the wheel (pyproject package-data): {left_out}"


def test_the_kg_files_the_code_reads_are_shipped():
    from pathways_kg.io import data_path
    from pathways_kg.sources import source_registry
    from pathways_kg.sources.triples import CURATED_TRIPLE_FILES

    names = {cls.shipped for cls in source_registry if cls.shipped} | set(CURATED_TRIPLE_FILES)
    for source in package_sources():  # data_path("...") calls with a literal name anywhere in the code
        for call in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "data_path":
                names |= {
                    a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                }
    assert {"ReactomePathways.gmt", "cell_type_name_map.tsv", "curated_phenotypes.tsv"} <= names
    files, _ = packaged_files()
    for name in sorted(names):
        path = data_path(name)
        assert path.is_file(), f"pathways_kg data file {name} is read by the code but missing"
        assert path in files, f"pathways_kg data file {name} is read by the code but not package data"


def test_the_page_and_every_static_file_it_links_are_shipped():
    from app.routes.pages import STATIC

    assert STATIC.is_relative_to(REPO / "app"), f"the page's files lie outside the app package: {STATIC}"
    files, _ = packaged_files()
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    linked = re.findall(r"""(?:src|href)=["']/static/([^"']+)["']""", html)
    assert sorted(linked) == ["app.js", "style.css"]
    for name in ["index.html", *linked]:
        assert STATIC / name in files, f"app/static/{name} is served but not package data"


def _reads_relative_to_checkout(tree: ast.Module) -> list[str]:
    """``__file__`` uses and string constants naming the checkout's configs/ folder."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "__file__":
            found.append(f"line {node.lineno}: __file__")
        elif isinstance(node, ast.Constant) and re.match(r"(\./)?configs(/|$)", str(node.value)):
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_no_module_reads_files_relative_to_the_checkout():
    readers = {}
    for source in package_sources():
        found = _reads_relative_to_checkout(ast.parse(source.read_text(encoding="utf-8")))
        if found:
            readers[str(source.relative_to(REPO))] = found
    unexplained = {k: v for k, v in readers.items() if k not in OWN_FILE_USERS}
    assert not unexplained, (
        f"modules reading paths relative to the checkout (ship the file as package data and read it "
        f"with importlib.resources, or explain it in OWN_FILE_USERS): {unexplained}"
    )
    assert set(OWN_FILE_USERS) <= set(readers), "OWN_FILE_USERS names a module that no longer uses __file__"


@pytest.mark.parametrize(
    "code, found",
    [
        (
            "CONFIG = Path(__file__).parents[2] / 'configs' / 'demo.yaml'",
            ["line 1: __file__", "line 1: 'configs'"],
        ),
        ("cfg = load('configs/train/demo.yaml')", ["line 1: 'configs/train/demo.yaml'"]),
        ("help_text = 'YAML config (configs/kg/*.yaml).'", []),
    ],
)
def test_the_checkout_scan_sees_what_it_looks_for(code, found):
    assert sorted(_reads_relative_to_checkout(ast.parse(code))) == sorted(found)
