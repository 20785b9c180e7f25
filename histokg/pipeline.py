"""The end-to-end demo on the embedded synthetic study (``histokg demo`` / ``make demo``).

1. generate the study (4 sections: two train, one validates, one is held out for evaluation);
2. read it back through the Visium reader, pair spots with patches (``paired.h5ad``, overlays);
3. build the knowledge graph restricted to the study's genes and embed it with pykeen (bundle);
4. train the dual encoder once per configured loss (the InfoNCE baseline and a KG loss);
5. embed every section with each model, evaluate on the held-out section, write reports
   (:func:`histokg.heldout.evaluate_checkpoint`);
6. build the slide-retrieval index over the study and slides of known phenotype mixes
   (:func:`histokg.retrieval.demo.build_demo_index`), evaluate it, and say how to start the web app;
7. print a summary table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from histokg.config import Component, check, save_config
from histokg.errors import InputError
from histokg.heldout import evaluate_checkpoint, headline, summary_table
from histokg.io import atomic_open, claim_output_dir, holding_lock
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


DEMO_DIRS = ("study", "overlays", "kg", "train", "eval", "retrieval", "index")


def prepare_demo_dir(out_dir: str | Path, *, overwrite: bool = False, inputs=()) -> Path:
    """Refuse a folder holding an earlier demo unless ``overwrite`` (then remove its outputs); check it is writable."""
    return claim_output_dir(
        out_dir,
        DEMO_OUTPUTS,
        what="a demo",
        overwrite=overwrite,
        label="demo folder",
        hint="pass --overwrite to replace it, or choose another --out",
        folders=DEMO_DIRS,
        inputs=inputs,
    )


@holding_lock("out_dir", "histokg demo", label="demo folder")
def run_demo(
    out_dir: str | Path, cfg: DemoConfig = DemoConfig(), *, overwrite: bool = False, inputs=()
) -> str:
    """Run the demo into ``out_dir``; returns a printable summary.

    The folder is locked for the run (:func:`histokg.io.output_lock`); ``inputs``: files the caller
    read (a config) that the demo's outputs must not replace."""
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

    out_dir = prepare_demo_dir(out_dir, overwrite=overwrite, inputs=inputs)
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
