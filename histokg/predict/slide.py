"""Predicted expression, pathway scores, clusters and their uncertainty for one slide without transcriptomics.

:func:`predict_slide` lays observations on the slide (tissue tiles of the model's patch geometry, or
Visium-like pseudo-spots: :mod:`histokg.predict.grid`), embeds their patches through the library's one
embedding routine (:func:`histokg.tl.embed`: patches are read and embedded batch by batch, so memory
follows the batch, not the slide; a plain JPEG/PNG is decoded whole by :mod:`histokg.wsi.slide`, an
OpenSlide pyramid is read region by region), then, against a *reference* (spots with counts embedded by
``histokg embed`` with the same checkpoint):

- the model's panel genes (:func:`histokg.tl.predict_expression`, ``knn`` / ``ridge`` / ``blend``,
  optional spot-graph smoothing): ``X`` and ``layers["pred_<method>"]`` (log1p CP10k);
- their uncertainty: ``layers["pred_<method>_sd"]``, the spread of the reference neighbours' expression,
  and ``layers["pred_<method>_hw90"]``, the half-width of the 90% interval (the spread times the scale
  :func:`histokg.tl.predict.interval_scale` calibrates on the reference slides alone); with ``blend`` also
  ``layers["pred_disagreement"]``, ``|knn - ridge|``;
- pathway scores through the KG where there is a bundle (the checkpoint's ``prior.bundle`` or one given):
  the reference spots' KG activations of pathway entities (Hallmark, Reactome: :func:`histokg.tl.kg_scores`
  with the checkpoint's :class:`histokg.priors.KGPrior` settings) transferred by the kNN over the embeddings,
  into ``obsm["pred_pathways"]`` (a DataFrame over entity ids) with ``_sd`` and ``_hw90`` beside it;
- Leiden clusters of the image embeddings (:func:`histokg.tl.cluster`): ``obs["histokg_leiden"]``.

``uns["histokg"]["params"]`` records the checkpoint (hash included) and ``uns["histokg"]["predict"]``
what was predicted and how.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from histokg import keys, tl
from histokg.checkpoint import LoadedModel
from histokg.errors import InputError
from histokg.keys import Key
from histokg.tl.predict import (
    METHODS,
    embedding_checkpoint,
    interval_scale,
    neighbour_spread,
    panel_log1p,
)

log = logging.getLogger(__name__)

SPOT_KINDS = ("tiles", "hex")
PATHWAY_TYPES = ("pathway",)


@dataclass(frozen=True)
class PredictConfig:
    """What ``histokg predict`` lays on a slide and how it predicts."""

    spots: str = "tiles"  # "tiles": tissue tiles of the model's patch geometry; "hex": pseudo-spots
    spot_um: float = 55.0  # pseudo-spot diameter
    pitch_um: float = 100.0  # pseudo-spot centre-to-centre distance
    min_tissue: float = 0.5  # tissue fraction a tile or spot (its bounding square) needs
    method: str = "blend"  # knn | ridge | blend (their mean: best in histokg bench, docs/benchmarks.md)
    # kNN neighbours and ridge penalty; None: chosen on the reference, each of its slides predicted from the
    # others (histokg.tl.predict.choose_params; measured best in histokg bench, docs/benchmarks.md)
    k: int | None = None
    temperature: float = 0.1
    alpha: float | None = None  # ridge
    smooth: float = 0.5  # weight of the spatial neighbours' mean (0: none; 0.5 best in histokg bench)
    level: float = 0.9  # coverage of the reported interval
    n_pathways: int = 50  # the most variable pathway entities of the reference (0: none)
    resolution: float = 1.0  # Leiden
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.spots not in SPOT_KINDS:
            raise InputError(f"predict: spots={self.spots!r} is not one of {', '.join(SPOT_KINDS)}")
        if self.method not in METHODS:
            raise InputError(f"predict: method={self.method!r} is not one of {', '.join(METHODS)}")
        if not 0 < self.level < 1:
            raise InputError(f"predict: the interval level must be in (0, 1), got {self.level}")


def check_reference(reference: ad.AnnData, model: LoadedModel, what: str = "reference") -> None:
    """Refuse, before any compute, a reference that cannot serve this model: another checkpoint's
    embeddings, no expression embeddings, no counts."""
    sha = embedding_checkpoint(reference)
    if sha and sha != model.sha256:
        raise InputError(
            f"{what} was embedded with checkpoint {sha[:12]}, not {model.checkpoint} ({model.sha256[:12]}); "
            "embed it with this checkpoint (histokg embed --checkpoint ...)"
        )
    for key in (keys.IMAGE, keys.EXPR):
        if key not in reference.obsm:
            raise InputError(
                f"{what} has no obsm[{key!r}]; embed spots with counts with this checkpoint first "
                "(histokg embed --checkpoint CKPT SPOTS.h5ad -o REF.h5ad)"
            )
    if Key.layers.counts not in reference.layers:
        raise InputError(
            f"{what} has no layers[{Key.layers.counts!r}] (raw counts): it cannot be a reference"
        )


def observations(
    slide: str | Path,
    model: LoadedModel,
    cfg: PredictConfig,
    *,
    library_id: str | None = None,
    mpp: float | None = None,
) -> ad.AnnData:
    """The tiles or pseudo-spots of ``slide`` on the contract (no genes, not yet embedded)."""
    if cfg.spots == "hex":
        from histokg.predict.grid import hex_spots_adata

        return hex_spots_adata(
            slide,
            model.pairing.mask,
            spot_um=cfg.spot_um,
            pitch_um=cfg.pitch_um,
            min_tissue=cfg.min_tissue,
            library_id=library_id,
            mpp=mpp,
        )
    from histokg.tl.embed import tile_adata

    return tile_adata(slide, model.pairing, library_id=library_id, mpp=mpp, min_tissue=cfg.min_tissue)


def predict_slide(
    slide: str | Path,
    model: LoadedModel,
    reference: ad.AnnData,
    cfg: PredictConfig = PredictConfig(),
    *,
    kg_bundle: str | Path | None = None,
    library_id: str | None = None,
    mpp: float | None = None,
    device: str | None = None,
) -> ad.AnnData:
    """The predicted AnnData of one slide (see the module docstring): observations x panel genes."""
    check_reference(reference, model)
    obs = observations(slide, model, cfg, library_id=library_id, mpp=mpp)
    if obs.n_obs == 0:
        raise InputError(f"slide {slide}: nothing on tissue to predict")
    tl.embed(obs, model, expression=False, batch_size=cfg.batch_size, device=device)
    genes = list(model.genes)
    chosen = None
    if cfg.k is None or cfg.alpha is None:  # chosen once for the slide, on the reference alone
        chosen = tl.predict.reference_params(reference, genes=genes, temperature=cfg.temperature)
        cfg = dataclasses.replace(
            cfg,
            k=chosen["k"] if cfg.k is None else cfg.k,
            alpha=chosen["alpha"] if cfg.alpha is None else cfg.alpha,
        )
    methods = ("knn", "ridge", "blend") if cfg.method == "blend" else (cfg.method,)
    for method in methods:
        tl.predict_expression(
            obs,
            reference,
            method=method,
            genes=genes,
            k=cfg.k,
            temperature=cfg.temperature,
            alpha=cfg.alpha,
            smooth=cfg.smooth,
        )
    out = tl.panel_adata(obs, genes)
    key = keys.pred_key(cfg.method)
    out.X = np.asarray(out.layers[key], dtype=np.float32).copy()
    ref_values = panel_log1p(reference, genes, what="reference")
    z = _uncertainty(out, reference, ref_values, cfg, key)
    if cfg.method == "blend":
        out.layers[Key.layers.pred_disagreement] = np.abs(
            out.layers[Key.layers.pred_knn] - out.layers[Key.layers.pred_ridge]
        )
    bundle = kg_bundle or model.prior.bundle
    pathways = _pathways(out, reference, model, bundle, cfg) if bundle and cfg.n_pathways > 0 else []
    _cluster(out, cfg)
    info = dict(out.uns[Key.uns.histokg])
    info[Key.histokg.predict] = {
        "observations": cfg.spots,
        "config": dataclasses.asdict(cfg),
        "chosen": chosen or {},
        "slide": str(Path(slide).resolve()),
        "interval_scale": z,
        "kg_bundle": str(bundle) if bundle else "",
        "pathway_score": model.prior.score,  # how a pathway's score is computed (histokg.priors)
        "pathways": pathways,
        "reference_libraries": sorted(map(str, reference.obs[Key.obs.library_id].astype(str).unique())),
    }
    out.uns[Key.uns.histokg] = info
    return out


def _uncertainty(
    out: ad.AnnData, reference: ad.AnnData, ref_values: np.ndarray, cfg: PredictConfig, key: str
) -> float:
    """Writes the kNN neighbours' spread and the calibrated interval half-width of prediction ``key``."""
    ref_img, ref_expr = _reference_embeddings(reference)
    query = np.asarray(out.obsm[keys.IMAGE], np.float32)
    sd = neighbour_spread(query, ref_expr, ref_values, k=cfg.k, temperature=cfg.temperature)
    z = interval_scale(
        ref_img,
        ref_expr,
        ref_values,
        _groups(reference),
        k=cfg.k,
        temperature=cfg.temperature,
        level=cfg.level,
        method=cfg.method,
        alpha=cfg.alpha,
    )
    out.layers[keys.sd_key(key)] = sd.astype(np.float32)
    out.layers[keys.interval_key(key, cfg.level)] = (z * sd).astype(np.float32)
    log.info("%d%% intervals: prediction +- %.2f x the neighbours' spread", round(cfg.level * 100), z)
    return float(z)


