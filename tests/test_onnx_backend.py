"""Frozen towers exported to ONNX and run by ONNX Runtime or OpenVINO (:mod:`histokg.runtime` through
:class:`histokg.features.Extractor`).

Same features as PyTorch within 1e-4 on synthetic and real (her2st) patches, by both engines and in
micro-batches; PyTorch takes over, with a warning, where export or an engine fails; an exported tower is
reused from its cache; threads from the CPUs the process may use. Speed is measured in
benchmarks/frozen_features.py, never asserted here.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from histokg.features import BACKEND_ENV, Extractor, FeatureCache, spot_features
from histokg.runtime import (
    MICRO_BATCH_ENV,
    Runner,
    cpu_micro_batch,
    model_path,
    openvino_config,
    ort_threads,
    probe_batch,
    session_options,
    usable_cpus,
)
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig

TOL = 1e-4
PAIRING = PairingConfig(patch_um=112.0, patch_px=32)


def _patches(n: int = 6, px: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def _onnx_files(folder) -> list:
    return sorted(p.name for p in folder.rglob("*.onnx"))


@pytest.fixture
def onnx_extractor(tmp_path):
    return Extractor.create("test_efficientnet", None, backend="onnx", model_dir=tmp_path)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_exported_features_match_torch_on_synthetic_patches_of_any_batch(backend, tmp_path):
    tower = Extractor.create("test_efficientnet", None, backend=backend, model_dir=tmp_path, micro_batch=0)
    assert tower.backend == backend
    for n in (1, 5):  # the batch dimension is dynamic
        x = _patches(n)
        got = tower(x)
        assert got.dtype == np.float32 and got.shape == (n, tower.num_features)
        assert np.abs(got - tower._torch(x)).max() <= TOL
    assert tower._runners[(32, 32)].engine == {"onnx": "onnxruntime", "openvino": "openvino"}[backend]
    path = model_path(tmp_path, tower.identity, (32, 32))
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_exported_features_match_torch_on_real_her2st_patches(backend, her2st, tmp_path):
    """Real tissue: her2st section C2, 112 um patches, through the project's pairing and patch dataset."""
    from histokg.st import read_legacy_st

    adata = read_legacy_st(
        her2st / "counts" / "C2.tsv.gz",
        her2st / "spots" / "C2_selection.tsv",
        her2st / "images" / "C2_HE.jpg",
        library_id="C2",
    )[:12].copy()
    pairing = PairingConfig(patch_um=112.0, patch_px=64)
    ds = SpotPatchDataset(adata, pairing, expression=np.zeros((adata.n_obs, 1), np.float32))
    try:
        patches = np.stack([ds.read_image(i) for i in range(adata.n_obs)])
        assert patches.std() > 10  # tissue, not a blank read
        ort_tower = Extractor.create("test_efficientnet", None, backend=backend, model_dir=tmp_path)
        assert ort_tower.micro_batch == 4  # 12 patches in three passes
        got = ort_tower(patches)
        assert ort_tower._runners[(64, 64)] is not None
        assert np.abs(got - ort_tower._torch(patches)).max() <= TOL
        # and through the one feature path: spot_features with its cache, which records the backend
        found = spot_features(
            adata, ort_tower, pairing, cache=FeatureCache(tmp_path / "features"), batch_size=5, dataset=ds
        )
        assert np.abs(found.tower[0] - got).max() <= TOL
    finally:
        ds.close()
    from safetensors import safe_open

    (tower_file,) = (tmp_path / "features").glob("tower-*.safetensors")
    with safe_open(str(tower_file), framework="numpy") as fh:
        assert fh.metadata()["backend"] == backend


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_exported_tower_matches_torch_for_the_pretrained_lite0_at_224_px(backend, her2st, tmp_path):
    """The project's default tower (ImageNet EfficientNet-Lite0) at its input size, on real patches."""
    from histokg.st import read_legacy_st

    adata = read_legacy_st(
        her2st / "counts" / "C3.tsv.gz",
        her2st / "spots" / "C3_selection.tsv",
        her2st / "images" / "C3_HE.jpg",
        library_id="C3",
    )[:8].copy()
    ds = SpotPatchDataset(adata, PairingConfig(patch_um=112.0, patch_px=224), expression=np.zeros((8, 1)))
    try:
        patches = np.stack([ds.read_image(i) for i in range(8)])
    finally:
        ds.close()
    tower = Extractor.create(
        "tf_efficientnet_lite0", "imagenet:tf_efficientnet_lite0", backend=backend, model_dir=tmp_path
    )
    got = tower(patches)
    assert tower._runners[(224, 224)] is not None
    assert np.abs(got - tower._torch(patches)).max() <= TOL


