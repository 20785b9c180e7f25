"""The README's pictures of the exports: a ``histokg predict`` folder's GeoJSON over the slide thumbnail
(what QuPath shows after Import objects) and its SpatialData store rendered by spatialdata-plot.

Run: ``python benchmarks/export_figures.py OUT/SLIDE [--gene ERBB2] [--img docs/img]`` on a folder written
by ``histokg predict ... --geojson --spatialdata``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    from histokg import pl
    from histokg.keys import Key, SData
    from histokg.st.contract import read_h5ad

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--gene", help="gene coloured in the SpatialData picture (default: the most variable)"
    )
    parser.add_argument("--img", type=Path, default=Path("docs/img"))
    ns = parser.parse_args()
    adata = read_h5ad(ns.folder / "predicted.h5ad")
    lib = str(adata.obs[Key.obs.library_id].iloc[0])
    entry = adata.uns["spatial"][lib]
    collection = json.loads((ns.folder / "predicted.geojson").read_text())
    pl.geojson_overlay(
        collection,
        entry["images"]["hires"],
        entry["scalefactors"][Key.scalefactors.tissue_hires_scalef],
        title=f"{lib}: {len(collection['features'])} objects of predicted.geojson by cluster",
        path=ns.img / "predict_geojson.png",
    )
    gene = ns.gene or str(adata.var_names[adata.X.var(axis=0).argmax()])
    sdata = spatialdata.read_zarr(ns.folder / "predicted.zarr")
    fig, ax = plt.subplots(figsize=(6, 6), dpi=110)
    sdata.pl.render_images(SData.image.format(lib)).pl.render_shapes(
        SData.shapes.format(lib), color=gene, fill_alpha=0.75
    ).pl.show(
        ax=ax, coordinate_systems=SData.microns, title=f"{lib}: predicted {gene} (log1p CP10k), microns"
    )
    fig.savefig(ns.img / "predict_spatialdata.png", bbox_inches="tight")
    print(f"{ns.img / 'predict_geojson.png'}, {ns.img / 'predict_spatialdata.png'} (gene {gene})")


if __name__ == "__main__":
    main()
