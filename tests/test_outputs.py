"""Outputs and run folders: nothing but a regular file is replaced, no output is one of its command's
inputs, nothing existing is replaced without --overwrite, and one output folder has one writer at a time
(histokg.io: check_output_file, check_not_input, claim_output_dir, output_lock)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from histokg.cli import main
from histokg.errors import InputError
from histokg.io import atomic_path, check_output_dir, claim_output_dir, output_lock
from pathways_kg.errors import OutputError

TINY = [
    "data.patch_px=32",
    "data.n_genes=32",
    "model.embed_dim=16",
    "model.expr_hidden=[32]",
    "optim.batch_size=16",
    "optim.epochs=2",
    "optim.warmup_steps=2",
    "early_stopping.patience=0",
    "log_every=1000",
]


def cli_error(capsys, *args) -> str:
    """``histokg ARGS`` through the console entry point: exit status 2 and one ``error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def cli_ok(capsys, *args) -> str:
    main_ok = None
    try:
        main([str(a) for a in args])
    except SystemExit as exc:  # click's standalone_mode=False returns; an exit here is a failure
        main_ok = exc.code
    out = capsys.readouterr()
    assert main_ok in (None, 0), out.err
    return out.out


def special_files(folder: Path) -> dict[str, Path]:
    """A FIFO and (as root) a character device node made in ``folder``; never the system's /dev nodes."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {"named pipe (FIFO)": folder / "fifo"}
    os.mkfifo(made["named pipe (FIFO)"])
    if os.geteuid() == 0:
        made["character device"] = folder / "null_node"
        os.mknod(made["character device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return made


def unchanged(path: Path, kind: str) -> bool:
    mode = path.lstat().st_mode
    return stat.S_ISFIFO(mode) if "FIFO" in kind else stat.S_ISCHR(mode)


@pytest.fixture()
def dummy(tmp_path) -> dict[str, Path]:
    """Files that exist (click checks that much); every refusal below comes before any is read."""
    files = {}
    for name in ("in.h5ad", "model.pt", "counts.tsv", "spots.tsv", "he.jpg", "emb.h5ad"):
        files[name] = tmp_path / "inputs" / name
        files[name].parent.mkdir(exist_ok=True)
        files[name].write_bytes(b"not read")
    return files


# ------------------------------------------------------------------ outputs that are not regular files


def test_an_output_that_is_not_a_regular_file_is_refused_by_every_writer(capsys, tmp_path, dummy, cmu_slide):
    """`convert SRC /dev/full` swapped the node for a TIFF (the atomic rename); read and pair too."""
    for kind, node in special_files(tmp_path / "nodes").items():
        commands = [
            ("convert", cmu_slide, node, "--overwrite"),
            ("read", "legacy", dummy["counts.tsv"], dummy["spots.tsv"], dummy["he.jpg"], "-o", node),
            ("pair", dummy["in.h5ad"], "-o", node, "--overwrite"),
            ("embed", "--checkpoint", dummy["model.pt"], dummy["in.h5ad"], "-o", node, "--overwrite"),
        ]
        for args in commands:
            line = cli_error(capsys, *args)
            assert f"{node} is a {kind}, not a regular file" in line, (args[0], line)
            assert unchanged(node, kind)
        # a folder command: the node where one of its files goes
        study = tmp_path / f"study_{node.name}"
        study.mkdir()
        fifo_json = study / "study.json"
        os.mknod(fifo_json, node.lstat().st_mode, node.lstat().st_rdev)
        line = cli_error(capsys, "synth", study, "--overwrite")
        assert f"{fifo_json} is a {kind}, but a study writes a file there" in line
        assert unchanged(fifo_json, kind)
        ev = tmp_path / f"ev_{node.name}"
        ev.mkdir()
        os.mknod(ev / "results.json", node.lstat().st_mode, node.lstat().st_rdev)
        line = cli_error(capsys, "evaluate", dummy["emb.h5ad"], "--reference", "S1", "-o", ev, "--overwrite")
        assert f"results.json is a {kind}, not a regular file" in line
        assert unchanged(ev / "results.json", kind)
        # an output folder that is a node
        line = cli_error(capsys, "tile", cmu_slide, node)
        assert f"tile folder {node} is a {kind}, not a folder" in line


def test_atomic_path_never_replaces_a_special_file_or_a_link(tmp_path):
    """The writers' one implementation refuses before writing: the net under every library writer."""
    target = tmp_path / "real.txt"
    target.write_text("keep")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    for kind, node in [*special_files(tmp_path).items(), ("symbolic link", link)]:
        with pytest.raises(OutputError, match=f"{node} is a {kind.split(' (')[0]}"), atomic_path(node) as tmp:
            tmp.write_text("new")
        assert node.is_symlink() if kind == "symbolic link" else unchanged(node, kind)
    assert target.read_text() == "keep" and not list(tmp_path.glob(".*.tmp"))


