"""The one categorical palette: colours of classes (clusters, prototypes, labels) that stay apart on H&E.

:data:`CATEGORICAL` holds 24 colours chosen greedily for distance in CIELAB (Glasbey's method): from
an RGB grid (steps of 17) of colours neither too dark nor too pale to see on a slide (L* 35-88), each
next colour is the one farthest (CIE76 Delta E) from those chosen and from the colours it is drawn
over (slide background, haematoxylin, eosin, black, white). Any first ``n`` of them are as far apart
as the method could make them: the smallest Delta E between two of the first 20 is about 37 (tab20's
light/dark pairs are closer). ``tests/test_colours.py`` checks the distances. Beyond 24 classes the
colours repeat, and whoever shows them says so (:func:`categorical_colours`).

Used by the web page's overlays (:mod:`histokg.retrieval.overlay`, predicted slides), the QuPath and
SpatialData exports (:func:`histokg.export.shapes.class_colours`) and the plots (:mod:`histokg.pl`).
"""

from __future__ import annotations

CATEGORICAL: tuple[str, ...] = (
    "#00ff00", "#ff0000", "#ffcc00", "#5500ff", "#007722", "#ff11dd", "#884400", "#00eecc",
    "#0088aa", "#ff0077", "#aaee66", "#0066ff", "#888866", "#ffbb77", "#888800", "#0099ff",
    "#ff8800", "#993344", "#8822bb", "#ff6655", "#aa0077", "#ee88ff", "#00ee88", "#665566",
)  # fmt: skip


def categorical_colours(n: int) -> list[str]:
    """Colours (``#rrggbb``) of ``n`` classes in order; beyond ``len(CATEGORICAL)`` they repeat."""
    return [CATEGORICAL[i % len(CATEGORICAL)] for i in range(max(int(n), 0))]


def rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` -> (r, g, b) in 0-255."""
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
