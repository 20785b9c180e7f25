"""One engine: ``histokg train`` and ``histokg bench`` train through :func:`histokg.train.engine.run_epoch`,
and for the same settings they reach the same weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from histokg.bench.config import HeadsConfig
from histokg.bench.engine import RunInputs, train_config, train_heads
from histokg.config import Component
from histokg.keys import Batch
from histokg.train import engine
from histokg.train.trainer import Trainer

HEADS = HeadsConfig(embed_dim=32, expr_hidden=(64,), epochs=2, batch_size=32, lr=3e-3, warmup_steps=2)


def _trainer_cfg(study, out, image_extras=(), feature_views=1, heads=HEADS, stain_jitter=0.0):
    from histokg.train.config import DataConfig

    cfg = train_config(
        heads,
        data=DataConfig(study=str(study), patch_px=32, n_genes=64, val_slides=("S3",)),
        out_dir=str(out),
        seed=0,
        log_every=1000,
    )
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model,
            image_encoder="test_efficientnet",
            image_weights=None,
            image_extras=image_extras,
            feature_views=feature_views,
            feature_stain_jitter=stain_jitter,
        ),
    )


@pytest.mark.parametrize(
    "image_extras, views, batches, jitter",
    [
        ((), 1, "mixed", 0.0),
        (("naive",), 1, "mixed", 0.0),
        (("naive",), 3, "mixed", 0.0),
        ((), 1, "within_slide", 0.0),
        ((), 3, "mixed", 0.2),
    ],
    ids=[
        "frozen",
        "frozen+naive",
        "frozen+naive, 3 views",
        "frozen, batches within slides",
        "3 stain-jittered views",
    ],
)
def test_train_on_cached_features_and_the_bench_run_the_one_loop_to_the_same_weights(
    synth_study, tmp_path, monkeypatch, image_extras, views, batches, jitter
):
    heads = dataclasses.replace(HEADS, batches=batches)
    owners: list[str] = []
    step = engine.optimizer_step

    def counting_step(parts, loop):  # run_epoch calls it through the module: both paths pass here
        owners.append("bench" if parts.callbacks.callbacks[-1].__class__.__name__ == "_Budget" else "train")
        step(parts, loop)

    monkeypatch.setattr(engine, "optimizer_step", counting_step)
    trainer = Trainer(_trainer_cfg(synth_study, tmp_path / "run", image_extras, views, heads, jitter))
    result = trainer.fit()
    n_train = owners.count("train")
    assert n_train == result.steps > 0

    # the bench's heads on the very features and expression inputs the trainer cached and used (with
    # image extras: the tower's features and the standardised naive numbers, as the bench's image_inputs
    # builds them, tests/test_patch_stats.py)
    # with several views: the same views (views, n, d), each epoch's draw shared (train.data.feature_views)
    feats = trainer.train.dataset.extra[Batch.features]
    feats = feats.features if views > 1 else feats[None]
    assert feats.shape[0] == views
    if views > 1:  # the views differ (rotations of the patches), so the draw matters
        assert not np.array_equal(feats[0], feats[1])
    if jitter:  # the trainer cached the stain-jittered views the bench computes with features.stain_jitter
        from histokg.features import Extractor, spot_features

        tower = Extractor.of_model(trainer.model)
        cfg = trainer.train.dataset.cfg
        again = spot_features(trainer.train.adata, tower, cfg, views=views, stain_jitter=jitter)
        np.testing.assert_allclose(again.tower, feats, rtol=1e-4, atol=1e-5)
        plain = spot_features(trainer.train.adata, tower, cfg, views=views)
        np.testing.assert_allclose(plain.tower[0], feats[0], rtol=1e-4, atol=1e-5)
        assert not np.allclose(plain.tower[1:], feats[1:], atol=1e-3)
    slides = trainer.train.adata.obs["library_id"].astype(str).to_numpy()
    inputs = RunInputs(features=feats, expr_inputs=trainer.train.expr_inputs, groups=slides)
    joint, facts = train_heads(inputs, Component("infonce"), heads, seed=0)
    assert owners.count("bench") == facts["steps"] == result.steps

    ours = trainer.model.state_dict()
    theirs = joint.model.state_dict()
    assert set(theirs) == {k for k in ours if not k.startswith(("image.backbone.", "image.extras."))}
    for key, value in theirs.items():
        assert torch.equal(value, ours[key]), key
    # and they embed alike (the one embedding routine)
    val_feats = trainer.val.dataset.extra[Batch.features]
    f_bench, g_bench = joint.embed(val_feats, trainer.val.expr_inputs)
    f_train, g_train = trainer.joint.embed(val_feats, trainer.val.expr_inputs)
    np.testing.assert_array_equal(f_bench, f_train)
    np.testing.assert_array_equal(g_bench, g_train)


def test_a_non_finite_loss_stops_the_bench_with_one_line(monkeypatch):
    import pytest

    from histokg.train.callbacks import TrainingError

    rng = np.random.default_rng(0)
    inputs = RunInputs(
        features=rng.normal(size=(1, 64, 16)).astype(np.float32),
        expr_inputs=rng.normal(size=(64, 8)).astype(np.float32),
    )
    inputs.expr_inputs[3, 0] = np.nan
    with pytest.raises(TrainingError, match=r"loss became nan at step 1 .*training stopped\. lower optim.lr"):
        train_heads(inputs, Component("infonce"), dataclasses.replace(HEADS, epochs=1), seed=0)


def test_batches_within_slides_hold_one_slide_each_and_shard_like_one_process():
    """optim.batches: within_slide: every batch from one slide, every slide's spots used in whole
    batches, a new draw each epoch; N ranks see together what one process sees (as mixed batches do)."""
    from histokg.train.data import ShardedBatchSampler

    groups = np.repeat(["A", "B", "C"], [50, 37, 20])
    one = ShardedBatchSampler(len(groups), 16, seed=3, groups=groups)
    assert one.batches_per_epoch == 50 // 16 + 37 // 16 + 20 // 16 == len(list(one))
    batches = list(one)
    assert all(len(set(groups[b])) == 1 and len(b) == 16 for b in batches)
    assert len({i for b in batches for i in b}) == 16 * len(batches)  # no spot twice in an epoch
    assert {groups[b[0]] for b in batches} == {"A", "B", "C"}
    one.set_epoch(1)
    epoch1 = list(one)
    assert epoch1 != batches
    one.set_epoch(1, start_batch=2)  # a run resumed mid-epoch continues with the same batches
    assert list(one) == epoch1[2:] and len(one) == len(epoch1) - 2
    two = [ShardedBatchSampler(len(groups), 8, seed=3, rank=r, world_size=2, groups=groups) for r in (0, 1)]
    for s in (one, *two):
        s.set_epoch(0)
    for whole, a, b in zip(one, *two, strict=True):
        assert whole == a + b
    mixed = ShardedBatchSampler(len(groups), 16, seed=3)
    assert any(len(set(groups[b])) > 1 for b in mixed)
    with pytest.raises(Exception, match="within_slide"):
        ShardedBatchSampler(len(groups), 64, seed=3, groups=groups)


def test_a_slide_smaller_than_a_batch_is_named_not_silently_left_out(caplog):
    from histokg.train.data import ShardedBatchSampler

    groups = np.repeat(["A", "B", "C"], [50, 37, 20])
    with caplog.at_level("WARNING"):
        sampler = ShardedBatchSampler(len(groups), 32, seed=0, groups=groups)
    assert "C (20 spots) hold fewer spots than one batch (32 x 1 processes) and never train" in caplog.text
    assert all(groups[b[0]] != "C" for b in sampler)