def test_a_symbolic_link_as_output_file_is_refused_and_a_linked_folder_followed(capsys, tmp_path, cmu_slide):
    """A link to a file would lose the link (its target untouched): refused. A folder that is a link (runs
    on a scratch disk) is followed."""
    target = tmp_path / "elsewhere" / "keep.tiff"
    target.parent.mkdir()
    target.write_bytes(b"precious")
    link = tmp_path / "out.tiff"
    link.symlink_to(target)
    line = cli_error(capsys, "convert", cmu_slide, link, "--overwrite")
    assert f"pyramid {link} is a symbolic link (to {target})" in line and "give the target's path" in line
    assert link.is_symlink() and target.read_bytes() == b"precious"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "runs").symlink_to(scratch)
    assert check_output_dir(tmp_path / "runs" / "a") == tmp_path / "runs" / "a" and (scratch / "a").is_dir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="is a symbolic link to .*nowhere, which does not exist"):
        check_output_dir(tmp_path / "dangling")


def test_overwrite_never_removes_an_output_of_the_wrong_kind(tmp_path):
    """claim_output_dir(--overwrite) removed whatever had an output's name: a user's folder named like a
    file output, a file named like a folder output. A link is removed, never what it points to."""
    run = tmp_path / "run"
    (run / "metrics.csv").mkdir(parents=True)
    (run / "metrics.csv" / "mine.txt").write_text("user data")
    with pytest.raises(InputError, match=r"metrics.csv is a folder, but a training run writes a file there"):
        claim_output_dir(run, ["metrics.csv", "checkpoints"], what="a training run", overwrite=True,
                         folders=["checkpoints"])  # fmt: skip
    assert (run / "metrics.csv" / "mine.txt").read_text() == "user data"
    (run / "metrics.csv" / "mine.txt").unlink()
    (run / "metrics.csv").rmdir()
    (run / "checkpoints").write_text("a file")
    with pytest.raises(
        InputError, match=r"checkpoints is a regular file, but a training run writes a folder"
    ):
        claim_output_dir(run, ["metrics.csv", "checkpoints"], what="a training run", overwrite=True,
                         folders=["checkpoints"])  # fmt: skip
    (run / "checkpoints").unlink()
    kept = tmp_path / "scratch_ckpts"
    kept.mkdir()
    (kept / "best.pt").write_text("weights")
    (run / "checkpoints").symlink_to(kept)
    claim_output_dir(run, ["checkpoints"], what="a training run", overwrite=True, folders=["checkpoints"])
    assert not (run / "checkpoints").exists() and (kept / "best.pt").read_text() == "weights"


# ------------------------------------------------------------------ outputs that are inputs


def test_an_output_that_is_one_of_its_inputs_is_refused_even_with_overwrite(
    capsys, tmp_path, dummy, cmu_slide
):
    """`read legacy ... -o` the spot table, `embed -o` the checkpoint, `convert SRC SRC`: the input was
    replaced. By path, by symbolic link, by hard link; --overwrite never allows it."""
    src = tmp_path / "slide.svs"
    src.write_bytes(cmu_slide.read_bytes())
    hard = tmp_path / "hard.svs"
    os.link(src, hard)
    before = src.read_bytes()
    line = cli_error(capsys, "convert", src, src, "--overwrite")
    assert f"pyramid {src} is the input {src}; writing it would destroy that input" in line
    line = cli_error(capsys, "convert", src, hard, "--overwrite")
    assert f"pyramid {hard} is a hard link to the input {src}" in line
    assert src.read_bytes() == before
    spots = dummy["spots.tsv"]
    read = ("read", "legacy", dummy["counts.tsv"], spots, dummy["he.jpg"], "-o", spots, "--overwrite")
    assert f"output .h5ad {spots} is the input {spots}" in cli_error(capsys, *read)
    ckpt = dummy["model.pt"]
    embed = ("embed", "--checkpoint", ckpt, dummy["in.h5ad"], "-o", ckpt, "--overwrite")
    assert f"embedded .h5ad {ckpt} is the input {ckpt}" in cli_error(capsys, *embed)
    embed = ("embed", "--checkpoint", ckpt, dummy["in.h5ad"], "-o", dummy["in.h5ad"], "--overwrite")
    assert "is the input" in cli_error(capsys, *embed)
    h5 = dummy["in.h5ad"]
    assert "is the input" in cli_error(capsys, "pair", h5, "-o", h5, "--overwrite")
    assert all(p.read_bytes() == b"not read" for p in dummy.values())
    # a folder command's files: evaluate into the folder of its input, synth over its own config
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "predicted.h5ad").write_bytes(b"not read")
    line = cli_error(capsys, "evaluate", ev / "predicted.h5ad", "--reference", "S1", "-o", ev, "--overwrite")
    assert f"evaluation output {ev / 'predicted.h5ad'} is the input" in line
    study = tmp_path / "study"
    study.mkdir()
    (study / "config.yaml").write_text("seed: 3\n")
    line = cli_error(capsys, "synth", study, "--config", study / "config.yaml", "--overwrite")
    assert f"output {study / 'config.yaml'} is the input {study / 'config.yaml'}" in line
    assert (study / "config.yaml").read_text() == "seed: 3\n"


