"""Training: learning on the synthetic study, resume after a kill, NaN handling, config and weight errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histokg.checkpoint import load_checkpoint
from histokg.config import load_config
from histokg.errors import ConfigError, InputError
from histokg.models import DualEncoder, ModelConfig, backbone_blocks, create_backbone
from histokg.train import TrainConfig, TrainingError, train

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "data.patch_px=32",
    "data.n_genes=64",
    "data.cache_patches=true",
    "model.image_encoder=test_efficientnet",
    "model.embed_dim=32",
    "model.expr_hidden=[64]",
    "optim.batch_size=32",
    "optim.epochs=2",
    "optim.warmup_steps=2",
    "early_stopping.patience=0",
    "log_every=1000",
]


# Enough to learn on the small synthetic study in about half a minute on 2 cores.
LEARN = [
    "optim.epochs=20",
    "optim.lr=3e-3",
    "optim.image_lr=3e-3",
    "data.patch_px=64",
    "data.n_genes=128",
    "model.embed_dim=64",
    "model.expr_hidden=[128]",
]


def tiny_cfg(study: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [f"data.study={study}", f"out_dir={out}", *TINY, *extra])


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'; did you mean 'lr'"):
        load_config(TrainConfig, None, ["optim.lrr=0.1"])


def test_gene_panel_must_match(synth_study, tmp_path):
    panel = tmp_path / "genes.txt"
    panel.write_text("CD3E\nNOT_A_GENE\n")
    with pytest.raises(InputError, match=r"genes\.txt does not match the data: 1 of 2 genes are absent"):
        train(tiny_cfg(synth_study, tmp_path / "run", f"data.genes={panel}"))


def test_weights_file_that_does_not_fit_names_keys(tmp_path):
    backbone = create_backbone("resnet18")
    state = backbone.state_dict()
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, good)
    model = DualEncoder(ModelConfig(image_encoder="resnet18", image_weights=str(good)), 10)
    torch.testing.assert_close(model.image.backbone.conv1.weight, state["conv1.weight"])
    from safetensors.torch import save_file

    bad = dict(state)
    bad.pop("layer4.1.bn2.weight")
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(InputError) as err:
        DualEncoder(
            ModelConfig(image_encoder="resnet18", image_weights=str(tmp_path / "bad.safetensors")), 10
        )
    msg = str(err.value)
    assert (
        "bad.safetensors do not fit" in msg
        and "layer4.1.bn2.weight" in msg
        and "conv1.weight: file (64, 3, 3, 3) vs model (64, 3, 7, 7)" in msg
    )
    with pytest.raises(ConfigError, match="not a timm architecture"):
        create_backbone("resnet_does_not_exist")


def test_freeze_and_partial_unfreeze():
    model = DualEncoder(ModelConfig(image_encoder="resnet18", freeze_image=True, unfreeze_last=1), 10)
    blocks = backbone_blocks(model.image.backbone)
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert all(p.requires_grad for p in model.image.head.parameters())
    vit = DualEncoder(
        ModelConfig(image_encoder="vit_tiny_patch16_224", freeze_image=True, unfreeze_last=2), 10
    )
    vblocks = backbone_blocks(vit.image.backbone)
    assert vblocks[-2] is vit.image.backbone.blocks[-1] and vblocks[-1] is vit.image.backbone.norm
    assert not any(p.requires_grad for p in vit.image.backbone.blocks[0].parameters())


def test_frozen_backbone_caches_features(synth_study, tmp_path):
    """Frozen backbone: features cached on disk once; the backbone never moves, the heads do."""
    frozen = ["model.freeze_image=true", "model.cache_features=true"]
    one = train(tiny_cfg(synth_study, tmp_path / "one", *frozen, "optim.epochs=1"))
    two = train(tiny_cfg(synth_study, tmp_path / "two", *frozen, "optim.epochs=2"))
    # one file per section (S1, S2 train, S3 validates), keyed by the tower's weights, geometry and spots
    assert sorted(
        p.name.split("-")[1] for p in (tmp_path / "two" / "feature_cache").glob("tower-*.safetensors")
    ) == [
        "S1",
        "S2",
        "S3",
    ]
    a, b = load_checkpoint(one.last_checkpoint)["model"], load_checkpoint(two.last_checkpoint)["model"]
    backbone = [k for k in a if k.startswith("image.backbone.")]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)
    assert not torch.equal(a["image.head.0.weight"], b["image.head.0.weight"])


def _run_cli(args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "histokg.cli", "-q", *args], capture_output=True, text=True, env=env
    )


KILLED_RUN = """
import sys
from histokg.config import load_config
from histokg.train import TrainConfig, Trainer
from histokg.train.callbacks import inject_faults

