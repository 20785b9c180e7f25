"""One fold of ``histokg bench``: its panels, targets, features and KG prior, chosen on its training slides.

:class:`FoldBuilder` turns a :class:`~histokg.bench.data.Fold` (training and held-out sections) into
:class:`FoldData`: the model panel and the literature's mean-expressed panel with their HEG-n/HVG-n genes,
log1p CP10k targets, Hallmark/Reactome activities, stacked frozen and naive features, and the KG prior
tuned on the training slides with its quality (pair AUROC) on training and held-out slides. Nothing here
sees a held-out section's values except to compute its targets and the prior's reported quality.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anndata as ad
import numpy as np

from histokg import pp
from histokg.bench.config import BenchConfig
from histokg.bench.data import Fold, combine
from histokg.bench.leakage import Ledger
from histokg.bench.prior import describe, expression_quality, prior_quality, tune_prior
from histokg.bench.scoring import Panel, Targets
from histokg.keys import Key
from histokg.patch_stats import Standardisation


def counts_of(adata: ad.AnnData, genes: list[str]):
    """Raw counts of ``genes`` (sparse CSR, genes a section lacks are zeros)."""
    return pp.panel_counts(adata, genes, f"section {adata.obs[Key.obs.library_id].iloc[0]}")


def log1p_of(adata: ad.AnnData, genes: list[str]) -> np.ndarray:
    """log1p CP10k of ``genes`` (library size over all measured genes of the spot)."""
    return pp.panel_log1p(adata, genes, source=f"section {adata.obs[Key.obs.library_id].iloc[0]}")


def _labels(adata: ad.AnnData, key: str) -> np.ndarray | None:
    if key not in adata.obs:
        return None
    values = adata.obs[key].astype(object).to_numpy()
    return values if any(v is not None and v == v for v in values) else None


@dataclasses.dataclass
class FoldData:
    fold: Fold
    targets: Targets
    train_feats: np.ndarray  # (views, n_train, d)
    test_feats: dict[str, np.ndarray]  # slide -> (views, n, d)
    train_naive: np.ndarray
    test_naive: dict[str, np.ndarray]
    expr_inputs: np.ndarray  # the model panel's log1p CP10k of the training spots
    test_expr_inputs: dict[str, np.ndarray]
    panel: list[str]
    prior_info: dict[str, Any]
    kg_inputs: dict[str, Any]  # prior, packed, gaussians, KG activations as tower input
    groups: np.ndarray | None = None  # training slide of each training spot (from the data's obs)
    alphas: dict[str, float] = dataclasses.field(default_factory=dict)  # ridge_cv alphas (training slides)
    ledger: Ledger | None = None  # what was fitted on which sections (the leakage check)
    graphs: dict[str, Any] = dataclasses.field(default_factory=dict)  # section -> spot graph (squidpy)


class FoldBuilder:
    """Builds the :class:`FoldData` of each fold from the bench's sections, features and KG."""

    def __init__(
        self,
        cfg: BenchConfig,
        sections: dict[str, ad.AnnData],
        genes: list[str],
        feats: dict[str, tuple[np.ndarray, np.ndarray]],
        target_prior,
        bundles: dict,
        patients: dict[str, str] | None = None,
    ):
        self.cfg, self.sections, self.genes, self.feats = cfg, sections, genes, feats
        self.target_prior, self.bundles = target_prior, bundles
        self.patients = patients or {s: s for s in sections}
        self._graphs: dict[str, Any] = {}

    def graph(self, section: str):
        """The section's spot graph (squidpy's spatial connectivities), built once."""
        if section not in self._graphs:
            from histokg.tl.predict import spot_graph

            self._graphs[section] = spot_graph(self.sections[section])
        return self._graphs[section]

    def build(self, fold: Fold) -> FoldData:
        cfg = self.cfg
        train_ad = combine(self.sections, fold.train)
        tests = {s: self.sections[s] for s in fold.test}
        ledger = Ledger(fold, self.patients, by_patient=cfg.folds == "lopo")
        libs = train_ad.obs[Key.obs.library_id].astype(str).to_numpy()  # where each training row comes from
        ledger.fitted("model gene panel (scanpy HVG)", libs)
        ledger.fitted("HEG-n/HVG-n and mean-expressed gene sets", libs)
        panel = pp.panel_genes(train_ad, cfg.panel.n_genes)
        top_mean = pp.top_genes(train_ad, cfg.panel.n_mean, "mean", genes=self.genes)
        panels = {}
        for name, genes in (("panel", panel), (f"mean{cfg.panel.n_mean}", top_mean)):
            pos = {g: i for i, g in enumerate(genes)}
            heg = [pos[g] for g in pp.top_genes(train_ad, cfg.panel.n_top, "mean", genes=genes)]
            var = [pos[g] for g in pp.top_genes(train_ad, cfg.panel.n_top, "variance", genes=genes)]
            panels[name] = Panel(name, list(genes), np.asarray(heg), np.asarray(var))
        train_values = {n: log1p_of(train_ad, p.genes) for n, p in panels.items()}
        test_values = {n: {s: log1p_of(a, p.genes) for s, a in tests.items()} for n, p in panels.items()}
        groups, train_pw, test_pw = {}, None, {}
        if self.target_prior is not None:
            tp = self.target_prior
            own = set(tp.scored_directly)
            groups = {
                "hallmark": np.array([i for i, e in enumerate(tp.entity_ids) if e.startswith("pathway:HALLMARK_") and e in own]),
                "reactome": np.array([i for i, e in enumerate(tp.entity_ids) if e.startswith("pathway:R-HSA-") and e in own]),
            }  # fmt: skip
            train_pw = tp.activations(log1p_of(train_ad, self.genes))
            test_pw = {s: tp.activations(log1p_of(a, self.genes)) for s, a in tests.items()}
        targets = Targets(panels, train_values, test_values, groups, train_pw, test_pw)

        def stack(ids: tuple[str, ...], i: int) -> np.ndarray:
            return np.concatenate([self.feats[s][i] for s in ids], axis=-2)

        groups_of_rows = np.concatenate([np.full(self.feats[s][0].shape[1], s) for s in fold.train])
        if not np.array_equal(groups_of_rows, libs):
            raise RuntimeError(
                f"fold {fold.name}: the stacked features are not in the training AnnData's row order"
            )
        data = FoldData(
            fold=fold,
            targets=targets,
            train_feats=stack(fold.train, 0),
            test_feats={s: self.feats[s][0] for s in fold.test},
            train_naive=stack(fold.train, 1),
            test_naive={s: self.feats[s][1] for s in fold.test},
            expr_inputs=train_values["panel"],
            test_expr_inputs=test_values["panel"],
            panel=panel,
            prior_info={},
            kg_inputs={},
            groups=libs,
            ledger=ledger,
            graphs={s: self.graph(s) for s in (*fold.train, *fold.test)},
        )
        self._prior(data, train_ad, tests)
        return data

    def _prior(self, data: FoldData, train_ad: ad.AnnData, tests: dict[str, ad.AnnData]) -> None:
        """Tune the prior on the training slides; its quality on training and held-out slides; KG inputs."""
        from histokg.priors import KGPrior

        cfg = self.cfg
        if not self.bundles:
            return
        genes = self.genes
        train_counts = counts_of(train_ad, genes)
        libs = train_ad.obs[Key.obs.library_id].astype(str).to_numpy()
        labels = _labels(train_ad, cfg.label_key)
        data.ledger.fitted("KG prior tuning", libs)
        tuned, table = tune_prior(self.bundles[cfg.kg.model], genes, train_counts, libs, labels, cfg.kg)
        info: dict[str, Any] = {
            "configured": describe(cfg.kg.prior),
            "chosen": describe(tuned),
            "candidates": table,
        }
        priors = {"tuned": tuned, "configured": cfg.kg.prior}
        kg: dict[str, Any] = {"priors": {}, "train_counts": train_counts, "libs": libs, "labels": labels}
        ab = cfg.ablations
        gaussian = "kg2e" if cfg.kg.model != "kg2e" else cfg.kg.model
        for model, bundle in self.bundles.items():
            for which, pcfg in priors.items():
                if which == "tuned":  # the losses' prior (and the KG2E Gaussians of kg_gaussian)
                    wanted = model in (cfg.kg.model, gaussian)
                else:  # the configured prior (every family on): ablations of families and of the KG model
                    main_wanted = ab.untuned_prior or ab.families_off or bool(ab.kg_models)
                    wanted = (model == cfg.kg.model and main_wanted) or model in ab.kg_models
                if not wanted:
                    continue
                prior = KGPrior.from_bundle(bundle, genes, pcfg)
                entry = {"prior": prior, "packed": prior.encode(train_counts, groups=libs).numpy()}
                if prior.bundle.storage == "gaussian":
                    entry["g_mean"], entry["g_var"] = prior.spot_gaussians(train_counts)
                kg["priors"][(model, which)] = entry
        main = kg["priors"][(cfg.kg.model, "tuned")]["prior"]
        inputs = {"": None} if cfg.ablations.expr_input_kg else {}
        if cfg.ablations.expr_input_kg_shuffled:  # one fixed permutation of the panel's genes
            inputs["shuffled_"] = np.random.default_rng(0).permutation(len(genes))
        for prefix, perm in inputs.items():
            cols = slice(None) if perm is None else perm
            acts = main.activations(train_counts[:, cols])
            data.ledger.fitted(
                f"KG activations' standardisation (expression input{' shuffled' * bool(prefix)})", libs
            )
            mu, sd = acts.mean(0), acts.std(0) + 1e-6
            kg[f"{prefix}acts_train"] = ((acts - mu) / sd).astype(np.float32)
            kg[f"{prefix}acts_test"] = {
                s: ((main.activations(counts_of(a, genes)[:, cols]) - mu) / sd).astype(np.float32)
                for s, a in tests.items()
            }
        # quality: W of every prior in use, on the training slides and on each held-out slide
        quality: dict[str, Any] = {}
        panel500 = pp.panel_genes(train_ad, cfg.kg.expression_genes)
        if labels is not None:
            for (model, which), entry in kg["priors"].items():
                key = f"{model}/{which}"
                quality[key] = {"train": prior_quality(entry["prior"], train_counts, libs, labels)}
                for s, a in tests.items():
                    lab = _labels(a, cfg.label_key)
                    if lab is not None:
                        quality[key][s] = prior_quality(
                            entry["prior"], counts_of(a, genes), np.full(a.n_obs, s), lab
                        )
            quality["expression_panel500"] = {
                "train": expression_quality(log1p_of(train_ad, panel500), libs, labels)
            }
            for s, a in tests.items():
                lab = _labels(a, cfg.label_key)
                if lab is not None:
                    quality["expression_panel500"][s] = expression_quality(
                        log1p_of(a, panel500), np.full(a.n_obs, s), lab
                    )
        if cfg.ablations.expression_prior:
            from histokg.bench.prior import ExpressionKernel

            x = log1p_of(train_ad, panel500)
            data.ledger.fitted("expression-similarity prior (centring)", libs)
            per_section = cfg.kg.prior.standardise == "section"  # the twin of the KG prior's setting
            kernel = ExpressionKernel(x.mean(axis=0), tau=cfg.kg.prior.tau, per_section=per_section)
            kg["priors"][("expression", "control")] = {"prior": kernel, "packed": kernel.encode(x, libs)}
            if labels is not None:  # the AUROC of this very W (centred by the training mean)
                from histokg.bench.prior import pair_auroc

                def kernel_auroc(values: np.ndarray, lib: np.ndarray, lab: np.ndarray) -> float:
                    z = kernel.encode(values, lib)
                    aurocs = [
                        pair_auroc(z[lib == n] @ z[lib == n].T, lab[lib == n]) for n in sorted(set(lib))
                    ]
                    return float(np.nanmean(aurocs))

                quality["expression/control"] = {"train": {"combined": kernel_auroc(x, libs, labels)}}
                for s, a in tests.items():
                    lab = _labels(a, cfg.label_key)
                    if lab is not None:
                        quality["expression/control"][s] = {
                            "combined": kernel_auroc(log1p_of(a, panel500), np.full(a.n_obs, s), lab)
                        }
        info["auroc"] = quality
        data.prior_info = info
        data.kg_inputs = kg


