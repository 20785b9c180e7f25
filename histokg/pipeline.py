"""The end-to-end demo on the embedded synthetic study (``histokg demo`` / ``make demo``).

1. generate the study (4 sections: two train, one validates, one is held out for evaluation);
2. read it back through the Visium reader, pair spots with patches (``paired.h5ad``, overlays);
3. build the knowledge graph restricted to the study's genes and embed it with pykeen (bundle);
4. train the dual encoder once per configured loss (the InfoNCE baseline and a KG loss);
5. embed every section with each model, evaluate on the held-out section, write reports;
6. build the slide-retrieval index over the study and slides of known phenotype mixes
   (:func:`histokg.retrieval.demo.build_demo_index`), evaluate it, and say how to start the web app;
7. print a summary table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np

from histokg import keys
from histokg.config import Component, check, save_config
from histokg.errors import InputError
from histokg.io import atomic_open, claim_output_dir
from histokg.keys import Key
from histokg.models import ModelConfig
from histokg.st.pairing import PairingConfig
from histokg.synth.study import SynthConfig
from histokg.train.config import DataConfig, EarlyStoppingConfig, OptimConfig, TrainConfig
from pathways_kg.config import BuildConfig, EmbedConfig
from pathways_kg.config import TrainingConfig as KGTrainingConfig

log = logging.getLogger(__name__)


def _demo_train() -> TrainConfig:
    # CPU-sized: 112 um patches at 112 px through the frozen ImageNet EfficientNet-Lite0 (installed from
    # PyPI); its features are computed once per run and cached, so only the heads train. Against timm's
    # tiny `test_efficientnet` trained from scratch it raised held-out Pearson by about 60 % and halved the
    # demo's wall time (docs/benchmarks.md). configs/train/gpu_resnet50.yaml is the full-size setting.
    return TrainConfig(
        data=DataConfig(patch_px=112, n_genes=128),
        model=ModelConfig(
            image_encoder="tf_efficientnet_lite0",
            image_weights="imagenet:tf_efficientnet_lite0",
            freeze_image=True,
            cache_features=True,
            embed_dim=64,
            expr_hidden=(128,),
        ),
        optim=OptimConfig(epochs=20, batch_size=32, lr=3e-3, image_lr=3e-3, warmup_steps=5),
        early_stopping=EarlyStoppingConfig(metric="recall@5", patience=6),
        checkpoint_every=50,
    )


@dataclass(frozen=True)
class KGDemoConfig:
    build: BuildConfig = field(default_factory=BuildConfig)
    embed: EmbedConfig = field(
        default_factory=lambda: EmbedConfig(
            model=Component("transe", {"embedding_dim": 64}),
            training=KGTrainingConfig(epochs=30, batch_size=1024),
        )
    )


@dataclass(frozen=True)
class DemoConfig:
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(n_sections=4))
    pairing: PairingConfig = field(default_factory=PairingConfig)
    kg: KGDemoConfig = field(default_factory=KGDemoConfig)
    train: TrainConfig = field(default_factory=_demo_train)
    losses: tuple[Component, ...] = (Component("infonce"), Component("kg_soft", {"lam": 0.3}))
    val_slide: str = "S3"
    test_slide: str = "S4"
    index_per_mix: int = 4  # whole slides per phenotype mix added to the retrieval index (>= 2)

    def __post_init__(self) -> None:
        check(
            self.index_per_mix >= 2,
            "index_per_mix",
            f"must be >= 2 (leave-one-out needs a pair), got {self.index_per_mix}",
        )
        check(bool(self.losses), "losses", "name at least one loss")


# What a demo writes into its folder; --overwrite removes exactly these before a new demo starts.
DEMO_OUTPUTS = (
    "demo_config.yaml", "study", "paired.h5ad", "overlays", "kg", "train", "eval", "retrieval", "index", "summary.txt"
)  # fmt: skip


def prepare_demo_dir(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse a folder holding an earlier demo unless ``overwrite`` (then remove its outputs); check it is writable."""
    return claim_output_dir(
        out_dir,
        DEMO_OUTPUTS,
        what="a demo",
        overwrite=overwrite,
        label="demo folder",
        hint="pass --overwrite to replace it, or choose another --out",
    )