trainer = Trainer(load_config(TrainConfig, None, [v for i, v in enumerate(sys.argv[1:]) if i % 2]))
inject_faults(trainer, kill_at=5)
trainer.fit()
"""


def test_resume_after_kill_reaches_same_weights(synth_study, tmp_path):
    common = [
        "train",
        "--set",
        f"data.study={synth_study}",
        *[a for t in TINY for a in ("--set", t)],
        "--set",
        "checkpoint_every=2",
    ]
    full = _run_cli([*common, "--set", f"out_dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr
    killed = subprocess.run(  # the same run, with a FaultInjection that SIGKILLs after step 5
        [sys.executable, "-c", KILLED_RUN, *common[1:], "--set", f"out_dir={tmp_path / 'killed'}"],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr  # SIGKILL mid-epoch: no cleanup ran
    mid = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert mid["step"] == 4 and mid["batch_in_epoch"] > 0  # the last checkpoint before the kill, mid-epoch
    resumed = _run_cli(["train", "--resume", str(tmp_path / "killed")])  # the run folder is enough
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)
    assert a["meta"]["history"] == b["meta"]["history"]


def test_a_run_folder_is_never_mixed_with_another_run(synth_study, tmp_path):
    out = tmp_path / "run"
    first = train(tiny_cfg(synth_study, out, "optim.epochs=1"))
    before = first.last_checkpoint.read_bytes()
    config_before = (out / "config.yaml").read_text()
    again = _run_cli(["train", *[a for t in TINY for a in ("--set", t)], "--set", f"data.study={synth_study}",
                      "--set", f"out_dir={out}", "--set", "optim.lr=0.01"])  # fmt: skip
    assert again.returncode == 2
    assert f"{out} already holds a training run" in again.stderr and "--resume" in again.stderr
    assert first.last_checkpoint.read_bytes() == before and (out / "config.yaml").read_text() == config_before
    # --resume with a config that differs in more than the epochs: refused before anything is written
    differs = _run_cli(["train", "--resume", str(out), "--set", "optim.lr=0.01", "--set", "optim.epochs=3"])
    assert differs.returncode == 2 and "optim.lr: 0.001 -> 0.01" in differs.stderr
    assert "differs from the run's own" in differs.stderr and "optim.lr" in differs.stderr
    assert "optim.epochs" not in differs.stderr.split("only")[0]
    assert first.last_checkpoint.read_bytes() == before
    # more epochs: allowed
    more = _run_cli(["train", "--resume", str(out), "--set", "optim.epochs=2"])
    assert more.returncode == 0, more.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2
    # --overwrite: the old run's files are gone before the new one starts
    (out / "checkpoints" / "stale.pt").write_bytes(b"old")
    replaced = train(tiny_cfg(synth_study, out, "optim.epochs=1", "seed=3"), overwrite=True)
    assert not (out / "checkpoints" / "stale.pt").exists()
    assert load_checkpoint(replaced.last_checkpoint)["meta"]["config"]["seed"] == 3
    with pytest.raises(InputError, match="holds no training run to continue"):
        train(tiny_cfg(synth_study, tmp_path / "empty"), resume=True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.epochs=0", "--set optim.epochs=0: optim.epochs: must be >= 1, got 0"),
        ("optim.batch_size=0", "optim.batch_size: must be >= 1"),
        ("optim.grad_accum=-1", "optim.grad_accum: must be >= 1"),
        ("optim.lr=.nan", "optim.lr: must be a finite number >= 0"),
        ("optim.image_lr=.inf", "optim.image_lr: must be a finite number >= 0"),
        ("optim.batch_size=many", "--set optim.batch_size=many: optim.batch_size: expected an integer"),
        (
            "loss.name=kg_soft",
            "--set loss.name=kg_soft: prior.bundle: loss.name 'kg_soft' (or model.expr_input 'kg') needs a KG bundle",
        ),
    ],
)
def test_bad_training_config_is_a_config_error(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, REPO / "configs" / "train" / "demo.yaml", [override])
    assert message in str(err.value)


def test_set_errors_blame_the_set_and_file_errors_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"^.*bad\.yaml: optim\.epochs: must be >= 1"):
        load_config(TrainConfig, bad, ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match=r"^--set optim\.lr=x: optim\.lr: expected a number"):
        load_config(TrainConfig, REPO / "configs" / "train" / "demo.yaml", ["optim.lr=x", "seed=1"])


def test_unwritable_out_dir_fails_before_any_compute(synth_study, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"out_dir .*file is a file, not a folder"):
        train(tiny_cfg(synth_study, blocker))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="cannot be written"):
            train(tiny_cfg(synth_study, locked / "run"))


def test_summary_json_is_valid_json_when_nothing_improved(synth_study, tmp_path, monkeypatch):
    import json

    from histokg.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module.Trainer, "validate", lambda self: {m: float("nan") for m in (
        "recall@1", "recall@5", "recall@10", "pearson", "chance_recall@5")})  # fmt: skip
    train(tiny_cfg(synth_study, tmp_path / "run", "optim.epochs=1"))
    text = (tmp_path / "run" / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert summary["best_metric"] is None


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synth_study, tmp_path):
    from histokg.train import Trainer
    from histokg.train.callbacks import FaultInjection, NonFiniteLoss, inject_faults

    trainer = Trainer(tiny_cfg(synth_study, tmp_path / "run", "checkpoint_every=2"))
    assert not any(isinstance(cb, FaultInjection) for cb in trainer.callbacks.callbacks)  # never by default
    inject_faults(trainer, nan_at=3)
    kinds = [type(cb) for cb in trainer.callbacks.callbacks]
    assert kinds.index(FaultInjection) + 1 == kinds.index(NonFiniteLoss)
    with pytest.raises(
        TrainingError, match=r"loss became nan at step 3 .*last good checkpoint is .*last\.pt"
    ):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2


def test_training_writes_logs_and_learns_infonce(synth_study, tmp_path):
    cfg = tiny_cfg(synth_study, tmp_path / "run", *LEARN)
    result = train(cfg)
    out = tmp_path / "run"
    for name in ("config.yaml", "genes.txt", "metrics.csv", "val_metrics.csv", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents*"))
    best = max(h["recall@5"] for h in result.history)
    chance = result.history[-1]["chance_recall@5"]
    assert best > 3 * chance, (best, chance)
    # no early stopping: last.pt ran its fixed epochs, no slide chose it; best.pt was chosen
    assert load_checkpoint(out / "checkpoints" / "last.pt")["meta"]["validation_chose"] is False
    assert load_checkpoint(out / "checkpoints" / "best.pt")["meta"]["validation_chose"] is True


@pytest.fixture(scope="module")
def kg2e_bundle(synth_adata, tmp_path_factory):
    """A real KG2E bundle of the shipped graph restricted to the study's genes (about half a minute)."""
    from pathways_kg.build import build_graph
    from pathways_kg.config import Component, EmbedConfig, TrainingConfig
    from pathways_kg.embed import embed_graph
    from pathways_kg.graph import write_graph

    tmp = tmp_path_factory.mktemp("kg")
    write_graph(build_graph(universe=list(synth_adata.var_names)), tmp / "graph")
    cfg = EmbedConfig(
        model=Component("kg2e", {"embedding_dim": 32}), training=TrainingConfig(epochs=10, batch_size=2048)
    )
    embed_graph(tmp / "graph", cfg, tmp / "bundle")
    return tmp / "bundle"


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bleep", "kg_soft", "kg_negatives", "kg_uniformity", "kg_gaussian"])
def test_every_loss_learns(synth_study, kg2e_bundle, tmp_path, loss):
    """Held-out-slide retrieval recall@5 clearly above chance for the baseline and every KG loss."""
    cfg = tiny_cfg(synth_study, tmp_path / loss, *LEARN, f"loss.name={loss}", f"prior.bundle={kg2e_bundle}")
    result = train(cfg)
    best = max(h["recall@5"] for h in result.history)
    chance = result.history[-1]["chance_recall@5"]
    assert best > 3 * chance, (loss, best, chance)


