"""Generate a synthetic Visium-like study with planted truth (the project's embedded default data).

Layout of ``OUT_DIR``::

    study.json                      manifest: sections, files, stain shifts, config
    config.yaml                     resolved SynthConfig
    slides/<library_id>.tiff        pyramidal tiled JPEG TIFF with MPP, opened by OpenSlide
    sections/<library_id>/          Space Ranger ``outs`` layout:
        filtered_feature_bc_matrix.h5
        spatial/tissue_positions.csv, scalefactors_json.json,
        spatial/tissue_hires_image.png, tissue_lowres_image.png
        truth.csv                   per spot: region label, region fractions, cell types, pathway activities

Reading a study back is :func:`histokg.st.study.load_study` (a study folder is data, read beside the
other readers).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from histokg.config import save_config, to_dict
from histokg.io import atomic_open, claim_output_dir, write_json
from histokg.keys import Key
from histokg.st.readers.visium import POSITION_COLUMNS, write_spaceranger_outs
from histokg.synth.biology import REGION_NAMES
from histokg.synth.expression import build_expression_model, draw_counts, spot_programs
from histokg.synth.render import (
    StainShift,
    compose_rgb,
    layout_regions,
    paint_section,
    region_fractions,
    upsample_labels,
)
from histokg.wsi.pyramid import write_pyramid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthConfig:
    """Size and realism knobs of the synthetic study."""

    seed: int = 0
    n_sections: int = 3
    width_um: float = 2600.0
    height_um: float = 2200.0
    mpp: float = 0.5  # level-0 microns per pixel of the written slides
    render_um: float = 1.0  # tissue is painted at this scale, then resampled to ``mpp``
    layout_um: float = 5.0  # grid of the region layout
    spot_diameter_um: float = 55.0
    spot_pitch_um: float = 100.0
    edge_margin_um: float = 40.0  # spots start this close to the slide edge (some patches cross it)
    min_tissue_in_spot: float = 0.3  # tissue fraction for a spot to count as under tissue
    dispersion: float = 0.15  # negative-binomial dispersion of counts
    stain_shift: float = 1.0  # strength of the per-section stain/scanner shift (0 = none)
    jpeg_quality: int = 90
    hires_max_px: int = 2000
    lowres_max_px: int = 600
    workers: int = 0  # processes drawing sections in parallel (0: one per CPU core, at most n_sections)


@dataclass
class SectionTruth:
    library_id: str
    slide: Path
    spaceranger: Path
    truth: Path
    n_spots: int
    n_in_tissue: int
    stain_shift: dict


def hex_grid(cfg: SynthConfig) -> pd.DataFrame:
    """Visium-style spot array: odd rows offset by half a pitch; centres in level-0 pixels."""
    row_step = cfg.spot_pitch_um * math.sqrt(3) / 2
    margin = cfg.edge_margin_um
    n_rows = int((cfg.height_um - 2 * margin) // row_step) + 1
    n_cols = int((cfg.width_um - 2 * margin) // (cfg.spot_pitch_um / 2)) + 1
    rows, cols = [], []
    for r in range(n_rows):
        for c in range(r % 2, n_cols, 2):
            rows.append(r)
            cols.append(c)
    rows, cols = np.asarray(rows), np.asarray(cols)
    x_um = margin + cols * cfg.spot_pitch_um / 2
    y_um = margin + rows * row_step
    return pd.DataFrame({Key.obs.array_row: rows, Key.obs.array_col: cols, "x_um": x_um, "y_um": y_um})


def _barcodes(rng: np.random.Generator, n: int) -> list[str]:
    letters = np.array(list("ACGT"))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        code = "".join(letters[rng.integers(0, 4, 16)]) + "-1"
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def generate_section(cfg: SynthConfig, index: int, out_dir: Path, model) -> SectionTruth:
    """Render one section, write its slide and Space Ranger outputs, return where they are."""
    library_id = f"S{index + 1}"
    rng = np.random.default_rng([cfg.seed, index])
    layout_shape = (int(round(cfg.height_um / cfg.layout_um)), int(round(cfg.width_um / cfg.layout_um)))
    label = layout_regions(rng, layout_shape, cfg.layout_um)

    factor = int(round(cfg.layout_um / cfg.render_um))
    label_r = upsample_labels(label, factor)
    hema, eosin = paint_section(rng, label_r, cfg.render_um)
    shift = StainShift.draw(rng, cfg.stain_shift)
    rgb = compose_rgb(hema, eosin, label_r >= 0, shift, rng)
    del hema, eosin

    width_px = int(round(cfg.width_um / cfg.mpp))
    height_px = int(round(cfg.height_um / cfg.mpp))
    level0 = np.asarray(Image.fromarray(rgb).resize((width_px, height_px), Image.Resampling.BILINEAR))
    slide_path = write_pyramid(
        level0, out_dir / "slides" / f"{library_id}.tiff", cfg.mpp, quality=cfg.jpeg_quality, progress=False
    )
    del level0

    spots = hex_grid(cfg)
    fractions = region_fractions(
        label, spots[["x_um", "y_um"]].to_numpy() / cfg.layout_um, cfg.spot_diameter_um / 2 / cfg.layout_um
    )
    in_tissue = fractions[:, -1] >= cfg.min_tissue_in_spot
    spots[Key.obs.barcode] = _barcodes(rng, len(spots))
    spots[Key.obs.in_tissue] = in_tissue.astype(int)
    spots["pxl_col_in_fullres"] = np.round(spots["x_um"] / cfg.mpp).astype(int)
    spots["pxl_row_in_fullres"] = np.round(spots["y_um"] / cfg.mpp).astype(int)

    region_frac = fractions[in_tissue, :-1]
    composition, activity, library = spot_programs(model, region_frac, rng)
    counts = draw_counts(model, composition, activity, library, rng, cfg.dispersion)

    scale_hires = min(1.0, cfg.hires_max_px / max(width_px, height_px))
    scale_lowres = min(1.0, cfg.lowres_max_px / max(width_px, height_px))
    img = Image.fromarray(rgb)
    hires = np.asarray(
        img.resize((round(width_px * scale_hires), round(height_px * scale_hires)), Image.Resampling.BOX)
    )
    lowres = np.asarray(
        img.resize((round(width_px * scale_lowres), round(height_px * scale_lowres)), Image.Resampling.BOX)
    )
    spot_px = cfg.spot_diameter_um / cfg.mpp
    sr_dir = out_dir / "sections" / library_id
    write_spaceranger_outs(
        sr_dir,
        positions=spots[POSITION_COLUMNS],
        counts=counts,
        barcodes=spots.loc[in_tissue, Key.obs.barcode].tolist(),
        gene_ids=model.genes,
        gene_names=model.genes,
        scalefactors={
            Key.scalefactors.spot_diameter_fullres: spot_px,
            "fiducial_diameter_fullres": spot_px * 1.6,
            Key.scalefactors.tissue_hires_scalef: scale_hires,
            Key.scalefactors.tissue_lowres_scalef: scale_lowres,
        },
        hires=hires,
        lowres=lowres,
        library_id=library_id,
    )

    barcodes = spots.loc[in_tissue, Key.obs.barcode].to_numpy()
    truth = pd.DataFrame(index=pd.Index(barcodes, name=Key.obs.barcode))
    truth[Key.obs.region] = np.asarray(REGION_NAMES)[np.argmax(region_frac, axis=1)]
    truth["tissue_fraction"] = fractions[in_tissue, -1]
    for k, name in enumerate(REGION_NAMES):
        truth[f"frac:{name}"] = region_frac[:, k]
    for c, name in enumerate(model.cell_types):
        truth[f"celltype:{name}"] = composition[:, c]
    for p, name in enumerate(model.pathways):
        truth[f"pathway:{name}"] = activity[:, p]
    truth_path = sr_dir / "truth.csv"
    with atomic_open(truth_path, "w", encoding="utf-8", newline="") as fh:
        truth.to_csv(fh)
    return SectionTruth(
        library_id, slide_path, sr_dir, truth_path, len(spots), int(in_tissue.sum()), shift.as_dict()
    )


# What a study writes into its folder (``histokg synth`` refuses a folder holding any, unless --overwrite).
STUDY_FILES = ("study.json", "config.yaml")
STUDY_DIRS = ("slides", "sections")


def prepare_study_dir(out_dir: str | Path, *, overwrite: bool = False, inputs=()) -> Path:
    """Refuse a folder holding a study unless ``overwrite`` (then remove its files); check it is writable."""
    return claim_output_dir(
        out_dir,
        (*STUDY_FILES, *STUDY_DIRS),
        what="a study",
        overwrite=overwrite,
        label="study folder",
        folders=STUDY_DIRS,
        inputs=inputs,
    )


def generate_study(out_dir: str | Path, cfg: SynthConfig = SynthConfig()) -> Path:
    """Write a synthetic study to ``out_dir``; returns the path of its ``study.json`` manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_expression_model(np.random.default_rng([cfg.seed, 10_000]))
    workers = cfg.workers or min(cfg.n_sections, os.cpu_count() or 1)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        # Sections are independent and each has its own seeded RNG: the result does not depend on
        # how many processes drew them.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = [pool.submit(generate_section, cfg, i, out_dir, model) for i in range(cfg.n_sections)]
            sections = [f.result() for f in tqdm(futures, desc="synthetic sections", unit="section")]
    else:
        sections = [
            generate_section(cfg, i, out_dir, model)
            for i in tqdm(range(cfg.n_sections), desc="synthetic sections", unit="section")
        ]
    save_config(cfg, out_dir / "config.yaml")
    manifest = {
        "kind": "histokg-synthetic-study",
        "config": to_dict(cfg),
        "regions": list(REGION_NAMES),
        "genes": len(model.genes),
        "sections": [
            {
                Key.obs.library_id: s.library_id,
                "slide": str(s.slide.relative_to(out_dir)),
                "spaceranger": str(s.spaceranger.relative_to(out_dir)),
                "truth": str(s.truth.relative_to(out_dir)),
                "n_spots": s.n_spots,
                "n_in_tissue": s.n_in_tissue,
                "stain_shift": s.stain_shift,
            }
            for s in sections
        ],
    }
    path = out_dir / "study.json"
    write_json(path, manifest)
    log.info(
        "synthetic study with %d sections written to %s in %.1f s",
        len(sections),
        out_dir,
        time.perf_counter() - start,
    )
    return path
