"""One slide's observations as a SpatialData zarr store, named as spatialdata-io names Visium's elements.

- ``{id}_full_image``: the slide as a multiscale image (``Image2DModel``, channels r, g, b), level 0 read
  block by block from the slide through dask (an OpenSlide pyramid is never decoded whole; a plain JPEG/PNG
  is, as :mod:`histokg.wsi.slide` always does), coarser scales by ``scale_factors`` of 2 down to about
  ``MIN_SIDE`` pixels, written scale by scale;
- ``{id}_shapes``: the observations (``ShapesModel``): circles (``radius``) for round spots, squares for
  tiles and bins, index 0..n-1, in level-0 pixels;
- ``table``: the AnnData (``TableModel``) annotating ``{id}_shapes`` through ``obs["region"]`` and
  ``obs["instance_id"]`` (``uns["spatialdata_attrs"]``): expression or predictions in ``X`` and layers,
  embeddings and pathway scores in ``obsm``, as the input held them.

Every element has two coordinate systems: ``global`` (level-0 pixels, identity) and ``microns`` (a scale by
the slide's MPP).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from histokg.errors import InputError
from histokg.export.shapes import CIRCLE, one_library, slide_file, slide_shapes
from histokg.keys import SData

log = logging.getLogger(__name__)

BLOCK = 2048  # level-0 pixels per dask block side
MIN_SIDE = 1024  # coarsest scale's longer side, about


def transformations(mpp: float) -> dict:
    """``global`` (level-0 pixels) and ``microns`` (x and y scaled by ``mpp``)."""
    from spatialdata.transformations import Identity, Scale

    return {"global": Identity(), SData.microns: Scale([mpp, mpp], axes=("y", "x"))}


def slide_image(path: str | Path, mpp: float):
    """The slide's level 0 as a lazy (3, height, width) uint8 dask array, read ``BLOCK`` pixels at a time."""
    import dask
    import dask.array as da

    from histokg.wsi import open_slide

    slide = open_slide(path, mpp=mpp)
    width, height = slide.dimensions
    if slide.format == "plain":  # already decoded by the reader: wrap it, no copy
        array = da.from_array(slide.read_level(0), chunks=(BLOCK, BLOCK, 3))
        return array.transpose(2, 0, 1)
    lock = threading.Lock()

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        with lock:
            return np.moveaxis(slide.read_region((x, y), 0, (w, h)), -1, 0)

    rows = []
    for y in range(0, height, BLOCK):
        h = min(BLOCK, height - y)
        row = []
        for x in range(0, width, BLOCK):
            w = min(BLOCK, width - x)
            row.append(da.from_delayed(dask.delayed(read)(x, y, w, h), shape=(3, h, w), dtype=np.uint8))
        rows.append(row)
    return da.block(rows)


def scale_factors(width: int, height: int) -> list[int]:
    factors, side = [], max(width, height)
    while side > 2 * MIN_SIDE:
        factors.append(2)
        side //= 2
    return factors


def to_spatialdata(
    adata: ad.AnnData,
    *,
    library_id: str | None = None,
    image: bool = True,
    slide_dir: str | Path | None = None,
):
    """The SpatialData of one slide (see the module docstring); ``image=False`` leaves the slide out."""
    import geopandas as gpd
    from shapely.geometry import Point, box
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel

    adata = one_library(adata, library_id)
    shapes = slide_shapes(adata)
    lib = shapes.library_id
    tf = transformations(shapes.mpp)
    images = {}
    if image:
        array = slide_image(slide_file(shapes, slide_dir), shapes.mpp)
        images[SData.image.format(lib)] = Image2DModel.parse(
            array,
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            transformations=tf,
            scale_factors=scale_factors(array.shape[2], array.shape[1]) or None,
            chunks=(3, BLOCK, BLOCK),
        )
    r = shapes.size / 2
    if shapes.kind == CIRCLE:
        geometry = [Point(x, y) for x, y in shapes.centres]
        frame = gpd.GeoDataFrame({"radius": np.full(len(geometry), r)}, geometry=geometry)
    else:
        frame = gpd.GeoDataFrame(geometry=[box(x - r, y - r, x + r, y + r) for x, y in shapes.centres])
    frame.index = pd.RangeIndex(len(frame))
    shapes_name = SData.shapes.format(lib)
    element = ShapesModel.parse(frame, transformations=tf)
    table = _table(adata, shapes_name)
    table = TableModel.parse(
        table, region=shapes_name, region_key=SData.region_key, instance_key=SData.instance_key
    )
    return SpatialData(images=images, shapes={shapes_name: element}, tables={SData.table: table})


