"""Configuration schema of ``histokg bench`` (YAML in ``configs/bench/``; ``--set a.b=value``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from histokg.bench.features import FeatureConfig
from histokg.bench.prior import KGBenchConfig
from histokg.config import Component
from histokg.keys import Key
from pathways_kg.dataconf import check

DEFAULT_LOSSES = (
    Component("infonce"),
    Component("bleep"),
    Component("kg_soft"),
    Component("kg_negatives"),
    Component("kg_uniformity"),
    Component("kg_gaussian"),
)
BASELINES = ("mean", "naive_ridge", "frozen_pca_ridge", "frozen_ridge_cv", "frozen_knn")
IMAGE_INPUTS = ("naive", "context", "naive+context")  # extra image-head inputs (ablations.image_inputs)


@dataclass(frozen=True)
class HeadsConfig:
    """The trained part (projection heads, expression tower, temperature) and its budget."""

    embed_dim: int = 128
    expr_hidden: tuple[int, ...] = (256,)
    dropout: float = 0.1
    expr_input: str = "genes"  # "genes" (the model panel, log1p CP10k) or "kg" (KG activations)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    init_temperature: float = 0.07
    batches: str = "mixed"  # or within_slide: every batch from one training section (optim.batches)
    # > 0: the KG-regularised expression tower (histokg train's optim.gene_set_reg): first-layer weights of
    # genes sharing a KG gene set pulled towards the set's mean
    gene_set_reg: float = 0.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")
        check(self.expr_input in ("genes", "kg"), "expr_input", f"{self.expr_input!r} is not 'genes' or 'kg'")
        from histokg.train.config import BATCHINGS

        check(self.batches in BATCHINGS, "batches", f"{self.batches!r} is not one of {', '.join(BATCHINGS)}")
        check(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(
            math.isfinite(self.gene_set_reg) and self.gene_set_reg >= 0,
            "gene_set_reg",
            f"must be a finite number >= 0, got {self.gene_set_reg}",
        )


@dataclass(frozen=True)
class PanelConfig:
    """Gene panels, all chosen on the training slides of each fold."""

    n_genes: int = (
        256  # the model's panel (pp.panel_genes; expression tower input), the "panel" evaluation panel
    )
    n_mean: int = 250  # the literature-comparable panel: top mean-expressed genes (TRIPLEX on her2st)
    n_top: int = 50  # HEG-n and HVG-n inside each panel

    def __post_init__(self) -> None:
        for key in ("n_genes", "n_mean", "n_top"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class EvalConfig:
    # kNN neighbours (BLEEP-style retrieval prediction; also frozen_knn's) and the ridge probe's penalty on
    # the trained image embeddings; None: chosen per fold and run on the training sections alone, each
    # predicted from the others (histokg.tl.predict.choose_params, as histokg predict/evaluate choose them)
    k: int | None = None
    temperature: float = 0.1  # softmax(sim / temperature) weights of the neighbours
    ridge_alpha: float | None = None
    pca_dim: int = 256  # HEST-Benchmark probe: PCA of the frozen features, ridge alpha = 100 / (dim * genes)
    recall_k: int = 5
    # every prediction is also scored smoothed over the held-out slide's spot graph (squidpy):
    # (1 - smooth) * own + smooth * neighbours' mean ("smooth:" metrics); 0: not scored
    smooth: float = 0.5

    def __post_init__(self) -> None:
        check(0.0 <= self.smooth <= 1.0, "smooth", f"must be in [0, 1], got {self.smooth}")
        check(self.k is None or self.k >= 1, "k", f"must be >= 1 (or null: chosen), got {self.k}")
        check(
            self.ridge_alpha is None or (math.isfinite(self.ridge_alpha) and self.ridge_alpha >= 0),
            "ridge_alpha",
            f"must be >= 0 (or null: chosen), got {self.ridge_alpha}",
        )


@dataclass(frozen=True)
class AblationConfig:
    """Extra runs (same folds, seeds, budget); each is reported as its own row."""

    families_off: bool = False  # kg_soft with each kernel of the prior switched off in turn
    lam: tuple[float, ...] = ()  # kg_soft prior strength sweep
    uniformity_lam: tuple[float, ...] = ()  # kg_uniformity prior strength sweep (lam <= 0.5)
    beta: tuple[float, ...] = ()  # kg_negatives prior strength sweep
    kg_models: tuple[str, ...] = ()  # kg_soft with a bundle of each KG model (transe, rotate, complex, kg2e)
    expr_input_kg: tuple[str, ...] = ()  # losses trained with KG activations as the expression tower's input
    # the control of expr_input_kg: the same gene sets (sizes, overlaps, scoring) over a fixed random permutation
    # of the panel's genes, so the input has the KG's shape but none of its knowledge of which genes go together
    expr_input_kg_shuffled: tuple[str, ...] = ()
    untuned_prior: bool = False  # kg_soft with the configured (untuned) prior
    expression_prior: tuple[
        str, ...
    ] = ()  # these KG losses with W from expression similarity (no KG): the control
    # image-head inputs beside the frozen features: "naive" (the 26 colour/texture numbers, standardised on
    # the training spots), "context" (the mean of the spot's graph neighbours' frozen features), or both
    # ("naive+context"); each trains the losses in image_input_losses, and a ridge_cv baseline on the same
    # inputs runs beside them (the fair comparison)
    image_inputs: tuple[str, ...] = ()
    image_input_losses: tuple[str, ...] = ("infonce", "kg_uniformity")

    def __post_init__(self) -> None:
        # the registered names, whatever the spelling given (run.py compares them as strings)
        from histokg.losses import loss_registry
        from pathways_kg.models import model_registry

        for key, registry in (
            ("kg_models", model_registry),
            ("expr_input_kg", loss_registry),
            ("expr_input_kg_shuffled", loss_registry),
            ("expression_prior", loss_registry),
            ("image_input_losses", loss_registry),
        ):
            object.__setattr__(self, key, tuple(registry.canonical(n) for n in getattr(self, key)))
        bad = [n for n in self.image_inputs if n not in IMAGE_INPUTS]
        check(not bad, "image_inputs", f"unknown {bad}; valid: {', '.join(IMAGE_INPUTS)}")


@dataclass(frozen=True)
class BenchConfig:
    data: tuple[str, ...] = ()  # one legacy-ST folder, or .h5ad files
    folds: str = "loso"  # "loso" (leave-one-section-out) or "lopo" (leave-one-patient-out)
    patients: str | None = None  # sample,patient table; default obs['patient'] or the id's letters (her2st)
    train: tuple[str, ...] = ()  # explicit split instead of folds
    test: tuple[str, ...] = ()
    label_key: str = Key.obs.label  # obs column (or cluster_labels/) for the prior-quality AUROC
    in_tissue_only: bool = True
    seeds: int = 3
    losses: tuple[Component, ...] = DEFAULT_LOSSES
    baselines: tuple[str, ...] = BASELINES
    features: FeatureConfig = field(default_factory=FeatureConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)
    kg: KGBenchConfig = field(default_factory=KGBenchConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ablations: AblationConfig = field(default_factory=AblationConfig)
    cache_dir: str | None = None  # features and KG bundles (content-addressed); None: OUT/cache
    threads: int = 0  # torch and ONNX Runtime intra-op threads (0: as set, by the CLI the usable CPUs)

    def __post_init__(self) -> None:
        from histokg.losses import loss_registry
        from histokg.registry import unknown_name_message

        check(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}")
        # the registered names, whatever the spelling given (run.py compares them as strings)
        named = tuple(replace(c, name=loss_registry.canonical(c.name)) for c in self.losses)
        object.__setattr__(self, "losses", named)
        unknown = [c.name for c in self.losses if c.name not in loss_registry]
        check(
            not unknown,
            "losses",
            unknown_name_message("loss", unknown, loss_registry.names, plural="losses"),
        )
        bad = [b for b in self.baselines if b not in BASELINES]
        check(not bad, "baselines", f"unknown baselines {bad}; valid: {', '.join(BASELINES)}")
        check(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")
