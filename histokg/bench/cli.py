"""The ``histokg bench`` command (registered in :mod:`histokg.cli`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click


def _ids(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


@click.command("bench")
@click.option(
    "--data",
    "data",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A legacy-ST folder (counts/, spots/, images/, optional cluster_labels/) or .h5ad files "
    "(--data A.h5ad B.h5ad ..., or --data repeated).",
)
@click.argument("more_data", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--folds",
    type=click.Choice(["loso", "lopo"]),
    default=None,
    help="loso: leave-one-section-out (default); lopo: leave-one-patient-out.",
)
@click.option(
    "--patients",
    "patients",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="sample,patient table (default: obs['patient'], else the section id's leading letters, as her2st).",
)
@click.option("--train", "train_ids", help="Comma-separated training section ids (with --test).")
@click.option("--test", "test_ids", help="Comma-separated held-out section ids (with --train).")
@click.option("--losses", help="Comma-separated losses (default: the config's, all six).")
@click.option("--seeds", type=int, help="Seeds per loss (default: the config's, 3).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML config.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key; repeatable."
)
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
def bench(
    data: tuple[Path, ...],
    more_data: tuple[Path, ...],
    folds: str | None,
    patients: Path | None,
    train_ids: str | None,
    test_ids: str | None,
    losses: str | None,
    seeds: int | None,
    out_dir: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Benchmark every loss (and baselines) on real sections under one held-out-section protocol.

    Writes results.json, results.md (mean +- std over seeds per held-out section and loss) and
    results.png into --out; frozen features and KG bundles are cached in --out/cache (or cache_dir).
    """
    from histokg.bench.config import BenchConfig
    from histokg.bench.run import run_bench
    from histokg.config import Component, load_config
    from histokg.errors import ConfigError

    cfg = load_config(BenchConfig, config_path, overrides)
    changes: dict = {}
    if more_data and not data:
        raise ConfigError(f"unexpected arguments {[str(p) for p in more_data]}: data files follow --data")
    if data:
        changes["data"] = tuple(str(p) for p in (*data, *more_data))
    if folds:
        changes["folds"] = folds
    if patients:
        changes["patients"] = str(patients)
    if train_ids or test_ids:
        changes["train"], changes["test"] = _ids(train_ids), _ids(test_ids)
    if losses:
        from histokg.losses import loss_registry

        by_name = {c.name: c for c in cfg.losses}  # the config's names are the registered ones
        named = [loss_registry.canonical(n) for n in _ids(losses)]
        changes["losses"] = tuple(by_name.get(n, Component(n)) for n in named)
    if seeds is not None:
        changes["seeds"] = seeds
    try:
        cfg = dataclasses.replace(cfg, **changes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not cfg.data:
        raise ConfigError("--data: give a legacy-ST folder or .h5ad files (or data: in the config)")
    results = run_bench(cfg, out_dir, overwrite=overwrite, inputs=[config_path])
    from histokg.bench.report import headline_table

    click.echo(headline_table(results))
    click.echo(f"results: {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'results.png'}")
