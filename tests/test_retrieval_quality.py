"""Retrieval quality (slow): synthetic slides of the same phenotype mix retrieve each other, and real
her2st sections retrieve her2st sections rather than mouse olfactory bulb sections.

Each test trains a small model on the session's synthetic study (8 epochs, about 2 minutes on 2 CPU
cores), builds an index on a local Dask cluster of worker processes, and compares the metrics with
the same metrics under random permutations of the labels (the chance level of this collection):
the observed mAP must beat the 95th percentile of the permuted ones. Run with ``-s`` to see them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from histokg.retrieval.evaluate import region_retrieval_metrics, retrieval_metrics, slide_retrieval_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learned_ckpt(synth_study, tmp_path_factory):
    from test_train import LEARN, tiny_cfg

    from histokg.train import train

    cfg = tiny_cfg(synth_study, tmp_path_factory.mktemp("learned"), *LEARN, "optim.epochs=8")
    return train(cfg).last_checkpoint


def permutation_chance(index, label: str, descriptor: str, n: int = 200, seed: int = 0) -> np.ndarray:
    ids, mat = index.descriptors(descriptor)
    keep = [i for i, s in enumerate(ids) if label in index.slide_meta(s).get("labels", {})]
    labels = np.array([index.slide_meta(ids[i])["labels"][label] for i in keep])
    rng = np.random.default_rng(seed)
    return np.array([retrieval_metrics(mat[keep], rng.permutation(labels))["mAP"] for _ in range(n)])


def test_slides_of_one_phenotype_mix_retrieve_each_other(learned_ckpt, tmp_path):
    from histokg.retrieval import build_index, specs_from_table
    from histokg.retrieval.synthetic import MixSlidesConfig, generate_mix_slides

    table = generate_mix_slides(
        tmp_path / "mix", MixSlidesConfig(per_mix=4, width_um=1200.0, height_um=1000.0)
    )
    index = build_index(specs_from_table(table), learned_ckpt, tmp_path / "idx", scheduler=None, n_workers=2)
    report = {}
    for descriptor in ("mean", "prototypes"):
        m = slide_retrieval_metrics(index, label="mix", descriptor=descriptor)
        chance = permutation_chance(index, "mix", descriptor)
        report[descriptor] = {
            **m,
            "chance_mAP_mean": float(chance.mean()),
            "chance_mAP_p95": float(np.percentile(chance, 95)),
        }
    print(json.dumps(report, indent=1))
    best = report["prototypes"]
    assert best["mAP"] > best["chance_mAP_p95"], best
    assert best["hit@3"] > 0.67, best  # chance: 1 - C(8,3)/C(11,3) = 0.66


def _legacy_h5ad(shared_data, tmp_path, section: str) -> str:
    import pandas as pd
    from scipy.spatial import cKDTree

    from histokg.st import read_legacy_st
    from histokg.st.contract import write_h5ad

    if section.startswith("C"):
        h = shared_data / "her2st"
        adata = read_legacy_st(
            h / "counts" / f"{section}.tsv.gz",
            h / "spots" / f"{section}_selection.tsv",
            h / "images" / f"{section}_HE.jpg",
        )
        lab = pd.read_csv(h / "cluster_labels" / f"{section}-cluster-annotation.tsv.gz", sep="\t")
        dist, nn = cKDTree(lab[["pixel_x", "pixel_y"]].to_numpy()).query(adata.obsm["spatial"])
        adata.obs["cluster"] = np.where(dist < 5, lab["label"].astype(str).to_numpy()[nn], "unlabelled")
        adata = adata[adata.obs["cluster"] != "unlabelled"].copy()
    else:
        m = shared_data / "mob"
        adata = read_legacy_st(
            m / f"{section}.tsv",
            m / f"alignment_table_{section}.tsv",
            m / f"{section}.jpg",
            library_id=section,
        )
        adata.obs["cluster"] = "mob"
    return str(write_h5ad(adata, tmp_path / f"{section}.h5ad"))


def test_real_her2st_and_mob_sections(learned_ckpt, shared_data, tmp_path):
    from histokg.retrieval import build_index
    from histokg.retrieval.shards import SlideSpec

    specs = []
    for sec in ("C2", "C3", "C4", "C5", "MOB1", "MOB2", "MOB3", "MOB4"):
        her2 = sec.startswith("C")
        specs.append(
            SlideSpec(
                sec,
                _legacy_h5ad(shared_data, tmp_path, sec),
                "h5ad",
                sec,
                "C" if her2 else None,
                {"tissue": "HER2+ breast cancer" if her2 else "mouse olfactory bulb"},
                label_key="cluster",
            )
        )
    index = build_index(specs, learned_ckpt, tmp_path / "idx", scheduler="sync", n_prototypes=16)
    report = {}
    for descriptor in ("mean", "prototypes"):
        # all her2st sections come from patient C: leaving the patient out would leave no her2st candidate
        m = slide_retrieval_metrics(index, label="tissue", descriptor=descriptor, use_patients=False)
        chance = permutation_chance(index, "tissue", descriptor)
        report[descriptor] = {**m, "chance_mAP_p95": float(np.percentile(chance, 95))}
    her2 = region_retrieval_metrics(index, slides=["C2", "C3", "C4", "C5"])
    report["her2st regions (expression clusters)"] = her2
    print(json.dumps(report, indent=1))
    for descriptor in ("mean", "prototypes"):
        m = report[descriptor]
        assert m["mAP"] > m["chance_mAP_p95"] and m["hit@1"] == 1.0, (descriptor, m)
    # region retrieval across her2st sections beats always answering the most frequent cluster
    assert her2["MV@5"] > max(her2["label_frequency"].values()), her2
