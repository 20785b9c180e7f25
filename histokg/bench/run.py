"""``histokg bench``: do KG priors beat plain contrastive learning? Every loss under one protocol.

For each fold (leave-one-section-out, or one explicit split) and seed, every loss trains the same
heads (:mod:`histokg.bench.engine`) on the same frozen-tower features (computed once per slide,
:mod:`histokg.features`), the same gene panel and the same budget; only the loss differs.
Baselines run in the same process under the same protocol. Everything that is fitted or chosen
(gene panels, HEG/HVG genes, the prior's tuning, ridge probes, kNN databases) sees the training
slides only. Outputs: ``results.json``, ``results.md``, ``results.png`` (atomic writes) and
``bench_config.yaml``; a folder that already holds results is refused unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from histokg.bench.baselines import baseline_predictor, knn_predictor, ridge_cv_predictor, ridge_predictor
from histokg.bench.config import BenchConfig
from histokg.bench.data import load_sections, make_folds, section_patients, shared_genes
from histokg.bench.engine import RunInputs, train_heads
from histokg.bench.features import NAIVE, feature_device, train_device
from histokg.bench.folds import FoldBuilder, FoldData, image_inputs, without_kernel
from histokg.bench.prior import bundle_for, prior_quality
from histokg.bench.scoring import interval_scores, retrieval_scores, score_slide, summarise
from histokg.config import Component, save_config, to_dict
from histokg.features import Extractor, FeatureCache, spot_features
from histokg.io import claim_output_dir, holding_lock, write_json
from histokg.patch_stats import extra_functions
from histokg.runtime import configure_threads, usable_cpus
from histokg.st.pairing import PairingConfig

log = logging.getLogger(__name__)

# What marks a folder as holding results (bench_config.yaml is rewritten by every run, even a failed one).
RESULT_FILES = ("results.json", "results.md", "results.png")
PRIMARY = "panel/pearson_heg{n}"


class Clock:
    """Wall time per named stage (accumulating)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._start = time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.add(name, now - self._start)
        self._start = now


def prepare_out(out: str | Path, overwrite: bool = False, inputs=()) -> Path:
    """Refuse a folder holding results unless ``overwrite`` (then remove exactly those files)."""
    return claim_output_dir(
        out,
        (*RESULT_FILES, "bench_config.yaml"),
        what="bench results",
        overwrite=overwrite,
        hint="pass --overwrite to replace them, or choose another --out",
        label="bench output folder",
        inputs=inputs,
    )


