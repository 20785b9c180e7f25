"""Spot expression of the synthetic study: negative-binomial counts from region-specific programs.

A spot's mean expression mixes the cell-type profiles of the regions under it (marker genes from
``pathways_kg/data/cell_type_markers.tsv`` are raised in their cell type) and is modulated by the
regions' Hallmark pathway activities (genes of a set are raised in proportion to its activity).
Counts are drawn from a negative binomial (gamma-Poisson) around that mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from histokg.synth.biology import REGIONS
from pathways_kg.io import data_path
from pathways_kg.sources import read_gmt

MARKER_FOLD = 25.0  # a marker's expression in its own cell type relative to elsewhere
# Hallmark sets that no region activates: their genes are in the panel as negative controls.
CONTROL_SETS = ("HALLMARK_PEROXISOME", "HALLMARK_UV_RESPONSE_DN", "HALLMARK_PROTEIN_SECRETION")


def hallmark_sets() -> dict[str, list[str]]:
    """MSigDB Hallmark gene sets shipped with pathways_kg (CC BY 4.0)."""
    return {gs.id: list(gs.genes) for gs in read_gmt(data_path("h.all.v2024.1.Hs.symbols.gmt"), "hallmark")}


def cell_type_markers() -> dict[str, list[str]]:
    """Curated canonical markers per cell type shipped with pathways_kg."""
    table = pd.read_csv(data_path("cell_type_markers.tsv"), sep="\t", comment="#")
    return {ct: list(group["gene"]) for ct, group in table.groupby("cell_type", sort=False)}


@dataclass
class ExpressionModel:
    genes: list[str]
    cell_types: list[str]
    pathways: list[str]
    profiles: np.ndarray  # (n_cell_types, n_genes) relative rates
    loadings: np.ndarray  # (n_pathways, n_genes) log-scale effect of each pathway on each gene
    composition: np.ndarray  # (n_regions, n_cell_types)
    activity: np.ndarray  # (n_regions, n_pathways)
    library_size: np.ndarray  # (n_regions,)


def build_expression_model(rng: np.random.Generator) -> ExpressionModel:
    """Gene panel, cell-type profiles and pathway loadings for the planted biology."""
    sets = hallmark_sets()
    markers = cell_type_markers()
    pathways = sorted({p for r in REGIONS for p in r.pathways} | set(CONTROL_SETS))
    missing = [p for p in pathways if p not in sets]
    if missing:
        raise RuntimeError(f"Hallmark sets missing from pathways_kg data: {missing}")
    cell_types = sorted({c for r in REGIONS for c in r.cell_types})
    genes = sorted(
        {g for p in pathways for g in sets[p]} | {g for c in cell_types for g in markers.get(c, [])}
    )
    index = {g: i for i, g in enumerate(genes)}

    baseline = rng.lognormal(mean=0.0, sigma=1.0, size=len(genes))
    profiles = np.tile(baseline, (len(cell_types), 1))
    for ci, ct in enumerate(cell_types):
        if ct not in markers:
            raise RuntimeError(
                f"cell type {ct!r} of the synthetic biology has no markers in cell_type_markers.tsv"
            )
        for g in markers[ct]:
            profiles[ci, index[g]] = baseline[index[g]] * MARKER_FOLD

    loadings = np.zeros((len(pathways), len(genes)))
    for pi, p in enumerate(pathways):
        cols = [index[g] for g in sets[p]]
        loadings[pi, cols] = rng.uniform(0.4, 1.2, len(cols))

    composition = np.zeros((len(REGIONS), len(cell_types)))
    activity = np.zeros((len(REGIONS), len(pathways)))
    for k, reg in enumerate(REGIONS):
        for ct, frac in reg.cell_types.items():
            composition[k, cell_types.index(ct)] = frac
        for p, act in reg.pathways.items():
            activity[k, pathways.index(p)] = act
    library = np.array([r.library_size for r in REGIONS], dtype=float)
    return ExpressionModel(genes, cell_types, pathways, profiles, loadings, composition, activity, library)


def spot_programs(
    model: ExpressionModel, fractions: np.ndarray, rng: np.random.Generator, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell-type composition, pathway activity and library size of spots from their region fractions.

    ``fractions`` is (n_spots, n_regions) and need not sum to one (tissue may not fill a spot).
    """
    tissue = fractions.sum(axis=1, keepdims=True)
    weights = fractions / np.maximum(tissue, 1e-9)
    composition = weights @ model.composition
    activity = weights @ model.activity + noise * rng.standard_normal((len(fractions), len(model.pathways)))
    library = (
        (weights @ model.library_size)
        * np.clip(tissue[:, 0], 0.2, 1.0)
        * rng.lognormal(0, 0.25, len(fractions))
    )
    return composition, activity, library


def draw_counts(
    model: ExpressionModel,
    composition: np.ndarray,
    activity: np.ndarray,
    library: np.ndarray,
    rng: np.random.Generator,
    dispersion: float = 0.15,
) -> np.ndarray:
    """Negative-binomial UMI counts (n_spots, n_genes) as int32."""
    rate = (composition @ model.profiles) * np.exp(activity @ model.loadings)
    mean = library[:, None] * rate / rate.sum(axis=1, keepdims=True)
    if dispersion > 0:
        mean = rng.gamma(shape=1.0 / dispersion, scale=mean * dispersion)
    return rng.poisson(mean).astype(np.int32)
