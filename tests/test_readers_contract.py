"""Every registered reader passes the same contract tests; every registered reader has its case here.

A case (``TestXxxReader(ReaderContract)``) names the reader class, writes or finds small inputs, and
says the spot size the platform should report. The generic tests check the AnnData contract, that
the spot diameter and MPP come from the reader, that pairing runs on the named slide, that
``histokg read NAME`` writes the same data, and that squidpy renders it. The meta-test at the end
fails when a reader is registered without a case (as pykeen's tests/cases.py do for its losses).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import anndata as ad
import click
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from readers_fixtures import rotation_alignment, write_alignment_csv, write_visium_hd, write_xenium

from histokg.cli import cli, reader_params
from histokg.st import validate
from histokg.st.contract import read_h5ad, write_h5ad
from histokg.st.pairing import PairingConfig, pair_spots
from histokg.st.reader import Reader
from histokg.st.readers import get_reader, reader_classes, reader_modules, reader_names, reader_registry
from histokg.st.readers.hest import HESTReader
from histokg.st.readers.legacy import LegacySTReader
from histokg.st.readers.spatialdata import SpatialDataReader
from histokg.st.readers.visium import VisiumReader
from histokg.st.readers.visium_hd import VisiumHDReader
from histokg.st.readers.xenium import XeniumReader
from histokg.wsi import detect_tissue, open_slide

SYNTH_MPP = 0.5


def tissue_of(slide: Path):
    """The slide's tissue mask as slide pixels -> bool (what Space Ranger or Xenium would call tissue)."""
    with open_slide(slide) as s:
        return detect_tissue(s).contains


def cli_args(cls: type[Reader], kwargs: dict) -> list[str]:
    """The ``histokg read NAME ...`` arguments for the keyword arguments of ``cls`` (names match)."""
    args: list[str] = []
    params = reader_params(cls)
    for param in params:
        value = kwargs.get(param.name)
        if value is None:
            continue
        if isinstance(param, click.Argument):
            args.append(str(value))
        else:
            args += [param.opts[0], str(value)]
    unknown = set(kwargs) - {p.name for p in params}
    assert not unknown, f"{cls.__name__}: keyword arguments without a CLI parameter: {unknown}"
    return args