def test_train_overwrite_never_removes_its_own_inputs(capsys, synth_study, tmp_path):
    """--overwrite removes the old run's files first: an input among them (weights to start from, the
    config being run) would be gone before it is read."""
    from histokg.config import load_config
    from histokg.train import TrainConfig, train

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    weights = run / "checkpoints" / "best.pt"
    weights.write_bytes(b"weights of the old run")
    (run / "config.yaml").write_text("seed: 1\n")
    cfg = load_config(
        TrainConfig,
        None,
        [f"data.study={synth_study}", f"out_dir={run}", f"model.image_weights={weights}", *TINY],
    )
    with pytest.raises(InputError, match=r"output .*checkpoints holds the input .*best\.pt"):
        train(cfg, overwrite=True)
    assert weights.read_bytes() == b"weights of the old run"
    sets = [a for t in TINY for a in ("--set", t)]
    line = cli_error(capsys, "train", "--config", run / "config.yaml", *sets, "--set", f"data.study={synth_study}",
                     "--set", f"out_dir={run}", "--overwrite")  # fmt: skip
    assert f"output {run / 'config.yaml'} is the input" in line
    assert (run / "config.yaml").read_text() == "seed: 1\n"


# ------------------------------------------------------------------ nothing replaced without --overwrite


def test_convert_read_and_pair_replace_nothing_without_overwrite(capsys, tmp_path, dummy, cmu_slide):
    existing = tmp_path / "old.tiff"
    existing.write_bytes(b"an earlier pyramid")
    line = cli_error(capsys, "convert", cmu_slide, existing)
    assert f"pyramid {existing} already exists; pass --overwrite" in line
    old = tmp_path / "old.h5ad"
    old.write_bytes(b"earlier")
    read = ("read", "legacy", dummy["counts.tsv"], dummy["spots.tsv"], dummy["he.jpg"], "-o", old)
    assert "already exists; pass --overwrite" in cli_error(capsys, *read)
    assert "already exists; pass --overwrite" in cli_error(capsys, "pair", dummy["in.h5ad"], "-o", old)
    assert existing.read_bytes() == b"an earlier pyramid" and old.read_bytes() == b"earlier"
    cli_ok(capsys, "convert", cmu_slide, existing, "--overwrite")
    assert existing.stat().st_size > 100_000


def test_tile_writes_one_set_of_files_per_slide(capsys, tmp_path, cmu_slide):
    """A second slide tiled into the same folder rewrote the first one's tiling_config.yaml."""
    other = tmp_path / "other.svs"
    other.symlink_to(cmu_slide)
    out = tmp_path / "tiles"
    cli_ok(capsys, "tile", cmu_slide, out, "--set", "patch_px=256")
    cli_ok(capsys, "tile", other, out, "--set", "patch_px=128")
    first = yaml.safe_load((out / "CMU-1-Small-Region_tiling_config.yaml").read_text())
    second = yaml.safe_load((out / "other_tiling_config.yaml").read_text())
    assert (
        first["patch_px"] == 256 and second["patch_px"] == 128 and not (out / "tiling_config.yaml").exists()
    )
    assert {p.name for p in out.iterdir()} == {
        f"{stem}{suffix}" for stem in ("CMU-1-Small-Region", "other") for suffix in (".h5", "_tiles.png", "_tiling_config.yaml")
    }  # fmt: skip
    line = cli_error(capsys, "tile", cmu_slide, out, "--set", "patch_px=64")
    assert (
        f"{out} already holds a tiling of a slide named CMU-1-Small-Region" in line and "--overwrite" in line
    )
    cli_ok(capsys, "tile", cmu_slide, out, "--set", "patch_px=64", "--overwrite")
    assert yaml.safe_load((out / "CMU-1-Small-Region_tiling_config.yaml").read_text())["patch_px"] == 64


# ------------------------------------------------------------------ one writer per output


HOLD = """
import sys
from histokg.io import output_lock
with output_lock(sys.argv[1], "histokg test-holder", folder=sys.argv[2] == "folder"):
    print("locked", flush=True)
    if sys.argv[3] == "kill":
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.readline()
print("released", flush=True)
"""


