"""Held-out evaluation of a trained model: embedded slides (or a checkpoint) -> results, predictions, report.

What ``histokg evaluate`` and the demo run around :func:`histokg.evaluate.evaluate` (the metrics and
their protocol):

- :func:`evaluate_checkpoint`: embed an AnnData with a checkpoint, then :func:`evaluate_embedded`, and
  write the embedded AnnData;
- :func:`evaluate_embedded`: split an embedded AnnData into reference (training) and held-out slides
  (from the checkpoint's record of its training slides, or as given), evaluate, and write
  ``results.json``, ``predicted.h5ad`` and the report (:func:`histokg.report.write_report`); a held-out
  slide that chose the checkpoint (early stopping) is a warning in the results;
- :func:`embedded_model`: which model and slides made the embeddings (and a check that ``checkpoint``
  is the one that did);
- :func:`headline` / :func:`summary_table`: the few numbers of the demo's table.

Inference only: this module never imports ``histokg.train`` (``tests/test_layers.py``), so
``histokg evaluate`` runs without the training code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np

from histokg import keys
from histokg.errors import InputError
from histokg.keys import Key

log = logging.getLogger(__name__)


# What an evaluation writes into its folder by name (figures besides); an input among them is refused.
EVALUATION_FILES = ("results.json", "predicted.h5ad", "embedded.h5ad", "report.md", "report.html")


def evaluate_checkpoint(
    adata: ad.AnnData, checkpoint: str | Path, out_dir: str | Path, *, heldout_libs: Sequence[str] = ()
) -> dict:
    """Embed ``adata`` with a checkpoint, evaluate on held-out slides; writes ``embedded.h5ad`` (all
    sections, embeddings in ``obsm``, the held-out predictions too), ``predicted.h5ad`` and the report
    into ``out_dir``; returns the results."""
    from histokg.checkpoint import load_model
    from histokg.st.contract import write_h5ad
    from histokg.tl.embed import embed

    out_dir = Path(out_dir)
    model = load_model(checkpoint)
    embedded = embed(adata, model, copy=True)
    results = evaluate_embedded(
        embedded, out_dir, checkpoint=checkpoint, heldout_libs=heldout_libs, store_predictions=True
    )
    write_h5ad(embedded, out_dir / "embedded.h5ad")
    return results


def evaluate_embedded(
    adata: ad.AnnData,
    out_dir: str | Path,
    *,
    checkpoint: str | Path | None = None,
    reference_libs: Sequence[str] = (),
    heldout_libs: Sequence[str] = (),
    k: int | None = None,
    alpha: float | None = None,
    key: str = keys.IMAGE,
    methods: Sequence[str] = ("knn", "ridge"),
    smooth: float = 0.0,
    store_predictions: bool = False,
) -> dict:
    """Evaluate an embedded AnnData (reference = training slides, held out = the rest or as given).

    ``key``: the image embeddings ``obsm[key]`` (``tl.embed``'s ``key_added``); the expression
    embeddings are read from ``obsm[keys.expr_key(key)]``. ``methods`` and ``smooth``: how expression
    is predicted from the image embeddings, ``k`` and ``alpha`` its parameters (None: chosen on the
    reference) (:func:`histokg.evaluate.evaluate`).

    The model is read from ``uns["histokg"]["params"]`` and, when given, ``checkpoint`` (which must be
    the one the embeddings came from). Writes ``results.json``, ``predicted.h5ad`` (held-out spots x
    panel genes: measured log1p CP10k in ``X``, raw ``layers["counts"]``, predictions in
    ``layers["pred_knn"]``/``["pred_ridge"]``) and the report into ``out_dir``; returns the results,
    whose ``warnings`` list what makes them less than a clean held-out score. ``store_predictions``
    also writes the held-out predictions into ``adata`` (:func:`histokg.tl.predict.add_predictions`:
    ``obsm["pred_knn"]``/``["pred_ridge"]`` over the panel genes, NaN for the reference spots).
    """
    from histokg.evaluate import evaluate
    from histokg.report import write_report
    from histokg.st.contract import write_h5ad
    from histokg.tl.predict import add_predictions

    model = embedded_model(adata, checkpoint)
    libs = [str(x) for x in adata.obs[Key.obs.library_id].astype("category").cat.categories]
    reference_libs = list(reference_libs) or list(model.get(Key.params.train_slides) or [])
    if not reference_libs:
        raise InputError(
            "evaluate: name the reference (training) slides with --reference or give --checkpoint"
        )
    heldout_libs = list(heldout_libs) or [lb for lb in libs if lb not in reference_libs]
    unknown = [lb for lb in (*reference_libs, *heldout_libs) if lb not in libs]
    if unknown:
        raise InputError(f"evaluate: libraries {unknown} are not in the data ({libs})")
    warnings = []
    seen = sorted(set(heldout_libs) & set(model.get(Key.params.val_slides) or []))
    chose = model.get(Key.params.validation_chose)  # a bool read back from .h5ad may be numpy's
    if chose is not None and not bool(chose):  # a last.pt that ran its fixed epochs: no slide chose it
        seen = []
    if seen:
        warnings.append(
            f"held-out slide(s) {seen} chose the checkpoint (validation slides for early stopping): "
            "their scores are optimistic; hold out slides the training run never saw"
        )
    for text in warnings:
        log.warning("evaluate: %s", text)
    lib = adata.obs[Key.obs.library_id].astype(str).to_numpy()
    reference = adata[np.isin(lib, list(reference_libs))].copy()
    heldout = adata[np.isin(lib, heldout_libs)].copy()
    label_key = Key.obs.region if Key.obs.region in adata.obs else None
    results, panel = evaluate(
        reference,
        heldout,
        methods=methods,
        k=k,
        smooth=smooth,
        label_key=label_key,
        use_rep=key,
        return_panel=True,
    )
    results["model"] = model
    results["warnings"] = warnings
    if panel.n_vars:
        write_h5ad(panel, Path(out_dir) / "predicted.h5ad")
        if store_predictions:
            add_predictions(adata, panel)
    write_report(results, out_dir, heldout_panel_adata=panel, reference=reference, use_rep=key)
    return results


def embedded_model(adata: ad.AnnData, checkpoint: str | Path | None = None) -> dict:
    """Model, loss, checkpoint hash and slides of the embeddings in ``adata`` (and of ``checkpoint``)."""
    info = adata.uns.get(Key.uns.histokg)
    params = dict(info.get(Key.histokg.params) or {}) if isinstance(info, dict) else {}
    model = {
        key: params.get(key)
        for key in (
            Key.params.model,
            Key.params.loss,
            Key.params.checkpoint,
            Key.params.checkpoint_sha256,
            Key.params.train_slides,
            Key.params.val_slides,
            Key.params.validation_chose,
        )
    }
    model = {
        k: (list(map(str, v)) if k.endswith("slides") and v is not None else v) for k, v in model.items()
    }
    if checkpoint is not None:
        from histokg.checkpoint import load_checkpoint
        from histokg.io import file_sha256

        sha = file_sha256(checkpoint)
        made_with = model.get(Key.params.checkpoint_sha256)
        if made_with and made_with != sha:
            raise InputError(
                f"evaluate: the embeddings were made with checkpoint {str(made_with)[:12]} "
                f"({model.get(Key.params.checkpoint)}), not with {checkpoint} ({sha[:12]}); "
                "evaluate with the checkpoint that embedded them, or embed again"
            )
        meta = load_checkpoint(checkpoint)["meta"]
        cfg = meta.get("config", {})
        model.update(
            model=cfg.get("model", {}).get("image_encoder", model.get("model")),
            loss=cfg.get("loss", {}).get("name", model.get("loss")),
            checkpoint=str(checkpoint),
            checkpoint_sha256=sha,
            train_slides=list(meta.get("train_slides", [])),
            val_slides=list(meta.get("val_slides", [])),
            validation_chose=meta.get("validation_chose", True),
        )
    return model


def headline(results: dict) -> dict:
    """The few numbers the demo table shows, from :func:`histokg.evaluate.evaluate`'s summary."""
    s = results["summary"]

    def pick(*names: str) -> float:
        node = s
        for n in names:
            if not isinstance(node, dict) or n not in node:
                return float("nan")
            node = node[n]
        return float(node) if node is not None else float("nan")

    return {
        "recall@5_i2e": pick("retrieval", "image_to_expression", "R@5"),
        "recall@5_e2i": pick("retrieval", "expression_to_image", "R@5"),
        "chance@5": pick("retrieval", "chance", "R@5"),
        "pearson_heg": pick("prediction", "knn", "pearson_heg"),
        "pearson_hvg": pick("prediction", "knn", "pearson_hvg"),
        "ari": pick("clustering", "image", "ari"),
    }


def summary_table(rows: Sequence[tuple[str, dict]]) -> str:
    """One line per model (rows of ``(name, headline(results))``): recall@5 both ways and chance,
    Pearson of kNN-predicted expression (HEG, HVG), ARI of image-embedding clusters."""
    header = f"  {'loss':14s} {'R@5 img->expr':>13s} {'R@5 expr->img':>13s} {'chance':>7s} {'Pearson HEG':>11s} {'Pearson HVG':>11s} {'ARI':>6s}"
    out = [header]
    for name, s in rows:
        out.append(
            f"  {name:14s} {s['recall@5_i2e']:13.3f} {s['recall@5_e2i']:13.3f} {s['chance@5']:7.3f} "
            f"{s['pearson_heg']:11.3f} {s['pearson_hvg']:11.3f} {s['ari']:6.3f}"
        )
    return "\n".join(out)
