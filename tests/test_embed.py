"""Embedding export: spots and whole slides into AnnData from a trained checkpoint, CLI, evaluation glue."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from histokg import load_model
from histokg.cli import cli
from histokg.st import validate
from histokg.st.contract import write_h5ad
from histokg.tl import embed, embed_slide
from histokg.train import train


@pytest.fixture(scope="module")
def checkpoint(synth_study, tmp_path_factory):
    from test_train import tiny_cfg

    result = train(tiny_cfg(synth_study, tmp_path_factory.mktemp("run"), "optim.epochs=1"))
    return result.last_checkpoint


def test_embed_spots_scanpy_style(synth_adata, checkpoint, tmp_path):
    model = load_model(checkpoint)
    out = embed(synth_adata, model, copy=True)
    assert "X_histokg" not in synth_adata.obsm  # copy=True leaves the input alone
    f, g = out.obsm["X_histokg"], out.obsm["X_histokg_expr"]
    assert f.shape == g.shape == (synth_adata.n_obs, model.model.cfg.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    params = out.uns["histokg"]["params"]
    assert (
        params["checkpoint_sha256"] == model.sha256
        and params["patch_px"] == 32
        and len(params["genes"]) == 64
    )
    assert embed(out, model, key_added="X_again") is None and np.allclose(out.obsm["X_again"], f, atol=1e-6)
    back = ad.read_h5ad(write_h5ad(out, tmp_path / "embedded.h5ad"))
    validate(back)
    np.testing.assert_array_equal(back.obsm["X_histokg"], f)
    assert list(back.uns["histokg"]["params"]["genes"]) == params["genes"]


def test_whole_slide_embed_of_real_cmu_slide(cmu_slide, checkpoint, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import squidpy as sq

    tiles = embed_slide(cmu_slide, checkpoint, batch_size=16)
    validate(tiles)
    lib = "CMU-1-Small-Region"
    assert (
        tiles.n_obs > 30 and tiles.n_vars == 0
    )  # 112 um tiles on a 1.1 x 1.5 mm crop, tissue only and "X_histokg_expr" not in tiles.obsm
    assert tiles.obsm["X_histokg"].shape[0] == tiles.n_obs and np.isfinite(tiles.obsm["X_histokg"]).all()
    # tile centres are inside the slide and the tile size matches the model's 112 um patches
    xy = tiles.obsm["spatial"]
    assert (xy[:, 0] > 0).all() and (xy[:, 0] < 2220).all() and (xy[:, 1] < 2967).all()
    sf = tiles.uns["spatial"][lib]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(112 / 0.499, rel=1e-3)
    tiles.obs["dim0"] = tiles.obsm["X_histokg"][:, 0]
    back = ad.read_h5ad(write_h5ad(tiles, tmp_path / "tiles.h5ad"))
    sq.pl.spatial_scatter(back, color="dim0", library_id=lib, img_res_key="hires", shape="square")
    fig = matplotlib.pyplot.gcf()
    fig.savefig(tmp_path / "tiles.png", dpi=60)
    matplotlib.pyplot.close(fig)
    assert np.asarray(Image.open(tmp_path / "tiles.png").convert("L")).std() > 10


def test_cli_embed_and_evaluate(synth_study, checkpoint, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        cli,
        ["embed", "--checkpoint", str(checkpoint), str(synth_study), "-o", str(tmp_path / "e.h5ad")],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    adata = ad.read_h5ad(tmp_path / "e.h5ad")
    assert {"X_histokg", "X_histokg_expr"} <= set(adata.obsm)
    res = runner.invoke(
        cli,
        ["evaluate", str(tmp_path / "e.h5ad"), "--checkpoint", str(checkpoint), "-o", str(tmp_path / "ev")],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    for name in ("results.json", "report.html", "report.md"):
        assert (tmp_path / "ev" / name).is_file()
    import json

    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["protocol"] and "S3" in json.dumps(results["protocol"])
    assert results["protocol"]["prediction"]["methods"] == ["knn", "ridge"]
    args = [
        "evaluate",
        str(tmp_path / "e.h5ad"),
        "--checkpoint",
        str(checkpoint),
        "-o",
        str(tmp_path / "ev2"),
    ]
    res = runner.invoke(cli, [*args, "--method", "blend", "--smooth", "0.5"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "ev2" / "results.json").read_text())
    assert results["protocol"]["prediction"]["methods"] == ["blend"]
    assert results["protocol"]["prediction"]["smooth"] == 0.5 and "blend" in results["summary"]["prediction"]


def test_load_model_names_what_a_checkpoint_lacks(checkpoint, tmp_path):
    from histokg.checkpoint import load_checkpoint
    from histokg.errors import InputError
    from histokg.train.checkpoint import save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    del ckpt["meta"]["n_expr_inputs"]
    save_checkpoint(tmp_path / "no_inputs.pt", ckpt)
    with pytest.raises(InputError, match=r"no_inputs\.pt: it lacks meta\.n_expr_inputs"):
        load_model(tmp_path / "no_inputs.pt")
    ckpt = load_checkpoint(checkpoint)
    ckpt["meta"]["config"]["data"]["patch_px"] = 2
    save_checkpoint(tmp_path / "tiny_patch.pt", ckpt)
    with pytest.raises(InputError, match=r"tiny_patch\.pt: its saved patch geometry .* is not valid"):
        load_model(tmp_path / "tiny_patch.pt")
    ckpt["meta"]["config"]["model"]["embed_dimm"] = 8
    save_checkpoint(tmp_path / "typo.pt", ckpt)
    with pytest.raises(InputError, match=r"typo\.pt: its saved config is not valid .*'model\.embed_dimm'"):
        load_model(tmp_path / "typo.pt")
