"""HEST: the spot diameter comes from the data (argument, metadata, h5ad, known array pitch), never a fixed 55 um."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest

from histokg.cli import main
from histokg.errors import InputError
from histokg.st import read_hest
from histokg.st.readers.hest import HESTReader
from histokg.st.readers.visium import VisiumReader


@pytest.fixture(scope="module")
def hest_pair(tmp_path_factory, synth_study):
    """A HEST-style h5ad of synthetic section S3 (Visium-like: 100 um pitch) without any spot size."""
    slide = synth_study / "slides" / "S3.tiff"
    src = VisiumReader(synth_study / "sections" / "S3", slide=slide).read()
    out = tmp_path_factory.mktemp("hest")
    hest = ad.AnnData(
        X=src.layers["counts"],
        obs=pd.DataFrame(index=src.obs["barcode"].to_numpy()),
        var=pd.DataFrame(index=src.var_names),
    )
    hest.obsm["spatial"] = src.obsm["spatial"]
    hest.write_h5ad(out / "NCBI1.h5ad")
    return out, slide, hest


def _diameter(adata: ad.AnnData) -> tuple[float, str]:
    meta = adata.uns["spatial"]["NCBI1"]["metadata"]
    return meta["spot_diameter_um"], meta["spot_diameter_source"]


def test_spot_diameter_from_argument_metadata_h5ad_or_pitch(hest_pair):
    out, slide, hest = hest_pair
    um, source = _diameter(read_hest(out / "NCBI1.h5ad", slide))
    assert um == pytest.approx(55.0) and source.startswith("spot pitch 99.9 um (Visium: 55 um spots)")
    assert _diameter(read_hest(out / "NCBI1.h5ad", slide, spot_diameter_um=42.0)) == (
        pytest.approx(42.0),
        "given",
    )
    (out / "meta.json").write_text(json.dumps({"pixel_size_um_estimated": 0.5, "spot_diameter": 65.0}))
    um, source = _diameter(read_hest(out / "NCBI1.h5ad", slide, metadata_json=out / "meta.json"))
    assert um == pytest.approx(65.0) and source.startswith("HEST metadata spot_diameter")
    with_uns = hest.copy()
    with_uns.uns["spatial"] = {"ST": {"scalefactors": {"spot_diameter_fullres": 200.0}}}
    with_uns.write_h5ad(out / "uns.h5ad")
    adata = HESTReader(out / "uns.h5ad", slide, library_id="NCBI1").read()
    um, source = _diameter(adata)
    assert um == pytest.approx(100.0) and "spot_diameter_fullres" in source  # 200 px at 0.5 um/px
    assert adata.uns["spatial"]["NCBI1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(200.0)


def test_unknown_spot_diameter_is_an_error_naming_the_way_out(hest_pair, tmp_path, capsys):
    out, slide, _ = hest_pair
    # at 0.75 um/px the ~200 px pitch is ~150 um: no known array
    with pytest.raises(InputError) as err:
        read_hest(out / "NCBI1.h5ad", slide, mpp=0.75)
    expected = (
        f"h5ad file {out / 'NCBI1.h5ad'}: the spot diameter is not recorded (no spot_diameter in a metadata "
        "JSON, no spot_diameter_fullres in uns['spatial']) and the spot pitch, 149.9 um, is not that of a known "
        "array (Visium 100 um, legacy ST 200 um); pass spot_diameter_um (--spot-diameter)"
    )
    assert str(err.value) == expected
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "read",
                "hest",
                str(out / "NCBI1.h5ad"),
                str(slide),
                "--mpp",
                "0.75",
                "-o",
                str(tmp_path / "x.h5ad"),
            ]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {expected}"
    adata = read_hest(out / "NCBI1.h5ad", slide, mpp=0.75, spot_diameter_um=82.5)
    assert _diameter(adata)[0] == pytest.approx(82.5)
