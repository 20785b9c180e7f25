"""Render H&E-like tissue whose look depends on the region: region maps, nuclei, stroma, stains.

The section is laid out on a coarse grid (``layout_um`` per pixel) as a tissue blob divided into
regions by competing smooth random fields; each region is then painted at ``render_um`` per pixel
as hematoxylin and eosin concentration maps (nuclei stamped as ellipses, fibrous stroma, gland
rings around lumens, empty adipocytes, necrotic debris) and turned into RGB with the Beer-Lambert
law and a pair of stain vectors. A per-section stain/scanner shift (stain vectors, intensities,
brightness, blur) is applied that has nothing to do with biology: the planted spurious correlate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from histokg.synth.biology import REGIONS, Appearance

# Ruifrok & Johnston (2001) hematoxylin vector; eosin tuned towards the pink of scanned H&E.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.10, 0.85, 0.38])
BACKGROUND_OD = 0.015


@dataclass(frozen=True)
class StainShift:
    """Section-level appearance change unrelated to biology (stain batch, scanner)."""

    hematoxylin: tuple[float, float, float]
    eosin: tuple[float, float, float]
    h_scale: float
    e_scale: float
    brightness: float  # multiplies transmitted light
    blur_px: float  # scanner focus, in render pixels

    @staticmethod
    def draw(rng: np.random.Generator, strength: float) -> StainShift:
        h = HEMATOXYLIN + rng.normal(0, 0.08 * strength, 3)
        e = EOSIN + rng.normal(0, 0.08 * strength, 3)
        h, e = np.clip(h, 0.05, None), np.clip(e, 0.02, None)
        return StainShift(
            hematoxylin=tuple(float(v) for v in h / np.linalg.norm(h)),
            eosin=tuple(float(v) for v in e / np.linalg.norm(e)),
            h_scale=float(np.exp(rng.normal(0, 0.18 * strength))),
            e_scale=float(np.exp(rng.normal(0, 0.2 * strength))),
            brightness=float(np.clip(1 + rng.normal(0, 0.04 * strength), 0.85, 1.1)),
            blur_px=float(abs(rng.normal(0, 0.35 * strength))),
        )

    def as_dict(self) -> dict:
        return asdict(self)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to zero mean, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-8)


def layout_regions(
    rng: np.random.Generator, shape: tuple[int, int], layout_um: float, prevalence_jitter: float = 0.35
) -> np.ndarray:
    """Region label map on the coarse grid: -1 outside tissue, else an index into ``REGIONS``.

    Regions are the argmax of smooth random fields (about 150 um correlation length) offset by
    their prevalence; immune infiltrate is drawn to the tumour margin and necrosis forms in the
    tumour core, as in real carcinomas.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = (yy / (h - 1)) * 2 - 1, (xx / (w - 1)) * 2 - 1
    blob = (xx / 0.93) ** 2 + (yy / 0.9) ** 2 + 0.3 * smooth_field(rng, shape, 120 / layout_um)
    tissue = blob < 0.8
    tissue = ndimage.binary_opening(tissue, iterations=2)
    labels_, n = ndimage.label(tissue)
    if n > 1:  # keep the main piece of tissue
        sizes = ndimage.sum(tissue, labels_, range(1, n + 1))
        tissue = labels_ == (1 + int(np.argmax(sizes)))

    names = [r.name for r in REGIONS]
    tumour, immune, necrosis = (
        names.index("invasive carcinoma"),
        names.index("immune infiltrate"),
        names.index("necrosis"),
    )
    sigma = 150 / layout_um
    fields = np.stack([smooth_field(rng, shape, sigma) for _ in REGIONS])
    offsets = np.log([r.prevalence for r in REGIONS]) + rng.normal(0, prevalence_jitter, len(REGIONS))
    fields += offsets[:, None, None].astype(np.float32)
    fields[necrosis] = -np.inf  # necrosis is placed inside the tumour below
    label = np.argmax(fields, axis=0)

    # Immune cells gather at the invasive margin: boost the immune field near the tumour.
    dist = ndimage.distance_transform_edt(label != tumour) * layout_um
    boost = 1.2 * np.exp(-dist / 120.0) * (label != tumour)
    fields[immune] += boost.astype(np.float32)
    label = np.argmax(fields, axis=0)

    # Necrosis: the tumour core, where the tumour field dominates most.
    in_tumour = (label == tumour) & tissue
    if in_tumour.sum() > 50:
        others = np.delete(fields, [tumour, necrosis], axis=0).max(axis=0)
        margin = fields[tumour] - others
        core = in_tumour & (margin > np.quantile(margin[in_tumour], 0.8))
        core = ndimage.binary_opening(core, iterations=2)
        label[core] = necrosis
    label[~tissue] = -1
    return label.astype(np.int8)