def test_bf16_autocast_grad_accumulation_and_early_stopping(synth_study, tmp_path):
    """bf16 autocast (on CPU here), 2-step gradient accumulation, and patience-1 early stopping run end to end."""
    cfg = tiny_cfg(
        synth_study,
        tmp_path / "run",
        "optim.amp=bf16",
        "optim.grad_accum=2",
        "optim.batch_size=16",
        "optim.epochs=6",
        "optim.lr=1e-9",
        "optim.image_lr=1e-9",
        "early_stopping.patience=1",
        "early_stopping.min_delta=0.5",
    )
    result = train(cfg)
    assert (
        result.stopped_early and len(result.history) == 2
    )  # nothing can improve by 0.5 recall: stop after epoch 2
    assert result.steps == 2 * (236 // 16 // 2)
    assert all(np.isfinite(h["recall@5"]) for h in result.history)
    # the validation slide ended this run: its last.pt is as much its choice as best.pt
    ckpts = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["meta"]["validation_chose"] is True
    assert load_checkpoint(ckpts / "best.pt")["meta"]["validation_chose"] is True


@pytest.mark.slow
def test_expression_tower_over_kg_activations(synth_study, synth_adata, kg2e_bundle, tmp_path):
    cfg = tiny_cfg(
        synth_study, tmp_path / "run", "model.expr_input=kg", f"prior.bundle={kg2e_bundle}", "optim.epochs=1"
    )
    result = train(cfg)
    ckpt = load_checkpoint(result.last_checkpoint)
    from histokg.priors import KGPrior, PriorConfig

    n_entities = len(KGPrior.from_bundle(kg2e_bundle, list(synth_adata.var_names), PriorConfig()).entity_ids)
    assert ckpt["meta"]["n_expr_inputs"] == n_entities
    from histokg.tl import embed

    out = embed(synth_adata, result.last_checkpoint, copy=True)
    assert out.obsm["X_histokg_expr"].shape == (synth_adata.n_obs, 32)


class _NotATensor:
    """Any Python object: a file that pickles one must never be unpickled."""


def test_pickled_objects_in_a_weights_file_are_refused_in_one_line(tmp_path):
    from histokg.models import read_state_dict

    path = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1), "extra": _NotATensor()}, path)
    with pytest.raises(InputError) as err:
        read_state_dict(path)
    assert str(err.value).startswith(f"image weights {path}: not a plain tensor file")
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="checkpoint .*: not a plain tensor file"):
        load_checkpoint(path)


