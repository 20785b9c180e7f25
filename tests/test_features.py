"""The one feature path (:mod:`histokg.features`) and the one embedding routine (:mod:`histokg.embedding`)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import timm
import torch

from histokg.errors import InputError
from histokg.features import Extractor, FeatureCache, dihedral, hed_jitter, read_ahead, spot_features
from histokg.st.dataset import SpotPatchDataset
from histokg.st.pairing import PairingConfig

PAIRING = PairingConfig(patch_um=112.0, patch_px=32)


@pytest.fixture(scope="module")
def section(synth_adata):
    lib = synth_adata.obs["library_id"].astype(str)
    return synth_adata[lib.to_numpy() == "S1"][:40].copy()


def _manual(backbone, adata, rows):
    """The features as the backbone computes them by hand: [0, 1] RGB, timm's mean and std."""
    ds = SpotPatchDataset(adata, PAIRING, expression=np.zeros((adata.n_obs, 1)))
    x = torch.stack(
        [torch.from_numpy(ds.read_image(i).transpose(2, 0, 1).copy()).float() / 255 for i in rows]
    )
    cfg = timm.data.resolve_data_config({}, model=backbone)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return backbone.eval()((x - mean) / std).numpy()


def test_local_weights_are_loaded_cached_and_recomputed_when_they_change(section, tmp_path):
    """A local weights file (as UNI/CONCH are distributed) goes through the same path as named weights."""
    backbone = timm.create_model("test_efficientnet", num_classes=0)
    weights = tmp_path / "tower.pth"
    torch.save(backbone.state_dict(), weights)
    extractor = Extractor.create("test_efficientnet", weights)
    cache = FeatureCache(tmp_path / "cache")
    naive = {"mean-rgb": lambda p: p.reshape(-1, 3).mean(0)}
    first = spot_features(section, extractor, PAIRING, cache=cache, extras=naive, views=2)
    assert first.tower.shape == (2, 40, extractor.num_features) and first.computed == ["S1"]
    assert first.extras["mean-rgb"].shape == (40, 3)
    np.testing.assert_allclose(first.tower[0, :4], _manual(backbone, section, range(4)), rtol=1e-4, atol=1e-5)
    # view 1 is the patch rotated by 90 degrees
    ds = SpotPatchDataset(section, PAIRING, expression=np.zeros((40, 1)))
    np.testing.assert_allclose(
        first.tower[1, 0], extractor(dihedral(ds.read_image(0), 1)[None])[0], rtol=1e-4, atol=1e-5
    )
    # cached: read, not computed; other weights are computed anew
    again = spot_features(
        section, Extractor.create("test_efficientnet", weights), PAIRING, cache=cache, extras=naive, views=2
    )
    assert again.computed == []
    np.testing.assert_array_equal(again.tower, first.tower)
    torch.save(
        {k: v + 0.01 if v.is_floating_point() else v for k, v in backbone.state_dict().items()}, weights
    )
    changed = spot_features(
        section, Extractor.create("test_efficientnet", weights), PAIRING, cache=cache, views=2
    )
    assert changed.computed == ["S1"] and not np.allclose(changed.tower, first.tower)


def test_the_cache_is_keyed_by_geometry_and_spots_and_refuses_a_damaged_file(section, tmp_path):
    extractor = Extractor.create("test_efficientnet", None)
    cache = FeatureCache(tmp_path)
    spot_features(section, extractor, PAIRING, cache=cache)
    assert spot_features(section, extractor, PAIRING, cache=cache).computed == []
    other = PairingConfig(patch_um=56.0, patch_px=32)
    assert spot_features(section, extractor, other, cache=cache).computed == ["S1"]
    moved = section.copy()
    moved.obsm["spatial"] = moved.obsm["spatial"] + 3.0
    assert spot_features(moved, extractor, PAIRING, cache=cache).computed == ["S1"]
    for path in tmp_path.glob("tower-*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match=r"feature cache .*tower-S1-.* cannot be read .*delete the file"):
        spot_features(section, extractor, PAIRING, cache=cache)


def test_extractor_creation_draws_nothing_from_the_callers_rng():
    torch.manual_seed(3)
    Extractor.create("test_efficientnet", None)
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(1))


