"""SpatialData zarr stores, as spatialdata-io writes them for Visium, Visium HD and Xenium.

What spatialdata-io names (``spatialdata_io.visium``, ``visium_hd``, ``xenium``):

- Visium: images ``{id}_full_image`` (when the microscope image was given), ``{id}_hires_image``,
  ``{id}_lowres_image``; shapes ``{id}`` (circles, ``radius`` = ``spot_diameter_fullres / 2``); table
  ``table`` (region ``{id}``, instance key ``spot_id``); coordinate system ``{id}`` = full-resolution pixels.
- Visium HD: the same images; shapes ``{id}_square_002um`` / ``_008um`` / ``_016um`` (squares); one table
  per bin size, ``square_008um`` (region ``{id}_square_008um``, instance key ``location_id``).
- Xenium: images ``morphology_focus`` (and an aligned H&E, affine to ``global``); shapes
  ``cell_circles`` / ``cell_boundaries`` in microns (``Scale(1 / pixel_size)`` to ``global``, the
  morphology image's pixels); table ``table`` (region ``cell_circles``, instance key ``cell_id``).

Every table records what it annotates in ``uns["spatialdata_attrs"]`` (``region``, ``region_key``,
``instance_key``). The reader resolves the table (``table``, default the only one), the shapes element it
annotates, the image (``image``, default the one with the smallest pixels sharing a coordinate system
with the shapes), spot centres in the image's level-0 pixels (shapes -> coordinate system -> image,
composed from the stores' own transformations), the spot size and the image's MPP:

1. ``mpp`` when given;
2. the store's calibration: a ``microns`` coordinate system on the image (``histokg export spatialdata``),
   the bin size in a Visium HD shapes name (``..._square_008um``: 8 um over the square's side), or
   Xenium's shapes, which are in microns;
3. the slide's own metadata when ``slide`` is given;
4. Visium's 55 um spot over the spot circles' diameter (store written by spatialdata-io's Visium reader).

The contract needs a slide file that OpenSlide reads: ``slide`` names the image the zarr image was made
from (checked to have its size), or ``slide_out`` writes the zarr image's level 0 as a pyramidal TIFF
(:func:`histokg.wsi.pyramid.write_pyramid`) and records that; with neither, the contract gets a
thumbnail of the zarr image and no slide file (as the Visium reader without its slide).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from histokg.errors import InputError
from histokg.keys import Key, SData
from histokg.st.contract import check_spots_in_image
from histokg.st.reader import Input, Reader, SlideView, Spots

log = logging.getLogger(__name__)

VISIUM_SPOT_UM = 55.0
HD_BIN = re.compile(r"_square_(\d{3})um$")
IO_READER = "spatialdata_io_reader"  # root attribute spatialdata-io sets (visium, visium_hd, xenium)
ATTRS = "spatialdata_attrs"
# obs column of the contract holding each row's instance id in the shapes element it annotates
INSTANCE_COLUMN = "spatialdata_instance_id"
THUMBNAIL_PX = 2000


@dataclass
class Resolved:
    """What a store's table, shapes and image resolve to."""

    table_name: str
    region: str
    region_key: str
    instance_key: str
    image_name: str
    coordinate_system: str
    rows: np.ndarray  # the table's rows annotating ``region``
    instance_ids: pd.Series  # their ids in the shapes element
    xy: np.ndarray  # spot centres in the image's level-0 pixels
    size_px: float  # spot diameter (or square side) in those pixels
    square: bool
    shapes_units_per_px: float  # shapes' own units per image pixel
    width: int
    height: int


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_store(path: str | Path):
    """The SpatialData at ``path`` (lazily: images stay on disk); one-line errors for anything else."""
    import warnings

    import zarr

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"SpatialData store {path} does not exist or is not a folder")
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = root.attrs.asdict()
        groups = {name for name in ("images", "shapes", "tables", "labels", "points") if name in root}
    except Exception as exc:  # zarr raises several kinds for a folder that is not a zarr group
        raise InputError(f"{path}: not a SpatialData store (not a zarr group: {_first_line(exc)})") from None
    if ATTRS not in attrs and not groups:
        raise InputError(
            f"{path}: not a SpatialData store (a zarr group without spatialdata_attrs and without "
            "images/, shapes/ or tables/)"
        )
    from spatialdata import read_zarr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_zarr(path, selection=("images", "shapes", "tables"))
    except Exception as exc:
        raise InputError(f"{path}: the SpatialData store cannot be read ({_first_line(exc)})") from None