def test_a_second_extractor_reuses_the_exported_tower(tmp_path, monkeypatch, caplog):
    first = Extractor.create("test_efficientnet", None, backend="onnx", model_dir=tmp_path)
    x = _patches()
    want = first(x)
    files = _onnx_files(tmp_path)
    assert len(files) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    second = Extractor.create("test_efficientnet", None, backend="onnx", model_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="histokg"):
        np.testing.assert_array_equal(second(x), want)
    assert second._runners[(32, 32)] is not None and not caplog.records
    assert _onnx_files(tmp_path) == files
    # the cached file was compared with PyTorch when the second extractor loaded it; a third does not
    # repeat the probe (nor does the second for another micro-batch)
    third = Extractor.create("test_efficientnet", None, backend="onnx", model_dir=tmp_path)
    probes = []
    torch_path = third._torch
    monkeypatch.setattr(third, "_torch", lambda p: probes.append(len(p)) or torch_path(p))
    np.testing.assert_array_equal(third(x), want)
    assert probes == [] and third._runners[(32, 32)] is second._runners[(32, 32)]
    # other weights are another tower
    other = Extractor.create("test_efficientnet", None, seed=1, backend="onnx", model_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="histokg"):
        other(x)
    assert other._runners[(32, 32)] is None and "could not run in ONNX Runtime" in caplog.text


