"""Per-patch extras of the image head (``model.image_extras: [naive]``): trained, stored in the checkpoint,
and computed again by the one embedding routine; the bench's ``naive`` image input is the same code."""

from __future__ import annotations

import copy
import json
import types

import numpy as np
import pytest
import torch

from histokg import load_model
from histokg.checkpoint import load_checkpoint
from histokg.config import load_config
from histokg.errors import ConfigError
from histokg.features import Extractor
from histokg.keys import Batch
from histokg.patch_stats import N_NAIVE, Standardisation, naive_features
from histokg.st.dataset import SpotPatchDataset
from histokg.tl import embed, embed_slide
from histokg.train import TrainConfig, Trainer

FROZEN = ["model.freeze_image=true", "model.cache_features=true", "optim.epochs=1"]
EXTRAS = [*FROZEN, "model.image_extras=[naive]"]


def _trained(synth_study, out, *extra) -> Trainer:
    from test_train import tiny_cfg

    trainer = Trainer(tiny_cfg(synth_study, out, *extra))
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def with_extras(synth_study, tmp_path_factory) -> Trainer:
    return _trained(synth_study, tmp_path_factory.mktemp("extras"), *EXTRAS)


def _patches(adata, pairing) -> np.ndarray:
    ds = SpotPatchDataset(adata, pairing, expression=np.zeros((adata.n_obs, 0), np.float32))
    try:
        return np.stack([ds.read_image(i) for i in range(adata.n_obs)])
    finally:
        ds.close()


def _by_hand(loaded, adata) -> np.ndarray:
    """Image embeddings computed here: the tower on each patch, the naive numbers of each patch
    standardised with the checkpoint's stored mean and sd, concatenated, then the head."""
    patches = _patches(adata, loaded.pairing)
    tower = Extractor.of_model(loaded.model, backend="torch")(patches)
    parts = [tower]
    if loaded.config.image_extras:
        naive = np.stack([naive_features(p) for p in patches])
        std = loaded.image_extras
        parts.append((naive - std.mean) / std.sd)
    x = torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32))
    with torch.no_grad():
        return torch.nn.functional.normalize(loaded.model.image.head(x), dim=-1).numpy()


def test_an_unknown_extra_is_refused_in_one_line_naming_the_field(tmp_path, capsys):
    from bad_values_fixtures import one_line_error

    with pytest.raises(
        ConfigError, match=r"model\.image_extras: unknown image extra 'naiv'; did you mean 'naive'"
    ):
        load_config(TrainConfig, None, [*FROZEN, "model.image_extras=[naiv]"])
    line = one_line_error(
        capsys, "train", "--set", "model.image_extras=[colour]", "--set", f"out_dir={tmp_path / 'run'}"
    )
    assert "model.image_extras" in line and "'colour'" in line and "naive" in line
    assert not (tmp_path / "run").exists()


def test_extras_need_a_frozen_tower_on_cached_features():
    for fine_tuned in (
        ["model.freeze_image=false"],
        ["model.unfreeze_last=1"],
        ["model.cache_features=false"],
    ):
        with pytest.raises(
            ConfigError, match=r"model\.image_extras: \['naive'\] needs a frozen tower on cached"
        ):
            load_config(TrainConfig, None, [*EXTRAS, *fine_tuned])


def test_training_stores_the_standardisation_of_the_training_spots_only(with_extras):
    trainer = with_extras
    ckpt = load_checkpoint(trainer.last_path)  # weights-only loading reads it
    assert ckpt["model"]["image.extras.mean"].shape == (N_NAIVE,)
    assert json.loads(json.dumps(ckpt["meta"]["config"]["model"]["image_extras"])) == ["naive"]
    loaded = load_model(trainer.last_path)
    assert loaded.config.image_extras == ("naive",) and loaded.image_extras.names == ("naive",)

    pairing = loaded.pairing
    train_naive = np.stack([naive_features(p) for p in _patches(trainer.train.adata, pairing)])
    val_naive = np.stack([naive_features(p) for p in _patches(trainer.val.adata, pairing)])
    assert set(trainer.val_libs) == {"S3"} and "S3" not in trainer.train_libs
    np.testing.assert_allclose(loaded.image_extras.mean, train_naive.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.image_extras.sd, train_naive.std(0) + 1e-6, rtol=1e-5, atol=1e-6)
    # the validation section's colour differs (its own stain shift), and it did not move the stored mean
    everything = np.concatenate([train_naive, val_naive]).mean(0)
    assert np.abs(val_naive.mean(0) - train_naive.mean(0))[:6].max() > 0.01
    assert np.abs(everything - loaded.image_extras.mean).max() > 1e-3
    # what the heads trained on: the tower's features, then the standardised numbers
    fed = trainer.train.dataset.extra[Batch.features]
    assert fed.shape[1] == trainer.model.image.num_features + N_NAIVE
    np.testing.assert_allclose(
        fed[:, -N_NAIVE:], (train_naive - loaded.image_extras.mean) / loaded.image_extras.sd, atol=1e-4
    )