def without_kernel(entry: dict, kernel: str) -> dict:
    """A copy of a prior entry whose W leaves out ``kernel`` (the other weights renormalised)."""
    import copy

    prior = copy.copy(entry["prior"])
    alpha = {k: (0.0 if k == kernel else v) for k, v in prior.alpha.items()}
    total = sum(alpha.values())
    prior.alpha = {k: v / total for k, v in alpha.items()} if total > 0 else alpha
    return {**entry, "prior": prior}


def image_inputs(data: FoldData, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image head's input of the training spots (views, n, k) and of each held-out slide, for ``name``:
    ``frozen`` (the tower's features), or those with ``naive`` (the 26 colour/texture numbers,
    standardised on the training spots: :class:`histokg.patch_stats.Standardisation`, as ``histokg train``
    with ``model.image_extras: [naive]``) and/or ``context`` (each spot's graph neighbours' mean features,
    within its own section) appended."""
    train, test = data.train_feats, dict(data.test_feats)
    parts = set(name.split("+")) - {"frozen"}
    if "context" in parts:
        train = np.concatenate([train, _neighbour_mean(train, data.groups, data.graphs)], axis=-1)
        test = {
            s: np.concatenate([f, _neighbour_mean(f, np.full(f.shape[1], s), data.graphs)], axis=-1)
            for s, f in test.items()
        }
    if "naive" in parts:  # as histokg train's model.image_extras: [naive] (one library function)
        data.ledger.fitted("naive features' standardisation (image input)", data.groups)
        scaler = Standardisation.fit(("naive",), data.train_naive)
        train = scaler.append(train, data.train_naive)
        test = {s: scaler.append(f, data.test_naive[s]) for s, f in test.items()}
    return np.ascontiguousarray(train, np.float32), {
        s: np.ascontiguousarray(f, np.float32) for s, f in test.items()
    }


def _neighbour_mean(feats: np.ndarray, sections: np.ndarray, graphs: dict) -> np.ndarray:
    """(views, n, d): each row's mean over its graph neighbours in its own section (itself where it has none)."""
    from histokg.tl.predict import smooth_values

    out = np.empty_like(feats)
    for sec in dict.fromkeys(sections):
        rows = np.flatnonzero(sections == sec)
        for v in range(feats.shape[0]):
            out[v, rows] = smooth_values(feats[v, rows], graphs[sec], 1.0)
    return out
