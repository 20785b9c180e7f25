"""Config loading: YAML + --set overrides into frozen dataclasses, with helpful errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pathways_kg.config import KGConfig, load_config, parse_overrides
from pathways_kg.errors import KGError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "kg"


def test_defaults_and_overrides():
    cfg = load_config(
        None, ["embed.model.name=rotate", "embed.training.epochs=3", "build.sources.panglao_organs=[Blood]"]
    )
    assert isinstance(cfg, KGConfig)
    assert cfg.embed.model.name == "rotate" and cfg.embed.model.kwargs == {"embedding_dim": 64}
    assert cfg.embed.training.epochs == 3 and cfg.build.sources.panglao_organs == ("Blood",)
    assert cfg.build.min_genes == 5


def test_unknown_key_suggests_nearest():
    with pytest.raises(KGError, match=r"unknown config key 'embed\.trainig'; did you mean 'training'\?"):
        load_config(None, ["embed.trainig.epochs=3"])
    with pytest.raises(KGError, match="did you mean 'min_genes'"):
        load_config(None, ["build.min_gene=3"])


def test_type_errors(tmp_path):
    with pytest.raises(KGError, match="embed.training.epochs: expected an integer"):
        load_config(None, ["embed.training.epochs=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("embed:\n  seed: [1,\n", encoding="utf-8")
    with pytest.raises(KGError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(bad)
    with pytest.raises(KGError, match="not of the form"):
        parse_overrides(["embed.seed"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.embed.model.name in ("transe", "rotate", "complex", "kg2e")
