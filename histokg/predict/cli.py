"""``histokg predict`` and ``histokg export geojson|spatialdata`` (registered on the ``histokg`` command)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from histokg.io import holding_lock

log = logging.getLogger(__name__)

PREDICTED = "predicted.h5ad"
GEOJSON = "predicted.geojson"
ZARR = "predicted.zarr"

_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("predict")
@click.argument("slides", nargs=-1, required=True, type=_EXISTING_FILE)
@click.option("--checkpoint", type=_EXISTING_FILE, required=True, help="The trained model.")
@click.option(
    "--reference",
    "references",
    type=_EXISTING_FILE,
    required=True,
    multiple=True,
    help="Spots with counts embedded by `histokg embed` with the same checkpoint (repeatable: the files "
    "are combined).",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder: one folder per slide (its file name without suffix).",
)
@click.option(
    "--spots",
    type=click.Choice(["tiles", "hex"]),
    default="tiles",
    show_default=True,
    help="Tissue tiles of the model's patch size, or a hexagonal grid of Visium-like pseudo-spots.",
)
@click.option(
    "--spot-um", type=click.FloatRange(min=1), default=55.0, show_default=True, help="Pseudo-spot diameter."
)
@click.option(
    "--pitch-um",
    type=click.FloatRange(min=1),
    default=100.0,
    show_default=True,
    help="Pseudo-spot centre-to-centre distance.",
)
@click.option(
    "--min-tissue",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Tissue fraction a tile or spot needs.",
)
@click.option(
    "--method",
    type=click.Choice(["knn", "ridge", "blend"]),
    default="blend",
    show_default=True,
    help="knn over the reference's expression embeddings, ridge on its image embeddings, or their mean "
    "(blend: the best of the three in histokg bench, docs/benchmarks.md).",
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=None,
    help="kNN neighbours (default: chosen on the reference, each of its slides predicted from the others).",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=None,
    help="Ridge penalty (default: chosen on the reference as -k is).",
)
@click.option(
    "--smooth",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the spatial neighbours' mean prediction (0: none; 0.5 measured best in histokg bench).",
)
@click.option(
    "--level",
    type=click.FloatRange(0.5, 0.99),
    default=0.9,
    show_default=True,
    help="Coverage of the reported interval.",
)
@click.option(
    "--pathways",
    "n_pathways",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Most variable KG pathways to score (0: none).",
)
@click.option(
    "--kg-bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="KG bundle for pathway scores (default: the checkpoint's prior.bundle).",
)
@click.option(
    "--resolution",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Leiden resolution.",
)
@click.option("--mpp", type=float, help="Microns per pixel of slides that lack it (plain JPEG/PNG).")
@click.option("--geojson", is_flag=True, help="Also write predicted.geojson (QuPath).")
@click.option("--spatialdata", is_flag=True, help="Also write predicted.zarr (SpatialData).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available).")
@click.option("--overwrite", is_flag=True, help="Replace a slide's earlier predictions.")
def predict_cmd(
    slides: tuple[Path, ...],
    checkpoint: Path,
    references: tuple[Path, ...],
    out_dir: Path,
    spots: str,
    spot_um: float,
    pitch_um: float,
    min_tissue: float,
    method: str,
    k: int | None,
    alpha: float | None,
    smooth: float,
    level: float,
    n_pathways: int,
    kg_bundle: Path | None,
    resolution: float,
    mpp: float | None,
    geojson: bool,
    spatialdata: bool,
    batch_size: int,
    device: str | None,
    overwrite: bool,
) -> None:
    """Predict expression, pathway scores, clusters and their uncertainty on SLIDES (H&E only).

    Writes OUT/<slide>/predicted.h5ad (observations x panel genes: the prediction in X and
    layers["pred_<method>"], its interval half-width in layers["pred_<method>_hw90"], pathways in
    obsm["pred_pathways"], clusters in obs["histokg_leiden"]) and, when asked, predicted.geojson and
    predicted.zarr beside it. Every slide and output is checked before any compute.
    """
    from histokg.checkpoint import load_model
    from histokg.errors import InputError
    from histokg.predict.slide import PredictConfig, check_reference
    from histokg.tl.embed import read_embedded

    cfg = PredictConfig(
        spots=spots,
        spot_um=spot_um,
        pitch_um=pitch_um,
        min_tissue=min_tissue,
        method=method,
        k=k,
        alpha=alpha,
        smooth=smooth,
        level=level,
        n_pathways=n_pathways,
        resolution=resolution,
        batch_size=batch_size,
    )
    names = [s.stem for s in slides]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(
            f"slides share the name {dup[0]!r}: each slide gets a folder by its name; rename one"
        )
    outputs = [PREDICTED, *([GEOJSON] if geojson else []), *([ZARR] if spatialdata else [])]
    inputs = [checkpoint, *references, *slides, kg_bundle]
    for slide in slides:
        _check_slide(slide, mpp)
        _check_outputs(out_dir / slide.stem, outputs, overwrite, inputs)
    ref = read_embedded(references, "reference")
    model = load_model(checkpoint, device or "cpu")
    check_reference(ref, model, f"reference {', '.join(map(str, references))}")
    for slide in slides:
        folder = out_dir / slide.stem
        result = _predict_one(
            slide, folder, model, ref, cfg, kg_bundle, mpp, device, outputs, overwrite, inputs
        )
        click.echo(f"{slide.name}: {result}")


def _check_slide(slide: Path, mpp: float | None) -> None:
    """Check the slide's header: an absent MPP or a broken file is one error, before any compute (a plain
    image is decoded when predicted, not twice)."""
    from histokg.wsi import slide_dimensions

    slide_dimensions(slide, mpp=mpp)


def _check_outputs(folder: Path, outputs: list[str], overwrite: bool, inputs: list) -> None:
    from histokg.errors import InputError
    from histokg.io import check_not_input

    check_not_input([folder / name for name in outputs], inputs, f"prediction folder {folder}: output")
    found = [name for name in (PREDICTED, GEOJSON, ZARR) if os.path.lexists(folder / name)]
    if found and not overwrite:
        raise InputError(
            f"{folder} already holds predictions ({', '.join(found)}); pass --overwrite to replace them, "
            "or choose another output folder"
        )


def _predict_one(slide, folder, model, ref, cfg, kg_bundle, mpp, device, outputs, overwrite, inputs) -> str:
    from histokg.io import claim_output_dir, output_lock
    from histokg.predict.slide import predict_slide
    from histokg.st.contract import write_h5ad

    existed = folder.exists()
    try:
        with output_lock(folder, "histokg predict", label="prediction folder"):
            claim_output_dir(
                folder,
                [PREDICTED, GEOJSON, ZARR],
                what="predictions",
                overwrite=overwrite,
                label="prediction folder",
                folders=[ZARR],
                inputs=inputs,
            )
            adata = predict_slide(slide, model, ref, cfg, kg_bundle=kg_bundle, mpp=mpp, device=device)
            written = [write_h5ad(adata, folder / PREDICTED)]
            if GEOJSON in outputs:
                from histokg.export.geojson import write_geojson

                written.append(write_geojson(adata, folder / GEOJSON))
            if ZARR in outputs:
                from histokg.export.spatialdata import export_spatialdata

                written.append(export_spatialdata(adata, folder / ZARR))
    except BaseException:
        if not existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing half-written: a folder this run made and left empty goes
        raise
    return f"{adata.n_obs} {cfg.spots} x {adata.n_vars} genes -> " + ", ".join(map(str, written))


# --------------------------------------------------------------------------- exports


@click.group("export")
def export() -> None:
    """Write an .h5ad's spots or tiles for other tools: QuPath (geojson), SpatialData (zarr)."""


