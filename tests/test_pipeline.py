"""The main path end to end: `histokg demo` through the CLI on a tiny study, every shipped config
through its schema, and every README command that runs on the demo's outputs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The demo, shrunk: small sections, one short epoch per loss, a few seconds of KG training.
TINY_DEMO = [
    "synth.width_um=1200",
    "synth.height_um=1000",
    "train.optim.epochs=1",
    "kg.embed.training.epochs=2",
    "kg.embed.evaluation.max_triples=200",
    "index_per_mix=2",
]


def histokg(
    *args, cwd: Path | None = None, check: bool = True, block: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run the real console entry point in a fresh process; importing a ``block``ed package fails there."""
    entry = ["-m", "histokg.cli"]
    if block:
        entry = ["-c", f"import sys; sys.modules.update(dict.fromkeys({list(block)!r})); "
                 "from histokg.cli import main; main(sys.argv[1:])"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, *entry, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A folder laid out as the README assumes: the tiny demo in runs/demo, the shipped configs."""
    work = tmp_path_factory.mktemp("work")
    (work / "configs").symlink_to(REPO / "configs")
    sets = [a for s in TINY_DEMO for a in ("--set", s)]
    proc = histokg("-q", "demo", "--out", "runs/demo", *sets, cwd=work)
    return work, proc


def test_demo_runs_end_to_end_through_the_cli(demo_workdir):
    work, proc = demo_workdir
    out = work / "runs" / "demo"
    table = proc.stdout
    assert "held-out section S4" in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.startswith("  infonce")}
    rows.update(
        {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.startswith("  kg_soft")}
    )
    assert set(rows) == {"infonce", "kg_soft"}
    for values in rows.values():
        assert len(values) == 6 and all(re.fullmatch(r"-?\d\.\d{3}", v) for v in values)
    assert (out / "summary.txt").read_text().strip() == table.strip()
    for loss in ("infonce", "kg_soft"):
        for name in ("embedded.h5ad", "predicted.h5ad", "results.json", "report.html", "report.md"):
            assert (out / "eval" / loss / name).is_file(), name
        summary = json.loads((out / "train" / loss / "summary.json").read_text())
        assert summary["steps"] > 0
    html = (out / "eval" / "kg_soft" / "report.html").read_text()
    assert "data:image/png;base64," in html and 'src="spatial_' not in html  # self-contained
    assert "trained with loss kg_soft" in html and "validation (early stopping) slides: S3" in html
    assert "histokg serve runs/demo/index" in table and (out / "index" / "CURRENT").is_file()


def test_demo_refuses_to_mix_with_an_earlier_demo(demo_workdir):
    work, _ = demo_workdir
    before = (work / "runs" / "demo" / "summary.txt").read_text()
    proc = histokg("demo", "--out", "runs/demo", cwd=work, check=False)
    assert proc.returncode == 2
    assert "already holds a demo" in proc.stderr and "--overwrite" in proc.stderr
    assert (work / "runs" / "demo" / "summary.txt").read_text() == before


def test_evaluate_prints_the_table_and_warns_about_the_validation_slide(demo_workdir, tmp_path):
    work, _ = demo_workdir
    demo = work / "runs" / "demo"
    ckpt = demo / "train" / "infonce" / "checkpoints" / "best.pt"
    # with the training code unimportable: evaluation is inference and never imports histokg.train
    proc = histokg(
        "evaluate",
        demo / "eval" / "infonce" / "embedded.h5ad",
        "--checkpoint",
        ckpt,
        "-o",
        tmp_path,
        block=("histokg.train",),
    )
    assert "Cross-modal retrieval" in proc.stdout and "image -> expression" in proc.stdout
    assert "'summary'" not in proc.stdout and "{" not in proc.stdout  # the table, not the raw dict
    assert "held-out slide(s) ['S3'] chose the checkpoint" in proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model"]["val_slides"] == ["S3"] and results["warnings"]
    again = histokg(
        "evaluate",
        demo / "eval" / "infonce" / "embedded.h5ad",
        "--checkpoint",
        ckpt,
        "-o",
        tmp_path,
        check=False,
    )
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr


def test_evaluate_refuses_embeddings_of_another_checkpoint(demo_workdir, tmp_path):
    work, _ = demo_workdir
    demo = work / "runs" / "demo"
    other = demo / "train" / "kg_soft" / "checkpoints" / "best.pt"
    proc = histokg(
        "evaluate",
        demo / "eval" / "infonce" / "embedded.h5ad",
        "--checkpoint",
        other,
        "-o",
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "the embeddings were made with checkpoint" in proc.stderr


# --------------------------------------------------------------------------- shipped configs


def _schema(path: Path):
    """The schema each shipped config fills, by its place under configs/."""
    from histokg.pipeline import DemoConfig
    from histokg.st.pairing import PairingConfig
    from histokg.synth import SynthConfig
    from histokg.train import TrainConfig
    from histokg.wsi import TilingConfig

    rel = path.relative_to(REPO / "configs").as_posix()
    if rel.startswith("train/"):
        return TrainConfig
    if rel.startswith("kg/"):
        return "kg"
    if rel.startswith("bench/"):
        from histokg.bench.config import BenchConfig

        return BenchConfig
    return {
        "demo.yaml": DemoConfig,
        "pairing.yaml": PairingConfig,
        "synth.yaml": SynthConfig,
        "tiling.yaml": TilingConfig,
        "workflow_synth.yaml": SynthConfig,
    }[rel]


CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(REPO).as_posix() for p in CONFIGS])
def test_every_shipped_config_fits_its_schema(path):
    from histokg.config import load_config
    from pathways_kg.config import load_config as load_kg_config

    schema = _schema(path)
    cfg = load_kg_config(path) if schema == "kg" else load_config(schema, path)
    assert cfg is not None


def test_config_list_is_not_empty():
    assert len(CONFIGS) >= 7


# --------------------------------------------------------------------------- README


def readme_commands() -> list[str]:
    """Commands of the README's fenced blocks marked ``<!-- runs-on-demo -->`` (continuations joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- runs-on-demo -->\s*```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_marks_its_runnable_commands():
    commands = readme_commands()
    assert len(commands) >= 8
    assert any(" train " in c for c in commands) and any("--resume" in c for c in commands)
    assert any(" evaluate " in c for c in commands) and any("pathways-kg embed" in c for c in commands)


def test_readme_commands_run_on_the_demo_outputs(demo_workdir):
    work, _ = demo_workdir
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for command in readme_commands():
        args = shlex.split(command)
        assert args[0].startswith(".venv/bin/"), command
        args[0] = str(bin_dir / Path(args[0]).name)
        proc = subprocess.run(args, cwd=work, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, (
            f"README command failed: {command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )


def test_bad_inputs_to_embed_and_evaluate_are_one_line_exit_2(demo_workdir, tmp_path):
    import anndata as ad
    import numpy as np

    work, _ = demo_workdir
    demo = work / "runs" / "demo"
    ckpt = demo / "train" / "infonce" / "checkpoints" / "best.pt"
    embedded = ad.read_h5ad(demo / "eval" / "infonce" / "embedded.h5ad")
    embedded.obsm["X_histokg_expr"][:5] = np.nan  # what an old embedding of a gene-lacking section held
    embedded.write_h5ad(tmp_path / "nan.h5ad")
    paired = ad.read_h5ad(demo / "paired.h5ad")
    paired[:, paired.var_names[:200]].copy().write_h5ad(tmp_path / "few_genes.h5ad")
    (tmp_path / "cut.pt").write_bytes(ckpt.read_bytes()[:50_000])
    (tmp_path / "exists.h5ad").write_text("taken")
    cases = [
        (["evaluate", tmp_path / "nan.h5ad", "--checkpoint", ckpt, "-o", tmp_path / "ev"], "non-finite values in 5 of"),
        (["embed", "--checkpoint", ckpt, tmp_path / "few_genes.h5ad", "-o", tmp_path / "e.h5ad"],
         "panel genes (e.g."),
        (["embed", "--checkpoint", tmp_path / "cut.pt", demo / "paired.h5ad", "-o", tmp_path / "e.h5ad"],
         "cannot be read as a torch tensor file"),
        (["embed", "--checkpoint", ckpt, demo / "paired.h5ad", "-o", tmp_path / "exists.h5ad"],
         "already exists; pass --overwrite"),
    ]  # fmt: skip
    for args, message in cases:
        proc = histokg(*args, check=False)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    assert (tmp_path / "exists.h5ad").read_text() == "taken" and not (tmp_path / "e.h5ad").exists()
    proc = histokg(
        "embed", "--checkpoint", ckpt, tmp_path / "few_genes.h5ad", "--images-only", "-o", tmp_path / "i.h5ad"
    )
    images_only = ad.read_h5ad(tmp_path / "i.h5ad")
    assert "X_histokg" in images_only.obsm and "X_histokg_expr" not in images_only.obsm
