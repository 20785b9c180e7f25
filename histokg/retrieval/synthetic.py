"""Synthetic whole slides with a known *phenotype mix*, for evaluating slide retrieval.

The synthetic study (:mod:`histokg.synth`) draws every section from the same mix of regions. To
test that slides sharing a mix retrieve each other, each slide here is laid out and painted by the
study's own renderer (:func:`histokg.synth.render.layout_regions`, ``paint_section``,
``compose_rgb`` with a random per-slide stain/scanner shift), after a mix-specific relabelling of
the region map: e.g. the ``benign`` mix turns carcinoma into normal glands and necrosis into fat.
Slides carry no transcriptomics (they are indexed from tissue tiles) and are written as pyramidal
TIFFs with a ``slides.csv`` table (``path, slide_id, mix``) for ``histokg index build --table``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from histokg.io import atomic_open

log = logging.getLogger(__name__)

MIXES: dict[str, dict[str, str]] = {
    # tumour-rich: glands become carcinoma, fat becomes stroma
    "carcinoma": {"normal gland": "invasive carcinoma", "adipose tissue": "stroma"},
    # benign breast: no carcinoma or necrosis, few immune cells
    "benign": {
        "invasive carcinoma": "normal gland",
        "necrosis": "adipose tissue",
        "immune infiltrate": "stroma",
    },
    # inflamed: immune infiltrate where the tumour would be
    "inflamed": {
        "invasive carcinoma": "immune infiltrate",
        "necrosis": "immune infiltrate",
        "normal gland": "stroma",
    },
}


@dataclass(frozen=True)
class MixSlidesConfig:
    mixes: tuple[str, ...] = tuple(MIXES)
    per_mix: int = 2
    seed: int = 0
    width_um: float = 1200.0
    height_um: float = 1000.0
    mpp: float = 0.5
    stain_shift: float = 1.0
    quality: int = 90
    names: dict[str, dict[str, str]] = field(default_factory=lambda: dict(MIXES))


def relabel(label: np.ndarray, mix: dict[str, str]) -> np.ndarray:
    """Apply a region-name mapping to a region label map (-1 = background stays)."""
    from histokg.synth.biology import REGION_NAMES

    out = label.copy()
    for src, dst in mix.items():
        out[label == REGION_NAMES.index(src)] = REGION_NAMES.index(dst)
    return out


def render_slide(cfg: MixSlidesConfig, mix: str, index: int, path: Path) -> dict:
    from histokg.synth.biology import REGION_NAMES
    from histokg.synth.render import StainShift, compose_rgb, layout_regions, paint_section, upsample_labels
    from histokg.wsi.pyramid import write_pyramid

    rng = np.random.default_rng([cfg.seed, list(cfg.names).index(mix), index])
    layout_um, render_um = 5.0, 1.0
    shape = (int(round(cfg.height_um / layout_um)), int(round(cfg.width_um / layout_um)))
    label = relabel(layout_regions(rng, shape, layout_um), cfg.names[mix])
    label_r = upsample_labels(label, int(layout_um / render_um))
    hema, eosin = paint_section(rng, label_r, render_um)
    rgb = compose_rgb(hema, eosin, label_r >= 0, StainShift.draw(rng, cfg.stain_shift), rng)
    size = (int(round(cfg.width_um / cfg.mpp)), int(round(cfg.height_um / cfg.mpp)))
    level0 = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    write_pyramid(level0, path, cfg.mpp, quality=cfg.quality)
    tissue = label[label >= 0]
    return {name: float(np.mean(tissue == k)) for k, name in enumerate(REGION_NAMES)}


def generate_mix_slides(out_dir: str | Path, cfg: MixSlidesConfig = MixSlidesConfig()) -> Path:
    """Write ``per_mix`` slides of each mix and ``slides.csv``; returns the table's path."""
    out_dir = Path(out_dir)
    rows = []
    for mix in cfg.mixes:
        for i in range(cfg.per_mix):
            sid = f"{mix}-{i + 1}"
            path = out_dir / "slides" / f"{sid}.tiff"
            if not path.is_file():
                fractions = render_slide(cfg, mix, i, path)
                log.info("mix slide %s: %s", sid, {k: round(v, 2) for k, v in fractions.items() if v > 0})
            rows.append(f"slides/{sid}.tiff,{sid},{mix}")
    table = out_dir / "slides.csv"
    with atomic_open(table, "w", encoding="utf-8") as fh:
        fh.write("path,slide_id,mix\n" + "\n".join(rows) + "\n")
    return table