def _pathways(
    out: ad.AnnData, reference: ad.AnnData, model: LoadedModel, bundle, cfg: PredictConfig
) -> list[str]:
    """Pathway activations of the reference spots, transferred to ``out`` by the kNN (with spread and interval)."""
    from histokg.priors import KGPrior

    prior_cfg = dataclasses.replace(model.prior, bundle=str(bundle), layer=None)
    prior = KGPrior.from_bundle(bundle, list(map(str, reference.var_names)), prior_cfg)
    scored = tl.kg_scores(reference, prior, types=PATHWAY_TYPES, top=cfg.n_pathways, key_prefix="", copy=True)
    columns = list(scored.uns[Key.uns.kg_scores]["columns"])
    values = scored.obs[columns].to_numpy(np.float32)
    ref_img, ref_expr = _reference_embeddings(reference)
    query = np.asarray(out.obsm[keys.IMAGE], np.float32)
    from histokg.metrics import knn_predict

    pred, sd = knn_predict(query, ref_expr, values, k=cfg.k, temperature=cfg.temperature, spread=True)
    z = interval_scale(
        ref_img, ref_expr, values, _groups(reference), k=cfg.k, temperature=cfg.temperature, level=cfg.level
    )
    name = Key.obsm.pred_pathways
    for key, arr in ((name, pred), (keys.sd_key(name), sd), (keys.interval_key(name, cfg.level), z * sd)):
        out.obsm[key] = pd.DataFrame(np.asarray(arr, np.float32), index=out.obs_names.copy(), columns=columns)
    log.info("%d pathway scores transferred from the reference through the KG (%s)", len(columns), bundle)
    return columns


def _cluster(out: ad.AnnData, cfg: PredictConfig) -> None:
    if out.n_obs < 3:
        log.warning("only %d observations: no clusters", out.n_obs)
        return
    tl.cluster(out, umap=False, resolution=cfg.resolution)


def _reference_embeddings(reference: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(reference.obsm[keys.IMAGE], np.float32),
        np.asarray(reference.obsm[keys.EXPR], np.float32),
    )


def _groups(reference: ad.AnnData) -> np.ndarray:
    return reference.obs[Key.obs.library_id].astype(str).to_numpy()