def test_checkpoint_whose_config_does_not_fit_its_weights_names_keys(synth_study, tmp_path):
    from histokg import load_model
    from histokg.train.checkpoint import save_checkpoint

    result = train(tiny_cfg(synth_study, tmp_path / "run", "optim.epochs=1"))
    ckpt = load_checkpoint(result.last_checkpoint)
    ckpt["meta"]["config"]["model"]["embed_dim"] = 48  # the saved config no longer describes the weights
    save_checkpoint(tmp_path / "edited.pt", ckpt)
    with pytest.raises(InputError) as err:
        load_model(tmp_path / "edited.pt")
    msg = str(err.value)
    assert "weights do not fit the model its saved config describes" in msg and "with other shapes" in msg
    assert len(msg) < 600 and "\n" not in msg


def test_interrupt_saves_the_last_step_and_resume_matches_the_full_run(synth_study, tmp_path):
    """Ctrl-C (KeyboardInterrupt) mid-accumulation: last.pt holds the last completed step; resuming
    from it reaches the same weights as an uninterrupted run."""
    from histokg.train import Trainer
    from histokg.train.callbacks import CallbackList, TrainingCallback, default_callbacks

    class InterruptMidStep(TrainingCallback):
        def on_loss(self, trainer, loop, loss):
            if loop.step == 3 and loop.batch_in_epoch % 2 == 1:  # a micro-batch after step 3
                raise KeyboardInterrupt
            return loss

    extra = ["optim.batch_size=16", "optim.grad_accum=2", "checkpoint_every=100"]
    full = train(tiny_cfg(synth_study, tmp_path / "full", *extra))
    cfg = tiny_cfg(synth_study, tmp_path / "cut", *extra)
    trainer = Trainer(cfg)
    trainer.callbacks = CallbackList([*default_callbacks(trainer).callbacks, InterruptMidStep()])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (cut["step"], cut["batch_in_epoch"]) == (3, 6)
    resumed = train(cfg, resume=True)
    a, b = load_checkpoint(full.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    assert a["step"] == b["step"] and a["meta"]["history"] == b["meta"]["history"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=0, msg=key)


def test_gene_set_penalty_is_the_spread_of_each_sets_gene_weights():
    """optim.gene_set_reg's term: mean over (set, member gene) of |w_g - mean of the set's w|^2."""
    from histokg.train.engine import gene_set_penalty

    rng = np.random.default_rng(0)
    weight = torch.as_tensor(rng.normal(size=(8, 6)), dtype=torch.float64)
    sets = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 0, 1], [1, 0, 0, 0, 1, 0]], dtype=torch.float64)
    pairs = []
    for s in sets:
        members = weight[:, s.bool()]
        centre = members.mean(dim=1, keepdim=True)
        pairs += list((members - centre).pow(2).sum(dim=0))
    want = torch.stack(pairs).mean()
    torch.testing.assert_close(gene_set_penalty(weight, sets), want)
    same = weight.clone()
    same[:, [1, 2, 3, 5, 4]] = same[:, [0]]  # every set's genes share one column: no spread
    assert float(gene_set_penalty(same, sets)) == pytest.approx(0, abs=1e-12)


