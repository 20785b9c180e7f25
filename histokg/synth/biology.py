"""The planted biology of the synthetic study: tissue regions, their look and their expression programs.

Each region is a histopathology phenotype with
- an appearance (nuclear density, nuclear size and shape, stain intensities, special structures),
- a cell-type composition (cell types of ``pathways_kg/data/cell_type_markers.tsv``), and
- pathway activities (MSigDB Hallmark gene sets shipped in ``pathways_kg/data``).
Expression of a spot is drawn from the mixture of the regions under it, so the knowledge graph's
phenotype -> cell type and phenotype -> pathway edges describe exactly what was planted.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Appearance:
    """How a region looks in H&E at 1 um/px (the rendering scale)."""

    nuclei_per_mm2: float  # nuclear density
    nucleus_radius_um: float  # mean nuclear radius
    radius_jitter: float  # relative spread of nuclear radius (pleomorphism)
    elongation: float  # 1 = round; >1 spindle-shaped along the local fibre direction
    hematoxylin: float  # nuclear stain strength (optical density)
    eosin: float  # background (cytoplasm/stroma) eosin strength
    fibres: float  # strength of fibrous texture in the eosin channel
    structure: str = "none"  # "glands" (rings around lumens), "adipocytes" (empty cells), "debris"


@dataclass(frozen=True)
class Region:
    name: str
    appearance: Appearance
    cell_types: dict[str, float]  # composition, fractions summing to 1
    pathways: dict[str, float]  # Hallmark gene set -> activity (log-fold scale)
    library_size: float  # mean UMI per spot
    prevalence: float = 1.0  # relative area in a section
    color: tuple[int, int, int] = (128, 128, 128)  # for overlays and plots
    children_of: str = ""  # phenotype parent in the KG's is_a hierarchy
    extra_markers: tuple[str, ...] = field(default=())


REGIONS: tuple[Region, ...] = (
    Region(
        name="invasive carcinoma",
        appearance=Appearance(6500, 4.0, 0.35, 1.2, 0.85, 0.22, 0.05),
        cell_types={
            "tumour epithelial cell": 0.7,
            "fibroblast": 0.1,
            "macrophage": 0.1,
            "T cell": 0.05,
            "endothelial cell": 0.05,
        },
        pathways={
            "HALLMARK_E2F_TARGETS": 1.4,
            "HALLMARK_G2M_CHECKPOINT": 1.3,
            "HALLMARK_MYC_TARGETS_V1": 0.9,
            "HALLMARK_GLYCOLYSIS": 0.5,
        },
        library_size=9000,
        prevalence=1.3,
        color=(200, 40, 60),
        children_of="tumour",
    ),
    Region(
        name="stroma",
        appearance=Appearance(1100, 2.4, 0.2, 3.2, 0.8, 0.42, 0.9),
        cell_types={
            "fibroblast": 0.65,
            "endothelial cell": 0.15,
            "macrophage": 0.1,
            "smooth muscle cell": 0.1,
        },
        pathways={
            "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION": 1.4,
            "HALLMARK_TGF_BETA_SIGNALING": 0.8,
            "HALLMARK_ANGIOGENESIS": 0.6,
        },
        library_size=4500,
        prevalence=1.3,
        color=(240, 140, 180),
    ),
    Region(
        name="immune infiltrate",
        appearance=Appearance(11000, 2.8, 0.12, 1.05, 1.05, 0.18, 0.1),
        cell_types={"T cell": 0.45, "B cell": 0.25, "plasma cell": 0.1, "macrophage": 0.1, "fibroblast": 0.1},
        pathways={
            "HALLMARK_ALLOGRAFT_REJECTION": 1.3,
            "HALLMARK_INTERFERON_GAMMA_RESPONSE": 1.0,
            "HALLMARK_IL2_STAT5_SIGNALING": 0.8,
            "HALLMARK_INFLAMMATORY_RESPONSE": 0.7,
        },
        library_size=6000,
        prevalence=0.8,
        color=(60, 60, 200),
    ),
    Region(
        name="normal gland",
        appearance=Appearance(3000, 3.2, 0.12, 1.1, 0.8, 0.3, 0.3, structure="glands"),
        cell_types={
            "luminal epithelial cell": 0.5,
            "myoepithelial cell": 0.25,
            "fibroblast": 0.15,
            "endothelial cell": 0.1,
        },
        pathways={
            "HALLMARK_ESTROGEN_RESPONSE_EARLY": 1.2,
            "HALLMARK_APICAL_JUNCTION": 0.8,
            "HALLMARK_ESTROGEN_RESPONSE_LATE": 0.6,
        },
        library_size=6000,
        prevalence=0.8,
        color=(60, 170, 80),
    ),
    Region(
        name="adipose tissue",
        appearance=Appearance(250, 2.5, 0.2, 1.6, 0.6, 0.4, 0.0, structure="adipocytes"),
        cell_types={"adipocyte": 0.8, "endothelial cell": 0.1, "fibroblast": 0.1},
        pathways={"HALLMARK_ADIPOGENESIS": 1.4, "HALLMARK_FATTY_ACID_METABOLISM": 0.9},
        library_size=2500,
        prevalence=0.9,
        color=(240, 210, 60),
    ),
    Region(
        name="necrosis",
        appearance=Appearance(3500, 1.5, 0.6, 1.0, 0.75, 0.5, 0.0, structure="debris"),
        cell_types={"macrophage": 0.5, "tumour epithelial cell": 0.4, "fibroblast": 0.1},
        pathways={"HALLMARK_HYPOXIA": 1.4, "HALLMARK_APOPTOSIS": 1.0, "HALLMARK_GLYCOLYSIS": 0.8},
        library_size=2000,
        prevalence=0.35,
        color=(120, 90, 60),
    ),
)

REGION_NAMES: tuple[str, ...] = tuple(r.name for r in REGIONS)


def region(name: str) -> Region:
    for r in REGIONS:
        if r.name == name:
            return r
    raise KeyError(f"unknown synthetic region {name!r}; known: {', '.join(REGION_NAMES)}")
