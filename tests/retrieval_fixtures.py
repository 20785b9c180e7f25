"""Shared, built-once inputs of the retrieval and app tests (imported by test_retrieval*.py, test_app*.py).

Everything is real: a tiny checkpoint trained on the session's synthetic study, a KG bundle over the
study's genes (random embeddings: activations only depend on the graph's gene sets), synthetic
slides with known phenotype mixes, and an index built over both (spots with expression and KG
activations, and whole-slide tiles without transcriptomics). Built once per test session and
shared between test modules through this module's cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_CACHE: dict[str, object] = {}

MIX_SMALL = {"per_mix": 2, "width_um": 900.0, "height_um": 800.0}


def _once(name, build):
    if name not in _CACHE:
        _CACHE[name] = build()
    return _CACHE[name]


@pytest.fixture(scope="session")
def retrieval_ckpt(synth_study, tmp_path_factory) -> Path:
    def build():
        from test_train import tiny_cfg

        from histokg.train import train

        out = tmp_path_factory.mktemp("retrieval_run")
        return train(tiny_cfg(synth_study, out, "optim.epochs=2")).last_checkpoint

    return _once("ckpt", build)


@pytest.fixture(scope="session")
def kg_bundle(synth_study, tmp_path_factory) -> Path:
    def build():
        from histokg.st.study import load_study
        from pathways_kg.build import build_graph
        from pathways_kg.config import BuildConfig
        from pathways_kg.graph import write_graph
        from pathways_kg.testing import random_bundle

        root = tmp_path_factory.mktemp("retrieval_kg")
        genes = list(load_study(synth_study, with_truth=False).var_names)
        write_graph(build_graph(BuildConfig(), universe=genes), root / "graph")
        return Path(random_bundle(root / "graph", root / "bundle", dim=16))

    return _once("bundle", build)


@pytest.fixture(scope="session")
def mix_table(tmp_path_factory) -> Path:
    def build():
        from histokg.retrieval.synthetic import MixSlidesConfig, generate_mix_slides

        return generate_mix_slides(tmp_path_factory.mktemp("mix"), MixSlidesConfig(**MIX_SMALL))

    return _once("mix", build)


@pytest.fixture(scope="session")
def built_index(synth_study, mix_table, retrieval_ckpt, kg_bundle, tmp_path_factory) -> Path:
    """An index over the 3 study sections (spots) and 6 mix slides (tiles), built in this process."""

    def build():
        from histokg.retrieval import build_index, specs_from_paths, specs_from_table

        out = tmp_path_factory.mktemp("index") / "idx"
        specs = specs_from_table(mix_table) + specs_from_paths([synth_study], patient="P1")
        build_index(specs, retrieval_ckpt, out, scheduler="sync", bundle=kg_bundle, n_prototypes=8)
        return out

    return _once("index", build)


@pytest.fixture(scope="session")
def reference_h5ad(synth_study, retrieval_ckpt, tmp_path_factory) -> Path:
    """Sections S1-S2 of the study embedded with the retrieval checkpoint: a `histokg predict` reference."""

    def build():
        from histokg.checkpoint import load_model
        from histokg.keys import Key
        from histokg.st.contract import write_h5ad
        from histokg.st.study import load_study
        from histokg.tl.embed import embed

        adata = load_study(synth_study, with_truth=False)
        adata = adata[adata.obs[Key.obs.library_id].isin(["S1", "S2"])].copy()
        embed(adata, load_model(retrieval_ckpt))
        path = tmp_path_factory.mktemp("ref") / "reference.h5ad"
        write_h5ad(adata, path)
        return path

    return _once("reference", build)


@pytest.fixture(scope="session")
def predictions_dir(synth_study, retrieval_ckpt, reference_h5ad, kg_bundle, tmp_path_factory) -> Path:
    """`histokg predict` (the command) on section S3's image alone: hexagonal pseudo-spots, 8 pathways;
    the folder it wrote (``<out>/S3/predicted.h5ad``)."""

    def build():
        from click.testing import CliRunner

        from histokg.cli import cli

        out = tmp_path_factory.mktemp("predictions") / "pred"
        args = ["predict", str(synth_study / "slides" / "S3.tiff"), "--checkpoint", str(retrieval_ckpt)]
        args += ["--reference", str(reference_h5ad), "-o", str(out), "--spots", "hex", "--pathways", "8"]
        result = CliRunner().invoke(cli, [*args, "--kg-bundle", str(kg_bundle)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return out

    return _once("predictions", build)
