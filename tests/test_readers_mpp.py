"""The MPP order every reader shares: given, the platform's calibration, the slide's metadata, a fallback."""

from __future__ import annotations

import pytest
from PIL import Image

from histokg.errors import InputError
from histokg.st.reader import slide_own_mpp
from histokg.st.readers.visium import VisiumReader
from histokg.wsi import open_slide


def test_visium_mpp_from_slide_given_or_the_55um_spot_of_a_plain_image(synth_study, tmp_path):
    section, slide = synth_study / "sections" / "S1", synth_study / "slides" / "S1.tiff"
    assert slide_own_mpp(slide) == 0.5 and slide_own_mpp(tmp_path / "missing.tiff") is None
    meta = VisiumReader(section, slide=slide).read().uns["spatial"]["S1"]["metadata"]
    assert (meta["mpp"], meta["mpp_source"]) == (0.5, "slide")
    meta = VisiumReader(section, slide=slide, mpp=0.5).read().uns["spatial"]["S1"]["metadata"]
    assert (meta["mpp"], meta["mpp_source"]) == (0.5, "given")
    png = tmp_path / "S1.png"
    with open_slide(slide) as s:
        Image.fromarray(s.read_region((0, 0), 0, s.dimensions)).save(png)
    assert slide_own_mpp(png) is None
    meta = VisiumReader(section, slide=png, library_id="S1").read().uns["spatial"]["S1"]["metadata"]
    assert meta["mpp"] == pytest.approx(0.5) and meta["mpp_source"] == "spot diameter (55 um)"
    assert meta["spot_diameter_um"] == pytest.approx(55.0)
    with pytest.raises(InputError, match=r"^mpp: must be a positive number of microns per pixel, got -1"):
        VisiumReader(section, slide=slide, mpp=-1)
