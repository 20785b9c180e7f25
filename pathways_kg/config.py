"""Configuration of ``pathways-kg``: frozen dataclasses filled from YAML and ``--set a.b=value`` overrides.

The loader is :mod:`pathways_kg.dataconf` (shared with histokg); here its errors become
:class:`~pathways_kg.errors.KGError`, naming the key and the nearest valid one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pathways_kg import dataconf
from pathways_kg.dataconf import Component, merge, to_dict
from pathways_kg.errors import KGError

__all__ = [
    "Component",
    "KGConfig",
    "from_dict",
    "load_config",
    "merge",
    "parse_overrides",
    "read_yaml",
    "to_dict",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class SourcesConfig:
    """Input files of the graph; ``None`` means the copy shipped in ``pathways_kg/data``."""

    reactome_gmt: str | None = None
    reactome_hierarchy: str | None = None
    hallmark_gmt: str | None = None
    markers: str | None = None
    curated: tuple[str, ...] | None = None  # curated triple files; None: the shipped curated layer
    curated_entities: str | None = None
    panglao: str | None = None  # PanglaoDB markers TSV, read from the user's path only
    panglao_organs: tuple[str, ...] = ()  # keep only these PanglaoDB organs (empty: all)
    panglao_canonical_only: bool = False
    panglao_map: str | None = None  # PanglaoDB cell type -> curated cell type / parent
    extra: tuple[str, ...] = ()  # more curated triple files (head, relation, tail, reference)
    reactome: bool = True
    hallmark: bool = True


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    sources: SourcesConfig = dataclasses.field(default_factory=SourcesConfig)
    min_genes: int = 5  # with a gene universe: pathways with fewer genes in it are dropped
    min_markers: int = 1  # with a gene universe: PanglaoDB cell types with fewer markers are dropped


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float = 0.01
    optimizer: str = "adam"
    negatives_per_positive: int = 1
    loss: Component | None = None  # None: pykeen's default loss for the model


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_triples: int | None = None  # evaluate on a seeded subsample of the test triples
    batch_size: int = 256


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    model: Component = dataclasses.field(default_factory=lambda: Component("transe", {"embedding_dim": 64}))
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclasses.dataclass(frozen=True)
class KGConfig:
    build: BuildConfig = dataclasses.field(default_factory=BuildConfig)
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), cls: type[T] = KGConfig) -> T:
    """Defaults, then the YAML file ``path``, then ``key.path=value`` overrides."""
    try:
        return dataconf.load(cls, path, overrides)
    except dataconf.DataConfError as exc:
        raise KGError(str(exc)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        return dataconf.read_yaml(path)
    except dataconf.DataConfError as exc:
        raise KGError(str(exc)) from None


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    try:
        return dataconf.parse_overrides(overrides)
    except dataconf.DataConfError as exc:
        raise KGError(str(exc)) from None


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    try:
        return dataconf.from_dict(cls, data, where)
    except dataconf.DataConfError as exc:
        raise KGError(str(exc)) from None
