"""histokg.registry: the naming rule, the Registry, the one unknown-name message; pathways_kg's copy."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import ClassVar

import pytest

import histokg.registry as histokg_registry
import pathways_kg.registry as kg_registry
from histokg.errors import ConfigError, InputError
from histokg.registry import (
    Registry,
    did_you_mean,
    import_modules,
    normalize,
    unknown_name,
    unknown_name_message,
)
from pathways_kg.errors import KGError

REPO = Path(__file__).resolve().parents[1]


class Shape:
    name: ClassVar[str] = ""

    def __init__(self, size: int, *, scale: float = 1.0, label: str = ""):
        self.size, self.scale, self.label = size, scale, label


class Square(Shape):
    name = "square"


class Circle(Shape):
    name = "circle"
    synonyms = ("disc",)


class RoundedSquare(Square):
    name = "rounded_square"


class _PrivateShape(Shape):
    name = "private"


def test_message_names_kind_bad_name_nearest_and_valid_names():
    msg = unknown_name_message("shape", "sqare", ["square", "circle"])
    assert msg == "unknown shape 'sqare'; did you mean 'square'? (valid shapes: square, circle)"
    assert unknown_name_message("shape", "zzz", ["square"]) == "unknown shape 'zzz' (valid shapes: square)"
    assert (
        unknown_name_message("kwarg", "x", [], where="loss 'a'")
        == "loss 'a': unknown kwarg 'x' (valid kwargs: none)"
    )
    several = unknown_name_message("loss", ["infonse", "kg_sfot"], ["infonce", "kg_soft"], plural="losses")
    assert several.startswith("unknown losses ['infonse', 'kg_sfot']; did you mean 'infonce', 'kg_soft'?")
    # synonyms suggest the name they stand for; case and separators do not matter; plural after an s
    assert "did you mean 'visium-hd'?" in unknown_name_message(
        "reader", "VisiumHD2", ["visium-hd"], spellings={"hd": "visium-hd"}
    )
    assert "did you mean 'legacy'?" in unknown_name_message(
        "reader", "legacy-sx", ["legacy"], spellings={"legacy_st": "legacy"}
    )
    assert "(valid classes: a)" in unknown_name_message("class", "b", ["a"])


def test_message_can_leave_out_a_long_list_and_offer_several_names():
    genes = ["CD3D", "CD3E", "CD3G", "EPCAM", *(f"G{i}" for i in range(1000))]
    msg = unknown_name_message("gene", "CD3", genes, listing=False, n=3, where="query")
    assert msg.startswith("query: unknown gene 'CD3'; did you mean 'CD3") and msg.endswith("'?")
    assert sorted(re.findall(r"'(CD3\w)'", msg)) == ["CD3D", "CD3E", "CD3G"]  # no list of 1004 genes
    assert did_you_mean("cd3d", genes) == "; did you mean 'CD3D'?"  # the naming rule: any case
    assert did_you_mean("zzzz", genes) == ""


def test_unknown_name_is_the_error_the_call_site_asks_for():
    assert isinstance(unknown_name("shape", "x", ["square"]), ConfigError)
    err = unknown_name("reader", "x", ["xenium"], error=InputError)
    assert type(err) is InputError and str(err) == "unknown reader 'x' (valid readers: xenium)"


# the one naming rule: each row is one name, every spelling in it resolves to the first
SPELLINGS = [
    ("kg_soft", "KG-Soft", "kg_soft", "kgsoft", "KG_SOFT", "Kg Soft"),
    ("visium-hd", "Visium_HD", "visium-hd", "VisiumHD", "visium hd", "VISIUM_HD"),
    ("rounded_square", "Rounded-Square", "roundedsquare", "ROUNDED SQUARE"),
    ("circle", "Circle", "DISC", "Disc"),
]


def _spelling_registry(module) -> Registry:
    class Named:
        def __init__(self, name: str, synonyms: tuple[str, ...] = ()):
            self.name, self.synonyms = name, synonyms

    entries = [Named(row[0], ("disc",) if row[0] == "circle" else ()) for row in SPELLINGS]
    return module.Registry(entries, "thing")


@pytest.mark.parametrize("row", SPELLINGS, ids=[row[0] for row in SPELLINGS])
def test_one_naming_rule_for_every_spelling(row):
    name, *spellings = row
    registry = _spelling_registry(histokg_registry)
    for spelling in spellings:
        assert registry.lookup(spelling).name == name, spelling
        assert registry.canonical(spelling) == name and spelling in registry
    assert len({normalize(s) for s in spellings if s.lower() != "disc"}) == 1


def test_the_pathways_kg_copy_behaves_the_same_on_the_same_names():
    """Both copies normalise, resolve, suggest and refuse the same way (only the error type differs)."""
    ours, theirs = _spelling_registry(histokg_registry), _spelling_registry(kg_registry)
    for row in SPELLINGS:
        for spelling in row:
            assert histokg_registry.normalize(spelling) == kg_registry.normalize(spelling)
            assert ours.canonical(spelling) == theirs.canonical(spelling)
    for bad in ("kg_sfot", "visium_hx", "Circel", "zzz", "", 3):
        with pytest.raises(ConfigError) as mine:
            ours.lookup(bad)
        with pytest.raises(KGError) as copy:
            theirs.lookup(bad)
        assert str(mine.value) == str(copy.value)
    for args in (("gene", "TP35", ["TP53", "TP63"]), ("kwarg", "lamb", ["lam", "beta"])):
        assert histokg_registry.unknown_name_message(*args) == kg_registry.unknown_name_message(*args)
        assert histokg_registry.did_you_mean(*args[1:]) == kg_registry.did_you_mean(*args[1:])


def _code(path: Path) -> list[str]:
    """A module's statements without its docstring and its imports (what must be the same in both)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return [ast.dump(node) for node in body if not isinstance(node, ast.Import | ast.ImportFrom)]