def test_a_failed_export_falls_back_to_torch_once_and_says_so(tmp_path, monkeypatch, caplog):
    calls = []

    def broken_export(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    tower = Extractor.create("test_efficientnet", None, backend="onnx", model_dir=tmp_path)
    x = _patches()
    with caplog.at_level(logging.WARNING, logger="histokg"):
        got = tower(x)
        again = tower(x)
    np.testing.assert_array_equal(got, tower._torch(x))
    np.testing.assert_array_equal(again, got)
    assert len(calls) == 1  # not retried on every batch
    (record,) = caplog.records
    assert "could not run in ONNX Runtime" in record.message and "unsupported operator" in record.message
    assert "PyTorch runs it" in record.message
    assert _onnx_files(tmp_path) == []


def test_a_failing_session_falls_back_to_torch_and_says_so(onnx_extractor, caplog):
    x = _patches()
    onnx_extractor(x)

    def broken(patches):
        raise RuntimeError("ORT exploded")

    onnx_extractor._runners[(32, 32)] = Runner("onnxruntime", broken)
    with caplog.at_level(logging.WARNING, logger="histokg"):
        got = onnx_extractor(x)
    np.testing.assert_array_equal(got, onnx_extractor._torch(x))
    assert "ONNX Runtime failed" in caplog.text and "ORT exploded" in caplog.text
    assert onnx_extractor._runners[(32, 32)] is None


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_damaged_cached_tower_is_exported_again(backend, tmp_path, caplog):
    x = _patches()
    want = Extractor.create("test_efficientnet", None, backend=backend, model_dir=tmp_path)(x)
    (path,) = tmp_path.rglob("*.onnx")
    path.write_bytes(b"not an onnx graph")
    tower = Extractor.create("test_efficientnet", None, backend=backend, model_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="histokg"):
        np.testing.assert_allclose(tower(x), want, atol=TOL)
    assert "cannot be loaded" in caplog.text and tower._runners[(32, 32)] is not None
    assert path.stat().st_size > 1000


def test_the_backend_choice(monkeypatch, caplog):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert Extractor.create("test_efficientnet", None).backend == "openvino"  # auto on the CPU
    assert Extractor.create("test_efficientnet", None, backend="torch").backend == "torch"
    # autocast is PyTorch's: auto says so in the debug log, an explicit onnx as a warning
    assert Extractor.create("test_efficientnet", None, dtype=torch.bfloat16).backend == "torch"
    with caplog.at_level(logging.WARNING, logger="histokg"):
        assert (
            Extractor.create("test_efficientnet", None, dtype=torch.bfloat16, backend="onnx").backend
            == "torch"
        )
    assert "autocasts" in caplog.text
    # the environment decides auto, never an explicit choice
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert Extractor.create("test_efficientnet", None).backend == "torch"
    assert Extractor.create("test_efficientnet", None, backend="onnx").backend == "onnx"
    assert Extractor.create("test_efficientnet", None, backend="openvino").backend == "openvino"
    # without openvino auto takes ONNX Runtime; without either, PyTorch, with a warning even for auto
    monkeypatch.setenv(BACKEND_ENV, "auto")
    import importlib.util

    real, missing = importlib.util.find_spec, {"openvino"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    assert Extractor.create("test_efficientnet", None).backend == "onnx"
    with caplog.at_level(logging.WARNING, logger="histokg"):
        assert Extractor.create("test_efficientnet", None, backend="openvino").backend == "torch"
    assert "openvino is not installed" in caplog.text
    missing.add("onnxruntime")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="histokg"):
        assert Extractor.create("test_efficientnet", None).backend == "torch"
    assert "openvino and onnxruntime are not installed" in caplog.text
    from histokg.errors import InputError

    with pytest.raises(InputError, match="unknown backend 'tensorrt'"):
        Extractor.create("test_efficientnet", None, backend="tensorrt")


def test_of_model_stays_pytorch_unless_asked():
    from histokg.models import DualEncoder, ModelConfig

    model = DualEncoder(ModelConfig(image_encoder="test_efficientnet", embed_dim=8, expr_hidden=(8,)), 4)
    assert Extractor.of_model(model).backend == "torch"  # a model in training changes its weights
    assert Extractor.of_model(model, backend="auto").backend in ("openvino", "onnx", "torch")


def test_threads_follow_the_affinity_mask_and_ort_does_not_spin():
    assert usable_cpus() == len(os.sched_getaffinity(0))
    assert ort_threads() == min(torch.get_num_threads(), usable_cpus())
    opts = session_options()
    assert opts.intra_op_num_threads == ort_threads() and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    ov = openvino_config()
    assert ov["INFERENCE_NUM_THREADS"] == ort_threads() and ov["NUM_STREAMS"] == 1
    assert ov["INFERENCE_PRECISION_HINT"] == "f32" and ov["ENABLE_CPU_PINNING"] is False
    assert probe_batch((8, 8)).dtype == np.uint8


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_micro_batches_give_the_whole_batch_features(backend, tmp_path, monkeypatch):
    x = _patches(7)
    whole = Extractor.create("test_efficientnet", None, backend=backend, model_dir=tmp_path, micro_batch=0)
    monkeypatch.setenv(MICRO_BATCH_ENV, "3")  # 3 + 3 + 1
    split = Extractor.create("test_efficientnet", None, backend=backend, model_dir=tmp_path)
    assert split.micro_batch == 3 and whole.micro_batch == 0
    calls = []
    forward = split._forward
    monkeypatch.setattr(split, "_forward", lambda p: calls.append(len(p)) or forward(p))
    got = split(x)
    assert calls == [3, 3, 1]
    assert got.shape == (7, split.num_features)
    assert np.abs(got - whole(x)).max() <= TOL
    assert split(x[:0]).shape == (0, split.num_features)  # an empty batch stays a (0, d) array


def test_a_bad_micro_batch_setting_names_the_variable(monkeypatch):
    from histokg.errors import InputError

    for bad in ("four", "-1", "2.5"):
        monkeypatch.setenv(MICRO_BATCH_ENV, bad)
        with pytest.raises(InputError, match=MICRO_BATCH_ENV):
            cpu_micro_batch()
    monkeypatch.setenv(MICRO_BATCH_ENV, "0")
    assert cpu_micro_batch() == 0


def test_the_cli_sets_threads_and_the_backend(monkeypatch):
    from click.testing import CliRunner

    from histokg.cli import cli

    monkeypatch.setenv(BACKEND_ENV, "auto")
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["--backend", "torch", "--threads", "1", "read", "--help"])
        assert result.exit_code == 0, result.output
        assert os.environ[BACKEND_ENV] == "torch" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_one_openvino_tower_serves_threads_at_once(tmp_path):
    """A cached runner is shared by every extractor of a process (the app serves uploads in threads)."""
    from concurrent.futures import ThreadPoolExecutor

    tower = Extractor.create("test_efficientnet", None, backend="openvino", model_dir=tmp_path, micro_batch=0)
    inputs = [_patches(3, seed=s) for s in range(8)]
    want = [tower(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(tower, inputs))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_an_unwritable_model_folder_keeps_the_tower_in_memory(backend, tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the model folder should be")
    tower = Extractor.create("test_efficientnet", None, backend=backend, model_dir=blocker / "onnx")
    x = _patches()
    with caplog.at_level(logging.WARNING, logger="histokg"):
        got = tower(x)
    assert tower._runners[(32, 32)] is not None  # the exported graph runs from memory
    assert np.abs(got - tower._torch(x)).max() <= TOL
    assert "not cached" in caplog.text and "PyTorch runs it" not in caplog.text