class ReaderContract:
    """The generic cases; a subclass sets ``cls``, ``spot_um`` and writes its inputs in ``inputs``."""

    cls: type[Reader]
    spot_um: float  # the spot (or bin, or pseudo-spot) size the platform should report, in um
    mpp: float  # the slide's microns per pixel the reader should find
    min_on_mask: float = 0.5  # least fraction of in-tissue spots on the slide's tissue mask

    def inputs(self, request, tmp_path_factory) -> dict:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def case(self, request, tmp_path_factory) -> tuple[dict, ad.AnnData]:
        kwargs = self.inputs(request, tmp_path_factory)
        return kwargs, self.cls(**kwargs).read()

    @staticmethod
    def entry(adata: ad.AnnData) -> tuple[str, dict]:
        (lib,) = adata.obs["library_id"].astype(str).unique()
        return lib, adata.uns["spatial"][lib]

    def test_registered_under_its_name_and_synonyms(self):
        assert self.cls.name in reader_names()
        title = self.cls.name.title()  # Visium-Hd
        for spelling in (self.cls.name, *self.cls.synonyms, self.cls.name.upper().replace("-", "_"), title):
            assert get_reader(spelling) is self.cls, spelling
            assert reader_registry.canonical(spelling) == self.cls.name

    def test_inputs_are_declared_once_and_fit_init(self):
        """Every input names an ``__init__`` parameter, has help, and every required parameter is an input."""
        params = inspect.signature(self.cls).parameters
        names = [i.name for i in self.cls.cli_inputs()]
        assert len(names) == len(set(names)) and set(names) <= set(params)
        assert {n for n, p in params.items() if p.default is inspect.Parameter.empty} <= set(names)
        assert all(i.help for i in self.cls.cli_inputs())
        assert "import click" not in Path(inspect.getfile(self.cls)).read_text(encoding="utf-8")

    def test_help_under_any_spelling_of_its_name(self):
        spelling = self.cls.name.upper().replace("-", "_")
        result = CliRunner().invoke(cli, ["read", spelling, "--help"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert f"read {self.cls.name} [OPTIONS]" in result.output and "--library-id" in result.output

    def test_follows_the_anndata_contract(self, case):
        kwargs, adata = case
        validate(adata)
        lib, entry = self.entry(adata)
        assert adata.n_obs > 10 and adata.n_vars > 5 and adata.obs_names.is_unique
        assert adata.obs["library_id"].dtype.name == "category"
        assert list(adata.obs["in_tissue"].cat.categories) == [False, True]
        spatial = np.asarray(adata.obsm["spatial"])
        assert spatial.dtype == np.float64 and spatial.shape == (adata.n_obs, 2)
        assert entry["images"]["hires"].dtype == np.uint8 and entry["images"]["hires"].ndim == 3
        scalefactors = entry["scalefactors"]
        assert 0 < scalefactors["tissue_hires_scalef"] <= 1 and scalefactors["spot_diameter_fullres"] > 0
        meta = entry["metadata"]
        slide = Path(meta["source_image_path"])
        assert slide.is_absolute() and slide.is_file()
        assert meta["reader"] == self.cls.name and meta["counts_integer"] is True
        assert sp.issparse(adata.layers["counts"]) and adata.layers["counts"].dtype.kind == "i"
        assert adata.layers["counts"].sum() > 0
        assert "gene_ids" in adata.var and adata.var["gene_ids"].notna().all()

    def test_spot_size_and_mpp_come_from_the_reader(self, case):
        _, adata = case
        _, entry = self.entry(adata)
        meta, scalefactors = entry["metadata"], entry["scalefactors"]
        assert meta["mpp"] == pytest.approx(self.mpp, rel=0.02)
        assert meta["mpp_source"] and meta["spot_diameter_source"]
        assert meta["spot_diameter_um"] == pytest.approx(self.spot_um, rel=0.02)
        assert scalefactors["spot_diameter_fullres"] * meta["mpp"] == pytest.approx(meta["spot_diameter_um"])

    def test_pairs_with_its_slide(self, case):
        _, adata = case
        paired = pair_spots(adata.copy(), PairingConfig(patch_um=112, patch_px=56))
        lib, entry = self.entry(paired)
        assert paired.uns["histokg"]["pairing"]["slides"][lib] == entry["metadata"]["source_image_path"]
        in_tissue = paired.obs["in_tissue"].to_numpy(bool)
        assert paired.obs["on_tissue_mask"].to_numpy(bool)[in_tissue].mean() >= self.min_on_mask
        assert not paired.obs["patch_partial"].to_numpy(bool).all()

    def test_cli_writes_the_same_data(self, case, tmp_path):
        kwargs, adata = case
        out = tmp_path / "read.h5ad"
        result = CliRunner().invoke(
            cli, ["read", self.cls.name, *cli_args(self.cls, kwargs), "-o", str(out)], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        assert f"{adata.n_obs} spots x {adata.n_vars} genes" in result.output
        back = read_h5ad(out)
        validate(back)
        assert (back.obs_names == adata.obs_names).all() and (back.var_names == adata.var_names).all()
        np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
        assert (back.layers["counts"] != adata.layers["counts"]).nnz == 0

    def test_round_trip_renders_in_squidpy(self, case, tmp_path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import squidpy as sq

        _, adata = case
        back = ad.read_h5ad(write_h5ad(adata, tmp_path / "x.h5ad"))
        lib, _ = self.entry(back)
        back.obs["total"] = np.asarray(back.layers["counts"].sum(axis=1)).ravel().astype(float)
        sq.pl.spatial_scatter(back, color=["total", "in_tissue"], library_id=lib, img_res_key="hires")
        fig = plt.gcf()
        fig.savefig(tmp_path / "scatter.png", dpi=40)
        plt.close("all")
        from PIL import Image

        img = np.asarray(Image.open(tmp_path / "scatter.png").convert("RGB"))
        assert img.shape[0] > 50 and img.std() > 10


# --------------------------------------------------------------------------- one case per reader


class TestVisiumReader(ReaderContract):
    cls = VisiumReader
    spot_um = 55.0
    mpp = SYNTH_MPP

    def inputs(self, request, tmp_path_factory) -> dict:
        study = request.getfixturevalue("synth_study")
        return {"path": study / "sections" / "S1", "slide": study / "slides" / "S1.tiff", "library_id": "S1"}


class TestLegacySTReader(ReaderContract):
    cls = LegacySTReader
    spot_um = 100.0
    mpp = 6.3  # the low-resolution MOB image: 200 um pitch over ~32 px

    def inputs(self, request, tmp_path_factory) -> dict:
        mob = request.getfixturevalue("shared_data") / "mob"
        return {
            "counts": mob / "MOB1.tsv",
            "spots": mob / "alignment_table_MOB1.tsv",
            "image": mob / "MOB1.jpg",
        }

    def test_spot_size_and_mpp_come_from_the_reader(self, case):
        _, adata = case
        _, entry = self.entry(adata)
        assert 5.5 < entry["metadata"]["mpp"] < 7.0 and entry["metadata"]["mpp_source"].startswith(
            "spot pitch"
        )
        assert entry["metadata"]["spot_diameter_um"] == pytest.approx(100.0)


class TestHESTReader(ReaderContract):
    cls = HESTReader
    spot_um = 55.0
    mpp = SYNTH_MPP

    def inputs(self, request, tmp_path_factory) -> dict:
        study = request.getfixturevalue("synth_study")
        src = VisiumReader(study / "sections" / "S3", slide=study / "slides" / "S3.tiff").read()
        out = tmp_path_factory.mktemp("hest")
        hest = ad.AnnData(
            X=src.layers["counts"],
            obs=pd.DataFrame(index=src.obs["barcode"].to_numpy()),
            var=pd.DataFrame({"gene_ids": src.var["gene_ids"].to_numpy()}, index=src.var_names),
        )
        hest.obsm["spatial"] = src.obsm["spatial"]
        hest.write_h5ad(out / "TENX99.h5ad")
        meta = {"pixel_size_um_estimated": SYNTH_MPP, "spot_diameter": 55.0, "inter_spot_dist": 100.0}
        (out / "TENX99.json").write_text(json.dumps(meta))
        return {
            "h5ad": out / "TENX99.h5ad",
            "slide": study / "slides" / "S3.tiff",
            "metadata_json": out / "TENX99.json",
        }


class TestVisiumHDReader(ReaderContract):
    cls = VisiumHDReader
    spot_um = 16.0
    mpp = SYNTH_MPP

    def inputs(self, request, tmp_path_factory) -> dict:
        study = request.getfixturevalue("synth_study")
        outs = tmp_path_factory.mktemp("hd") / "sample_hd" / "outs"
        write_visium_hd(outs, mpp=SYNTH_MPP, tissue_at=tissue_of(study / "slides" / "S1.tiff"))
        return {"path": outs, "slide": study / "slides" / "S1.tiff", "bin_um": 16}


class TestXeniumReader(ReaderContract):
    cls = XeniumReader
    spot_um = 55.0
    mpp = SYNTH_MPP

    def inputs(self, request, tmp_path_factory) -> dict:
        study = request.getfixturevalue("synth_study")
        out = tmp_path_factory.mktemp("xenium") / "output-XETG00000__0001__region1"
        matrix = rotation_alignment(SYNTH_MPP, 0.2125, 10.0, (3000.0, 500.0))
        write_xenium(
            out,
            region_slide_px=(600, 500, 2200, 1900),
            marker_slide_px=(1000, 900),
            matrix=matrix,
            slide_mpp=SYNTH_MPP,
            n_transcripts=20_000,
            tissue_at=tissue_of(study / "slides" / "S2.tiff"),
        )
        alignment = write_alignment_csv(out.parent / "he_imagealignment.csv", matrix)
        return {"path": out, "slide": study / "slides" / "S2.tiff", "spot_um": 55.0, "alignment": alignment}


class TestSpatialDataReader(ReaderContract):
    cls = SpatialDataReader
    spot_um = 55.0
    mpp = SYNTH_MPP

    def inputs(self, request, tmp_path_factory) -> dict:
        """A store spatialdata-io's Visium reader wrote from a synthetic section and its microscope image."""
        import warnings

        spatialdata_io = pytest.importorskip("spatialdata_io")
        study = request.getfixturevalue("synth_study")
        store = tmp_path_factory.mktemp("sdata") / "S1.zarr"
        slide = study / "slides" / "S1.tiff"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spatialdata_io.visium(
                study / "sections" / "S1", dataset_id="S1", fullres_image_file=slide.resolve()
            ).write(store)
        return {"path": store, "slide": slide}


# --------------------------------------------------------------------------- the registry itself


def test_every_registered_reader_has_a_contract_case():
    cases = {case.cls for case in ReaderContract.__subclasses__()}
    registered = set(reader_classes())
    assert registered - cases == set(), f"registered readers without a contract case: {registered - cases}"
    assert cases - registered == set(), f"contract cases of unregistered readers: {cases - registered}"
    assert len(registered) >= 5


def test_every_reader_module_is_found_without_being_listed():
    """A new platform is one module in histokg.st.readers: package discovery imports it (no list to edit)."""
    import pkgutil

    import histokg.st.readers as package

    on_disk = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    assert reader_modules() == on_disk
    assert {cls.__module__ for cls in reader_classes()} == {f"histokg.st.readers.{m}" for m in on_disk}


def test_no_click_in_the_data_layer():
    import histokg.st

    root = Path(histokg.st.__file__).parent
    assert not [
        p.name for p in root.rglob("*.py") if re.search(r"^\s*(import|from) click\b", p.read_text(), re.M)
    ]


def test_read_help_lists_every_registered_reader():
    result = CliRunner().invoke(cli, ["read", "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    listed = [line.split()[0] for line in commands.splitlines() if line.startswith("  ")]
    assert listed == reader_names() == sorted(reader_names())


def test_unknown_reader_is_one_line_with_the_nearest_name(capsys):
    from histokg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["read", "xenum", "somewhere", "-o", "x.h5ad"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: unknown reader 'xenum'; did you mean 'xenium'? "
        "(valid readers: hest, legacy, spatialdata, visium, visium-hd, xenium)"
    )
    with pytest.raises(Exception, match=r"unknown reader 'merfish' \(valid readers: hest, legacy"):
        get_reader("merfish")


MESSAGE = re.compile(
    r"unknown (?P<kind>\w+) '(?P<name>[^']+)'; did you mean '(?P<nearest>[^']+)'\? \(valid (?P<plural>\w+): "
)


def test_unknown_reader_and_unknown_loss_are_refused_the_same_way(capsys, tmp_path):
    """``histokg read Xenum`` and ``histokg train --set loss.name=KG-Sfot``: one line, status 2, one format."""
    from histokg.cli import main

    found = {}
    for argv in (
        ["read", "Xenum", "somewhere", "-o", str(tmp_path / "x.h5ad")],
        ["train", "--set", "loss.name=KG-Sfot", "--set", f"out_dir={tmp_path / 'run'}"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        found[argv[0]] = MESSAGE.search(err).groupdict()
    assert found["read"] == {"kind": "reader", "name": "Xenum", "nearest": "xenium", "plural": "readers"}
    assert found["train"] == {"kind": "loss", "name": "KG-Sfot", "nearest": "kg_soft", "plural": "losses"}
    assert not (tmp_path / "run").exists()
