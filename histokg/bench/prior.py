"""The KG side of a benchmark: bundles (built once, cached), priors tuned on training slides, diagnostics.

**Prior quality** is the AUROC of W_ij for "spots i and j carry the same label" (e.g. the expression
clusters of ``cluster_labels/``) over all pairs i < j of one slide, per relation family (its kernel
S^r alone) and combined (W), averaged over slides. Next to it, the same AUROC of a plain
expression similarity: the cosine of log1p CP10k profiles over the 500 most variable genes of the
training slides. A prior that ranks pairs worse than the expression it is computed from cannot add
much to a loss.

**Tuning** (training slides only): every combination of ``tune_scores`` x ``tune_temperatures`` x
``tune_activation_weights`` x ``tune_family_scales`` (``histokg.priors.PriorConfig``: activation
scoring, family softmax temperature, weight of the activation-profile kernel, a factor on every
family weight) is scored by its mean AUROC on the training
slides, and the best becomes the fold's prior (the configured prior wins ties).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from histokg.errors import InputError
from histokg.priors import KGPrior, PriorConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KGBenchConfig:
    """Which KG bundle(s) and prior the KG losses use."""

    bundle: str | None = None  # an existing pathways_kg bundle; None: build on the data's genes and embed
    gaussian_bundle: str | None = None  # a KG2E bundle for kg_gaussian; None: built when needed
    model: str = "transe"  # transe | rotate | complex | kg2e (when building)
    dim: int = 64
    epochs: int = 30
    batch_size: int = 1024
    seed: int = 0
    prior: PriorConfig = field(default_factory=PriorConfig)  # prior.bundle is ignored (see bundle)
    tune: bool = True  # choose the prior on the training slides' labels (AUROC); else use `prior` as given
    tune_scores: tuple[str, ...] = ("rank", "zmean")
    tune_temperatures: tuple[float, ...] = (0.5, 0.1)
    tune_activation_weights: tuple[float, ...] = (0.0, 1.0, 3.0)
    tune_family_scales: tuple[float, ...] = (
        1.0,
        0.0,
    )  # x every family weight (0: the activation kernel alone)
    expression_genes: int = 500  # panel (pp.panel_genes) of the expression-similarity reference

    def __post_init__(self) -> None:
        from pathways_kg.models import model_registry

        # the registered name, whatever the spelling given (the bench compares it as a string)
        object.__setattr__(self, "model", model_registry.canonical(self.model))


# ------------------------------------------------------------------------------------ bundles
def bundle_for(
    model: str, genes: Sequence[str], cfg: KGBenchConfig, cache: Path, given: str | None = None
) -> tuple[Path, float]:
    """A bundle folder for ``model``: ``given`` if set, else built on ``genes`` and embedded (cached).

    Returns the folder and the seconds spent building (0 when cached or given).
    """
    import time

    if given:
        path = Path(given)
        if not (path / "bundle.json").is_file():
            raise InputError(f"kg.bundle: {path} is not a pathways_kg bundle folder (no bundle.json)")
        return path, 0.0
    from histokg.config import Component
    from pathways_kg.build import build_graph
    from pathways_kg.config import EmbedConfig, EvaluationConfig, TrainingConfig
    from pathways_kg.embed import embed_graph
    from pathways_kg.graph import write_graph

    digest = hashlib.sha256("\n".join(sorted(genes)).encode())
    digest.update(f"{model}|{cfg.dim}|{cfg.epochs}|{cfg.batch_size}|{cfg.seed}".encode())
    folder = cache / f"{model}-{digest.hexdigest()[:16]}"
    if (folder / "bundle" / "bundle.json").is_file():
        return folder / "bundle", 0.0
    start = time.perf_counter()
    graph_dir = folder / "graph"
    if not (graph_dir / "triples.tsv").is_file():
        write_graph(build_graph(universe=list(genes)), graph_dir)
    kwargs = {"embedding_dim": cfg.dim}
    embed_cfg = EmbedConfig(
        model=Component(model, kwargs),
        training=TrainingConfig(epochs=cfg.epochs, batch_size=cfg.batch_size),
        evaluation=EvaluationConfig(max_triples=1000),
        seed=cfg.seed,
    )
    log.info("embedding the KG (%s, %d dims, %d epochs) into %s", model, cfg.dim, cfg.epochs, folder)
    embed_graph(graph_dir, embed_cfg, folder / "bundle")
    return folder / "bundle", time.perf_counter() - start


# ------------------------------------------------------------------------------------ quality
def pair_auroc(similarity: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of ``similarity[i, j]`` (i < j) for "same label"; pairs with a missing label are left out."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=object)
    keep = np.array([lb is not None and lb == lb and str(lb) != "nan" for lb in labels])
    idx = np.flatnonzero(keep)
    if len(idx) < 3:
        return float("nan")
    sub = similarity[np.ix_(idx, idx)]
    lab = labels[idx].astype(str)
    iu = np.triu_indices(len(idx), k=1)
    same = lab[iu[0]] == lab[iu[1]]
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, sub[iu]))


def _cosine(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def prior_quality(prior: KGPrior, counts, libs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC of W (``"combined"``) and of each kernel's S^r for same-label pairs, mean over slides.

    ``counts`` (spots x the prior's genes) are encoded together, as the trainer encodes a training
    split (each slide on its own with ``standardise="section"``); pairs are taken within each slide
    (``libs``).
    """
    packed = prior.encode(counts, groups=libs)
    parts = prior.unpack(packed)
    scores: dict[str, list[float]] = {k: [] for k in ("combined", *prior.kernels)}
    for name in sorted(set(libs)):
        sel = libs == name
        W = prior.pair_weights({k: v[sel] for k, v in parts.items()}).numpy()
        scores["combined"].append(pair_auroc(W, labels[sel]))
        for kernel in prior.kernels:
            scores[kernel].append(pair_auroc(_cosine(parts[kernel][sel].numpy()), labels[sel]))
    return {k: _nanmean(v) for k, v in scores.items()}


