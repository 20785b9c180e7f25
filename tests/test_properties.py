"""Property-based tests (hypothesis): malformed spot tables, count tables and AnnData objects, fed to every
reader and to ``pair_spots`` / ``tl.embed``.

Each generated input starts from a valid one and is damaged by a few mutations (NaN, infinite, negative,
huge or non-numeric values, repeated ids, missing columns or fields, collapsed positions, empty tables,
all-zero counts, implausible MPPs and spot sizes). Whatever the input, the library must either

- raise a :class:`~histokg.errors.HistokgError` whose message is one non-empty line, or
- return a result that follows the AnnData contract (:func:`histokg.st.contract.validate`) with no NaN or
  infinite value in its matrices, embeddings, scale factors or MPP;

never another exception, and never write a file (each example runs in a fresh temporary folder whose
listing is compared before and after; ``histokg read`` may add its ``-o`` file and nothing else).

Every reader the registry discovers (:func:`histokg.st.readers.reader_names`) is a parameter of
``test_reader``: a reader added to ``histokg/st/readers/`` fails until it has an entry in
:data:`READER_PROPERTIES`. The consumers are ``pair_spots`` (``histokg pair``) and ``tl.embed``
(``histokg embed``), fed the legacy fixture section's AnnData after up to three mutations.

``make test`` runs a derandomized profile (the same 30 examples per test every run, about 10 s in all);
the tests marked ``slow`` (``make test-all``) run 150 random examples per test, or
``HISTOKG_PROPERTY_EXAMPLES`` of them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import hypothesis  # in the `test` extra (pyproject.toml): a missing install fails, it is not skipped
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from bad_values_fixtures import PITCH_PX, tiny_model, write_legacy_section
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from histokg.errors import HistokgError

FAST = {"max_examples": 30, "derandomize": True}  # make test: the same examples every run
# make test-all: random examples, 150 per test unless HISTOKG_PROPERTY_EXAMPLES says otherwise
SLOW = {"max_examples": int(os.environ.get("HISTOKG_PROPERTY_EXAMPLES", "150")), "derandomize": False}
COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}

# values that break a number: each mutation below puts one of these somewhere
BAD_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-12, 1e12, 1e300, -1e30])
BAD_CELLS = st.one_of(BAD_NUMBERS, st.sampled_from(["", "x", "1,5", "NA", " "]))


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def finite(values) -> bool:
    if sp.issparse(values):
        values = values.data
    values = np.asarray(values)
    return values.dtype.kind not in "fc" or bool(np.isfinite(values).all())


def check_outcome(run: Callable[[], object], folder: Path, allowed: set[str] = frozenset()) -> object:
    """Run ``run`` in ``folder``: a one-line HistokgError or a valid, finite AnnData; no file written."""
    from histokg.keys import Key
    from histokg.st.contract import validate

    before = listing(folder)
    result = None
    try:
        result = run()
        hypothesis.event("a valid result")
    except HistokgError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, repr(message)
        hypothesis.event(f"{type(exc).__name__}")
    written = listing(folder) - before
    assert written <= set(allowed), (
        f"files written outside the named output: {sorted(written - set(allowed))}"
    )
    if isinstance(result, ad.AnnData):
        validate(result, source="result")
        assert finite(result.X) and all(finite(v) for v in result.layers.values())
        assert all(finite(v) for v in result.obsm.values())
        for entry in result.uns[Key.uns.spatial].values():
            assert all(math.isfinite(float(v)) for v in entry[Key.uns.scalefactors].values())
            assert math.isfinite(float(entry[Key.uns.metadata][Key.metadata.mpp]))
    return result


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """The 800 x 800 px H&E-like JPEG of the legacy fixture section (read-only for every example)."""
    return write_legacy_section(tmp_path_factory.mktemp("image"))["image"]


# --------------------------------------------------------------------------- legacy ST tables

COUNT_MUTATIONS = [
    "cell",
    "cell",
    "gene_dup",
    "gene_empty",
    "no_rows",
    "zeros",
    "zero_row",
    "spot_dup",
    "no_genes",
]
SPOT_MUTATIONS = [
    "cell",
    "cell",
    "collapse",
    "missing_col",
    "text_col",
    "dup",
    "outside",
    "tiny_pitch",
    "drop_rows",
    "unselected",
    "huge",
]


@st.composite
def legacy_tables(draw):
    n = draw(st.integers(2, 6))
    ids = [f"{i + 1}x{j + 1}" for i in range(n) for j in range(2)]
    genes = [f"G{i}" for i in range(draw(st.integers(1, 4)))]
    counts = pd.DataFrame(
        np.asarray(
            draw(st.lists(st.integers(0, 30), min_size=len(ids) * len(genes), max_size=len(ids) * len(genes)))
        )
        .reshape(len(ids), len(genes))
        .astype(object),
        index=ids,
        columns=genes,
    )
    spots = pd.DataFrame(
        {
            "x": [int(s.split("x")[0]) for s in ids],
            "y": [int(s.split("x")[1]) for s in ids],
            "pixel_x": [300.0 + (int(s.split("x")[0]) - 1) * PITCH_PX for s in ids],
            "pixel_y": [300.0 + (int(s.split("x")[1]) - 1) * PITCH_PX for s in ids],
            "selected": 1,
        }
    ).astype(object)
    for mutation in draw(st.lists(st.sampled_from(COUNT_MUTATIONS), max_size=2)):
        if counts.empty:
            break
        if mutation == "cell":
            counts.iat[draw(st.integers(0, len(counts) - 1)), draw(st.integers(0, counts.shape[1] - 1))] = (
                draw(BAD_CELLS)
            )
        elif mutation == "gene_dup" and counts.shape[1] > 1:
            counts.columns = [counts.columns[0], *counts.columns[:-1]]
        elif mutation == "gene_empty":
            counts.columns = [" ", *counts.columns[1:]]
        elif mutation == "no_rows":
            counts = counts.iloc[:0]
        elif mutation == "zeros":
            counts.loc[:, :] = 0
        elif mutation == "zero_row":
            counts.iloc[0] = 0
        elif mutation == "spot_dup" and len(counts) > 1:
            counts.index = [counts.index[0], *counts.index[:-1]]
        elif mutation == "no_genes":
            counts = counts.iloc[:, :0]
    for mutation in draw(st.lists(st.sampled_from(SPOT_MUTATIONS), max_size=2)):
        col = draw(st.sampled_from(["x", "y", "pixel_x", "pixel_y", "selected"]))
        if mutation == "cell":
            spots.at[draw(st.integers(0, len(spots) - 1)), col] = draw(BAD_CELLS)
        elif mutation == "collapse":
            spots["pixel_x"], spots["pixel_y"] = 100.0, 100.0
        elif mutation == "missing_col" and col in spots:
            spots = spots.drop(columns=[col])
        elif mutation == "text_col":
            spots[col] = "abc"
        elif mutation == "dup":
            spots.loc[len(spots)] = spots.iloc[0].to_list()
        elif mutation == "outside":
            spots["pixel_x"] = spots["pixel_x"].astype(float) + 5000
        elif mutation == "tiny_pitch":
            spots["pixel_x"] = 300 + (spots["pixel_x"].astype(float) - 300) / 1e4
            spots["pixel_y"] = 300 + (spots["pixel_y"].astype(float) - 300) / 1e4
        elif mutation == "drop_rows":
            spots = spots.iloc[: len(spots) // 2]
        elif mutation == "unselected":
            spots["selected"] = 0
        elif mutation == "huge":
            spots["pixel_y"] = 1e30
    mpp = draw(st.one_of(st.none(), st.just(5.0), BAD_NUMBERS))
    diameter = draw(st.one_of(st.just(100.0), BAD_NUMBERS))
    return counts, spots, mpp, diameter


def _legacy_property(image: Path, case) -> None:
    from histokg.st import read_legacy_st

    counts, spots, mpp, diameter = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        counts.to_csv(folder / "counts.tsv", sep="\t")
        spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
        check_outcome(
            lambda: read_legacy_st(
                folder / "counts.tsv", folder / "spots.tsv", image, mpp=mpp, spot_diameter_um=diameter
            ),
            folder,
        )


def _legacy_cli_property(image: Path, case, capsys) -> None:
    """``histokg read legacy ... -o`` writes its output and nothing else, or one ``error:`` line."""
    from bad_values_fixtures import run_cli

    counts, spots, mpp, _ = case
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        counts.to_csv(folder / "counts.tsv", sep="\t")
        spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
        before = listing(folder)
        args = [
            "read",
            "legacy",
            folder / "counts.tsv",
            folder / "spots.tsv",
            image,
            "-o",
            folder / "out.h5ad",
        ]
        code, err = run_cli(capsys, *args, *(["--mpp", mpp] if mpp is not None else []))
        written = listing(folder) - before
        if code == 0:
            assert written == {"out.h5ad"}, written
        else:
            errors = [line for line in err.splitlines() if line.startswith("error: ")]
            assert code == 2 and len(errors) == 1 and "Traceback" not in err and not written, (
                code,
                err,
                written,
            )


# --------------------------------------------------------------------------- Space Ranger (Visium) outs

POSITION_MUTATIONS = ["cell", "cell", "collapse", "missing_col", "text_col", "dup", "outside", "drop_rows"]
SCALEFACTOR_VALUES = st.one_of(BAD_NUMBERS, st.sampled_from(["55", None, [1], True]))


@st.composite
def visium_outs(draw):
    n = draw(st.integers(2, 8))
    barcodes = [f"AAAC{i:04d}-1" for i in range(n)]
    genes = [f"G{i}" for i in range(draw(st.integers(1, 4)))]
    counts = np.asarray(
        draw(st.lists(st.integers(0, 30), min_size=n * len(genes), max_size=n * len(genes)))
    ).reshape(n, len(genes))
    if draw(st.booleans()):
        counts[: draw(st.integers(1, n))] = 0
    positions = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": np.arange(n) // 3,
            "array_col": np.arange(n) % 3,
            "pxl_row_in_fullres": 300.0 + 40.0 * (np.arange(n) // 3),
            "pxl_col_in_fullres": 300.0 + 40.0 * (np.arange(n) % 3),
        }
    ).astype(object)
    for mutation in draw(st.lists(st.sampled_from(POSITION_MUTATIONS), max_size=2)):
        col = draw(st.sampled_from(list(positions.columns[1:])))
        if mutation == "cell":
            positions.at[draw(st.integers(0, n - 1)), col] = draw(BAD_CELLS)
        elif mutation == "collapse":
            positions["pxl_row_in_fullres"], positions["pxl_col_in_fullres"] = 350.0, 350.0
        elif mutation == "missing_col" and col in positions:
            positions = positions.drop(columns=[col])
        elif mutation == "text_col":
            positions[col] = "abc"
        elif mutation == "dup":
            positions.loc[len(positions)] = positions.iloc[0].to_list()
        elif mutation == "outside":
            positions["pxl_row_in_fullres"] = 1e9
        elif mutation == "drop_rows":
            positions = positions.iloc[: max(1, len(positions) // 2)]
    scalefactors = {"spot_diameter_fullres": 11.0, "tissue_hires_scalef": 0.1, "tissue_lowres_scalef": 0.05}
    for key in draw(st.lists(st.sampled_from(list(scalefactors)), max_size=2)):
        value = draw(SCALEFACTOR_VALUES)
        if value is None:
            scalefactors.pop(key, None)
        else:
            scalefactors[key] = value
    use_slide = draw(st.booleans())
    mpp = draw(st.one_of(st.none(), st.just(5.0), BAD_NUMBERS)) if use_slide else None
    return counts, barcodes, genes, positions, scalefactors, use_slide, mpp


def _visium_property(image: Path, case) -> None:
    from histokg.st import read_visium, write_10x_h5

    counts, barcodes, genes, positions, scalefactors, use_slide, mpp = case
    with tempfile.TemporaryDirectory() as tmp:
        outs = Path(tmp) / "S1"
        (outs / "spatial").mkdir(parents=True)
        write_10x_h5(outs / "filtered_feature_bc_matrix.h5", counts, barcodes, genes, genes)
        positions.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
        (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
        Image.open(image).resize((80, 80)).save(outs / "spatial" / "tissue_hires_image.png")
        check_outcome(
            lambda: read_visium(outs, slide=image if use_slide else None, mpp=mpp, library_id="S1"), Path(tmp)
        )


def _visium_hd_property(image: Path, case) -> None:
    from histokg.st import read_visium_hd, write_10x_h5

    counts, barcodes, genes, positions, scalefactors, _, mpp = case
    scalefactors = {**scalefactors, "microns_per_pixel": scalefactors.get("tissue_lowres_scalef", 5.0)}
    scalefactors.setdefault("bin_size_um", 8.0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "outs" / "binned_outputs" / "square_008um"
        (folder / "spatial").mkdir(parents=True)
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, genes, genes)
        frame = positions.copy()
        for col in frame.columns:  # parquet wants one type per column
            frame[col] = frame[col].astype(str) if frame[col].map(type).nunique() > 1 else frame[col]
        frame.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
        check_outcome(lambda: read_visium_hd(Path(tmp) / "outs", slide=image, mpp=mpp), Path(tmp))


# --------------------------------------------------------------------------- Xenium transcripts


@st.composite
def xenium_outputs(draw):
    n = draw(st.integers(0, 40))
    xs = draw(st.lists(st.floats(0, 3900), min_size=n, max_size=n))
    ys = draw(st.lists(st.floats(0, 3900), min_size=n, max_size=n))
    qv = draw(st.lists(st.floats(0, 40), min_size=n, max_size=n))
    names = draw(
        st.lists(st.sampled_from(["XG00", "XG01", "BLANK_0001", "NegControlProbe_1"]), min_size=n, max_size=n)
    )
    frame = pd.DataFrame({"x_location": xs, "y_location": ys, "qv": qv, "feature_name": names})
    if n and draw(st.booleans()):
        frame.loc[draw(st.integers(0, n - 1)), draw(st.sampled_from(["x_location", "y_location", "qv"]))] = (
            draw(BAD_NUMBERS)
        )
    if draw(st.booleans()):
        frame = frame.drop(columns=[draw(st.sampled_from(list(frame.columns)))])
    pixel_size = draw(st.one_of(st.just(5.0), BAD_NUMBERS, st.sampled_from(["0.2", None])))
    spot_um = draw(st.one_of(st.just(55.0), BAD_NUMBERS))
    return frame, pixel_size, spot_um


def _xenium_property(image: Path, case) -> None:
    from histokg.st import read_xenium

    frame, pixel_size, spot_um = case
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "xen"
        out.mkdir()
        frame.to_parquet(out / "transcripts.parquet", index=False)
        experiment = {} if pixel_size is None else {"pixel_size": pixel_size}
        (out / "experiment.xenium").write_text(json.dumps(experiment))
        check_outcome(lambda: read_xenium(out, slide=image, spot_um=spot_um), Path(tmp))


# --------------------------------------------------------------------------- AnnData (HEST, pair, embed)

ADATA_MUTATIONS = [
    "nan_xy",
    "inf_xy",
    "collapse",
    "xy_cols",
    "no_xy",
    "huge_xy",
    "negative_xy",
    "mpp",
    "no_mpp",
    "diameter",
    "dup_ids",
    "no_library",
    "zero_counts",
    "zero_rows",
    "nan_counts",
    "no_spots",
    "unselected",
    "text_xy",
    "no_uns",
    "negative_counts",
    "inf_counts",
    "nan_x",
    "other_library",
]


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.array(matrix)


@st.composite
def mutated_adata(draw, base: ad.AnnData):
    adata = base.copy()
    lib = str(adata.obs["library_id"].iloc[0])
    for mutation in draw(st.lists(st.sampled_from(ADATA_MUTATIONS), max_size=3)):
        if adata.n_obs == 0:
            break
        row = draw(st.integers(0, adata.n_obs - 1))
        xy = adata.obsm.get("spatial")
        if xy is not None and np.asarray(xy).dtype == object:  # "text_xy" done: numbers cannot follow
            xy = None
        if mutation in ("nan_xy", "inf_xy") and xy is not None and np.ndim(xy) == 2:
            xy = np.array(xy, dtype=float)
            xy[row, draw(st.integers(0, xy.shape[1] - 1))] = math.nan if mutation == "nan_xy" else math.inf
            adata.obsm["spatial"] = xy
        elif mutation == "collapse":
            adata.obsm["spatial"] = np.full((adata.n_obs, 2), 400.0)
        elif mutation == "xy_cols":
            adata.obsm["spatial"] = np.zeros((adata.n_obs, draw(st.sampled_from([1, 3]))))
        elif mutation == "no_xy":
            adata.obsm.pop("spatial", None)
        elif mutation == "huge_xy" and xy is not None:
            adata.obsm["spatial"] = np.asarray(xy, dtype=float) * 1e20
        elif mutation == "negative_xy" and xy is not None:
            adata.obsm["spatial"] = -np.abs(np.asarray(xy, dtype=float))
        elif mutation == "mpp" and lib in adata.uns["spatial"]:
            adata.uns["spatial"][lib]["metadata"]["mpp"] = draw(st.one_of(BAD_NUMBERS, st.just("abc")))
        elif mutation == "no_mpp" and lib in adata.uns["spatial"]:
            adata.uns["spatial"][lib]["metadata"].pop("mpp", None)
        elif mutation == "diameter" and lib in adata.uns["spatial"]:
            adata.uns["spatial"][lib]["scalefactors"]["spot_diameter_fullres"] = draw(
                st.one_of(BAD_NUMBERS, st.just("abc"))
            )
        elif mutation == "dup_ids" and adata.n_obs > 1:
            names = list(adata.obs_names)
            names[-1] = names[0]
            adata.obs_names = names
        elif mutation == "no_library":
            adata.obs = adata.obs.drop(columns=["library_id"])
            break
        elif mutation == "zero_counts":
            adata.layers["counts"] = sp.csr_matrix(adata.shape, dtype=np.int32)
        elif mutation == "zero_rows":
            counts = _dense(adata.layers["counts"])
            counts[: row + 1] = 0
            adata.layers["counts"] = sp.csr_matrix(counts)
        elif mutation == "nan_counts":
            counts = _dense(adata.layers["counts"]).astype(float)
            counts[row, 0] = math.nan
            adata.layers["counts"] = counts
        elif mutation == "no_spots":
            adata = adata[:0].copy()
        elif mutation == "unselected":
            adata.obs["in_tissue"] = pd.Categorical([False] * adata.n_obs, categories=[False, True])
        elif mutation == "text_xy" and xy is not None:
            xy = np.asarray(xy).astype(object)
            xy[row, 0] = draw(st.sampled_from(["abc", "", None, "1,5"]))
            adata.obsm["spatial"] = xy
        elif mutation == "no_uns":
            adata.uns["spatial"].pop(lib, None)
        elif mutation in ("negative_counts", "inf_counts"):
            counts = _dense(adata.layers["counts"]).astype(float)
            counts[row, -1] = -3.0 if mutation == "negative_counts" else math.inf
            adata.layers["counts"] = counts
        elif mutation == "nan_x":
            matrix = _dense(adata.X).astype(np.float32)
            matrix[row, 0] = math.nan
            adata.X = matrix
        elif mutation == "other_library":
            adata.obs["library_id"] = pd.Categorical(["elsewhere"] * adata.n_obs)
    return adata


def _pair_property(adata: ad.AnnData) -> None:
    from histokg.st.pairing import PairingConfig, pair_spots

    with tempfile.TemporaryDirectory() as tmp:
        paired = check_outcome(lambda: pair_spots(adata, PairingConfig(patch_um=112, patch_px=32)), Path(tmp))
        if paired is not None:
            assert np.isfinite(paired.obs["patch_tissue_fraction"].to_numpy()).all()


def _embed_property(model, adata: ad.AnnData) -> None:
    from histokg.tl import embed

    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # a stray relative write would land here and fail the listing check
        try:
            out = check_outcome(lambda: embed(adata, model, device="cpu", copy=True), Path(tmp))
        finally:
            os.chdir(cwd)
        if out is not None:
            assert np.isfinite(out.obsm["X_histokg"]).all()
            assert "X_histokg_expr" not in out.obsm or np.isfinite(out.obsm["X_histokg_expr"]).all()


def _hest_property(image: Path, adata: ad.AnnData, mpp, diameter) -> None:
    from histokg.st import read_hest

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        hest = ad.AnnData(
            X=adata.layers.get("counts", adata.X), obs=adata.obs[[]].copy(), var=adata.var[[]].copy()
        )
        if "spatial" in adata.obsm:
            xy = np.asarray(adata.obsm["spatial"])
            # an h5ad holds text, not Python objects: "text_xy" is written as strings
            hest.obsm["spatial"] = xy.astype(str) if xy.dtype == object else xy
        entries = list(adata.uns["spatial"].values())
        hest.uns["spatial"] = {"S": {"scalefactors": dict(entries[0]["scalefactors"])}} if entries else {}
        hest.write_h5ad(folder / "S.h5ad")
        check_outcome(lambda: read_hest(folder / "S.h5ad", image, mpp=mpp, spot_diameter_um=diameter), folder)


# --------------------------------------------------------------------------- the tests (fast and slow)


def _hest_strategy(base: ad.AnnData):
    mpps = st.one_of(st.just(5.0), BAD_NUMBERS)
    return st.tuples(mutated_adata(base), mpps, st.one_of(st.none(), BAD_NUMBERS))


def _hest_case(image: Path, case) -> None:
    _hest_property(image, *case)


# --------------------------------------------------------------------------- SpatialData stores

SDATA_MUTATIONS = [
    "nan_xy",
    "inf_xy",
    "radius",
    "no_spots",
    "shape_scale",
    "image_scale",
    "region",
    "instances",
    "negative_counts",
    "nan_counts",
    "no_image",
    "two_tables",
    "dup_ids",
]


def _sdata_strategy(base: ad.AnnData):
    """A Visium-like store (the legacy section's image, its spots as circles, its counts as the table),
    with up to three mutations and a bad number for each."""
    return st.tuples(st.lists(st.sampled_from(SDATA_MUTATIONS), max_size=3), BAD_NUMBERS).map(
        lambda case: (base, *case)
    )


def _sdata_property(image: Path, case) -> None:
    import warnings

    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from histokg.keys import Key
    from histokg.st.readers.spatialdata import SpatialDataReader

    base, mutations, bad = case
    xy = np.array(base.obsm[Key.obsm.spatial], dtype=np.float64)
    counts = sp.csr_matrix(base.X).astype(np.float64).toarray()
    ids = np.array(base.obs_names, dtype=object)
    radius = (
        55.0
        / float(
            base.uns[Key.uns.spatial][next(iter(base.uns[Key.uns.spatial]))][Key.uns.metadata][
                Key.metadata.mpp
            ]
        )
        / 2
    )
    shape_tf, image_tf = Identity(), Identity()
    region, instances = "sec_shapes", np.arange(len(xy))
    for m in mutations:
        if m == "nan_xy" and len(xy):
            xy[0, 0] = math.nan
        elif m == "inf_xy" and len(xy):
            xy[-1, 1] = math.inf
        elif m == "radius":
            radius = bad
        elif m == "no_spots":
            xy, counts, ids, instances = xy[:0], counts[:0], ids[:0], instances[:0]
        elif m == "shape_scale":
            shape_tf = Scale([bad, bad], axes=("x", "y"))
        elif m == "image_scale":
            image_tf = Scale([bad, 1.0], axes=("x", "y"))
        elif m == "region":
            region = "elsewhere"
        elif m == "instances" and len(instances):
            instances = instances + 10_000
        elif m == "negative_counts" and counts.size:
            counts[0, 0] = -3
        elif m == "nan_counts" and counts.size:
            counts[-1, -1] = math.nan
        elif m == "dup_ids" and len(ids) > 1:
            ids[1] = ids[0]
    pixels = np.asarray(Image.open(image).convert("RGB")).transpose(2, 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "sec.zarr"
        try:  # a case spatialdata itself refuses to build or write is not one a reader can meet
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = ad.AnnData(X=sp.csr_matrix(counts), var=pd.DataFrame(index=base.var_names.copy()))
                table.obs_names = list(ids)
                table.obs["region"] = pd.Categorical([region] * len(ids))
                table.obs["spot_id"] = instances
                tables = {
                    "table": TableModel.parse(
                        table, region=region, region_key="region", instance_key="spot_id"
                    )
                }
                if "two_tables" in mutations:
                    tables["other"] = TableModel.parse(
                        table.copy(), region=region, region_key="region", instance_key="spot_id"
                    )
                shapes = ShapesModel.parse(
                    xy,
                    geometry=0,
                    radius=np.full(len(xy), radius),
                    index=np.arange(len(xy)),
                    transformations={"global": shape_tf},
                )
                images = {}
                if "no_image" not in mutations:
                    images["sec_full_image"] = Image2DModel.parse(
                        pixels, dims=("c", "y", "x"), transformations={"global": image_tf}
                    )
                SpatialData(images=images, shapes={"sec_shapes": shapes}, tables=tables).write(store)
        except Exception:
            hypothesis.reject()
        check_outcome(lambda: SpatialDataReader(store, mpp=None).read(), Path(tmp), allowed=set())


#: every reader: (its strategy, made from the valid legacy AnnData; the property run on one example).
#: Keyed by the registry's names, so that a reader added to histokg/st/readers/ fails
#: test_every_registered_reader_is_fed_malformed_input until it has an entry here.
READER_PROPERTIES: dict[str, tuple[Callable, Callable]] = {
    "legacy": (lambda base: legacy_tables(), _legacy_property),
    "visium": (lambda base: visium_outs(), _visium_property),
    "visium-hd": (lambda base: visium_outs(), _visium_hd_property),
    "xenium": (lambda base: xenium_outputs(), _xenium_property),
    "hest": (_hest_strategy, _hest_case),
    "spatialdata": (_sdata_strategy, _sdata_property),
}


def _run_reader(name: str, image: Path, base: ad.AnnData, profile: dict) -> None:
    strategy, prop = READER_PROPERTIES[name]

    @settings(**COMMON, **profile)
    @given(strategy(base))
    def run(case):
        prop(image, case)

    run()


def test_every_registered_reader_is_fed_malformed_input():
    """Reader discovery (histokg.st.readers) and this test agree: no reader escapes the property tests."""
    from histokg.st.readers import reader_names

    missing = sorted(set(reader_names()) - set(READER_PROPERTIES))
    assert not missing, f"readers without a property test: {missing}; add them to READER_PROPERTIES"
    assert set(READER_PROPERTIES) == set(reader_names())


def _registered_readers() -> list[str]:
    from histokg.st.readers import reader_names

    return reader_names()


@pytest.mark.parametrize("name", _registered_readers())
def test_reader(name, image, legacy_adata):
    if name not in READER_PROPERTIES:
        pytest.fail(f"reader {name!r} has no property test; add it to READER_PROPERTIES")
    _run_reader(name, image, legacy_adata, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("name", _registered_readers())
def test_reader_long(name, image, legacy_adata):
    if name not in READER_PROPERTIES:
        pytest.fail(f"reader {name!r} has no property test; add it to READER_PROPERTIES")
    _run_reader(name, image, legacy_adata, SLOW)


def test_legacy_read_command_writes_only_its_output(image, capsys):
    @settings(**COMMON, **{**FAST, "max_examples": 4})
    @given(legacy_tables())
    def run(case):
        _legacy_cli_property(image, case, capsys)

    run()


def _run_consumer(prop: Callable, base: ad.AnnData, profile: dict) -> None:
    @settings(**COMMON, **profile)
    @given(mutated_adata(base))
    def run(adata):
        prop(adata)

    run()


def test_pair_spots(legacy_adata):
    _run_consumer(_pair_property, legacy_adata, FAST)


@pytest.mark.slow
def test_pair_spots_long(legacy_adata):
    _run_consumer(_pair_property, legacy_adata, SLOW)


def test_embed(legacy_adata):
    model = tiny_model(list(legacy_adata.var_names))
    _run_consumer(lambda adata: _embed_property(model, adata), legacy_adata, FAST)


@pytest.mark.slow
def test_embed_long(legacy_adata):
    model = tiny_model(list(legacy_adata.var_names))
    _run_consumer(lambda adata: _embed_property(model, adata), legacy_adata, SLOW)