def test_tl_embed_goes_through_the_cache_and_gives_the_models_own_embeddings(section, tmp_path):
    """tl.embed = the model's backbone features (cached when asked) then its head; same as encode_image."""
    from histokg.checkpoint import LoadedModel
    from histokg.models import DualEncoder, ModelConfig
    from histokg.priors import PriorConfig
    from histokg.tl import embed

    cfg = ModelConfig(image_encoder="test_efficientnet", embed_dim=16, expr_hidden=(16,))
    model = DualEncoder(cfg, 5).eval()
    loaded = LoadedModel(model, cfg, PAIRING, [str(g) for g in section.var_names[:5]], "infonce", PriorConfig(),
                         tmp_path / "x.pt", "0" * 64, {})  # fmt: skip
    cached = embed(section, loaded, cache_dir=tmp_path / "cache", copy=True)
    assert len(list((tmp_path / "cache").glob("tower-S1-*.safetensors"))) == 1
    plain = embed(section, loaded, copy=True)
    np.testing.assert_array_equal(cached.obsm["X_histokg"], plain.obsm["X_histokg"])
    ds = SpotPatchDataset(section, PAIRING, expression=np.zeros((40, 1)))
    images = torch.stack(
        [torch.from_numpy(ds.read_image(i).transpose(2, 0, 1).copy()).float() / 255 for i in range(3)]
    )
    with torch.no_grad():
        want = model.encode_image(images).numpy()
    np.testing.assert_allclose(plain.obsm["X_histokg"][:3], want, rtol=1e-4, atol=1e-5)


def test_read_ahead_keeps_order_raises_and_stops():
    """The reading thread ahead of the tower: every item in order; the producer's error is raised in the
    consumer; closing early stops the thread (it does not read the rest of the slide)."""
    assert list(read_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("slide x.tiff: truncated")

    got = []
    with pytest.raises(ValueError, match="truncated"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1]

    produced = []

    def slow():
        for i in range(1000):
            produced.append(i)
            time.sleep(0.001)
            yield i

    gen = read_ahead(slow(), depth=2)
    assert next(gen) == 0
    gen.close()
    count = len(produced)
    time.sleep(0.05)
    assert len(produced) == count < 10  # stopped, not running on to the end
    assert not any(t.name == "histokg-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_stain_jitter_changes_views_1_to_7_only_reproducibly_and_keys_the_cache(section, tmp_path):
    """features.stain_jitter / model.feature_stain_jitter: views 1-7 get an HED jitter drawn per spot and
    view (the same on every run), view 0 (validation, embedding, the extras) stays the patch as read, and
    the jittered views never come from, or go to, the plain views' cache files."""
    ds = SpotPatchDataset(section, PAIRING, expression=np.zeros((40, 1)))
    patch = ds.read_image(0)
    assert hed_jitter(patch, np.random.default_rng(0), 0.0) is patch
    a, b = (hed_jitter(patch, np.random.default_rng(seed), 0.3) for seed in (0, 1))
    assert a.dtype == np.uint8 and a.shape == patch.shape and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, hed_jitter(patch, np.random.default_rng(0), 0.3))
    assert np.abs(a.astype(int) - patch).mean() > 1  # a visible change of stain, not a rounding error

    extractor = Extractor.create("test_efficientnet", None, seed=0)
    cache = FeatureCache(tmp_path / "cache")
    plain = spot_features(section, extractor, PAIRING, cache=cache, views=3)
    jittered = spot_features(section, extractor, PAIRING, cache=cache, views=3, stain_jitter=0.3)
    assert jittered.computed == ["S1"]  # not read from the plain views' file
    np.testing.assert_array_equal(jittered.tower[0], plain.tower[0])
    assert not np.allclose(jittered.tower[1:], plain.tower[1:])
    fresh = spot_features(section, extractor, PAIRING, views=3, stain_jitter=0.3, batch_size=7)
    np.testing.assert_allclose(fresh.tower, jittered.tower, rtol=1e-5, atol=1e-6)  # any batch size
    with pytest.raises(InputError, match="stain_jitter"):
        spot_features(section, extractor, PAIRING, views=3, stain_jitter=1.5)


def test_feature_stages_append_pooled_intermediate_stages_in_every_path(section, tmp_path):
    """model.feature_stages / features.stages: the tower's pooled features, then the spatial mean of each
    chosen intermediate stage, the same in PyTorch, ONNX Runtime, the cache, tl.embed and the model."""
    from histokg.checkpoint import LoadedModel
    from histokg.config import load_config
    from histokg.errors import ConfigError
    from histokg.models import DualEncoder, ModelConfig
    from histokg.priors import PriorConfig
    from histokg.tl import embed
    from histokg.train.config import TrainConfig

    plain = Extractor.create("test_efficientnet", None, backend="torch")
    staged = Extractor.create("test_efficientnet", None, backend="torch", stages=(3, 1))
    assert staged.num_features == 256 + 48 + 24 and staged.identity != plain.identity
    ds = SpotPatchDataset(section, PAIRING, expression=np.zeros((40, 1)))
    patches = np.stack([ds.read_image(i) for i in range(4)])
    got = staged(patches)
    np.testing.assert_allclose(got[:, :256], plain(patches), rtol=1e-5, atol=1e-6)
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        _, inter = staged.backbone.forward_intermediates((x - staged.mean) / staged.std, indices=[1, 3])
    np.testing.assert_allclose(got[:, 256:304], inter[1].mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, 304:], inter[0].mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)
    onnx = Extractor.create(
        "test_efficientnet", None, backend="onnx", stages=(3, 1), model_dir=tmp_path / "m"
    )
    assert onnx.backend == "onnx"
    np.testing.assert_allclose(onnx(patches), got, atol=1e-4)

    # a model on cached staged features embeds new patches through the same function
    cfg = ModelConfig(
        image_encoder="test_efficientnet", embed_dim=16, expr_hidden=(16,), freeze_image=True,
        cache_features=True, feature_stages=(3, 1),
    )  # fmt: skip
    model = DualEncoder(cfg, 5).eval()
    assert model.image.head[0].in_features == 328
    loaded = LoadedModel(model, cfg, PAIRING, [str(g) for g in section.var_names[:5]], "infonce", PriorConfig(),
                         tmp_path / "x.pt", "0" * 64, {})  # fmt: skip
    embedded = embed(section, loaded, cache_dir=tmp_path / "cache", copy=True).obsm["X_histokg"]
    with torch.no_grad():
        want = model.encode_image(x).numpy()
    np.testing.assert_allclose(embedded[:4], want, rtol=1e-4, atol=1e-4)

    with pytest.raises(
        InputError,
        match=r"test_efficientnet has stages 0\.\.4 \(channels \[16, 24, 32, 48, 64\]\), got \[7\]",
    ):
        Extractor.create("test_efficientnet", None, stages=(7,))
    with pytest.raises(
        ConfigError, match=r"model\.feature_stages: \[2\] needs a frozen tower on cached features"
    ):
        load_config(TrainConfig, None, ["model.feature_stages=[2]"])
    with pytest.raises(ConfigError, match=r"model\.feature_stages: must be distinct stage indices"):
        load_config(
            TrainConfig,
            None,
            ["model.freeze_image=true", "model.cache_features=true", "model.feature_stages=[2,2]"],
        )


