"""The one categorical palette: classes that stay apart, from each other and from the H&E under them."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2lab

from histokg.colours import CATEGORICAL, categorical_colours, rgb

HE = {"background": "#f5f5f5", "haematoxylin": "#3c2878", "eosin": "#e68cbe"}


def lab(colours) -> np.ndarray:
    return rgb2lab(np.asarray([rgb(c) for c in colours], float)[None] / 255.0)[0]


@pytest.mark.parametrize("n", [8, 16, 20, 24])
def test_the_first_n_colours_are_far_apart(n):
    L = lab(CATEGORICAL[:n])
    d = np.linalg.norm(L[:, None] - L[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() > 34  # CIE76 Delta E (measured: 54 among 8, 41 among 16, 37 among 20, 35 among 24)
    tab20 = lab(["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
                 "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
                 "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"][:n])  # fmt: skip
    t = np.linalg.norm(tab20[:, None] - tab20[None], axis=-1)
    np.fill_diagonal(t, np.inf)
    assert d.min() > t.min()  # tab20 (the page's old 16 colours were its halves): 33 among 8, 17 among 16


def test_colours_stay_apart_from_the_stain_and_repeat_only_past_the_palette():
    d = np.linalg.norm(lab(CATEGORICAL)[:, None] - lab(HE.values())[None], axis=-1)
    assert d.min() > 30  # measured: 35.5
    assert len(set(CATEGORICAL)) == len(CATEGORICAL) == 24
    assert categorical_colours(26)[24:] == list(CATEGORICAL[:2]) and categorical_colours(0) == []
    assert rgb("#ff8800") == (255, 136, 0)
