"""CLI smoke tests (click's CliRunner) for build, embed and inspect on the tiny graph."""

from __future__ import annotations

import json

import numpy as np
import yaml
from click.testing import CliRunner

from pathways_kg.cli import main
from pathways_kg.config import to_dict
from pathways_kg.testing import all_genes, write_tiny_sources


def _tiny_config(tmp_path):
    sources = write_tiny_sources(tmp_path / "src")
    cfg = {"build": {"sources": to_dict(sources)}, "embed": {"training": {"epochs": 20, "batch_size": 64}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_build_embed_inspect(tmp_path):
    runner = CliRunner()
    config = _tiny_config(tmp_path)
    genes = tmp_path / "genes.txt"
    genes.write_text("\n".join(g for g in all_genes() if not g.startswith("GF")) + "\n", encoding="utf-8")
    result = runner.invoke(
        main, ["build", "--out", str(tmp_path / "graph"), "--config", str(config), "--genes", str(genes)]
    )
    assert result.exit_code == 0, result.output
    assert "entities" in result.output and "gene universe" in result.output
    summary = json.loads((tmp_path / "graph" / "summary.json").read_text())
    assert (
        "pathway:R-HSA-2003" not in (tmp_path / "graph" / "entities.tsv").read_text()
    )  # its genes (GF..) are gone
    assert summary["universe"]["size"] == len(all_genes()) - 10
    assert (tmp_path / "graph" / "config.yaml").is_file()

    result = runner.invoke(
        main,
        ["embed", str(tmp_path / "graph"), "--out", str(tmp_path / "bundle"), "--config", str(config),
         "--model", "rotate", "--set", "embed.model.kwargs.embedding_dim=8", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "trained" in result.output and "random" in result.output
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["model"] == "rotate" and meta["embedding_dim"] == 8 and meta["epochs"] == 20

    png = tmp_path / "map.png"
    result = runner.invoke(
        main,
        ["inspect", str(tmp_path / "bundle"), "--entity", "celltype:T cell", "-k", "3", "--plot", str(png)],
    )
    assert result.exit_code == 0, result.output
    assert "subtype_of: celltype:" in result.output and png.stat().st_size > 1000
    result = runner.invoke(
        main, ["inspect", str(tmp_path / "bundle"), "--entity", "celltype:T cell", "--json"]
    )
    assert json.loads(result.output)["celltype:T cell"]["similarity"]


def test_errors_are_one_line_without_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["build", "--out", str(tmp_path / "g"), "--set", "build.min_gene=3"])
    assert result.exit_code == 2
    assert "did you mean 'min_genes'" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.gmt"
    bad.write_text("HALLMARK_X\thttps://x\n", encoding="utf-8")
    result = runner.invoke(
        main, ["build", "--out", str(tmp_path / "g"), "--set", f"build.sources.hallmark_gmt={bad}"]
    )
    assert result.exit_code == 2 and f"{bad}:1: gene set 'HALLMARK_X' has no genes" in result.output
    result = runner.invoke(main, ["embed", str(tmp_path), "--out", str(tmp_path / "b"), "--model", "transx"])
    assert result.exit_code == 2 and "did you mean 'transe'" in result.output


def test_build_with_genes_from_h5ad(tmp_path):
    import anndata

    genes = [g for g in all_genes() if not g.startswith(("GE", "GF"))]
    adata = anndata.AnnData(np.zeros((2, len(genes)), dtype=np.float32))
    adata.var_names = genes
    adata.write_h5ad(tmp_path / "data.h5ad")
    config = _tiny_config(tmp_path)
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--out",
            str(tmp_path / "g"),
            "--config",
            str(config),
            "--genes-from-h5ad",
            str(tmp_path / "data.h5ad"),
        ],
    )
    assert result.exit_code == 0, result.output
    entities = (tmp_path / "g" / "entities.tsv").read_text()
    assert "pathway:R-HSA-2001" in entities and "pathway:R-HSA-2002" not in entities
    assert "pathway:R-HSA-2000" in entities  # parent of a kept pathway
    result = CliRunner().invoke(
        main, ["build", "--out", str(tmp_path / "g2"), "--genes-from-h5ad", str(config)]
    )
    assert result.exit_code == 2 and "cannot read as .h5ad" in result.output


def test_embed_progress_flag_shows_epochs_and_loss(tmp_path, tiny_graph_dir):
    result = CliRunner().invoke(
        main,
        ["embed", str(tiny_graph_dir), "--out", str(tmp_path / "b"), "--epochs", "3", "--device", "cpu",
         "--set", "embed.training.batch_size=64", "--progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "training transe" in result.stderr and "3/3" in result.stderr and "loss=" in result.stderr
    assert "trained" in result.stdout and "training transe" not in result.stdout


def test_inspect_shows_null_metrics_as_na(tiny_graph_dir, tmp_path):
    """write_json stores a non-finite metric as null; inspect must still print the bundle."""
    from pathways_kg.bundle import load_bundle, save_bundle
    from pathways_kg.testing import random_bundle

    b = load_bundle(random_bundle(tiny_graph_dir, tmp_path / "b", dim=4))
    b.meta["metrics"] = {"trained": {"mrr": float("nan")}, "random": {"mrr": 0.25}}
    save_bundle(b, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["metrics"]["trained"]["mrr"] is None
    result = CliRunner().invoke(
        main, ["inspect", str(tmp_path / "b"), "--entity", "celltype:T cell", "-k", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "MRR n/a (random 0.2500)" in result.output