def test_histokg_train_with_feature_stages_writes_a_checkpoint_that_embeds(
    synth_study, synth_adata, tmp_path
):
    from histokg.checkpoint import load_model
    from histokg.config import load_config
    from histokg.tl import embed
    from histokg.train.config import TrainConfig
    from histokg.train.trainer import Trainer

    overrides = [
        f"data.study={synth_study}", "data.patch_px=32", "data.n_genes=32", "data.val_slides=[S3]",
        "model.image_encoder=test_efficientnet", "model.image_weights=null", "model.embed_dim=16",
        "model.freeze_image=true", "model.cache_features=true", "model.feature_stages=[2,4]",
        "optim.epochs=1", "optim.batch_size=32", "loss.name=infonce", f"out_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    trainer = Trainer(load_config(TrainConfig, None, overrides))
    trainer.fit()
    loaded = load_model(tmp_path / "run" / "checkpoints" / "last.pt")
    assert loaded.config.feature_stages == (2, 4)
    assert loaded.model.image.head[0].in_features == 256 + 32 + 64
    val = synth_adata[synth_adata.obs["library_id"].astype(str).to_numpy() == "S3"].copy()
    out = embed(val, loaded, copy=True)
    # the validation features the trainer cached were computed by the same staged tower
    trainer.model.eval()
    with torch.no_grad():
        head = trainer.model.image(features=torch.as_tensor(trainer.val.dataset.extra["features"][:5]))
        want = torch.nn.functional.normalize(head, dim=-1).numpy()  # embeddings are unit vectors
    np.testing.assert_allclose(out.obsm["X_histokg"][:5], want, rtol=1e-4, atol=1e-4)