def _names(names) -> str:
    names = sorted(map(str, names))
    return ", ".join(names) if names else "none"


def _affine(transformation) -> np.ndarray:
    return np.asarray(transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), float)


#: the range of scales (element units per coordinate-system unit) a transformation may have: a
#: microscope image in pixels, microns or millimetres is far inside it; 0, inf or 1e300 are not
_SCALE_RANGE = (1e-6, 1e6)


def _transforms(element, where: str) -> dict[str, np.ndarray]:
    """The element's transformations to each coordinate system as 3x3 affine matrices, each checked
    finite and invertible with a plausible scale (an error names the element and coordinate system)."""
    from spatialdata.transformations import get_transformation

    out = {}
    for cs, t in get_transformation(element, get_all=True).items():
        matrix = _affine(t)
        scale = _scale(matrix) if np.isfinite(matrix).all() else math.nan
        if not (_SCALE_RANGE[0] <= scale <= _SCALE_RANGE[1]):
            raise InputError(
                f"{where}: its transformation to coordinate system {cs!r} is not usable (scale {scale:.3g}, "
                f"matrix {matrix[:2].round(6).tolist()}); a transformation must be finite and invertible, "
                f"with a scale in {_SCALE_RANGE[0]:g}..{_SCALE_RANGE[1]:g}"
            )
        out[cs] = matrix
    return out


def _scale(matrix: np.ndarray) -> float:
    return math.sqrt(abs(float(np.linalg.det(matrix[:2, :2]))))


def image_levels(image) -> list:
    """The (c, y, x) arrays of an image element, finest first (one for a single-scale image)."""
    if hasattr(image, "children") and image.children:
        keys = sorted(image.children, key=lambda k: int(re.sub(r"\D", "", k) or 0))
        return [next(iter(image[k].data_vars.values())) for k in keys]
    return [image]


def to_rgb(array: np.ndarray) -> np.ndarray:
    """A (c, y, x) image as (y, x, 3) uint8: RGB(A) as it is; other images (fluorescence) as grey from
    their first channel, scaled to its 99.5th percentile."""
    c = array.shape[0]
    if c in (3, 4) and array.dtype == np.uint8:
        return np.ascontiguousarray(np.moveaxis(array[:3], 0, -1))
    grey = array[0].astype(np.float32)
    top = float(np.percentile(grey, 99.5)) if grey.size else 0.0
    grey = np.clip(grey / top * 255.0, 0, 255) if top > 0 else np.zeros_like(grey)
    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)