def test_gene_set_reg_needs_genes_as_the_expression_input_and_a_bundle(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.gene_set_reg: must be a finite number >= 0, got -1"):
        load_config(TrainConfig, None, ["optim.gene_set_reg=-1"])
    with pytest.raises(ConfigError, match=r"prior\.bundle: optim\.gene_set_reg needs a KG bundle"):
        load_config(TrainConfig, None, ["optim.gene_set_reg=0.1"])
    with pytest.raises(ConfigError, match=r"optim\.gene_set_reg: .* needs model\.expr_input genes"):
        load_config(
            TrainConfig, None, ["optim.gene_set_reg=0.1", "model.expr_input=kg", f"prior.bundle={tmp_path}"]
        )


@pytest.mark.slow
def test_gene_set_reg_pulls_the_gene_weights_of_each_kg_set_together(synth_study, kg2e_bundle, tmp_path):
    from histokg.train.engine import gene_set_penalty
    from histokg.train.trainer import Trainer

    spreads = {}
    for reg in (0.0, 10.0):
        cfg = tiny_cfg(
            synth_study, tmp_path / f"reg{reg}", f"optim.gene_set_reg={reg}", f"prior.bundle={kg2e_bundle}",
            "loss.name=infonce", "optim.lr=0.05", "optim.warmup_steps=0",
        )  # fmt: skip
        trainer = Trainer(cfg)
        trainer.fit()
        from histokg.priors import KGPrior

        prior = KGPrior.from_bundle(kg2e_bundle, list(trainer.train.adata.var_names), cfg.prior)
        sets, ids = prior.gene_set_incidence(trainer.genes)
        assert len(ids) == len(sets) > 0 and sets.sum(axis=1).min() >= 2
        weight = trainer.model.expr.net[0].weight.detach()
        spreads[reg] = float(gene_set_penalty(weight, torch.as_tensor(sets)))
    assert spreads[10.0] < 0.5 * spreads[0.0], spreads