# --------------------------------------------------------------------------------------- helpers
class Bench:
    """One benchmark run (see the module docstring)."""

    def __init__(self, cfg: BenchConfig, out: Path):
        self.cfg = cfg
        self.out = out
        self.clock = Clock()
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        feature_device(cfg.features.device)  # both devices are checked before any data is read
        train_device(cfg.heads.device)
        self.sections = load_sections(cfg.data, cfg.label_key, cfg.in_tissue_only)
        self.patients, self.patient_source = section_patients(self.sections, cfg.patients)
        self.folds = make_folds(list(self.sections), cfg.folds, cfg.train, cfg.test, self.patients)
        self.genes = shared_genes(self.sections)
        self.clock.lap("read sections")
        fcfg = cfg.features
        extractor = Extractor.create(
            fcfg.image_encoder,
            fcfg.image_weights,
            device=feature_device(fcfg.device),
            backend=fcfg.backend,
            model_dir=self.cache / "onnx",
            stages=fcfg.stages,
        )
        cache = FeatureCache(self.cache / "features")
        pairing = PairingConfig(
            patch_um=fcfg.patch_um,
            patch_px=fcfg.patch_px,
            read_mpp=fcfg.read_mpp,
            stain_norm=fcfg.stain_norm,
            stain_target=fcfg.stain_target,
        )
        self.feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.features_computed = []
        self.features_backend = extractor.backend
        for sid, adata in tqdm(self.sections.items(), desc="frozen features", unit="section"):
            found = spot_features(
                adata, extractor, pairing, views=fcfg.views, stain_jitter=fcfg.stain_jitter, cache=cache,
                extras=extra_functions(("naive",)),
                batch_size=fcfg.batch_size,
            )  # fmt: skip
            self.feats[sid] = (found.tower, found.extras[NAIVE])
            self.features_computed += found.computed
        computed = ", ".join(self.features_computed) or "none, cached"
        self.clock.lap(f"frozen features (computed: {computed})")
        self._setup_kg()
        self.clock.lap("knowledge graph")
        self.builder = FoldBuilder(
            cfg, self.sections, self.genes, self.feats, self.target_prior, self.bundles, self.patients
        )

    def _setup_kg(self) -> None:
        from histokg.priors import KGPrior, PriorConfig, PriorError
        from pathways_kg.bundle import load_bundle
        from pathways_kg.errors import KGError
        from pathways_kg.graph import read_graph

        cfg = self.cfg
        self.bundles: dict[str, Path] = {}
        self.kg_error: str | None = None
        models = [cfg.kg.model, *[m for m in cfg.ablations.kg_models if m != cfg.kg.model]]
        if any(c.name == "kg_gaussian" for c in cfg.losses) and "kg2e" not in models:
            models.append("kg2e")
        try:
            for model in models:
                given = (
                    cfg.kg.bundle
                    if model == cfg.kg.model
                    else (cfg.kg.gaussian_bundle if model == "kg2e" else None)
                )
                self.bundles[model], seconds = bundle_for(model, self.genes, cfg.kg, self.cache / "kg", given)
                if seconds:
                    self.clock.add(f"KG build + embed ({model})", seconds)
            main = self.bundles[cfg.kg.model]
            self.graph = read_graph(main)
            self.target_prior = KGPrior(load_bundle(main), self.graph, self.genes, PriorConfig(score="mean"))
        except (KGError, PriorError) as exc:
            self.kg_error = str(exc).splitlines()[0]
            self.bundles = {}
            self.target_prior = None
            msg = f"knowledge graph unavailable for this data ({self.kg_error}): KG losses, KG ablations and pathway targets are skipped"
            log.warning(msg)
            self.notes.append(msg)

    # ------------------------------------------------------------------ folds
    # ------------------------------------------------------------------ runs
    def baselines(self, data: FoldData) -> None:
        for name in self.cfg.baselines:
            start = time.perf_counter()
            for slide in data.fold.test:
                predict = baseline_predictor(name, data, slide, self.cfg.eval)
                self._row(data, name, "baseline", 0, slide, self.scores(data, slide, {"": predict}), {})
            self.clock.add(f"baseline {name}", time.perf_counter() - start)
        for inputs in self.cfg.ablations.image_inputs:  # the fair baseline for a head given the same inputs
            name = f"frozen_ridge_cv[+{inputs}]"
            train, test = image_inputs(data, inputs)
            for slide in data.fold.test:
                predict = ridge_cv_predictor(data, train[0], test[slide][0], f"{name} alpha")
                self._row(data, name, "baseline", 0, slide, self.scores(data, slide, {"": predict}), {})

    def scores(self, data: FoldData, slide: str, predictors: dict) -> dict[str, float]:
        """Every metric of each named prediction (prefix -> predictor), and of each smoothed over the held-out
        slide's spot graph (prefix + "smooth:") when ``eval.smooth`` > 0."""
        from histokg.tl.predict import smooth_values

        out: dict[str, float] = {}
        weight = self.cfg.eval.smooth
        for prefix, predict in predictors.items():
            out.update({f"{prefix}{k}": v for k, v in score_slide(predict, data.targets, slide).items()})
            if weight > 0:
                graph = data.graphs[slide]
                smooth = lambda v, p=predict, g=graph: smooth_values(p(v), g, weight)  # noqa: E731
                out.update(
                    {f"{prefix}smooth:{k}": v for k, v in score_slide(smooth, data.targets, slide).items()}
                )
        return out

    def _row(
        self, data: FoldData, method: str, kind: str, seed: int, slide: str, metrics: dict, extra: dict
    ) -> None:
        self.rows.append(
            {"fold": data.fold.name, "method": method, "kind": kind, "seed": seed, "slide": slide,
             "patient": self.patients.get(slide), "metrics": metrics, **extra}
        )  # fmt: skip

    def run_loss(
        self, data: FoldData, spec: Component, method: str, kind: str, *, kg_key: tuple[str, str] | None = None,
        expr_input: str = "genes", image_input: str = "frozen",
    ) -> None:  # fmt: skip
        from histokg.losses import LOSSES

        cfg = self.cfg
        cls = LOSSES[spec.name]
        needs_kg = cls.needs_prior or cls.needs_gaussians or expr_input != "genes"
        if needs_kg and not data.kg_inputs:
            return
        key = kg_key or (
            ("kg2e" if cls.needs_gaussians and cfg.kg.model != "kg2e" else cfg.kg.model),
            "tuned",
        )
        entry = data.kg_inputs.get("priors", {}).get(key, {})
        if expr_input == "genes":
            expr_train, expr_test = data.expr_inputs, data.test_expr_inputs
        else:  # "kg" or "kg_shuffled" (its control): gene-set activations, the heads see a "kg" input
            prefix = "shuffled_" if expr_input == "kg_shuffled" else ""
            expr_train, expr_test = (
                data.kg_inputs[f"{prefix}acts_train"],
                data.kg_inputs[f"{prefix}acts_test"],
            )
            expr_input = "kg"
        train_feats, test_feats = image_inputs(data, image_input)
        inputs = RunInputs(
            features=train_feats,
            expr_inputs=expr_train,
            kg=entry.get("packed") if cls.needs_prior else None,
            g_mean=entry.get("g_mean") if cls.needs_gaussians else None,
            g_var=entry.get("g_var") if cls.needs_gaussians else None,
            prior=entry.get("prior"),
            groups=data.groups,
            genes=list(data.targets.panels["panel"].genes) if expr_input == "genes" else None,
        )
        heads = (
            cfg.heads
            if expr_input == cfg.heads.expr_input
            else dataclasses.replace(cfg.heads, expr_input=expr_input, gene_set_reg=0.0)
        )
        auroc = data.prior_info.get("auroc", {}).get(f"{key[0]}/{key[1]}") if cls.needs_prior else None
        data.ledger.fitted(f"{method}: heads ({heads.epochs} fixed epochs, no early stopping)", data.groups)
        data.ledger.fitted("kNN reference and ridge probe on the trained embedding", data.groups)
        for seed in range(cfg.seeds):
            start = time.perf_counter()
            joint, facts = train_heads(inputs, spec, heads, seed)
            train_s = time.perf_counter() - start
            ref_img, ref_expr = joint.embed(train_feats[0], expr_train)
            k, alpha, chosen = self.prediction_params(data, ref_img, ref_expr)
            for slide in data.fold.test:
                img, expr = joint.embed(test_feats[slide][0], expr_test[slide])
                knn = knn_predictor(img, ref_expr, k, cfg.eval.temperature)
                ridge = ridge_predictor(ref_img, img, lambda m, a=alpha: a)
                blend = lambda v, a=knn, b=ridge: (a(v) + b(v)) / 2  # noqa: E731
                metrics = self.scores(data, slide, {"": knn, "ridge:": ridge, "blend:": blend})
                metrics.update(retrieval_scores(img, expr, cfg.eval.recall_k))
                metrics.update(interval_scores(ref_img, ref_expr, data.groups, img, data.targets, slide,
                                               k=k, temperature=cfg.eval.temperature))  # fmt: skip
                extra = {"loss": to_dict(spec), "train": {**facts, "seconds": round(train_s, 3)},
                         "prediction": {"k": k, "alpha": alpha, "chosen": chosen}}  # fmt: skip
                if auroc is not None:
                    extra["prior_auroc"] = {"train": auroc.get("train", {}).get("combined"),
                                            "test": auroc.get(slide, {}).get("combined")}  # fmt: skip
                self._row(data, method, kind, seed, slide, metrics, extra)
            self.clock.add(f"{kind} {method}", time.perf_counter() - start)

    def prediction_params(self, data: FoldData, ref_img: np.ndarray, ref_expr: np.ndarray):
        """kNN ``k`` and ridge ``alpha`` of a trained model: as configured, or chosen on the training sections
        alone (:func:`histokg.tl.predict.choose_params`, what histokg predict and evaluate do by default)."""
        from histokg.tl.predict import choose_params

        k, alpha = self.cfg.eval.k, self.cfg.eval.ridge_alpha
        if k is not None and alpha is not None:
            return k, alpha, None
        data.ledger.fitted("kNN k and ridge alpha (inner leave-one-training-slide-out)", data.groups)
        values = data.targets.train_values["panel"]
        chosen = choose_params(ref_img, ref_expr, values, data.groups, temperature=self.cfg.eval.temperature)
        return (
            chosen["k"] if k is None else k,
            chosen["alpha"] if alpha is None else alpha,
            {"k": chosen["k"], "alpha": chosen["alpha"]},
        )

    def ablations(self, data: FoldData) -> None:
        cfg = self.cfg
        ab = cfg.ablations
        soft = next((c for c in cfg.losses if c.name == "kg_soft"), Component("kg_soft"))
        if not data.kg_inputs:
            return
        if ab.families_off or ab.untuned_prior or ab.kg_models:
            base_key = (cfg.kg.model, "configured")
            self.run_loss(data, soft, "kg_soft[configured prior]", "ablation", kg_key=base_key)
        if ab.families_off:  # on the configured prior, which uses every family (the tuned one may not)
            prior = data.kg_inputs["priors"][base_key]["prior"]
            for kernel in prior.kernels:
                if prior.alpha.get(kernel, 0) == 0 or sum(prior.alpha.values()) == prior.alpha[kernel]:
                    continue  # off already, or nothing would be left
                key = (cfg.kg.model, f"configured without {kernel}")
                if key not in data.kg_inputs["priors"]:
                    entry = without_kernel(data.kg_inputs["priors"][base_key], kernel)
                    data.kg_inputs["priors"][key] = entry
                    if data.kg_inputs["labels"] is not None:
                        kg = data.kg_inputs
                        q = prior_quality(entry["prior"], kg["train_counts"], kg["libs"], kg["labels"])
                        data.prior_info["auroc"][f"{key[0]}/{key[1]}"] = {"train": q}
                self.run_loss(data, soft, f"kg_soft[-{kernel}]", "ablation", kg_key=key)
        for lam in ab.lam:
            self.run_loss(
                data, Component("kg_soft", {**soft.kwargs, "lam": lam}), f"kg_soft[lam={lam:g}]", "ablation"
            )
        uni = next((c for c in cfg.losses if c.name == "kg_uniformity"), Component("kg_uniformity"))
        for lam in ab.uniformity_lam:
            spec = Component("kg_uniformity", {**uni.kwargs, "lam": lam})
            self.run_loss(data, spec, f"kg_uniformity[lam={lam:g}]", "ablation")
        neg = next((c for c in cfg.losses if c.name == "kg_negatives"), Component("kg_negatives"))
        for beta in ab.beta:
            self.run_loss(
                data,
                Component("kg_negatives", {**neg.kwargs, "beta": beta}),
                f"kg_negatives[beta={beta:g}]",
                "ablation",
            )
        for (
            model
        ) in ab.kg_models:  # with the configured prior: the tuned one may not use the KG vectors at all
            if model != cfg.kg.model:
                self.run_loss(data, soft, f"kg_soft[kg={model}]", "ablation", kg_key=(model, "configured"))
        for name in ab.expression_prior:
            spec = next((c for c in cfg.losses if c.name == name), Component(name))
            self.run_loss(data, spec, f"{name}[W=expression]", "ablation", kg_key=("expression", "control"))
        for name in ab.expr_input_kg:
            spec = next((c for c in cfg.losses if c.name == name), Component(name))
            self.run_loss(data, spec, f"{name}[expr=kg]", "ablation", expr_input="kg")
        for name in ab.expr_input_kg_shuffled:
            spec = next((c for c in cfg.losses if c.name == name), Component(name))
            self.run_loss(data, spec, f"{name}[expr=kg shuffled]", "ablation", expr_input="kg_shuffled")
        for inputs in ab.image_inputs:
            for name in ab.image_input_losses:
                spec = next((c for c in cfg.losses if c.name == name), Component(name))
                self.run_loss(data, spec, f"{name}[+{inputs}]", "ablation", image_input=inputs)
                if name in ab.expression_prior:  # the same inputs with W from expression: its no-KG twin
                    self.run_loss(
                        data, spec, f"{name}[+{inputs}][W=expression]", "ablation",
                        kg_key=("expression", "control"), image_input=inputs,
                    )  # fmt: skip

    # ------------------------------------------------------------------ main
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.threads:
            configure_threads(cfg.threads)
        load_start = os.getloadavg()[0]
        self.setup()
        folds_info = []
        for fold in tqdm(self.folds, desc="folds", unit="fold"):
            start = time.perf_counter()
            data = self.builder.build(fold)
            self.clock.add("fold preparation (panels, targets, prior tuning)", time.perf_counter() - start)
            self.baselines(data)
            for spec in tqdm(cfg.losses, desc=f"losses ({fold.name})", unit="loss", leave=False):
                self.run_loss(data, spec, spec.name, "loss")
            self.ablations(data)
            folds_info.append(
                {"train": list(fold.train), "test": list(fold.test), "n_train_spots": int(data.train_feats.shape[1]),
                 "n_test_spots": {s: int(v.shape[1]) for s, v in data.test_feats.items()},
                 "panels": {n: p.genes for n, p in data.targets.panels.items()},
                 "heg": {n: [p.genes[i] for i in p.heg] for n, p in data.targets.panels.items()},
                 "hvg": {n: [p.genes[i] for i in p.hvg] for n, p in data.targets.panels.items()},
                 "prior": data.prior_info, "patients": {s: self.patients[s] for s in (*fold.train, *fold.test)},
                 "leakage": data.ledger.protocol()}
            )  # fmt: skip
            log.info("leakage check of fold %s passed: %s", fold.name, enforced(data.ledger))
        skipped = [c.name for c in cfg.losses if not any(r["method"] == c.name for r in self.rows)]
        if skipped:
            self.notes.append(f"losses skipped (no KG for this data): {', '.join(skipped)}")
        keys = sorted({k for r in self.rows for k in r["metrics"]})
        results = {
            "protocol": {
                **protocol(cfg),
                "patients": f"from {self.patient_source}: "
                + ", ".join(f"{s}={p}" for s, p in self.patients.items()),
            },
            "config": to_dict(cfg),
            "machine": machine(load_start),
            "sections": {s: int(a.n_obs) for s, a in self.sections.items()},
            "features": {
                "computed": self.features_computed,
                "cache": str(self.cache / "features"),
                "backend": self.features_backend,
            },
            "kg": {"bundles": {m: str(p) for m, p in self.bundles.items()}, "error": self.kg_error},
            "folds": folds_info,
            "runs": self.rows,
            "summary": summarise(self.rows, keys, self.patients),
            "notes": self.notes,
        }
        self.clock.lap("all folds (the fold, baseline and loss stages above together)")
        results["timings_s"] = {k: round(v, 2) for k, v in self.clock.stages.items()}
        return results