def _table(adata: ad.AnnData, shapes_name: str, instance_ids=None) -> ad.AnnData:
    """``adata`` as a table annotating ``shapes_name``: ``obs["region"]``, and ``obs["instance_id"]`` the
    rows' indices in that element (``instance_ids``, default 0..n-1)."""
    table = adata.copy()
    if SData.region_key in table.obs:  # e.g. a synthetic study's ground-truth region
        table.obs = table.obs.rename(columns={SData.region_key: f"histokg_{SData.region_key}"})
        log.info(
            "obs[%r] is SpatialData's region key: kept as obs['histokg_%s']",
            SData.region_key,
            SData.region_key,
        )
    table.obs[SData.region_key] = pd.Categorical([shapes_name] * table.n_obs)
    table.obs[SData.instance_key] = (
        np.arange(table.n_obs) if instance_ids is None else np.asarray(instance_ids)
    )
    return table


def write_spatialdata(sdata, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``sdata`` to a zarr folder beside ``path``, then move it into place (an existing ``path`` is
    replaced only when ``overwrite``; a failed write leaves it as it was)."""
    path = Path(path)
    if os.path.lexists(path) and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it, or choose another name")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():  # zarr's notice about future sharding defaults, once per array
            warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
            sdata.write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    log.info("SpatialData -> %s", path)
    return path


def export_spatialdata(
    adata: ad.AnnData,
    path: str | Path,
    *,
    library_id: str | None = None,
    image: bool = True,
    slide_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """:func:`to_spatialdata` written to ``path`` (:func:`write_spatialdata`)."""
    sdata = to_spatialdata(adata, library_id=library_id, image=image, slide_dir=slide_dir)
    return write_spatialdata(sdata, path, overwrite=overwrite)


# --------------------------------------------------------------------------- embeddings into a store

ELEMENT_GROUPS = ("images", "labels", "points", "shapes", "tables")


def store_elements(path: str | Path) -> dict[str, str]:
    """Every element of a SpatialData store on disk: name -> its group (``images``, ``tables``, ...)."""
    path = Path(path)
    found = {}
    for group in ELEMENT_GROUPS:
        folder = path / group
        if folder.is_dir():
            found.update(
                {p.name: group for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
            )
    return found


def add_table(path: str | Path, name: str, table: ad.AnnData, *, overwrite: bool = False) -> Path:
    """Write ``table`` into the SpatialData store ``path`` as ``tables/<name>``, one element at a time.

    The element is written whole into a store beside ``path`` and moved into place with one rename (a
    failed write leaves ``path`` as it was); a table ``name`` already there is replaced only when
    ``overwrite`` (moved aside first, removed once the new one is in); a name another element holds is
    refused. The store's consolidated metadata, where it has them, are written again afterwards.
    """
    import zarr
    from spatialdata import SpatialData

    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise InputError(
            f"{path}: histokg writes into SpatialData stores in zarr v3 format (spatialdata >= 0.4) only; "
            "write this one again with spatialdata's sdata.write() first"
        )
    elements = store_elements(path)
    if name in elements and elements[name] != "tables":
        raise InputError(
            f"{path}: {name!r} is already an element of {elements[name]}/; choose another table name"
        )
    if name in elements and not overwrite:
        raise InputError(
            f"{path}: table {name!r} already exists; pass --overwrite to replace it, or choose another name"
        )
    tmp = path.with_name(f".{path.name}.{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="zarr v3 autosharding", category=UserWarning)
            warnings.filterwarnings("ignore", message="The table is annotating", category=UserWarning)
            SpatialData(tables={name: table}).write(tmp, consolidate_metadata=False)
        target = path / "tables" / name
        if not (path / "tables").is_dir():
            os.replace(tmp / "tables", path / "tables")
        else:
            if target.exists():
                os.replace(target, tmp / f"replaced-{name}")
            os.replace(tmp / "tables" / name, target)
        if "consolidated_metadata" in json.loads((path / "zarr.json").read_text(encoding="utf-8")):
            with warnings.catch_warnings():  # zarr names the parquet files of shapes it does not know
                warnings.simplefilter("ignore", UserWarning)
                zarr.consolidate_metadata(str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("table %r -> %s", name, path)
    return path / "tables" / name


def embeddings_table(adata: ad.AnnData, region: str, instance_ids, names) -> ad.AnnData:
    """A table of ``adata``'s embeddings (``obsm``: image tower, and expression tower where present) that
    annotates shapes ``region``: ``X`` empty, the rows' ids ``names``, ``instance_ids`` in ``region``."""
    from spatialdata.models import TableModel

    from histokg import keys
    from histokg.keys import Key

    obsm = {k: np.asarray(adata.obsm[k]) for k in (keys.IMAGE, keys.EXPR) if k in adata.obsm}
    embedded = ad.AnnData(
        X=np.zeros((adata.n_obs, 0), np.float32),
        obs=pd.DataFrame(index=pd.Index([str(n) for n in names])),
        obsm=obsm,
        uns={Key.uns.histokg: {Key.histokg.params: adata.uns[Key.uns.histokg][Key.histokg.params]}},
    )
    table = _table(embedded, region, instance_ids)
    return TableModel.parse(
        table, region=region, region_key=SData.region_key, instance_key=SData.instance_key
    )


def embed_into_spatialdata(
    path: str | Path,
    model,
    *,
    table: str | None = None,
    image: str | None = None,
    slide: str | Path | None = None,
    mpp: float | None = None,
    name: str = SData.embeddings,
    expression: bool = True,
    overwrite: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    device=None,
) -> tuple[Path, ad.AnnData]:
    """Embed the observations of a table of the store ``path`` (e.g. Visium HD's ``square_008um`` bins) with a
    checkpoint and write the embeddings back as table ``name`` annotating the same shapes, same instance ids.

    The store is read by :class:`histokg.st.readers.spatialdata.SpatialDataReader` (table, image, MPP);
    the patches come from ``slide`` when given, else from the image element written as a temporary pyramidal
    TIFF beside the store; the embeddings from :func:`histokg.tl.embed` (the one embedding routine); the table
    goes in with :func:`add_table`. Returns the table's path and the embedded AnnData (the contract).
    """
    import tempfile

    from histokg.checkpoint import LoadedModel, load_model
    from histokg.keys import Key
    from histokg.st.readers.spatialdata import INSTANCE_COLUMN, SpatialDataReader
    from histokg.tl.embed import embed

    path = Path(path)
    elements = store_elements(path)
    if table is not None and name == table or name in elements and elements[name] != "tables":
        raise InputError(
            f"{path}: {name!r} is an element histokg reads; choose another name for the embeddings"
        )
    if name in elements and not overwrite:
        raise InputError(
            f"{path}: table {name!r} already exists; pass --overwrite to replace it, or choose another name"
        )
    loaded = model if isinstance(model, LoadedModel) else load_model(model, "cpu")
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.histokg-", dir=path.parent) as tmp:
        slide_out = None if slide is not None else Path(tmp) / "image.tiff"
        reader = SpatialDataReader(path, table=table, image=image, slide=slide, slide_out=slide_out, mpp=mpp)
        if reader.resolved.table_name == name:
            raise InputError(f"{path}: table {name!r} is the table being embedded; choose another name")
        adata = reader.read()
        embed(
            adata,
            loaded,
            expression=expression,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
        )
    out = embeddings_table(
        adata, reader.resolved.region, adata.obs[INSTANCE_COLUMN].to_numpy(), adata.obs[Key.obs.barcode]
    )
    return add_table(path, name, out, overwrite=overwrite), adata