_LIBRARY = click.option("--library-id", help="The slide to export, when IN holds several.")


@export.command("geojson")
@click.argument("h5ad", type=_EXISTING_FILE)
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@_LIBRARY
@click.option(
    "--object-type",
    type=click.Choice(["detection", "annotation"]),
    default="detection",
    show_default=True,
    help="QuPath object type.",
)
@click.option("--genes", help="Comma-separated genes to include (default: all of X).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@holding_lock("out", "histokg export geojson", folder=False, label="GeoJSON file")
def export_geojson(
    h5ad: Path, out: Path, library_id: str | None, object_type: str, genes: str | None, overwrite: bool
) -> None:
    """Spots or tiles of H5AD as GeoJSON polygons (level-0 pixels) that QuPath's Import objects reads."""
    from histokg.export.geojson import write_geojson
    from histokg.io import check_output_file
    from histokg.st.contract import read_h5ad

    check_output_file(out, "GeoJSON file", overwrite=overwrite, inputs=[h5ad])
    adata = read_h5ad(h5ad)
    chosen = [g.strip() for g in genes.split(",") if g.strip()] if genes else None
    click.echo(
        f"-> {write_geojson(adata, out, library_id=library_id, object_type=object_type, genes=chosen)}"
    )


@export.command("spatialdata")
@click.argument("h5ad", type=_EXISTING_FILE)
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), required=True, help="The .zarr folder to write."
)
@_LIBRARY
@click.option("--no-image", is_flag=True, help="Leave the slide image out.")
@click.option(
    "--slide-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding the slide, when it moved since H5AD was written (found by file name).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@holding_lock("out", "histokg export spatialdata", folder=False, label="SpatialData store")
def export_spatialdata_cmd(
    h5ad: Path, out: Path, library_id: str | None, no_image: bool, slide_dir: Path | None, overwrite: bool
) -> None:
    """The slide of H5AD (multiscale image), its spots or tiles (shapes) and a table annotating them, as a
    SpatialData zarr store."""
    from histokg.errors import InputError
    from histokg.export.spatialdata import export_spatialdata
    from histokg.io import check_not_input
    from histokg.st.contract import read_h5ad

    check_not_input([out], [h5ad, slide_dir], "SpatialData store")
    if os.path.lexists(out) and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it, or choose another name")
    adata = read_h5ad(h5ad)
    path = export_spatialdata(
        adata, out, library_id=library_id, image=not no_image, slide_dir=slide_dir, overwrite=overwrite
    )
    click.echo(f"-> {path}")
