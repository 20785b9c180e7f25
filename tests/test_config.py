from dataclasses import dataclass, field

import pytest
import yaml

from histokg.config import Component, load_config, parse_overrides, save_config
from histokg.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    steps: int = 10
    name: str = "adamw"


@dataclass(frozen=True)
class Outer:
    seed: int = 0
    inner: Inner = field(default_factory=Inner)
    loss: Component = field(default_factory=lambda: Component("infonce"))
    sizes: tuple[int, ...] = (1, 2)
    path: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("seed: 3\ninner:\n  lr: 0.1\nloss:\n  name: kg_soft\n  kwargs: {lam: 0.5}\n")
    cfg = load_config(Outer, cfg_file, ["inner.steps=20", "loss.kwargs.lam=0.25", "sizes=[4, 5]"])
    assert cfg.seed == 3 and cfg.inner.lr == 0.1 and cfg.inner.steps == 20
    assert cfg.loss == Component("kg_soft", {"lam": 0.25})
    assert cfg.sizes == (4, 5)
    assert isinstance(cfg.inner.lr, float)


def test_int_promotes_to_float_but_not_reverse():
    assert load_config(Outer, None, ["inner.lr=1"]).inner.lr == 1.0
    with pytest.raises(ConfigError, match=r"inner\.steps: expected an integer"):
        load_config(Outer, None, ["inner.steps=1.5"])


def test_unknown_key_names_it_and_suggests_nearest():
    with pytest.raises(ConfigError) as err:
        load_config(Outer, None, ["inner.stpes=3"])
    assert "inner.stpes" in str(err.value) and "did you mean 'steps'" in str(err.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ninner:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(Outer, bad)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["seed"])


def test_save_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["path=/x", "loss.kwargs.beta=0.3"])
    out = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Outer, out) == cfg
    assert yaml.safe_load(out.read_text())["loss"] == {"name": "infonce", "kwargs": {"beta": 0.3}}


def test_shipped_configs_load():
    from pathlib import Path

    from histokg.pipeline import DemoConfig

    repo = Path(__file__).resolve().parents[1]
    assert load_config(DemoConfig, repo / "configs" / "demo.yaml") == DemoConfig()


def test_component_name_change_drops_default_kwargs():
    @dataclass(frozen=True)
    class WithLoss:
        loss: Component = field(default_factory=lambda: Component("kg_soft", {"lam": 0.5}))

    assert load_config(WithLoss, None, ["loss.kwargs.lam=0.1"]).loss == Component("kg_soft", {"lam": 0.1})
    assert load_config(WithLoss, None, ["loss.name=infonce"]).loss == Component("infonce", {})


def test_exponent_without_dot_is_a_number():
    assert load_config(Outer, None, ["inner.lr=3e-3"]).inner.lr == 0.003
    with pytest.raises(ConfigError, match="expected a number, got 'fast'"):
        load_config(Outer, None, ["inner.lr=fast"])
