"""The AnnData keys live in histokg.keys: no module spells them as string literals, and their values
are the names scanpy and squidpy read.

The rule (``contract_literals``), for every module of histokg/ and app/ except histokg/keys.py:

- a *distinctive* contract name (``"library_id"``, ``"spot_diameter_fullres"``, ``"X_histokg"``, ...)
  may not appear as a string literal at all;
- a *common word* that is also a contract name (``"spatial"``, ``"counts"``, ``"mpp"``, ...: see
  ``COMMON_WORDS``; they name folders, files and JSON fields too) may not appear as a key into an
  AnnData container: ``R[w]``, ``R.get(w)``, ``R.setdefault(w)``, ``R.pop(w)``, ``w in R`` where R is
  ``x.obs``/``.obsm``/``.obsp``/``.uns``/``.layers``/``.var``/``.varm``, a variable named so, anything
  taken from one (``adata.uns["spatial"][lib]``, ``.get(...)``, ``.items()``), or a local variable
  assigned or looped from one; nor as a key of a dict literal that holds a name of an uns entry
  (``scalefactors``, ``spot_diameter_fullres``, ``Key.uns.images``, ...: the entry being built);
  nor as the value of a key-naming argument, parameter default, variable or field
  (``layer="counts"``, ``label_key: str = "label"``).

The batch keys (:class:`histokg.keys.Batch`) are not AnnData keys and are not checked here.

Docstrings, the text of f-strings and click parameter declarations are not code and are skipped.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from histokg.keys import EXPR, IMAGE, UNS, Batch, Key, expr_key

ROOT = Path(__file__).resolve().parents[1]

# Files still to convert (their literals are reported by test_exempt_files_still_have_literals); a
# file is listed here only while another branch rewrites it. Empty: every module uses histokg.keys.
EXEMPT: set[str] = set()

CONTAINERS = {"obs", "obsm", "obsp", "uns", "layers", "var", "varm"}
NAMESPACES = (
    Key.obs,
    Key.obsm,
    Key.obsp,
    Key.uns,
    Key.layers,
    Key.var,
    Key.scalefactors,
    Key.metadata,
    Key.histokg,
)
CONTRACT = {
    v for ns in NAMESPACES for k, v in vars(ns).items() if not k.startswith("_") and isinstance(v, str)
}
# Contract names that are also ordinary words here (a Space Ranger folder "spatial", the bench's
# "counts" file, the package "histokg", results.json fields "prediction", ...).
COMMON_WORDS = {
    "spatial",
    "counts",
    "images",
    "hires",
    "metadata",
    "mpp",
    "reader",
    "histokg",
    "params",
    "panel",
    "measured",
    "prediction",
    "region",
    "label",
    "truth",
    "tissue_fraction",
    "predict",  # also the command histokg predict
}
DISTINCTIVE = CONTRACT - COMMON_WORDS
# names inside uns entries: a dict literal keyed by one of them builds an uns entry
UNS_NAMESPACES = ("uns", "scalefactors", "metadata", "histokg")
UNS_NAMES = {v for ns in UNS_NAMESPACES for k, v in vars(getattr(Key, ns)).items() if not k.startswith("_")}
# argument/parameter names whose value is an AnnData key
KEY_ARG = re.compile(r"(^|_)(key|key_added|rep|layer|basis|label|color|groupby)$")
BUILTIN_PASSTHROUGH = {"sorted", "list", "dict", "tuple", "iter", "reversed", "enumerate"}


def _skipped(tree: ast.AST) -> set[int]:
    """ids of constants that are not code: docstrings, f-string text, click parameter declarations."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
        elif isinstance(node, ast.JoinedStr):
            skip.update(id(v) for v in node.values if isinstance(v, ast.Constant))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("option", "argument", "Option", "Argument"):
                for arg in node.args:
                    for sub in ast.walk(arg):
                        if isinstance(sub, ast.Constant):
                            skip.add(id(sub))
    return skip


