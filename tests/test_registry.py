"""histokg.registry: the unknown-name message and the Registry over class_resolver."""

from __future__ import annotations

from typing import ClassVar

import pytest

from histokg.errors import ConfigError, InputError
from histokg.registry import Registry, unknown_name, unknown_name_message


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
    # synonyms suggest the name they stand for; case does not matter; plural after an s
    assert "did you mean 'visium-hd'?" in unknown_name_message(
        "reader", "VisiumHD2", ["visium-hd"], spellings={"visiumhd": "visium-hd"}
    )
    assert "(valid classes: a)" in unknown_name_message("class", "b", ["a"])


def test_unknown_name_is_the_error_the_call_site_asks_for():
    assert isinstance(unknown_name("shape", "x", ["square"]), ConfigError)
    err = unknown_name("reader", "x", ["xenium"], error=InputError, listing="registered readers")
    assert type(err) is InputError and str(err) == "unknown reader 'x' (registered readers: xenium)"


def test_registry_registers_named_subclasses_in_order():
    shapes = Registry(Shape, "shape")
    assert shapes.names == ["rounded_square", "square", "circle"]  # a subclass before its parent
    assert set(shapes.names) == {"square", "circle", "rounded_square"} and "square" in shapes
    assert shapes.lookup("circle") is Circle and shapes.resolver.lookup("disc") is Circle
    assert shapes.kwargs("square") == {"scale": 1.0, "label": ""}
    made = shapes.make("circle", {"size": 3}, scale=2.0)
    assert isinstance(made, Circle) and (made.size, made.scale) == (3, 2.0)


def test_registry_looks_names_up_exactly_and_refuses_unknown_ones():
    shapes = Registry(Shape, "shape")
    for bad in ("Square", "squar", 3):
        with pytest.raises(ConfigError, match="unknown shape"):
            shapes.lookup(bad)
    with pytest.raises(ConfigError, match=r"unknown shape 'squar'; did you mean 'square'\?"):
        shapes.make("squar", {"size": 1})
    with pytest.raises(
        ConfigError,
        match=r"shape 'square': unknown kwarg 'scal'; did you mean 'scale'\? \(valid kwargs: scale, label\)",
    ):
        shapes.make("square", {"size": 1}, scal=2.0)
    readers = Registry(Shape, "reader", error=InputError)
    with pytest.raises(InputError):
        readers.lookup("nope")