def expression_quality(values: np.ndarray, libs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC of expression similarity (e.g. log1p CP10k of 500 HVGs) for same-label pairs, mean over slides:
    ``cosine`` of the profiles as they are, ``centred_cosine`` after removing each gene's mean on the slide."""
    out: dict[str, list[float]] = {"cosine": [], "centred_cosine": []}
    for n in sorted(set(libs)):
        x, lab = values[libs == n], labels[libs == n]
        out["cosine"].append(pair_auroc(_cosine(x), lab))
        out["centred_cosine"].append(pair_auroc(_cosine(x - x.mean(axis=0)), lab))
    return {k: _nanmean(v) for k, v in out.items()}


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# ------------------------------------------------------------------------------------ tuning
def candidates(cfg: KGBenchConfig) -> list[PriorConfig]:
    """The configured prior first, then the tuning grid (without repeats)."""
    out = [cfg.prior]
    if cfg.tune:
        for score, temperature, weight, scale in itertools.product(
            cfg.tune_scores, cfg.tune_temperatures, cfg.tune_activation_weights, cfg.tune_family_scales
        ):
            alpha = {f: a * scale for f, a in cfg.prior.alpha.items()}
            if weight == 0 and not any(alpha.values()):
                continue  # no kernel left
            if not any(alpha.values()) and temperature != cfg.tune_temperatures[0]:
                continue  # the family temperature does not matter without families
            cand = dataclasses.replace(
                cfg.prior, score=score, temperature=temperature, activation_weight=weight, alpha=alpha
            )
            if cand not in out:
                out.append(cand)
    return out


def describe(cfg: PriorConfig) -> dict[str, Any]:
    return {
        "score": cfg.score,
        "temperature": cfg.temperature,
        "tau": cfg.tau,
        "activation_weight": cfg.activation_weight,
        "alpha": dict(cfg.alpha),
    }


def tune_prior(
    bundle: Path,
    genes: Sequence[str],
    counts,
    libs: np.ndarray,
    labels: np.ndarray | None,
    cfg: KGBenchConfig,
) -> tuple[PriorConfig, list[dict[str, Any]]]:
    """The prior with the best mean AUROC on the training slides, and every candidate's scores."""
    from pathways_kg.bundle import load_bundle
    from pathways_kg.graph import read_graph

    cands = candidates(cfg)
    if labels is None or len(cands) == 1:
        return cfg.prior, []
    loaded = load_bundle(bundle)
    graph = read_graph(bundle)
    table = []
    for cand in cands:
        prior = KGPrior(loaded, graph, genes, cand)
        table.append({"prior": describe(cand), "auroc_train": prior_quality(prior, counts, libs, labels)})
    best = max(
        range(len(cands)), key=lambda i: (np.nan_to_num(table[i]["auroc_train"]["combined"], nan=-1), -i)
    )
    log.info("prior tuned on the training slides: %s (AUROC %.3f; configured %.3f)", describe(cands[best]),
             table[best]["auroc_train"]["combined"], table[0]["auroc_train"]["combined"])  # fmt: skip
    return cands[best], table


class ExpressionKernel:
    """A control prior without the KG: ``W_ij = exp((cos(x_i, x_j) - 1) / tau)`` on expression profiles.

    ``x`` = log1p CP10k over the training slides' most variable genes, centred by the training mean
    (what :func:`expression_quality` calls the centred cosine), or, with ``per_section``, by the mean of
    each spot's own section (the twin of the KG prior's ``standardise="section"``). Same interface as
    the KG prior for the trainer's :class:`~histokg.train.trainer.JointModule`
    (``pair_weights_from_packed``), so a KG loss can run with it: if a loss gains as much from this W,
    the gain is expression similarity, not the KG.
    """

    kernels = ("expression",)

    def __init__(self, mean: np.ndarray, tau: float = 0.5, per_section: bool = False):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.tau = float(tau)
        self.per_section = bool(per_section)
        self.alpha = {"expression": 1.0}

    def encode(self, values: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(values, dtype=np.float32)
        if self.per_section and groups is not None:
            labels = np.asarray(groups)
            x = x.copy()
            for label in dict.fromkeys(labels.tolist()):
                rows = labels == label
                x[rows] -= x[rows].mean(axis=0)
        else:
            x = x - self.mean
        return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def pair_weights_from_packed(self, packed):
        import torch

        z = torch.nn.functional.normalize(torch.as_tensor(packed).float(), dim=-1)
        return (z @ z.T).clamp(-1.0, 1.0).sub(1.0).div(self.tau).exp()