def enforced(ledger) -> str:
    """One line: the protocol a fold's leakage check enforced."""
    p = ledger.protocol()
    return (
        f"{len(p['fitted_on'])} fitted steps saw only {sorted({s for v in p['fitted_on'].values() for s in v})}; "
        f"unseen: {p['unseen']} (held-out {p['unit']}s: "
        f"{p['held_out_patients'] if p['unit'] == 'patient' else p['held_out_sections']})"
    )


def chosen(value) -> str:
    """A prediction parameter as the protocol states it."""
    if value is None:
        return "chosen per run on the training sections, each predicted from the others"
    return f"{value:g}"


def protocol(cfg: BenchConfig) -> dict[str, str]:
    n = cfg.panel.n_top
    return {
        "split": {
            "loso": "leave-one-section-out: each section held out once; the held-out section is never seen by "
            "training, panel choice, prior tuning or probes. Other sections of its patient DO train (serial "
            "sections share the tumour): not patient-independent",
            "lopo": "leave-one-patient-out: every section of the held-out patient is unseen by training, panel "
            "choice, prior tuning, probes and kNN references; only the other patients' sections train",
        }.get(cfg.folds, "one explicit --train/--test split of whole sections")
        + "; enforced by the leakage check (folds[].leakage: what each step was fitted on)",
        "model": f"frozen {cfg.features.image_encoder} ({cfg.features.image_weights}) features of {cfg.features.patch_um:g} um "
        f"patches at {cfg.features.patch_px} px; trained: image head MLP, expression tower MLP {list(cfg.heads.expr_hidden)}, "
        f"temperature; {cfg.heads.epochs} epochs, batch {cfg.heads.batch_size}, AdamW lr {cfg.heads.lr:g}, same for every loss, "
        "no early stopping",
        "panels": f"panel: the model's {cfg.panel.n_genes} genes (scanpy's Seurat-flavour highly variable genes of the training slides, the expression tower's input); "
        f"mean{cfg.panel.n_mean}: the {cfg.panel.n_mean} highest mean log1p CP10k genes of the training slides (TRIPLEX-style). "
        f"HEG-{n}/HVG-{n}: the top {n} genes of a panel by mean / variance on the training slides",
        "prediction": f"losses: kNN retrieval (k={chosen(cfg.eval.k)}, softmax(cos / {cfg.eval.temperature:g}) of the training spots' "
        f"expression embeddings) from the held-out image embeddings; 'ridge:' Ridge(alpha={chosen(cfg.eval.ridge_alpha)}) on the "
        "trained image embeddings; 'blend:' their mean. Baselines: mean = the training mean (constant: Pearson 0); naive_ridge = 26 colour/texture "
        "features, standardised, Ridge(alpha = 100 / (26 x genes)); frozen_pca_ridge = HEST-Benchmark probe: standardised "
        f"frozen features -> PCA-{cfg.eval.pca_dim} -> Ridge(alpha = 100 / ({cfg.eval.pca_dim} x genes)) (with intercept); "
        "frozen_knn = kNN on standardised frozen features",
        "metrics": "per held-out slide: Pearson per gene (log1p CP10k, library size over all measured genes; a gene "
        "constant on the slide is left out, a constant prediction scores 0), averaged over HEG/HVG/all panel genes; MSE; "
        "pathway Pearson of Hallmark / Reactome activities (mean log1p CP10k of each set's genes, the KG activations with "
        f"score='mean'); Recall@{cfg.eval.recall_k} both ways with the whole slide as the pool",
        "averaging": "per slide and seed; tables give mean +- std over seeds; 'all' = mean over held-out slides per seed, "
        "then mean +- std over seeds",
        "prior_quality": "AUROC of W_ij for same-label pairs (i < j within a slide), per kernel and combined, on the "
        "training slides (encoded together) and on each held-out slide; references: cosine of log1p CP10k over the 500 HVGs "
        "of the training slides, as they are and centred (each gene's mean on the slide removed)",
    }


def machine(load_start: float) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
    }


@holding_lock("out", "histokg bench", label="bench output folder")
def run_bench(cfg: BenchConfig, out: str | Path, *, overwrite: bool = False, inputs=()) -> dict[str, Any]:
    """Run the benchmark into ``out``; returns the results (also in ``out/results.json``).

    The folder is locked for the run (:func:`histokg.io.output_lock`); ``inputs``: files the caller
    read (a config) that the outputs must not replace, besides ``cfg.data``."""
    from histokg.bench.report import write_outputs

    out = prepare_out(out, overwrite, inputs=[*cfg.data, *inputs])
    config_path = out / "bench_config.yaml"
    save_config(cfg, config_path)
    start = time.perf_counter()
    try:
        results = Bench(cfg, out).run()
    except BaseException:
        config_path.unlink(missing_ok=True)  # a failed bench leaves no outputs that would block the retry
        raise
    results["timings_s"]["total"] = round(time.perf_counter() - start, 2)
    write_outputs(results, out)
    write_json(out / "results.json", results)
    return results