def run_demo(out_dir: str | Path, cfg: DemoConfig = DemoConfig(), *, overwrite: bool = False) -> str:
    """Run the demo into ``out_dir``; returns a printable summary."""
    from histokg.retrieval.demo import build_demo_index
    from histokg.st.contract import write_h5ad
    from histokg.st.pairing import pair_spots, spots_overlay
    from histokg.st.study import load_study
    from histokg.synth.study import generate_study
    from histokg.train import train
    from histokg.wsi import save_png
    from pathways_kg.build import build_graph
    from pathways_kg.embed import embed_graph
    from pathways_kg.graph import write_graph

    out_dir = prepare_demo_dir(out_dir, overwrite=overwrite)
    save_config(cfg, out_dir / "demo_config.yaml")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = time.perf_counter() - clock
        clock = time.perf_counter()

    study = out_dir / "study"
    generate_study(study, cfg.synth)
    lap("synthesise study")

    adata = load_study(study)
    libs = list(adata.obs[Key.obs.library_id].cat.categories)
    for name in (cfg.val_slide, cfg.test_slide):
        if name not in libs:
            raise InputError(f"demo: slide {name!r} is not in the study ({libs}); check synth.n_sections")
    pair_spots(adata, cfg.pairing)
    write_h5ad(adata, out_dir / "paired.h5ad")
    for lib in libs:
        save_png(spots_overlay(adata, lib), out_dir / "overlays" / f"{lib}_spots.png")
    lap("read + pair")

    graph = build_graph(cfg.kg.build, universe=list(adata.var_names))
    write_graph(graph, out_dir / "kg" / "graph")
    bundle = embed_graph(out_dir / "kg" / "graph", cfg.kg.embed, out_dir / "kg" / "bundle")
    lap("knowledge graph build + embed")

    rows = []
    checkpoint = None
    for loss in cfg.losses:
        tcfg = dataclasses.replace(
            cfg.train,
            out_dir=str(out_dir / "train" / loss.name),
            loss=loss,
            data=dataclasses.replace(
                cfg.train.data,
                study=str(study),
                val_slides=(cfg.val_slide,),
                exclude_slides=(cfg.test_slide,),
            ),
            prior=dataclasses.replace(cfg.train.prior, bundle=str(out_dir / "kg" / "bundle")),
        )
        result = train(tcfg)
        lap(f"train {loss.name}")
        results = evaluate_checkpoint(
            adata, result.best_checkpoint, out_dir / "eval" / loss.name, heldout_libs=(cfg.test_slide,)
        )
        rows.append((loss.name, headline(results)))
        checkpoint = result.best_checkpoint
        lap(f"embed + evaluate {loss.name}")

    index_text = build_demo_index(out_dir, checkpoint, study, per_mix=cfg.index_per_mix)
    lap(f"retrieval index ({cfg.losses[-1].name} model)")

    kg_metrics = bundle.meta.get("metrics", {})
    lines = [
        f"histokg demo -> {out_dir}",
        f"  study:   {study} ({len(libs)} sections, {adata.n_obs} spots, {adata.n_vars} genes); "
        f"train {', '.join(lb for lb in libs if lb not in (cfg.val_slide, cfg.test_slide))}, "
        f"validate {cfg.val_slide}, held out {cfg.test_slide}",
        f"  paired:  {out_dir / 'paired.h5ad'}, overlays in {out_dir / 'overlays'}",
        f"  KG:      {len(graph.entities)} entities, {len(graph.edges)} edges; {cfg.kg.embed.model.name} bundle "
        f"{out_dir / 'kg' / 'bundle'}; test MRR {_fmt(kg_metrics, 'trained', 'mrr')} vs random {_fmt(kg_metrics, 'random', 'mrr')}",
        "",
        f"  held-out section {cfg.test_slide} (reports in {out_dir / 'eval'}/<loss>/report.html):",
        summary_table(rows),
        "",
        index_text,
        "",
    ]
    lines += [f"  {name}: {seconds:.1f} s" for name, seconds in timings.items()]
    text = "\n".join(lines)
    with atomic_open(out_dir / "summary.txt", "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return text


def _fmt(metrics: dict, which: str, key: str) -> str:
    value = metrics.get(which, {}).get(key) if isinstance(metrics.get(which), dict) else None
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


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
    k: int = 10,
    key: str = keys.IMAGE,
    store_predictions: bool = False,
) -> dict:
    """Evaluate an embedded AnnData (reference = training slides, held out = the rest or as given).

    ``key``: the image embeddings ``obsm[key]`` (``tl.embed``'s ``key_added``); the expression
    embeddings are read from ``obsm[keys.expr_key(key)]``.

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
    results, panel = evaluate(reference, heldout, k=k, label_key=label_key, use_rep=key, return_panel=True)
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
