"""Spot-centred patch extraction speed vs a bare loop of openslide.read_region over the same boxes.

Run: .venv/bin/python benchmarks/tiling.py [--repeats 3]
Slides: the real CMU-1-Small-Region.svs (Aperio, one level) with a 100 um hexagonal spot grid over
its tissue, and the real HER2+ ST section C2 converted to a pyramidal TIFF with its real spots.
Patches are 112 um at 0.5 um/px (224 px). Prints patches/s for histokg (Slide.read_physical: level
choice, read, RGBA->RGB, resize), for the bare read_region loop, and their ratio (best of --repeats
alternating rounds).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openslide
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import shared_data_dir

from histokg.st import read_legacy_st
from histokg.st.dataset import SpotPatchDataset
from histokg.wsi import convert, detect_tissue, open_slide

PATCH_UM, PATCH_PX = 112.0, 224


def hex_spots(slide_path: Path) -> np.ndarray:
    with open_slide(slide_path) as slide:
        mask = detect_tissue(slide)
        pitch = 100.0 / slide.mpp
        w, h = slide.dimensions
        pts = [
            (x + (pitch / 2 if r % 2 else 0), y)
            for r, y in enumerate(np.arange(pitch / 2, h, pitch * math.sqrt(3) / 2))
            for x in np.arange(pitch / 2, w, pitch)
        ]
        pts = np.array(pts)
        return pts[mask.contains(pts)]


def bench(path: Path, xy: np.ndarray, mpp: float, repeats: int) -> dict:
    """Best-of-``repeats`` rates of the two loops, run in alternating rounds (a shared machine's load
    then falls on both alike)."""
    osr = openslide.OpenSlide(str(path))
    with open_slide(path, mpp=mpp) as slide:
        level = slide.best_level(PATCH_UM / PATCH_PX)
        down = slide.level_downsamples[level]
        side = max(1, int(round(PATCH_UM / slide.mpp / down)))
        half0 = PATCH_UM / slide.mpp / 2
        boxes = [(int(round(x - half0)), int(round(y - half0))) for x, y in xy]
        t_ours, t_bare = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for x, y in xy:
                slide.read_physical((x, y), PATCH_UM, PATCH_PX)
            t_ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            for box in boxes:
                osr.read_region(box, level, (side, side))
            t_bare.append(time.perf_counter() - start)
    osr.close()
    n = len(xy)
    return {"n": n, "level": level, "side": side, "ours": n / min(t_ours), "bare": n / min(t_bare)}


def loader_rate(adata, workers: int) -> float:
    ds = SpotPatchDataset(adata)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers)
    start = time.perf_counter()
    n = sum(len(b["image"]) for b in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = shared_data_dir()
    rows = []
    cmu = data / "wsi" / "CMU-1-Small-Region.svs"
    rows.append(("CMU-1-Small-Region.svs (hex grid)", bench(cmu, hex_spots(cmu), 0.499, args.repeats)))
    with tempfile.TemporaryDirectory() as tmp:
        her = data / "her2st"
        adata = read_legacy_st(
            her / "counts" / "C2.tsv.gz",
            her / "spots" / "C2_selection.tsv",
            her / "images" / "C2_HE.jpg",
            library_id="C2",
        )
        mpp = adata.uns["spatial"]["C2"]["metadata"]["mpp"]
        pyramid = convert(her / "images" / "C2_HE.jpg", Path(tmp) / "C2.tiff", mpp=mpp)
        rows.append(
            ("her2st C2 pyramid (real spots)", bench(pyramid, adata.obsm["spatial"], mpp, args.repeats))
        )
        adata.uns["spatial"]["C2"]["metadata"]["source_image_path"] = str(pyramid)
        rates = {w: loader_rate(adata, w) for w in (0, 2)}
    print(
        f"{'slide':36s} {'spots':>6s} {'level':>5s} {'read px':>7s} {'histokg p/s':>12s} {'bare read_region p/s':>21s} {'ratio':>6s}"
    )
    for name, r in rows:
        print(
            f"{name:36s} {r['n']:6d} {r['level']:5d} {r['side']:7d} {r['ours']:12.1f} {r['bare']:21.1f} {r['ours'] / r['bare']:6.2f}"
        )
    print(
        f"DataLoader over her2st C2 pyramid (SpotPatchDataset, batch 32): {rates[0]:.1f} patches/s with 0 workers, "
        f"{rates[2]:.1f} with 2 workers ({rates[2] / rates[0]:.2f}x)"
    )


if __name__ == "__main__":
    main()