class SpatialDataReader(Reader):
    """SpatialData zarr store (spatialdata-io's Visium, Visium HD, Xenium): a table, its shapes, an image."""

    name = "spatialdata"
    synonyms = ("sdata", "zarr")
    image_label = "slide"
    library_id_help = "Slide id (default: the store's name without .zarr)."
    mpp_help = (
        "Microns per pixel of the image's level 0 (default: the store's calibration, the slide's metadata, "
        "or Visium's 55 um spots)."
    )
    inputs = (
        Input("path", "dir", "SpatialData zarr store (e.g. written by spatialdata-io)."),
        Input("table", "str", "Table to read (default: the store's only table)."),
        Input(
            "image",
            "str",
            "Image element the spots are placed on (default: the finest sharing a coordinate system "
            "with the table's shapes).",
        ),
        Input(
            "slide",
            "file",
            "The file the image element was made from (e.g. the microscope image given to Space Ranger), "
            "recorded as the slide.",
        ),
        Input(
            "slide_out",
            "str",
            "Write the image element's level 0 here as a pyramidal TIFF (OpenSlide-readable) and record it "
            "as the slide.",
        ),
    )

    def __init__(
        self,
        path: str | Path,
        *,
        table: str | None = None,
        image: str | None = None,
        slide: str | Path | None = None,
        slide_out: str | Path | None = None,
        library_id: str | None = None,
        mpp: float | None = None,
    ) -> None:
        path = Path(path)
        if slide is not None and slide_out is not None:
            raise InputError(
                "slide and slide_out: give one (the image's file, or where to write it), not both"
            )
        default_id = path.name.removesuffix(".zarr") or path.name
        super().__init__(slide=slide, library_id=library_id or default_id, mpp=mpp)
        self.path = path
        self.table_name = table
        self.image_name = image
        self.slide_out = Path(slide_out) if slide_out is not None else None
        if self.slide_out is not None and self.slide_out.exists():
            raise InputError(f"slide_out {self.slide_out} already exists; choose another name or remove it")
        self.sdata = open_store(path)
        self.resolved = self.resolve()

    # -- what the store holds --------------------------------------------------------------------
    def resolve(self) -> Resolved:
        sdata, path = self.sdata, self.path
        tables = list(sdata.tables)
        if self.table_name is None:
            if len(tables) != 1:
                raise InputError(
                    f"{path}: {len(tables)} tables ({_names(tables)}); choose one with --table"
                    if tables
                    else f"{path}: the store holds no table (nothing to read counts from)"
                )
            table_name = tables[0]
        elif self.table_name not in tables:
            raise InputError(f"{path}: no table {self.table_name!r}; the tables are {_names(tables)}")
        else:
            table_name = self.table_name
        table = sdata.tables[table_name]
        attrs = table.uns.get(ATTRS) or {}
        region, region_key, instance_key = (attrs.get(k) for k in ("region", "region_key", "instance_key"))
        if region is None or region_key is None or instance_key is None:
            raise InputError(
                f"{path}: table {table_name!r} annotates no element (uns['spatialdata_attrs'] lacks "
                "region, region_key or instance_key)"
            )
        regions = [region] if isinstance(region, str) else [str(r) for r in region]
        shapes_regions = [r for r in regions if r in sdata.shapes]
        if len(shapes_regions) != 1:
            kinds = {
                r: next((k for k in ("images", "labels", "points") if (path / k / r).is_dir()), "missing")
                for r in regions
            }
            described = ", ".join(f"{r!r} ({kinds[r]})" for r in regions)
            raise InputError(
                f"{path}: table {table_name!r} must annotate one shapes element (spots, bins or cells); "
                f"it annotates {described}"
                + (f"; the shapes elements are {_names(sdata.shapes)}" if not shapes_regions else "")
            )
        region = shapes_regions[0]
        for key in (region_key, instance_key):
            if key not in table.obs:
                raise InputError(
                    f"{path}: table {table_name!r} has no obs column {key!r} (its spatialdata_attrs)"
                )
        rows = np.flatnonzero(table.obs[region_key].astype(str).to_numpy() == region)
        if len(rows) == 0:
            raise InputError(f"{path}: no row of table {table_name!r} annotates {region!r}")
        shapes = sdata.shapes[region]
        ids = table.obs[instance_key].iloc[rows]
        at = shapes.index.get_indexer(ids.to_numpy())
        if (at < 0).any():
            missing = ids.to_numpy()[at < 0]
            raise InputError(
                f"{path}: {len(missing)} rows of table {table_name!r} name instances that shapes {region!r} "
                f"lacks, e.g. {missing[0]!r}"
            )
        centres, size, square = _geometry(shapes.iloc[at], f"{path}: shapes {region!r}")
        image_name, cs, to_image = self._image(region, shapes)
        per_px = _scale(np.linalg.inv(to_image))
        xy = np.column_stack([centres, np.ones(len(centres))]) @ to_image.T
        level0 = image_levels(sdata.images[image_name])[0]
        return Resolved(
            table_name=table_name,
            region=region,
            region_key=str(region_key),
            instance_key=str(instance_key),
            image_name=image_name,
            coordinate_system=cs,
            rows=rows,
            instance_ids=ids.reset_index(drop=True),
            xy=xy[:, :2],
            size_px=size / per_px,
            square=square,
            shapes_units_per_px=per_px,
            width=int(level0.shape[-1]),
            height=int(level0.shape[-2]),
        )

    def _image(self, region: str, shapes) -> tuple[str, str, np.ndarray]:
        """(image name, shared coordinate system, shapes -> image level-0 pixels as a 3x3 matrix)."""
        sdata, path = self.sdata, self.path
        shapes_tf = _transforms(shapes, f"{path}: shapes {region!r}")
        candidates: dict[str, tuple[str, np.ndarray]] = {}
        for name, image in sdata.images.items():
            image_tf = _transforms(image, f"{path}: image {name!r}")
            shared = [cs for cs in shapes_tf if cs in image_tf]
            if shared:
                cs = "global" if "global" in shared else shared[0]
                candidates[name] = (cs, np.linalg.inv(image_tf[cs]) @ shapes_tf[cs])
        if self.image_name is not None:
            if self.image_name not in sdata.images:
                raise InputError(
                    f"{path}: no image {self.image_name!r}; the images are {_names(sdata.images)}"
                )
            if self.image_name not in candidates:
                raise InputError(
                    f"{path}: image {self.image_name!r} shares no coordinate system with shapes {region!r} "
                    f"({_names(shapes_tf)}); the images that do are {_names(candidates)}"
                )
            return self.image_name, *candidates[self.image_name]

        def rank(name: str) -> tuple[float, int, str]:
            rgb = image_levels(sdata.images[name])[0].shape[0] in (3, 4)
            return (round(_scale(candidates[name][1]), 6) * -1, 0 if rgb else 1, name)

        if not candidates:
            raise InputError(
                f"{path}: no image shares a coordinate system with shapes {region!r} ({_names(shapes_tf)}); "
                f"the images are {_names(sdata.images)}"
            )
        # finest pixels first: the largest scale from shapes units to image pixels; RGB before others
        name = sorted(candidates, key=rank)[0]
        return name, *candidates[name]

    # -- Reader ----------------------------------------------------------------------------------
    def load(self) -> Spots:
        r = self.resolved
        table = self.sdata.tables[r.table_name]
        counts = table.layers[Key.layers.counts] if Key.layers.counts in table.layers else table.X
        counts = sp.csr_matrix(counts)[r.rows]
        obs = table.obs.iloc[r.rows]
        extra = pd.DataFrame(
            {c: obs[c].to_numpy() for c in (Key.obs.array_row, Key.obs.array_col) if c in obs}
        )
        extra[INSTANCE_COLUMN] = r.instance_ids.to_numpy()
        in_tissue = obs[Key.obs.in_tissue].to_numpy().astype(bool) if Key.obs.in_tissue in obs else None
        gene_ids = (
            table.var[Key.var.gene_ids].astype(str).to_list() if Key.var.gene_ids in table.var else None
        )
        where = f"{self.path} table {r.table_name!r}"
        spots = Spots(
            counts=counts,
            barcodes=[str(b) for b in obs.index],
            genes=[str(g) for g in table.var_names],
            xy=r.xy,
            source=where,
            positions=f"{self.path} shapes {r.region!r} in image {r.image_name!r}",
            spot_diameter_fullres=r.size_px,
            spot_diameter_source=f"shapes {r.region!r} ({'square side' if r.square else 'circle diameter'})",
            gene_ids=gene_ids,
            in_tissue=in_tissue,
            obs_extra=extra,
            extra_metadata={
                Key.metadata.source_path: str(self.path.resolve()),
                Key.metadata.spot_shape: "square" if r.square else "circle",
                "spatialdata_table": r.table_name,
                "spatialdata_region": r.region,
                "spatialdata_instance_key": r.instance_key,
                "spatialdata_image": r.image_name,
                "spatialdata_coordinate_system": r.coordinate_system,
            },
        )
        if self.slide is not None:
            self._check_slide_size()
        elif self.slide_out is not None:
            self.slide = self._write_slide(spots)
        return spots

    def platform_mpp(self, spots: Spots) -> tuple[float, str] | None:
        r, image = self.resolved, self.sdata.images[self.resolved.image_name]
        microns = _transforms(image, f"{self.path}: image {r.image_name!r}").get(SData.microns)
        if microns is not None:
            return _scale(
                microns
            ), f"{self.path} image {r.image_name!r}: its {SData.microns!r} coordinate system"
        bin_match = HD_BIN.search(r.region)
        if bin_match and r.square:
            bin_um = float(bin_match.group(1))
            return bin_um / r.size_px, f"{self.path} shapes {r.region!r}: {bin_um:g} um bins over their side"
        if self.sdata.attrs.get(IO_READER) == "xenium":
            return r.shapes_units_per_px, f"{self.path} (Xenium): shapes {r.region!r} are in microns"
        return None

    def fallback_mpp(self, spots: Spots) -> tuple[float, str] | None:
        if self.sdata.attrs.get(IO_READER) == "visium" and not self.resolved.square:
            return (
                VISIUM_SPOT_UM / self.resolved.size_px,
                f"spot diameter ({VISIUM_SPOT_UM:g} um Visium spots)",
            )
        return None

    def _store_mpp(self, spots: Spots) -> tuple[float, str]:
        """The MPP without a slide file: given, the store's calibration, or Visium's spot size."""
        if self.mpp is not None:
            return float(self.mpp), "given"
        found = self.platform_mpp(spots) or self.fallback_mpp(spots)
        if found is None:
            raise InputError(
                f"{self.path}: the MPP of image {self.resolved.image_name!r} is not recorded (no 'microns' "
                "coordinate system, no Visium HD bin size, not a Visium or Xenium store); pass --mpp"
            )
        return found

    def without_slide(self, spots: Spots) -> SlideView:
        r = self.resolved
        check_spots_in_image(spots.xy, r.width, r.height, list(spots.barcodes), spots.positions)
        mpp, source = self._store_mpp(spots)
        levels = image_levels(self.sdata.images[r.image_name])
        level = next((lv for lv in reversed(levels) if max(lv.shape[-2:]) >= THUMBNAIL_PX // 2), levels[0])
        step = max(1, math.ceil(max(level.shape[-2:]) / THUMBNAIL_PX))
        hires = to_rgb(np.asarray(level[:, ::step, ::step]))
        return SlideView(hires, hires.shape[1] / r.width, mpp, source, None)

    def _check_slide_size(self) -> None:
        from histokg.wsi import open_slide

        r = self.resolved
        with open_slide(self.slide, mpp=self.mpp or 1.0) as slide:
            size = slide.dimensions
        if tuple(size) != (r.width, r.height):
            raise InputError(
                f"slide {self.slide} is {size[0]}x{size[1]} px but image {r.image_name!r} of {self.path} is "
                f"{r.width}x{r.height} px; pass the file that image was made from, or --slide-out to write it"
            )

    def _write_slide(self, spots: Spots) -> Path:
        from histokg.wsi.memory import check_image_memory
        from histokg.wsi.pyramid import write_pyramid

        r = self.resolved
        check_spots_in_image(spots.xy, r.width, r.height, list(spots.barcodes), spots.positions)
        mpp, source = self._store_mpp(spots)
        assert self.slide_out is not None
        check_image_memory(self.path, r.width, r.height, 7, f"writing image {r.image_name!r} as a TIFF")
        level0 = image_levels(self.sdata.images[r.image_name])[0]
        log.info(
            "%s: writing image %r (%dx%d px) to %s",
            self.path,
            r.image_name,
            r.width,
            r.height,
            self.slide_out,
        )
        write_pyramid(to_rgb(np.asarray(level0)), self.slide_out, mpp)
        self._mpp_written = (mpp, source)
        return self.slide_out

    def _resolve_mpp(self, spots: Spots) -> tuple[float | None, str]:
        written = getattr(self, "_mpp_written", None)
        return written if written is not None else super()._resolve_mpp(spots)


def _geometry(shapes, where: str) -> tuple[np.ndarray, float, bool]:
    """(centres (n, 2) in the shapes' units, median diameter or side, whether they are squares)."""
    geoms = shapes.geometry
    kinds = set(geoms.geom_type)
    if kinds == {"Point"}:
        if "radius" not in shapes:
            raise InputError(f"{where}: points without a 'radius' column are not spots")
        radius = shapes["radius"].to_numpy(np.float64)
        return np.column_stack([geoms.x.to_numpy(), geoms.y.to_numpy()]), float(np.median(2 * radius)), False
    if kinds <= {"Polygon", "MultiPolygon"}:
        centroid = geoms.centroid
        area = geoms.area.to_numpy(np.float64)
        bounds = geoms.bounds
        box = ((bounds["maxx"] - bounds["minx"]) * (bounds["maxy"] - bounds["miny"])).to_numpy(np.float64)
        square = bool(np.allclose(area, box, rtol=1e-3))
        size = np.sqrt(area) if square else 2 * np.sqrt(area / np.pi)
        return np.column_stack([centroid.x.to_numpy(), centroid.y.to_numpy()]), float(np.median(size)), square
    raise InputError(
        f"{where}: geometries {sorted(kinds)} are not spots, bins or cells (circles or polygons)"
    )


read_spatialdata = SpatialDataReader.as_function("read_spatialdata")
