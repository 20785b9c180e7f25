"""Stain normalisation (:mod:`histokg.wsi.stain`): Reinhard transfer per slide onto a recorded target,
applied wherever patches are read (training, the feature cache, embedding), and recorded in checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from histokg.config import load_config
from histokg.errors import ConfigError, InputError
from histokg.features import Extractor, FeatureCache, spot_features
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig
from histokg.wsi.slide import open_slide
from histokg.wsi.stain import DEFAULT_TARGET, StainStats, lab_stats, reinhard, slide_stain_stats, stats_of

TARGET = StainStats((60.0, 20.0, -15.0), (14.0, 7.0, 6.0))


def _tissue_like(seed: int = 0, size: int = 96) -> np.ndarray:
    """A pink-purple patch: smooth random H&E-like colours."""
    rng = np.random.default_rng(seed)
    base = np.array([190.0, 120.0, 170.0]) + rng.normal(0, 25, (size // 8, size // 8, 3))
    img = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_reinhard_moves_the_source_statistics_onto_the_target_and_keeps_an_identity_map():
    patch = _tissue_like()
    source = lab_stats(patch)
    moved = lab_stats(reinhard(patch, source, TARGET))
    np.testing.assert_allclose(moved.mean, TARGET.mean, atol=1.0)
    np.testing.assert_allclose(moved.std, TARGET.std, rtol=0.08)
    same = reinhard(patch, source, source)  # onto its own statistics: the patch, up to rounding
    assert np.abs(same.astype(int) - patch).max() <= 2
    # one slide, one transform: a patch keeps its difference from another patch of its slide
    other = np.clip(patch.astype(int) + 30, 0, 255).astype(np.uint8)
    a, b = reinhard(patch, source, TARGET), reinhard(other, source, TARGET)
    assert lab_stats(b).mean[0] > lab_stats(a).mean[0] + 5


@pytest.mark.parametrize(
    "values, message",
    [
        ((1, 2, 3), "six finite numbers"),
        ((50, 1, 1, 10, float("nan"), 1), "six finite numbers"),
        ((50, 1, 1, 10, 0, 1), "standard deviation > 0"),
        ((150, 1, 1, 10, 1, 1), "mean L must be in 0..100"),
        ("abcdef", "six finite numbers"),
    ],
)
def test_a_bad_target_is_refused_naming_the_field(values, message):
    with pytest.raises(InputError, match=f"stain_target: .*{message}"):
        StainStats.of(values)


def test_default_target_is_what_the_cmu_slide_measures(cmu_slide):
    """The shipped target is CMU-1-Small-Region's tissue, measured as every slide's statistics are."""
    with open_slide(cmu_slide) as slide:
        measured = slide_stain_stats(slide).as_tuple()
    np.testing.assert_allclose(measured, DEFAULT_TARGET, atol=0.006)


def test_a_slide_without_tissue_is_refused_naming_it(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((400, 400, 3), 245, np.uint8)).save(blank)
    with (
        open_slide(blank, mpp=1.0) as slide,
        pytest.raises(InputError, match=r"blank\.png.*stain_norm: none"),
    ):
        slide_stain_stats(slide)


def test_patches_are_normalised_where_they_are_read_and_the_cache_keys_the_target(synth_adata, tmp_path):
    section = synth_adata[synth_adata.obs["library_id"].astype(str).to_numpy() == "S1"][:12].copy()
    plain = PairingConfig(patch_um=112.0, patch_px=32)
    norm = dataclasses.replace(plain, stain_norm="reinhard", stain_target=TARGET.as_tuple())
    raw_ds = SpotPatchDataset(section, plain, expression=np.zeros((12, 1)))
    ds = SpotPatchDataset(section, norm, expression=np.zeros((12, 1)))
    raw, got = raw_ds.read_image(3), ds.read_image(3)
    source = stats_of(raw_ds.slide("S1"))
    np.testing.assert_array_equal(got, reinhard(raw, source, TARGET))
    assert np.abs(got.astype(int) - raw).mean() > 1  # the synthetic stain is not the target's
    # the dataset the trainer iterates (images, tensors in [0, 1]) reads the same normalised patch
    np.testing.assert_allclose(ds[3]["image"].numpy().transpose(1, 2, 0) * 255, got, atol=1e-3)

    extractor = Extractor.create("test_efficientnet", None)
    cache = FeatureCache(tmp_path / "cache")
    a = spot_features(section, extractor, plain, cache=cache)
    b = spot_features(section, extractor, norm, cache=cache)
    assert b.computed == ["S1"], "a normalised read must not reuse the plain features"
    np.testing.assert_allclose(b.tower[0, 3], extractor(got[None])[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(a.tower, b.tower)
    other = dataclasses.replace(norm, stain_target=DEFAULT_TARGET)
    assert spot_features(section, extractor, other, cache=cache).computed == ["S1"]
    assert spot_features(section, extractor, norm, cache=cache).computed == []


def test_configs_refuse_bad_stain_settings_naming_the_field():
    from histokg.bench.config import BenchConfig
    from histokg.train.config import TrainConfig

    cfg = load_config(TrainConfig, None, ["data.stain_norm=reinhard", "data.stain_target=[50,10,-10,10,5,5]"])
    assert cfg.data.stain_norm == "reinhard" and cfg.data.stain_target == (50, 10, -10, 10, 5, 5)
    with pytest.raises(ConfigError, match=r"data\.stain_norm: must be one of none, reinhard, got 'macenko'"):
        load_config(TrainConfig, None, ["data.stain_norm=macenko"])
    with pytest.raises(ConfigError, match=r"data\.stain_target: expected six finite numbers"):
        load_config(TrainConfig, None, ["data.stain_target=[50,10]"])
    with pytest.raises(
        ConfigError, match=r"data\.read_mpp: must be None or a scan resolution in 0\.05\.\.50"
    ):
        load_config(TrainConfig, None, ["data.read_mpp=0"])
    with pytest.raises(ConfigError, match=r"features\.stain_norm: must be one of none, reinhard"):
        load_config(BenchConfig, None, ["features.stain_norm=Reinhardt"])


def test_a_checkpoint_records_the_normalisation_and_inference_reads_it(synth_study, tmp_path):
    """histokg train with data.stain_norm and data.read_mpp: the checkpoint's pairing (what tl.embed, predict and the index
    read new slides with) is the one training read its patches with."""
    from histokg.checkpoint import load_model
    from histokg.train.trainer import Trainer

    overrides = [
        f"data.study={synth_study}",
        "data.patch_px=32",
        "data.n_genes=32",
        "data.val_slides=[S3]",
        "data.stain_norm=reinhard",
        "data.read_mpp=2.0",
        "model.image_encoder=test_efficientnet",
        "model.image_weights=null",
        "model.embed_dim=16",
        "optim.epochs=1",
        "optim.batch_size=32",
        "loss.name=infonce",
        f"out_dir={tmp_path / 'run'}",
    ]
    from histokg.train.config import TrainConfig

    trainer = Trainer(load_config(TrainConfig, None, overrides))
    trainer.fit()
    loaded = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert loaded.pairing.stain_norm == "reinhard" and loaded.pairing.read_mpp == 2.0
    assert loaded.pairing == trainer.train.dataset.cfg
    assert loaded.pairing.stain.as_tuple() == DEFAULT_TARGET
