"""Paths inside a checkpoint (``prior.bundle``) resolve relative to the checkpoint, never to the current
folder; a bundle that cannot be found stops the index build with one line; training saves it absolute."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures)

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from retrieval_fixtures import kg_bundle, mix_table, retrieval_ckpt  # noqa: F401  (fixtures)

from histokg.checkpoint import load_checkpoint, load_model
from histokg.cli import main
from histokg.errors import InputError
from histokg.retrieval.index import RetrievalIndex
from histokg.train.checkpoint import save_checkpoint


def _old_checkpoint(ckpt: Path, project: Path, bundle: Path | None) -> Path:
    """``ckpt`` as an earlier histokg saved it from a run in ``project``: ``out_dir`` runs/r and
    ``prior.bundle`` kg/bundle, both relative to the folder training ran in."""
    payload = load_checkpoint(ckpt)
    payload["meta"]["config"]["out_dir"] = "runs/r"
    payload["meta"]["config"]["prior"]["bundle"] = "kg/bundle"
    if bundle is not None:
        shutil.copytree(bundle, project / "kg" / "bundle")
    return save_checkpoint(project / "runs" / "r" / "checkpoints" / "best.pt", payload)


def _build(study, ckpt, out, *extra):
    main(["-q", "index", "build", *([str(study)] if study else []), "--checkpoint", str(ckpt), "-o", str(out),
          "--scheduler", "sync", "--prototypes", "4", *extra])  # fmt: skip


def test_index_build_from_another_folder_finds_the_checkpoints_relative_bundle(
    synth_study, retrieval_ckpt, kg_bundle, tmp_path, monkeypatch
):
    ckpt = _old_checkpoint(retrieval_ckpt, tmp_path / "project", kg_bundle)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the folder training ran in: kg/bundle is not here
    expected = tmp_path / "project" / "kg" / "bundle"
    _build(synth_study, ckpt, tmp_path / "idx")
    index = RetrievalIndex.load(tmp_path / "idx")
    assert index.manifest["entities"] and all(s["has_kg"] for s in index.manifest["slides"])
    assert index.slide_meta("S1")["kg_bundle"] == str(expected)
    from histokg.checkpoint import checkpoint_bundle  # the library's answer (embed resolves it the same way)

    assert load_model(ckpt).kg_bundle() == expected and checkpoint_bundle(ckpt) == expected


def test_index_build_stops_when_the_checkpoints_bundle_is_nowhere(
    synth_study, retrieval_ckpt, kg_bundle, mix_table, tmp_path, monkeypatch, capsys
):
    ckpt = _old_checkpoint(retrieval_ckpt, tmp_path / "project", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        _build(synth_study, ckpt, tmp_path / "idx")
    assert err.value.code == 2
    msg = capsys.readouterr().err.strip()
    run = tmp_path / "project" / "runs" / "r"
    assert msg == (
        f"error: checkpoint {ckpt} names the KG bundle 'kg/bundle' (prior.bundle), which is not there "
        f"({run}/checkpoints/kg/bundle, {run}/kg/bundle, {tmp_path}/project/kg/bundle); give the bundle's "
        "path (index build/add: --bundle), or put it back"
    )
    assert not (tmp_path / "idx" / "CURRENT").exists()  # nothing was built without KG activations
    # a bundle of the same relative name in the current folder is never taken for it
    shutil.copytree(kg_bundle, tmp_path / "kg" / "bundle")
    with pytest.raises(InputError, match="names the KG bundle 'kg/bundle'"):
        load_model(ckpt).kg_bundle()
    # an explicit --bundle wins
    _build(synth_study, ckpt, tmp_path / "idx", "--bundle", str(kg_bundle))
    assert RetrievalIndex.load(tmp_path / "idx").manifest["entities"]
    # plain whole slides (tissue tiles, no counts) have no KG activations: they do not need it
    _build(None, ckpt, tmp_path / "plain", "--table", str(mix_table))
    assert not RetrievalIndex.load(tmp_path / "plain").manifest["entities"]


def test_training_saves_the_bundle_path_absolute_and_old_runs_still_resume(
    synth_study, kg_bundle, tmp_path, monkeypatch
):
    from test_train import tiny_cfg

    from histokg.train import Trainer
    from histokg.train.rundir import config_differences

    shutil.copytree(kg_bundle, tmp_path / "kg" / "bundle")
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(synth_study, tmp_path / "run", "loss.name=kg_soft", "prior.bundle=kg/bundle")
    trainer = Trainer(cfg)
    assert trainer.cfg.prior.bundle == str(tmp_path / "kg" / "bundle")  # config.yaml and checkpoints say so
    from histokg.train.checkpoint import with_absolute_paths

    assert with_absolute_paths(cfg) == trainer.cfg
    # a run saved with the relative path (before) resumes with the absolute one (now), and vice versa
    from histokg.config import to_dict

    assert config_differences(to_dict(cfg), trainer.cfg) == []
    assert config_differences(to_dict(trainer.cfg), cfg) == []
