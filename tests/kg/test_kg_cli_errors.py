"""Bad input to `pathways-kg` stops with one line naming the file, key or value at fault, exit status 2.

Each case runs the click command in standalone mode (as the console script does); one case per
command also runs the real entry point in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from pathways_kg.cli import main
from pathways_kg.testing import random_bundle


@pytest.fixture(scope="module")
def good_bundle(tiny_graph_dir, tmp_path_factory) -> Path:
    return random_bundle(tiny_graph_dir, tmp_path_factory.mktemp("cli") / "bundle", dim=4)


@pytest.fixture
def graph(tiny_graph_dir, tmp_path) -> Path:
    """A copy of the tiny graph folder that a test may damage."""
    return Path(shutil.copytree(tiny_graph_dir, tmp_path / "graph"))


@pytest.fixture
def bundle(good_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(good_bundle, tmp_path / "bundle"))


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def fails(args: list[str], message: str) -> str:
    """Run ``pathways-kg ARGS`` in standalone mode; assert exit 2 and one line containing ``message``."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    line = _one_line_error(result.stderr)
    assert message in line, line
    return line


def run_entry_point(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The console script ``pathways-kg`` is ``pathways_kg.cli:main``; run it exactly so."""
    code = "import sys; from pathways_kg.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _rewrite_tensors(file: Path, change) -> None:
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


# --------------------------------------------------------------------------- the real entry point


def test_entry_point_exit_status_2_for_each_command(graph, bundle, tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("embed:\n  seed: [1,\n", encoding="utf-8")
    proc = run_entry_point(["build", "--out", tmp_path / "g", "--config", bad_yaml], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{bad_yaml}:3: invalid YAML" in _one_line_error(proc.stderr)

    (graph / "entities.tsv").unlink()
    proc = run_entry_point(["embed", graph, "--out", tmp_path / "b"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{graph / 'entities.tsv'}: missing" in _one_line_error(proc.stderr)

    meta = json.loads((bundle / "bundle.json").read_text())
    del meta["entities"]
    (bundle / "bundle.json").write_text(json.dumps(meta))
    proc = run_entry_point(["inspect", bundle, "--entity", "celltype:T cell"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert _one_line_error(proc.stderr) == f"Error: {bundle / 'bundle.json'}: missing key 'entities'"
    assert proc.stdout == ""

    proc = run_entry_point(["inspect", bundle, "-k", "0"], tmp_path)  # click's own usage error: also 2
    assert proc.returncode == 2 and "Invalid value for '-k'" in proc.stderr


# --------------------------------------------------------------------------- build


def test_build_bad_config_and_files(tmp_path):
    out = tmp_path / "g"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("build:\n  min_genes: [3\n", encoding="utf-8")
    fails(["build", "--out", out, "--config", bad_yaml], f"{bad_yaml}:3: invalid YAML")
    fails(
        ["build", "--out", out, "--config", tmp_path / "none.yaml"],
        f"config file {tmp_path / 'none.yaml'} does not exist",
    )
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("build:\n  min_genes: 3 # \xe9\n".encode("latin-1"))
    fails(["build", "--out", out, "--config", latin], f"config file {latin}: cannot read")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n", encoding="utf-8")
    fails(["build", "--out", out, "--config", not_mapping], "top level must be a mapping, got list")
    fails(["build", "--out", out, "--set", "build.min_gene=3"], "did you mean 'min_genes'")
    fails(
        ["build", "--out", out, "--set", "embed.training.epochs=0"],
        "embed.training.epochs: must be at least 1, got 0",
    )
    fails(
        ["build", "--out", out, "--set", "embed.evaluation.split=[0.8,0.1,0.2]"],
        "embed.evaluation.split: must be three ratios",
    )
    fails(
        ["build", "--out", out, "--set", "build.min_genes=-1"], "build.min_genes: must be 0 or more, got -1"
    )
    fails(["build", "--out", out, "--set", "embed.seed"], "is not of the form key.path=value")


def test_build_bad_sources_and_gene_lists(tmp_path):
    out = tmp_path / "g"
    bad = tmp_path / "bad.gmt"
    bad.write_text("HALLMARK_X\thttps://x\n", encoding="utf-8")
    fails(
        ["build", "--out", out, "--set", f"build.sources.hallmark_gmt={bad}"],
        f"{bad}:1: gene set 'HALLMARK_X' has no genes",
    )
    fails(
        ["build", "--out", out, "--set", f"build.sources.hallmark_gmt={tmp_path}"],
        f"{tmp_path}: is a folder, expected a file",
    )
    fails(
        ["build", "--out", out, "--set", f"build.sources.markers={tmp_path / 'no.tsv'}"],
        f"{tmp_path / 'no.tsv'}: file does not exist",
    )
    binary = tmp_path / "genes.bin"
    binary.write_bytes(b"\xff\xfe\x00GENE\n")
    fails(["build", "--out", out, "--genes", binary], f"{binary}: not a UTF-8 text file")
    empty = tmp_path / "genes.txt"
    empty.write_text("# nothing\n", encoding="utf-8")
    fails(["build", "--out", out, "--genes", empty], f"{empty}: no gene symbols")
    fails(
        ["build", "--out", out, "--genes", empty, "--genes-from-h5ad", empty],
        "give either --genes or --genes-from-h5ad",
    )
    fails(["build", "--out", out, "--genes-from-h5ad", empty], f"{empty}: cannot read as .h5ad")
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    fails(
        ["build", "--out", blocker / "g", "--set", f"build.sources.hallmark_gmt={bad}"], "has no genes"
    )  # input first
    line = fails(["build", "--out", blocker / "g", "--genes", tmp_path / "g.txt"], "gene list does not exist")
    assert str(tmp_path / "g.txt") in line


def test_build_unwritable_output_is_one_line(tmp_path, tiny_graph_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    sources = tiny_graph_dir.parent / "sources"
    config.write_text(
        f"build:\n  sources:\n    reactome_gmt: {sources / 'reactome.gmt'}\n"
        f"    reactome_hierarchy: {sources / 'hierarchy.txt'}\n    hallmark_gmt: {sources / 'hallmark.gmt'}\n"
        f"    markers: {sources / 'markers.tsv'}\n    curated: [{sources / 'curated.tsv'}]\n"
        f"    curated_entities: {sources / 'entities.tsv'}\n",
        encoding="utf-8",
    )
    fails(
        ["build", "--out", blocker / "g", "--config", config],
        f"Error: {blocker / 'g'}: cannot create it, {blocker} is a file, not a folder",
    )


# --------------------------------------------------------------------------- embed


def _edit_line(path: Path, number: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_embed_bad_graph_folder(graph, tmp_path):
    out = tmp_path / "b"
    (graph / "triples.tsv").unlink()
    fails(["embed", graph, "--out", out], f"{graph / 'triples.tsv'}: missing (expected a graph folder")


def test_embed_triples_wrong_column_count(graph, tmp_path):
    _edit_line(graph / "triples.tsv", 3, "gene:GA01\tmember_of\tpathway:R-HSA-1001")
    fails(
        ["embed", graph, "--out", tmp_path / "b"],
        f"{graph / 'triples.tsv'}:3: expected 7 tab-separated columns",
    )


def test_embed_triples_unknown_entity_and_relation(graph, tmp_path):
    triples = graph / "triples.tsv"
    original = triples.read_text(encoding="utf-8")
    line = original.splitlines()[2].split("\t")
    _edit_line(triples, 3, "\t".join(["gene:NOPE01", *line[1:]]))
    fails(["embed", graph, "--out", tmp_path / "b"], f"{triples}:3: unknown entity 'gene:NOPE01'")
    triples.write_text(original, encoding="utf-8")
    _edit_line(triples, 3, "\t".join([line[0], "member", *line[2:]]))
    fails(
        ["embed", graph, "--out", tmp_path / "b"],
        f"{triples}:3: unknown relation 'member'; did you mean 'member_of'?",
    )


HEADER = "head\trelation\ttail\tfamily\tsource\tlicence\treference\n"


def test_embed_empty_or_tiny_graph(tmp_path):
    graph = tmp_path / "g"
    graph.mkdir()
    (graph / "entities.tsv").write_text(
        "id\ttype\tlabel\tsource\nphenotype:a\tphenotype\ta\tx\nphenotype:b\tphenotype\tb\tx\n",
        encoding="utf-8",
    )
    (graph / "triples.tsv").write_text(HEADER, encoding="utf-8")
    fails(
        ["embed", graph, "--out", tmp_path / "b"], f"{graph / 'triples.tsv'}: no triples (nothing to embed)"
    )
    rows = [f"phenotype:{h}\tadjacent_to\tphenotype:{t}\tspatial\tx\tx\tref\n" for h, t in ("ab", "ba")]
    (graph / "triples.tsv").write_text(HEADER + "".join(rows), encoding="utf-8")
    fails(
        ["embed", graph, "--out", tmp_path / "b", "--device", "cpu"],
        "2 triples are too few to split with ratios [0.8, 0.1, 0.1]",
    )


def test_embed_refuses_graph_changed_during_training(graph, tmp_path, monkeypatch):
    import pathways_kg.embed as embed_module

    original = embed_module.train

    def train_then_edit(*args, **kwargs):
        result = original(*args, **kwargs)
        with open(graph / "triples.tsv", "a", encoding="utf-8") as fh:
            fh.write("# edited\n")
        return result

    monkeypatch.setattr(embed_module, "train", train_then_edit)
    fails(
        ["embed", graph, "--out", tmp_path / "b", "--epochs", "1", "--device", "cpu"],
        f"{graph / 'triples.tsv'}: changed while the model was training",
    )
    assert not (tmp_path / "b").exists()


def test_embed_bad_summary_json(graph, tmp_path):
    (graph / "summary.json").write_text('{"sources": ', encoding="utf-8")
    fails(["embed", graph, "--out", tmp_path / "b"], f"{graph / 'summary.json'}:1: invalid JSON")
    (graph / "summary.json").write_text('{"sources": [1]}', encoding="utf-8")
    fails(
        ["embed", graph, "--out", tmp_path / "b"],
        f"{graph / 'summary.json'}: 'sources' must be an object or null",
    )


def test_embed_bad_training_settings(graph, tmp_path):
    out = tmp_path / "b"
    fails(
        ["embed", graph, "--out", out, "--model", "transx"],
        "unknown KG model 'transx'; did you mean 'transe'?",
    )
    fails(
        ["embed", graph, "--out", out, "--set", "embed.training.optimizer=adamm"],
        "embed.training.optimizer: unknown optimizer 'adamm'; did you mean 'adam'?",
    )
    fails(
        ["embed", graph, "--out", out, "--set", "embed.training.learning_rate=0"],
        "embed.training.learning_rate: must be a positive number, got 0.0",
    )
    fails(
        ["embed", graph, "--out", out, "--set", "embed.model.kwargs.embeding_dim=8"],
        "unknown kwarg 'embeding_dim'; did you mean 'embedding_dim'",
    )
    fails(["embed", graph, "--out", out, "--device", "gpu"], "unknown device 'gpu'")
    result = CliRunner().invoke(main, ["embed", str(graph), "--out", str(out), "--epochs", "0"])
    assert result.exit_code == 2 and "Invalid value for '--epochs'" in result.stderr  # click's usage error


def test_embed_diverging_training(graph, tmp_path):
    line = fails(
        ["embed", graph, "--out", tmp_path / "b", "--model", "complex", "--epochs", "3", "--device", "cpu",
         "--set", "embed.training.optimizer=sgd", "--set", "embed.training.learning_rate=1e30",
         "--set", "embed.training.batch_size=64"],
        "training complex diverged: the loss became NaN or infinite; lower embed.training.learning_rate",
    )  # fmt: skip
    assert "1e+30" in line and not (tmp_path / "b" / "bundle.json").exists()


# --------------------------------------------------------------------------- inspect


def test_inspect_bad_bundles(bundle, tmp_path):
    fails(["inspect", tmp_path], f"{tmp_path}: not an embedding bundle (no bundle.json)")
    fails(
        ["inspect", bundle, "--entity", "celltype:T cel"],
        "entity 'celltype:T cel' is not in this bundle; did you mean 'celltype:T cell'?",
    )
    fails(
        ["inspect", bundle, "--entity", "celltype:T cell", "--relation", "subtype"],
        "relation 'subtype' is not in this bundle",
    )

    def poison(t):
        t["entity"][5, 1] = np.nan

    _rewrite_tensors(bundle / "entities.safetensors", poison)
    fails(
        ["inspect", bundle],
        f"{bundle / 'entities.safetensors'}: tensor 'entity' holds non-finite values (1 NaN, 0 Inf)",
    )


def test_inspect_changed_tensor_and_model(bundle):
    def flip(t):
        t["relation"][0, 0] += 1.0

    _rewrite_tensors(bundle / "relations.safetensors", flip)
    fails(
        ["inspect", bundle],
        f"{bundle / 'relations.safetensors'}: tensor 'relation' differs from its sha256 in bundle.json",
    )
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["model"] = "rotat"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    fails(["inspect", bundle], f"{bundle / 'bundle.json'}: unknown KG model 'rotat'; did you mean 'rotate'?")


def test_inspect_unwritable_plot(good_bundle, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    fails(
        ["inspect", good_bundle, "--plot", blocker / "map.png"], f"Error: {blocker}: is a file, not a folder"
    )


def test_outputs_never_replace_inputs_or_special_files(graph, good_bundle, tmp_path):
    """`embed GRAPH --out GRAPH` put the bundle's config.yaml over the graph's; `build --config` of the
    output folder's own config.yaml replaced it; a FIFO given as --plot was swapped for a PNG."""
    before = {p.name: p.read_bytes() for p in graph.iterdir()}
    fails(["embed", graph, "--out", graph], f"--out {graph} is the graph folder {graph}")
    assert {p.name: p.read_bytes() for p in graph.iterdir()} == before
    config = tmp_path / "out" / "config.yaml"
    config.parent.mkdir()
    config.write_text("build: {}\n")
    fails(["build", "--out", config.parent, "--config", config], f"{config} is the input {config}")
    assert config.read_text() == "build: {}\n"
    fifo = tmp_path / "map.png"
    os.mkfifo(fifo)
    fails(["inspect", good_bundle, "--plot", fifo], f"{fifo} is a named pipe (FIFO), not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