def hold(path: Path, folder: bool = True, kill: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "folder" if folder else "file", "kill" if kill else "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate("\n", timeout=60)
    assert proc.returncode == 0 and out.strip() == "released"


def test_every_folder_command_refuses_a_folder_another_process_writes(
    capsys, tmp_path, synth_study, dummy, cmu_slide
):
    """A second process refuses at once with one line naming the holder (pid, command, since when)."""
    folder = tmp_path / "busy"
    holder = hold(folder)
    try:
        sets = [a for t in TINY for a in ("--set", t)]
        commands = {
            "train": ("train", *sets, "--set", f"data.study={synth_study}", "--set", f"out_dir={folder}"),
            "evaluate": ("evaluate", dummy["emb.h5ad"], "--reference", "S1", "-o", folder),
            "bench": ("bench", "--data", dummy["in.h5ad"], dummy["emb.h5ad"], "--out", folder),
            "index build": ("index", "build", synth_study, "--checkpoint", dummy["model.pt"], "-o", folder),
            "index add": ("index", "add", folder, synth_study, "--checkpoint", dummy["model.pt"]),
            "tile": ("tile", cmu_slide, folder),
            "demo": ("demo", "--out", folder),
            "synth": ("synth", folder),
        }
        for name, args in commands.items():
            line = cli_error(capsys, *args)
            assert f"{folder} is in use by `histokg test-holder` (pid {holder.pid} on " in line, (
                name,
                line,
            )
            assert "since 20" in line and "wait for it to finish, or choose another folder" in line
        assert {p.name for p in folder.iterdir()} == {".histokg.lock"}  # nothing written by the refused
        record = json.loads((folder / ".histokg.lock").read_text())
        assert record["pid"] == holder.pid and record["command"] == "histokg test-holder"
    finally:
        release(holder)
    assert not (folder / ".histokg.lock").exists()  # removed on a clean exit
    out = tmp_path / "e.h5ad"
    holder = hold(out, folder=False)
    try:
        args = ("embed", "--checkpoint", dummy["model.pt"], dummy["in.h5ad"], "-o", out)
        assert f"embedded .h5ad {out} is in use by `histokg test-holder` (pid {holder.pid}" in cli_error(
            capsys, *args
        )
        args = ("convert", cmu_slide, out)
        assert f"(pid {holder.pid}" in cli_error(capsys, *args)
    finally:
        release(holder)


def test_a_lock_left_by_a_killed_process_blocks_nothing(tmp_path):
    folder = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", HOLD, str(folder), "folder", "kill"], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL and (folder / ".histokg.lock").exists()  # stale file, no lock
    with output_lock(folder, "histokg next-run"):
        assert json.loads((folder / ".histokg.lock").read_text())["command"] == "histokg next-run"
        with output_lock(
            folder, "histokg nested"
        ):  # re-entrant within the process (a command calling the library)
            pass
    assert not (folder / ".histokg.lock").exists()


# `histokg train` that waits, holding its run folder's lock, until a file appears: the second run is
# then certain to meet a running first one (on a loaded machine a free-running tiny first run may finish
# before the second has imported torch, and the second then meets a finished run instead)
PAUSED_TRAIN = """
import pathlib, sys, time
from histokg.train import trainer
go = pathlib.Path(sys.argv.pop(1))
fit = trainer.Trainer._fit
def paused(self, *args, **kwargs):
    while not go.exists():
        time.sleep(0.05)
    return fit(self, *args, **kwargs)
trainer.Trainer._fit = paused  # called by Trainer.fit inside output_lock
from histokg.cli import main
main(sys.argv[1:])
"""


def test_two_train_runs_into_one_folder(synth_study, tmp_path):
    """Two runs started half a second apart both exited 0 with interleaved metrics.csv: now the second
    refuses at once, naming the first, and the first finishes normally."""
    run, go = tmp_path / "run", tmp_path / "go"
    sets = [a for t in TINY for a in ("--set", t)]
    args = ["-q", "train", *sets, "--set", f"data.study={synth_study}",
            "--set", f"out_dir={run}", "--set", "optim.epochs=1"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_TRAIN, str(go), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / ".histokg.lock").exists() or not (run / ".histokg.lock").read_text():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "histokg.cli", *args], capture_output=True, text=True, timeout=300
        )
        assert first.poll() is None  # still holding the folder
    finally:
        go.touch()
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"out_dir {run} is in use by `histokg train` (pid {first.pid} on " in second.stderr
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == len(set(rows)) and rows[0].startswith("step")  # one run's rows, one header
    assert not (run / ".histokg.lock").exists()