def test_embedding_spots_and_a_slide_recomputes_the_extras(
    with_extras, synth_adata, synth_study, monkeypatch
):
    monkeypatch.setenv("HISTOKG_FEATURE_BACKEND", "torch")  # compared with the PyTorch tower below
    loaded = load_model(with_extras.last_path)
    embedded = embed(synth_adata, loaded, copy=True)
    assert list(embedded.uns["histokg"]["params"]["image_extras"]) == ["naive"]  # recorded with the model
    spots = embedded.obsm["X_histokg"]
    assert np.isfinite(spots).all()
    np.testing.assert_allclose(spots, _by_hand(loaded, synth_adata), atol=2e-5)
    tiles = embed_slide(synth_study / "slides" / "S3.tiff", with_extras.last_path, batch_size=16)
    assert tiles.n_obs > 10 and np.isfinite(tiles.obsm["X_histokg"]).all()
    np.testing.assert_allclose(tiles.obsm["X_histokg"], _by_hand(loaded, tiles), atol=2e-5)
    # the stored standardisation is what embedding applies: another mean gives other embeddings
    shifted = copy.deepcopy(loaded)
    shifted.model.image.extras.mean += shifted.model.image.extras.sd
    assert np.abs(spots - embed(synth_adata, shifted, copy=True).obsm["X_histokg"]).max() > 1e-3
    with pytest.raises(Exception, match="also reads per-patch extras"):
        loaded.model.encode_image(torch.zeros(1, 3, 32, 32))


def test_a_checkpoint_without_extras_loads_and_embeds_as_before(
    synth_study, synth_adata, tmp_path, monkeypatch
):
    monkeypatch.setenv("HISTOKG_FEATURE_BACKEND", "torch")
    trainer = _trained(synth_study, tmp_path / "plain", *FROZEN)
    ckpt = load_checkpoint(trainer.last_path)
    assert not any(k.startswith("image.extras") for k in ckpt["model"])
    # as a checkpoint written before the option: no image_extras in its saved config
    ckpt["meta"]["config"]["model"].pop("image_extras")
    ckpt["meta_json"] = json.dumps(ckpt.pop("meta"))
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    loaded = load_model(old)
    assert loaded.config.image_extras == () and loaded.image_extras is None
    assert loaded.model.image.head[0].in_features == loaded.model.image.num_features
    got = embed(synth_adata, loaded, copy=True).obsm["X_histokg"]
    np.testing.assert_allclose(got, _by_hand(loaded, synth_adata), atol=2e-5)
    np.testing.assert_array_equal(got, embed(synth_adata, trainer.last_path, copy=True).obsm["X_histokg"])


def test_the_bench_naive_input_is_what_train_feeds_its_heads(with_extras):
    """``histokg bench``'s ``image_inputs: naive`` on the trainer's own tower features and naive numbers
    gives the trainer's head inputs bit for bit (one library function)."""
    from histokg.bench.folds import image_inputs
    from histokg.bench.leakage import Ledger
    from histokg.features import FeatureCache, spot_features
    from histokg.patch_stats import extra_functions, raw_extras

    trainer = with_extras
    extractor = Extractor.of_model(trainer.model)
    cache = FeatureCache(trainer.out / "feature_cache")  # the run's cache: the very numbers it used
    found = [
        spot_features(s.adata, extractor, s.dataset.cfg, cache=cache, extras=extra_functions(["naive"]))
        for s in (trainer.train, trainer.val)
    ]
    assert not any(f.computed for f in found)
    fold = types.SimpleNamespace(name="f", train=tuple(trainer.train_libs), test=("S3",))
    groups = trainer.train.adata.obs["library_id"].astype(str).to_numpy()
    data = types.SimpleNamespace(
        train_feats=found[0].tower, test_feats={"S3": found[1].tower}, groups=groups, graphs={},
        train_naive=raw_extras(found[0].extras, ["naive"]), test_naive={"S3": raw_extras(found[1].extras, ["naive"])},
        ledger=Ledger(fold, {s: s for s in (*fold.train, "S3")}, by_patient=False),
    )  # fmt: skip
    train, test = image_inputs(data, "naive")
    np.testing.assert_array_equal(train[0], trainer.train.dataset.extra[Batch.features])
    np.testing.assert_array_equal(test["S3"][0], trainer.val.dataset.extra[Batch.features])
    # and the bench's Standardisation is the one the checkpoint stores
    fitted = Standardisation.fit(["naive"], data.train_naive)
    np.testing.assert_array_equal(fitted.mean, trainer.model.image.extras.mean.numpy())
    np.testing.assert_array_equal(fitted.sd, trainer.model.image.extras.sd.numpy())


def test_feature_views_need_a_frozen_tower_on_cached_features_and_a_count_in_1_to_8():
    """model.feature_views (the cached dihedral views the heads train on) is refused where no features are
    cached, and outside 1..8, naming the key and the value."""
    assert load_config(TrainConfig, None, [*FROZEN, "model.feature_views=8"]).model.feature_views == 8
    for fine_tuned in (["model.unfreeze_last=1"], ["model.cache_features=false"]):
        with pytest.raises(ConfigError, match=r"model\.feature_views: 4 views need a frozen tower"):
            load_config(TrainConfig, None, [*FROZEN, "model.feature_views=4", *fine_tuned])
    for bad in (0, 9):
        with pytest.raises(ConfigError, match=rf"model\.feature_views: must be in 1\.\.8, got {bad}"):
            load_config(TrainConfig, None, [*FROZEN, f"model.feature_views={bad}"])


def test_feature_stain_jitter_needs_views_and_a_strength_below_1():
    """model.feature_stain_jitter jitters cached views 1-7: refused without them, or out of [0, 1)."""
    cfg = load_config(TrainConfig, None, [*FROZEN, "model.feature_views=8", "model.feature_stain_jitter=0.1"])
    assert cfg.model.feature_stain_jitter == 0.1
    with pytest.raises(ConfigError, match=r"model\.feature_stain_jitter: jitters the cached views 1-7"):
        load_config(TrainConfig, None, [*FROZEN, "model.feature_stain_jitter=0.1"])
    with pytest.raises(ConfigError, match=r"model\.feature_stain_jitter: must be in \[0, 1\), got 1\.5"):
        load_config(TrainConfig, None, [*FROZEN, "model.feature_views=8", "model.feature_stain_jitter=1.5"])