def _is_uns_key_ref(node: ast.AST) -> bool:
    """``Key.uns.<...>``, ``Key.metadata.<...>``, ...: a name inside uns, already taken from histokg.keys."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return isinstance(node, ast.Name) and node.id == "Key" and bool(attrs) and attrs[-1] in UNS_NAMESPACES


class _Scope:
    """Which local names of one function (or the module) hold an AnnData container or part of one."""

    def __init__(self, root: ast.AST):
        self.tainted: set[str] = set()
        changed = True
        while changed:
            before = len(self.tainted)
            for node in ast.walk(root):
                if isinstance(node, ast.Assign | ast.AnnAssign | ast.NamedExpr):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if node.value is not None and self.is_container(node.value):
                        self._add(targets)
                elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension) and self.is_container(
                    node.iter
                ):
                    self._add([node.target])
            changed = len(self.tainted) != before

    def _add(self, targets) -> None:
        for target in targets:
            self.tainted.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))

    def is_container(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute):
            return node.attr in CONTAINERS
        if isinstance(node, ast.Name):
            return node.id in CONTAINERS or node.id in self.tainted
        if isinstance(node, ast.Subscript):
            return self.is_container(node.value)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):  # R.get(...), R.items(), R.copy(), ...
                return self.is_container(node.func.value)
            if isinstance(node.func, ast.Name) and node.func.id in BUILTIN_PASSTHROUGH:
                return any(self.is_container(a) for a in node.args)
            return False
        if isinstance(node, ast.BoolOp):
            return any(self.is_container(v) for v in node.values)
        if isinstance(node, ast.IfExp):
            return self.is_container(node.body) or self.is_container(node.orelse)
        return False


def contract_literals(source: str) -> list[tuple[int, str]]:
    """(line, name) of every contract key spelled as a literal in ``source`` (see the module docstring)."""
    tree = ast.parse(source)
    skip = _skipped(tree)
    parent: dict[int, ast.AST] = {}
    scope_of: dict[int, ast.AST] = {}

    def visit(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            parent[id(child)] = node
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) else scope
            scope_of[id(child)] = inner
            visit(child, inner)

    visit(tree, tree)
    scopes: dict[int, _Scope] = {}

    def scope(node: ast.AST) -> _Scope:
        root = scope_of[id(node)]
        if id(root) not in scopes:
            scopes[id(root)] = _Scope(root)
        return scopes[id(root)]

    def contract_dict(d: ast.Dict) -> bool:
        while isinstance(parent.get(id(d)), ast.Dict) and d in parent[id(d)].values:
            d = parent[id(d)]
        for sub in ast.walk(d):
            if isinstance(sub, ast.Dict):
                for k in sub.keys:
                    if isinstance(k, ast.Constant) and k.value in DISTINCTIVE & UNS_NAMES:
                        return True
                    if k is not None and _is_uns_key_ref(k):
                        return True
        return False

    def used_as_key(node: ast.Constant) -> bool:
        p = parent[id(node)]
        if isinstance(p, ast.Subscript) and p.slice is node:
            return scope(p).is_container(p.value)
        if isinstance(p, ast.Call) and p.args and p.args[0] is node and isinstance(p.func, ast.Attribute):
            return p.func.attr in ("get", "setdefault", "pop") and scope(p).is_container(p.func.value)
        if isinstance(p, ast.Compare) and p.left is node and isinstance(p.ops[0], ast.In | ast.NotIn):
            return scope(p).is_container(p.comparators[0])
        if isinstance(p, ast.Dict) and node in p.keys:
            return contract_dict(p)
        if isinstance(p, ast.keyword):
            return bool(p.arg and KEY_ARG.search(p.arg))
        if isinstance(p, ast.Assign | ast.AnnAssign) and p.value is node:  # label_key: str = "label"
            targets = p.targets if isinstance(p, ast.Assign) else [p.target]
            names = [t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in targets]
            return any(KEY_ARG.search(n) for n in names)
        if isinstance(p, ast.arguments):
            params = [*p.posonlyargs, *p.args]
            pairs = list(zip(params[len(params) - len(p.defaults) :], p.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(p.kwonlyargs, p.kw_defaults, strict=True) if d is not None]
            return any(d is node and KEY_ARG.search(a.arg) for a, d in pairs)
        return False

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
            continue
        if node.value in DISTINCTIVE or (node.value in COMMON_WORDS and used_as_key(node)):
            found.append((node.lineno, node.value))
    return sorted(found)


def _modules() -> list[str]:
    files = sorted([*ROOT.glob("histokg/**/*.py"), *ROOT.glob("app/**/*.py")])
    return [
        p.relative_to(ROOT).as_posix() for p in files if p.relative_to(ROOT).as_posix() != "histokg/keys.py"
    ]


def _literals(rel: str) -> list[tuple[int, str]]:
    return contract_literals((ROOT / rel).read_text(encoding="utf-8"))


@pytest.mark.parametrize("rel", [m for m in _modules() if m not in EXEMPT])
def test_no_contract_key_literals(rel):
    found = _literals(rel)
    assert not found, f"{rel}: AnnData keys spelled as literals (use histokg.keys.Key): " + ", ".join(
        f"line {line} {name!r}" for line, name in found
    )


def test_exempt_files_still_have_literals():
    """Every exempt file exists and still needs converting (drop it from EXEMPT once it is clean)."""
    for rel in sorted(EXEMPT):
        assert (ROOT / rel).is_file(), f"EXEMPT names {rel}, which does not exist"
        assert _literals(rel), f"{rel} has no contract-key literals left: remove it from EXEMPT"


VIOLATIONS = '''
"""Docstring naming obs["library_id"] and layers["counts"]: skipped."""
import click


def build(adata, entry, meta, files, table):
    lib = adata.obs["library_id"]                                           # 6 distinctive
    x = adata.obsm["spatial"]                                               # 7 common word, obsm
    sf = adata.uns["spatial"][lib]["scalefactors"]                          # 8 spatial + scalefactors
    md = adata.uns.get("spatial", {}).get(lib, {})                          # 9 spatial via .get
    m = md["metadata"]                                                      # 10 tainted local
    for name, e in sorted(adata.uns["histokg"].items()):                    # 11 histokg
        e.get("params")                                                     # 12 loop-tainted local
    if "counts" in adata.layers:                                            # 13 in-test
        pass
    obs = table
    obs["region"] = 1                                                       # 16 a variable named obs
    spatial = {"images": {"hires": x}, "scalefactors": {}}                  # 17 images, hires, scalefactors
    f(adata, layer="counts")                                                # 18 key argument
    return {"spot_diameter_fullres": 1.0}                                   # 19 distinctive dict key


def reader(path, layer="counts"):                                           # 22 key parameter default
    return path / "spatial", files["counts"], meta.get("mpp"), f"{x}spatial"   # 23 clean


@click.option("--spot-diameter", "spot_diameter_um")                        # 26 click declaration
def cli(kind="label", counts="counts"):                                     # 27 not key parameters
    print(f"obs['library_id'] {kind}")                                      # 28 f-string text
    return {"counts": 1, "mpp": 2}                                          # 29 a plain dict


class Config:
    label_key: str = "label"                                                # 33 a key-naming field
    name: str = "label"                                                     # 34 another field


def partly_converted(x):
    entry = {Key.uns.images: {"hires": x}}                                  # 38 next to a converted key
    return entry, {Key.obs.library_id: "S1", "truth": "t.csv"}              # 39 not an uns entry
'''


def test_rule_catches_violations(tmp_path):
    module = tmp_path / "violations.py"
    module.write_text(textwrap.dedent(VIOLATIONS).lstrip("\n"), encoding="utf-8")
    found = contract_literals(module.read_text(encoding="utf-8"))
    assert found == [
        (6, "library_id"),
        (7, "spatial"),
        (8, "scalefactors"),
        (8, "spatial"),
        (9, "spatial"),
        (10, "metadata"),
        (11, "histokg"),
        (12, "params"),
        (13, "counts"),
        (16, "region"),
        (17, "hires"),
        (17, "images"),
        (17, "scalefactors"),
        (18, "counts"),
        (19, "spot_diameter_fullres"),
        (22, "counts"),
        (33, "label"),
        (38, "hires"),
    ]


def test_common_words_and_names_are_contract_keys():
    assert COMMON_WORDS <= CONTRACT
    assert {"library_id", "in_tissue", "gene_ids", "X_histokg", "tissue_hires_scalef"} <= DISTINCTIVE
    # the batch keys are not AnnData keys (but live in histokg.keys too)
    assert {Batch.image, Batch.expr, Batch.kg} == {"image", "expr", "kg"}


def test_embedding_keys_keep_their_names():
    assert (IMAGE, EXPR, UNS) == ("X_histokg", "X_histokg_expr", "histokg")
    assert expr_key("X_custom") == "X_custom_expr"
    assert (Key.obsm.image, Key.obsm.expr, Key.uns.histokg) == (IMAGE, EXPR, UNS)


def test_keys_are_what_squidpy_reads():
    from squidpy._constants._pkg_constants import Key as SqKey

    assert Key.obsm.spatial == SqKey.obsm.spatial == "spatial"
    assert Key.uns.spatial == SqKey.uns.spatial
    assert Key.uns.images == SqKey.uns.image_key
    assert Key.uns.hires == SqKey.uns.image_res_key
    assert Key.uns.scalefactors == SqKey.uns.scalefactor_key
    assert Key.scalefactors.spot_diameter_fullres == SqKey.uns.size_key
    assert Key.obsp.spatial_connectivities == SqKey.obsp.spatial_conn()
    assert Key.obsp.spatial_distances == SqKey.obsp.spatial_dist()
    # scanpy's sc.pl.spatial reads the thumbnail scale as f"tissue_{img_key}_scalef"
    assert Key.scalefactors.tissue_hires_scalef == f"tissue_{Key.uns.hires}_scalef"


def test_keys_match_scanpy_read_visium(synth_study):
    """scanpy's own Visium reader and ours put the same things under the same names."""
    import warnings

    import scanpy as sc
    from squidpy._constants._pkg_constants import Key as SqKey

    from histokg.st import read_visium

    sr = synth_study / "sections" / "S1"
    ours = read_visium(sr, library_id="S1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sc.read_visium(sr, library_id="S1")
    for adata in (ours, theirs):
        assert adata.obsm[Key.obsm.spatial].shape == (adata.n_obs, 2)
        for col in (Key.obs.in_tissue, Key.obs.array_row, Key.obs.array_col):
            assert col in adata.obs
        assert Key.var.gene_ids in adata.var
        entry = adata.uns[Key.uns.spatial]["S1"]
        assert entry[Key.uns.images][Key.uns.hires].ndim == 3
        for field in (Key.scalefactors.tissue_hires_scalef, Key.scalefactors.spot_diameter_fullres):
            assert field in entry[Key.uns.scalefactors]
        assert Key.uns.metadata in entry
        diameter = SqKey.uns.spot_diameter(adata, Key.uns.spatial, "S1")
        assert np.isfinite(diameter) and diameter > 0
    # same spots at the same positions (scanpy keeps the plain barcodes as obs_names)
    order = [f"S1_{b}" for b in theirs.obs_names]
    np.testing.assert_allclose(ours[order].obsm[Key.obsm.spatial], theirs.obsm[Key.obsm.spatial])
    np.testing.assert_array_equal(ours[order].obs[Key.obs.barcode].to_numpy(), theirs.obs_names.to_numpy())
