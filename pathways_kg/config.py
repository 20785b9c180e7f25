"""Configuration of ``pathways-kg``: frozen dataclasses filled from YAML and ``--set a.b=value`` overrides.

The loader is :mod:`pathways_kg.dataconf` (shared with histokg); here its errors become
:class:`~pathways_kg.errors.KGError`, naming the key and the nearest valid one. The KG model and the
added sources are recorded under their registered names (``embed.model.name=TransE`` loads as
``transe``, :data:`NAMES`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pathways_kg import dataconf
from pathways_kg.dataconf import Component, merge, to_dict
from pathways_kg.errors import KGError

__all__ = [
    "Component",
    "KGConfig",
    "check_build",
    "check_embed",
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
    """Input files of the graph; ``None`` means the copy shipped in ``pathways_kg/data``.

    The keys up to ``hallmark`` are shorthands for the registered sources the graph is always built
    from (:meth:`plan`); ``add`` appends any registered source by name, e.g.
    ``add: [{name: gmt, kwargs: {path: my_sets.gmt}}]`` (names: :mod:`pathways_kg.sources`).
    """

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
    add: tuple[Component, ...] = ()  # more registered sources, built after all of the above

    def plan(self) -> list[Component]:
        """The registered sources in build order: Reactome, Hallmark, markers, curated entities and
        triples, PanglaoDB, the ``extra`` triple files, then ``add``."""
        from pathways_kg.io import data_path
        from pathways_kg.sources.triples import CURATED_TRIPLE_FILES

        parts = []
        if self.reactome:
            parts.append(
                Component("reactome", {"path": self.reactome_gmt, "hierarchy": self.reactome_hierarchy})
            )
        if self.hallmark:
            parts.append(Component("hallmark", {"path": self.hallmark_gmt}))
        parts.append(Component("markers", {"path": self.markers}))
        parts.append(Component("entities", {"path": self.curated_entities}))
        curated = self.curated if self.curated is not None else [data_path(n) for n in CURATED_TRIPLE_FILES]
        parts += [Component("triples", {"path": path}) for path in curated]
        if self.panglao:
            kwargs = {
                "path": self.panglao,
                "organs": self.panglao_organs,
                "canonical_only": self.panglao_canonical_only,
                "name_map": self.panglao_map,
            }
            parts.append(Component("panglao", kwargs))
        parts += [Component("triples", {"path": path}) for path in self.extra]
        return parts + list(self.add)


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


def _model_name(name: str) -> str:
    from pathways_kg.models import model_registry

    return model_registry.canonical(name)


def _source_name(name: str) -> str:
    from pathways_kg.sources import source_registry

    return source_registry.canonical(name)


#: Component fields whose names a registry records (an unknown name is refused by the checks below)
NAMES: dataconf.Names = {"embed.model": _model_name, "build.sources.add": _source_name}


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), cls: type[T] = KGConfig) -> T:
    """Defaults, then the YAML file ``path``, then ``key.path=value`` overrides; values are checked."""
    try:
        cfg = dataconf.load(cls, path, overrides, names=NAMES)
    except dataconf.DataConfError as exc:
        raise KGError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:  # a config path that exists but cannot be read
        raise KGError(f"config file {path}: cannot read ({_reason(exc)})") from None
    if isinstance(cfg, KGConfig):
        check_build(cfg.build)
        check_embed(cfg.embed)
    return cfg


def check_build(cfg: BuildConfig, where: str = "build") -> BuildConfig:
    """Raise :class:`KGError` naming the key of a value out of range."""
    _require(cfg.min_genes >= 0, f"{where}.min_genes", "must be 0 or more", cfg.min_genes)
    _require(cfg.min_markers >= 0, f"{where}.min_markers", "must be 0 or more", cfg.min_markers)
    from pathways_kg.sources import make_source

    for i, part in enumerate(cfg.sources.add):  # names and kwargs; the files are read by build_graph
        make_source(part.name, part.kwargs, f"{where}.sources.add[{i}]")
    return cfg


def check_embed(cfg: EmbedConfig, where: str = "embed") -> EmbedConfig:
    """Raise :class:`KGError` naming the key of a value out of range (before any training starts)."""
    t, e = cfg.training, cfg.evaluation
    for key, value in (
        ("training.epochs", t.epochs),
        ("training.batch_size", t.batch_size),
        ("training.negatives_per_positive", t.negatives_per_positive),
        ("evaluation.batch_size", e.batch_size),
    ):
        _require(value >= 1, f"{where}.{key}", "must be at least 1", value)
    lr = t.learning_rate
    _require(math.isfinite(lr) and lr > 0, f"{where}.training.learning_rate", "must be a positive number", lr)
    _require(e.max_triples is None or e.max_triples >= 1, f"{where}.evaluation.max_triples",
             "must be at least 1 (or null for all)", e.max_triples)  # fmt: skip
    ok = all(math.isfinite(x) and 0 < x < 1 for x in e.split) and abs(sum(e.split) - 1) < 1e-6
    _require(ok, f"{where}.evaluation.split", "must be three ratios in (0, 1) that sum to 1", list(e.split))
    _require(cfg.seed >= 0, f"{where}.seed", "must be 0 or more", cfg.seed)
    return cfg


def _require(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise KGError(f"{key}: {what}, got {value!r}")


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


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