def upsample_labels(label: np.ndarray, factor: int) -> np.ndarray:
    """Upsample a label map by ``factor`` with smooth boundaries (argmax of bilinear one-hot channels)."""
    h, w = label.shape
    size = (w * factor, h * factor)
    best = np.full((h * factor, w * factor), -1.0, np.float32)
    out = np.full((h * factor, w * factor), -1, np.int8)
    for k in range(int(label.min()), int(label.max()) + 1):
        onehot = Image.fromarray((label == k).astype(np.float32), mode="F")
        chan = np.asarray(onehot.resize(size, Image.Resampling.BILINEAR))
        better = chan > best
        best[better] = chan[better]
        out[better] = k
    return out


def region_fractions(label: np.ndarray, centers_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Fraction of each region (and of tissue) inside discs centred at ``centers_px`` (x, y) on ``label``.

    Returns (n_centres, n_regions + 1); the last column is the tissue fraction.
    """
    r = int(np.ceil(radius_px))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (ox**2 + oy**2) <= radius_px**2
    ox, oy = ox[disc], oy[disc]
    cx = np.round(centers_px[:, 0]).astype(int)[:, None] + ox[None]
    cy = np.round(centers_px[:, 1]).astype(int)[:, None] + oy[None]
    h, w = label.shape
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    vals = np.full(cx.shape, -1, dtype=np.int16)
    vals[inside] = label[cy[inside], cx[inside]]
    n_regions = len(REGIONS)
    out = np.zeros((len(centers_px), n_regions + 1), dtype=np.float64)
    for k in range(n_regions):
        out[:, k] = (vals == k).mean(axis=1)
    out[:, -1] = (vals >= 0).mean(axis=1)
    return out


# --------------------------------------------------------------------------- painting


def _stamp_ellipses(
    target: np.ndarray,
    centers: np.ndarray,
    radius: np.ndarray,
    elongation: np.ndarray,
    angle: np.ndarray,
    intensity: np.ndarray,
    chunk: int = 20000,
) -> None:
    """Paint anti-aliased filled ellipses into ``target`` (max-composited), vectorised in chunks."""
    if len(centers) == 0:
        return
    h, w = target.shape
    half = int(np.ceil(float((radius * np.sqrt(elongation)).max()))) + 1
    oy, ox = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    ox, oy = ox.ravel(), oy.ravel()
    flat = target.ravel()
    for start in range(0, len(centers), chunk):
        sl = slice(start, start + chunk)
        c = centers[sl]
        ix, iy = np.floor(c[:, 0]).astype(np.int64), np.floor(c[:, 1]).astype(np.int64)
        fx, fy = (c[:, 0] - ix).astype(np.float32), (c[:, 1] - iy).astype(np.float32)
        dx = ox[None] - fx[:, None]
        dy = oy[None] - fy[:, None]
        cos, sin = np.cos(angle[sl])[:, None], np.sin(angle[sl])[:, None]
        u = dx * cos + dy * sin
        v = -dx * sin + dy * cos
        e = np.sqrt(elongation[sl])[:, None]
        r = radius[sl][:, None]
        d = np.sqrt((u / (r * e)) ** 2 + (v * e / r) ** 2)
        val = np.clip((1.0 - d) * r + 0.5, 0.0, 1.0) * intensity[sl][:, None]
        px, py = ix[:, None] + ox[None].astype(np.int64), iy[:, None] + oy[None].astype(np.int64)
        ok = (val > 0.01) & (px >= 0) & (px < w) & (py >= 0) & (py < h)
        np.maximum.at(flat, (py[ok] * w + px[ok]), val[ok].astype(target.dtype))


def _sample_points(rng: np.random.Generator, mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` uniformly random (x, y) points (sub-pixel) inside a boolean mask."""
    idx = np.flatnonzero(mask)
    if n <= 0 or len(idx) == 0:
        return np.zeros((0, 2), np.float32)
    pick = rng.choice(idx, size=n, replace=True)
    y, x = np.divmod(pick, mask.shape[1])
    return np.stack([x + rng.random(n), y + rng.random(n)], axis=1).astype(np.float32)


def _nuclei(
    rng: np.random.Generator, pts: np.ndarray, look: Appearance, um: float, fibre_angle: np.ndarray | None
):
    n = len(pts)
    radius = np.clip(
        look.nucleus_radius_um / um * (1 + look.radius_jitter * rng.standard_normal(n)), 0.8, None
    )
    elong = np.clip(look.elongation * (1 + 0.15 * rng.standard_normal(n)), 1.0, None)
    if fibre_angle is not None and look.elongation > 1.5:
        iy = np.clip(pts[:, 1].astype(int), 0, fibre_angle.shape[0] - 1)
        ix = np.clip(pts[:, 0].astype(int), 0, fibre_angle.shape[1] - 1)
        angle = fibre_angle[iy, ix] + 0.25 * rng.standard_normal(n)
    else:
        angle = rng.uniform(0, np.pi, n)
    intensity = look.hematoxylin * np.clip(1 + 0.15 * rng.standard_normal(n), 0.5, 1.5)
    return (
        radius.astype(np.float32),
        elong.astype(np.float32),
        angle.astype(np.float32),
        intensity.astype(np.float32),
    )


def paint_section(rng: np.random.Generator, label: np.ndarray, um: float) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin concentration maps for a render-resolution label map."""
    h, w = label.shape
    hema = np.zeros((h, w), np.float32)
    eosin = np.zeros((h, w), np.float32)

    # Fibre direction varies smoothly; fibrous texture is noise smeared along it.
    theta = (
        np.pi
        * ndimage.zoom(
            rng.random((max(2, h // 150), max(2, w // 150))),
            (h / max(2, h // 150), w / max(2, w // 150)),
            order=1,
        )[:h, :w]
    )
    noise = rng.standard_normal((h, w), dtype=np.float32)
    along_x = ndimage.gaussian_filter(noise, (0.7, 3.0), truncate=2.5)
    along_y = ndimage.gaussian_filter(noise, (3.0, 0.7), truncate=2.5)
    mix = np.cos(theta) ** 2
    fibres = (mix * along_x + (1 - mix) * along_y).astype(np.float32)
    fibres /= fibres.std() + 1e-8
    mottle = ndimage.gaussian_filter(rng.standard_normal((h // 4, w // 4), dtype=np.float32), 1.5)
    mottle = np.array(Image.fromarray(mottle, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    mottle /= mottle.std() + 1e-8

    area_mm2 = (um / 1000.0) ** 2
    for k, reg in enumerate(REGIONS):
        mask = label == k
        if not mask.any():
            continue
        look = reg.appearance
        base = look.eosin * (1 + 0.4 * look.fibres * fibres[mask]) * (1 + 0.08 * mottle[mask])
        eosin[mask] = np.clip(base, 0, None)
        n_nuclei = rng.poisson(look.nuclei_per_mm2 * mask.sum() * area_mm2)
        if look.structure == "glands":
            _paint_glands(rng, hema, eosin, mask, look, um)
            n_nuclei = int(n_nuclei * 0.25)  # stromal nuclei between glands
        elif look.structure == "adipocytes":
            _paint_adipocytes(rng, eosin, mask, um)
        elif look.structure == "debris":
            eosin[mask] *= 0.8 + 0.5 * (rng.random(mask.sum()) > 0.7)
        pts = _sample_points(rng, mask, n_nuclei)
        if look.structure == "adipocytes":
            keep = eosin[pts[:, 1].astype(int), pts[:, 0].astype(int)] > 0
            pts = pts[keep]
        _stamp_ellipses(hema, pts, *_nuclei(rng, pts, look, um, theta))
    return hema, eosin


def _paint_glands(rng, hema, eosin, mask, look: Appearance, um: float) -> None:
    """Ducts: a ring of epithelial nuclei around an empty lumen, an outer ring of flat myoepithelium."""
    h, w = mask.shape
    area_um2 = mask.sum() * um * um
    n = max(1, int(area_um2 / (110.0**2) * 0.5))
    centers = _sample_points(
        rng, ndimage.binary_erosion(mask, iterations=int(30 / um)) if mask.sum() > 4000 else mask, n * 3
    )
    chosen: list[np.ndarray] = []
    radii: list[float] = []
    for c in centers:
        R = rng.uniform(28, 48) / um
        if all(np.hypot(*(c - p)) > (R + q) * 1.15 for p, q in zip(chosen, radii, strict=True)):
            chosen.append(c)
            radii.append(R)
        if len(chosen) >= n:
            break
    yy, xx = np.ogrid[0:h, 0:w]
    ring_pts, ring_r, ring_e, ring_a, ring_i = [], [], [], [], []
    for c, R in zip(chosen, radii, strict=True):
        x0, x1 = int(max(0, c[0] - R - 3)), int(min(w, c[0] + R + 4))
        y0, y1 = int(max(0, c[1] - R - 3)), int(min(h, c[1] + R + 4))
        d = np.hypot(xx[:, x0:x1] - c[0], yy[y0:y1] - c[1])
        sub_e = eosin[y0:y1, x0:x1]
        sub_e[d < R] = look.eosin * 1.2  # epithelial cytoplasm
        sub_e[d < 0.5 * R] = 0.0  # lumen
        for frac, elong, r_um, count_per_um in (
            (0.68, 1.3, look.nucleus_radius_um, 1 / 7.0),
            (0.97, 2.6, 2.2, 1 / 12.0),
        ):
            k = max(6, int(2 * np.pi * R * frac * um * count_per_um))
            phi = np.sort(rng.uniform(0, 2 * np.pi, k))
            rr = R * frac * (1 + 0.04 * rng.standard_normal(k))
            ring_pts.append(np.stack([c[0] + rr * np.cos(phi), c[1] + rr * np.sin(phi)], 1))
            ring_r.append(np.full(k, r_um / um) * (1 + 0.1 * rng.standard_normal(k)))
            ring_e.append(np.full(k, elong))
            ring_a.append(phi + np.pi / 2)  # long axis along the ring
            ring_i.append(np.full(k, look.hematoxylin) * (1 + 0.1 * rng.standard_normal(k)))
    if ring_pts:
        _stamp_ellipses(
            hema,
            np.concatenate(ring_pts).astype(np.float32),
            np.clip(np.concatenate(ring_r), 0.8, None).astype(np.float32),
            np.concatenate(ring_e).astype(np.float32),
            np.concatenate(ring_a).astype(np.float32),
            np.concatenate(ring_i).astype(np.float32),
        )


def _paint_adipocytes(rng, eosin, mask, um: float) -> None:
    """Fat: large empty cells (Voronoi) separated by thin eosinophilic membranes."""
    area_um2 = mask.sum() * um * um
    n = max(2, int(area_um2 / (70.0**2)))
    seeds = _sample_points(rng, mask, n)
    ys, xs = np.nonzero(mask)
    d, _ = cKDTree(seeds).query(np.stack([xs, ys], 1), k=2)
    membrane = (d[:, 1] - d[:, 0]) < 2.2 / um
    eosin[ys, xs] = np.where(membrane, eosin[ys, xs] * 1.3, 0.0)


def compose_rgb(
    hema: np.ndarray, eosin: np.ndarray, tissue: np.ndarray, shift: StainShift, rng: np.random.Generator
) -> np.ndarray:
    """Beer-Lambert composition of the stain maps into an RGB ``uint8`` image."""
    h_vec = np.asarray(shift.hematoxylin, np.float32)
    e_vec = np.asarray(shift.eosin, np.float32)
    H = hema * np.float32(shift.h_scale)
    E = eosin * np.float32(shift.e_scale)
    if shift.blur_px > 0.05:
        H = ndimage.gaussian_filter(H, shift.blur_px)
        E = ndimage.gaussian_filter(E, shift.blur_px)
    speckle = 0.02 * rng.standard_normal(H.shape, dtype=np.float32) * tissue
    od = H[..., None] * h_vec + E[..., None] * e_vec + (BACKGROUND_OD + speckle)[..., None]
    rgb = np.exp(od * np.float32(-np.log(10.0)))
    rgb *= np.float32(255.0 * shift.brightness)
    return np.clip(rgb, 0, 255).astype(np.uint8)