def test_the_two_registry_modules_are_the_same_code_but_for_their_imports():
    ours, theirs = _code(REPO / "histokg" / "registry.py"), _code(REPO / "pathways_kg" / "registry.py")
    assert ours == theirs, "histokg/registry.py and pathways_kg/registry.py differ: change both the same way"


def test_difflib_is_called_in_one_place_per_package():
    for package in ("histokg", "pathways_kg"):
        users = [
            str(path.relative_to(REPO))
            for path in sorted((REPO / package).rglob("*.py"))
            if "get_close_matches" in path.read_text(encoding="utf-8")
        ]
        # histokg.retrieval.query's entity search ranks labels by similarity (a search, not an error)
        allowed = {f"{package}/registry.py", "histokg/retrieval/query.py"}
        assert f"{package}/registry.py" in users and set(users) <= allowed, users


def test_registry_registers_named_subclasses_in_order():
    shapes = Registry.from_subclasses(Shape, "shape")
    assert shapes.names == ["rounded_square", "square", "circle"]  # a subclass before its parent
    assert "private" not in shapes and "Square" in shapes and 3 not in shapes
    assert shapes.lookup("circle") is Circle and shapes.lookup("Disc") is Circle
    assert shapes.synonyms == {"disc": "circle"} and shapes.get("nope") is None
    assert shapes.kwargs("square") == {"scale": 1.0, "label": ""}
    made = shapes.make("Circle", {"size": 3}, scale=2.0)
    assert isinstance(made, Circle) and (made.size, made.scale) == (3, 2.0)


def test_registry_refuses_unknown_names_and_kwargs():
    shapes = Registry.from_subclasses(Shape, "shape")
    for bad in ("squar", "", 3, None):
        with pytest.raises(ConfigError, match="unknown shape"):
            shapes.lookup(bad)
    with pytest.raises(ConfigError, match=r"^box: unknown shape 'squar'; did you mean 'square'\?"):
        shapes.lookup("squar", where="box")
    with pytest.raises(
        ConfigError,
        match=r"shape 'square': unknown kwarg 'scal'; did you mean 'scale'\? \(valid kwargs: scale, label\)",
    ):
        shapes.make("SQUARE", {"size": 1}, scal=2.0)
    readers = Registry.from_subclasses(Shape, "reader", error=InputError)
    with pytest.raises(InputError, match=re.escape("(valid readers: rounded_square, square, circle)")):
        readers.lookup("nope")


def test_a_spelling_two_entries_share_is_refused():
    with pytest.raises(ValueError, match="already taken"):
        Registry(["kg_soft", "KG-Soft"], "loss")
    with pytest.raises(ValueError, match="already taken"):
        Registry([Circle, type("Disc", (), {"name": "disc"})], "shape")


def test_import_modules_imports_every_public_module_of_a_package():
    import histokg.losses as losses

    names = import_modules(losses.__name__, losses.__path__)
    assert "kg_soft" in names and "base" in names and names == sorted(names)


# ------------------------------------------------------------------ the names configs record


def test_set_loss_name_records_the_registered_name(tmp_path):
    """``--set loss.name=KG-Soft`` trains kg_soft and the resolved config says kg_soft."""
    from histokg.config import load_config, save_config
    from histokg.train import TrainConfig

    cfg = load_config(TrainConfig, None, ["loss.name=KG-Soft", "loss.kwargs.lam=0.3", "prior.bundle=b"])
    assert cfg.loss.name == "kg_soft" and cfg.loss.kwargs == {"lam": 0.3}
    assert "loss:\n  name: kg_soft\n" in save_config(cfg, tmp_path / "c.yaml").read_text()
    assert load_config(TrainConfig, None, ["loss.name=InfoNCE"]).loss.name == "infonce"
    from histokg.bench.config import AblationConfig, BenchConfig

    bench = load_config(BenchConfig, None, ["losses=[{name: KG-Soft}, {name: Info_NCE}]"])
    assert [c.name for c in bench.losses] == ["kg_soft", "infonce"]
    assert AblationConfig(kg_models=("TransE", "KG2E"), expression_prior=("KG-Soft",)).kg_models == (
        "transe",
        "kg2e",
    )


def test_kg_config_records_registered_names():
    from pathways_kg.config import load_config

    cfg = load_config(
        None, ["embed.model.name=TransE", "build.sources.add=[{name: GMT, kwargs: {path: x.gmt}}]"]
    )
    assert cfg.embed.model.name == "transe" and cfg.build.sources.add[0].name == "gmt"


def test_prior_families_and_weights_names_follow_the_rule():
    from histokg.models import ModelConfig
    from histokg.priors import PriorConfig

    assert PriorConfig(alpha={"Membership": 1.0, "MARKER": 0.5}).alpha == {"membership": 1.0, "marker": 0.5}
    with pytest.raises(ValueError, match="name a family twice"):
        PriorConfig(alpha={"membership": 1.0, "Membership": 0.5})
    named = ModelConfig(image_weights="ImageNet:TF-EfficientNet-Lite0").image_weights
    assert named == "imagenet:tf_efficientnet_lite0"
    assert ModelConfig(image_weights="weights/my.pt").image_weights == "weights/my.pt"
