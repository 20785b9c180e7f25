"""The Snakemake workflow (workflow/Snakefile): its sample sheet, its plan, versions.yml, and a real run on a
tiny synthetic study that is killed mid-run and finished by a rerun that redoes only what was lost."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from histokg.errors import InputError
from histokg.io import file_sha256
from histokg.versions import versions, write_versions
from histokg.workflow import plan_study, read_samples, workflow_config

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
STEPS = {"read": 3, "pair": 3, "train": 1, "embed": 3, "predict": 2, "evaluate": 1, "index": 1, "report": 1}


def _files(root: Path, with_st=("S1", "S2", "S3"), he_only=("S4",)) -> Path:
    """Slide files and transcriptomics folders named as a sheet's rows (contents are not read by the checks)."""
    for name in (*with_st, *he_only):
        (root / "slides").mkdir(parents=True, exist_ok=True)
        (root / "slides" / f"{name}.tiff").write_bytes(b"")
        if name in with_st:
            (root / "st" / name).mkdir(parents=True, exist_ok=True)
    return root


def _sheet(root: Path, rows: list[str], name: str = "samples.csv") -> Path:
    path = root / name
    path.write_text("\n".join(["sample,slide,st_dir,patient", *rows]) + "\n")
    return path


GOOD = [
    "S1,slides/S1.tiff,st/S1,P1",
    "S2,slides/S2.tiff,st/S2,P1",
    "S3,slides/S3.tiff,st/S3,P2",
    "S4,slides/S4.tiff,,P2",
]


def test_read_samples_resolves_paths_against_the_sheet(tmp_path):
    root = _files(tmp_path)
    samples = read_samples(_sheet(root, [*GOOD[:3], "S4,slides/S4.tiff,,P2"]))
    assert [s.sample for s in samples] == ["S1", "S2", "S3", "S4"]
    assert (
        samples[0].slide == (root / "slides" / "S1.tiff").resolve()
        and samples[0].st_dir == root / "st" / "S1"
    )
    assert samples[3].st_dir is None and not samples[3].has_st and samples[3].row == 5


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ([GOOD[0], "S1,slides/S2.tiff,st/S2,P1"], r"row 3, field 'sample': 'S1' is also the sample of row 2"),
        ([GOOD[0], "S2,slides/nope.tiff,st/S2,P1"], r"row 3, field 'slide': .*nope\.tiff does not exist"),
        ([GOOD[0], "S2,slides/S2.tiff,st/S9,P1"], r"row 3, field 'st_dir': .*S9 does not exist"),
        ([GOOD[0], "S2,slides/S2.tiff,slides/S3.tiff,P1"], r"row 3, field 'st_dir': .*S3\.tiff is a file"),
        ([GOOD[0], "S2,slides/S2.tiff,st/S2,"], r"row 3, field 'patient': empty for sample 'S2'"),
        ([GOOD[0], "S 2,slides/S2.tiff,st/S2,P1"], r"row 3, field 'sample': 'S 2' is not a usable id"),
        (
            [GOOD[0], "S2,slides/S1.tiff,st/S2,P1"],
            r"row 3, field 'slide': .*S1\.tiff is also sample 'S1''s \(row 2\)",
        ),
        ([GOOD[0], "S2,,st/S2,P1"], r"row 3, field 'slide': empty for sample 'S2'"),
    ],
)
def test_a_bad_row_is_one_error_naming_sheet_row_and_field(tmp_path, rows, pattern):
    sheet = _sheet(_files(tmp_path), rows)
    with pytest.raises(InputError) as err:
        read_samples(sheet)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"sample sheet {sheet}, ")
    assert re.search(pattern, message), message


def test_a_bad_header_is_named(tmp_path):
    root = _files(tmp_path)
    (root / "typo.csv").write_text("sample,slide,st_dir,pateint\nS1,slides/S1.tiff,st/S1,P1\n")
    with pytest.raises(InputError, match=r"no 'patient' column; did you mean 'pateint'\?"):
        read_samples(root / "typo.csv")
    (root / "twice.csv").write_text("sample,slide,st_dir,patient,patient\nS1,slides/S1.tiff,st/S1,P1,P2\n")
    with pytest.raises(InputError, match=r"twice.csv: the column 'patient' occurs more than once"):
        read_samples(root / "twice.csv")
    (root / "empty.csv").write_text("sample,slide,st_dir,patient\n")
    with pytest.raises(InputError, match="a header .* but no rows"):
        read_samples(root / "empty.csv")
    with pytest.raises(InputError, match="does not exist"):
        read_samples(root / "absent.csv")


def test_an_mpp_column_reaches_the_index_table_and_is_checked(tmp_path):
    import pandas as pd

    from histokg.workflow import write_index_table

    root = _files(tmp_path)
    sheet = root / "mpp.csv"
    sheet.write_text(
        "sample,slide,st_dir,patient,mpp,diagnosis\n"
        + "\n".join(f"{row},,{d}" for row, d in zip(GOOD[:3], ("her2", "her2", "tnbc"), strict=True))
        + "\nS4,slides/S4.tiff,,P2,0.74,tnbc\n"
    )
    samples = read_samples(sheet)
    assert (
        samples[3].mpp == 0.74 and samples[0].mpp is None and dict(samples[0].labels) == {"diagnosis": "her2"}
    )
    plan = plan_study(samples, ["P1"])
    table = write_index_table(plan, {s: root / f"{s}.h5ad" for s in plan.with_st}, root / "slides.csv")
    rows = pd.read_csv(table, dtype=str, keep_default_na=False).set_index("slide_id")
    assert (
        rows.loc["S4", "mpp"] == "0.74" and rows.loc["S4", "kind"] == "slide" and rows.loc["S1", "mpp"] == ""
    )
    assert rows.loc["S3", "diagnosis"] == "tnbc" and rows.loc["S3", "path"] == str(
        (root / "S3.h5ad").resolve()
    )
    sheet.write_text(sheet.read_text().replace("0.74", "740"))
    with pytest.raises(
        InputError, match=r"mpp.csv, row 5, field 'mpp': microns per pixel '740' is not plausible"
    ):
        read_samples(sheet)


def test_the_plan_splits_by_training_patients(tmp_path):
    samples = read_samples(_sheet(_files(tmp_path), GOOD))
    plan = plan_study(samples, ["P1"])
    assert (plan.train, plan.evaluate, plan.predict) == (("S1", "S2"), ("S3",), ("S3", "S4"))
    assert plan_study(samples, ["P1"], predict_train=True).predict == ("S1", "S2", "S3", "S4")
    with pytest.raises(
        InputError,
        match=r"config train_patients: patient 'P3' is not in the sample sheet; did you mean 'P2'\? \(patients: P1, P2\)",
    ):
        plan_study(samples, ["P3"])
    with pytest.raises(InputError, match="have 1 section.* training needs two"):
        plan_study(samples, ["P2"])
    assert plan_study(samples, ["P2"], train=False).train == (
        "S3",
    )  # a given checkpoint: S3 is the reference


def test_workflow_config_refuses_unknown_keys_and_reads_the_shipped_one():
    shipped = workflow_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    assert shipped["train_patients"] == ["P1"] and shipped["threads"] == 1
    with pytest.raises(InputError, match=r"unknown key 'train_patient'; did you mean 'train_patients'"):
        workflow_config({"train_patient": ["P1"]})
    with pytest.raises(InputError, match="threads must be int"):
        workflow_config({"threads": "two"})
    assert workflow_config({"train_patients": "P1", "threads": "2"})["train_patients"] == ["P1"]


def test_versions_yml_records_packages_and_the_checkpoint_hash(tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    path = write_versions(tmp_path / "versions.yml", "embed", checkpoint=ckpt)
    entry = yaml.safe_load(path.read_text())["embed"]
    assert entry["checkpoint_sha256"] == file_sha256(ckpt) and entry["checkpoint"] == str(ckpt.resolve())
    import timm
    import torch

    assert entry["torch"] == torch.__version__.split("+")[0] and entry["timm"] == timm.__version__
    assert entry["histokg"] == __import__("histokg").__version__
    assert "checkpoint" not in versions("read")["read"]
    with pytest.raises(InputError, match="checkpoint .* does not exist"):
        versions("embed", checkpoint=tmp_path / "absent.pt")


def test_versions_cli_writes_atomically_and_never_replaces_unasked(tmp_path, capsys):
    from histokg.cli import main

    out = tmp_path / "versions.yml"
    argv = ["versions", "--step", "pair", "-o", str(out)]
    main(argv)
    assert set(yaml.safe_load(out.read_text())["pair"]) == {"histokg", "python", "torch", "timm"}
    written = out.read_bytes()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: versions file {out} already exists; pass --overwrite to replace it, or choose another name"
    )
    assert out.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["versions.yml"]  # no lock or temporary file left


def test_samples_check_prints_the_plan_or_one_line(tmp_path, capsys):
    from histokg.cli import main

    root = _files(tmp_path)
    main(["samples", "check", str(_sheet(root, GOOD)), "--train-patients", "P1"])
    out = capsys.readouterr().out
    assert "4 samples (3 with transcriptomics, 1 H&E only), 2 patients" in out
    assert "train: S1, S2" in out and "evaluate: S3" in out and "predict: S3, S4" in out
    bad = _sheet(root, [GOOD[0], "S1,slides/S2.tiff,st/S2,P1"], "bad.csv")
    with pytest.raises(SystemExit) as stop:
        main(["samples", "check", str(bad)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: sample sheet {bad}, row 3, field 'sample': 'S1' is also the sample of row 2; sample ids must be unique"
    ]


# --------------------------------------------------------------------------- snakemake


def snakemake(work: Path, config: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    path = work / "workflow.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(work)]
    cmd += ["--configfile", str(path), "--cores", "2", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)


def job_counts(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (a dry run's plan) as {rule: count}."""
    block = text.split("Job stats:", 1)[1] if "Job stats:" in text else ""
    counts = {}
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("total", None)
    counts.pop("all", None)
    return counts


def test_dry_run_plans_every_step_once_per_sample(tmp_path):
    root = _files(tmp_path)
    config = {"samples": str(_sheet(root, GOOD)), "results": str(root / "out"), "train_patients": ["P1"]}
    proc = snakemake(root, config, "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert job_counts(proc.stdout) == STEPS
    ckpt = root / "given.pt"
    ckpt.write_bytes(b"")
    given = snakemake(root, {**config, "checkpoint": str(ckpt)}, "-n")
    assert job_counts(given.stdout) == {k: v for k, v in STEPS.items() if k != "train"}
    assert not (root / "out").exists()


@pytest.mark.parametrize(
    "rows, config, pattern",
    [
        (
            [*GOOD, "S1,slides/S4.tiff,,P2"],
            {},
            r"samples\.csv, row 6, field 'sample': 'S1' is also the sample of row 2",
        ),
        ([GOOD[0], "S2,slides/gone.tiff,st/S2,P1"], {}, r"row 3, field 'slide': .*gone\.tiff does not exist"),
        (GOOD, {"train_patients": ["P7"]}, r"config train_patients: patient 'P7' is not in"),
        (GOOD, {"train_patient": ["P1"]}, r"workflow config: unknown key 'train_patient'"),
    ],
)
def test_a_bad_sheet_stops_snakemake_with_one_line_and_status_2(tmp_path, rows, config, pattern):
    root = _files(tmp_path)
    base = {"samples": str(_sheet(root, rows)), "results": str(root / "out"), "train_patients": ["P1"]}
    proc = snakemake(root, {**base, **config})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(pattern, lines[0]), proc.stderr
    assert not (root / "out").exists()  # nothing half-written


# --------------------------------------------------------------------------- a real run, killed and resumed


def _outputs(results: Path) -> dict[str, float]:
    """Every finished step's files (a step folder with its versions.yml) -> mtime."""
    done = {}
    for versions_yml in results.rglob("versions.yml"):
        for path in versions_yml.parent.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                done[str(path.relative_to(results))] = path.stat().st_mtime_ns
    return done


@pytest.mark.slow
def test_workflow_runs_the_tiny_study_and_a_killed_run_redoes_only_what_was_lost(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    study = tmp_path / "study"
    synth = [sys.executable, "-m", "histokg.cli", "-q", "synth", str(study)]
    subprocess.run([*synth, "--config", str(REPO / "configs" / "workflow_synth.yaml")], check=True, env=env)
    rows = [
        f"S{i},{study}/slides/S{i}.tiff,{study}/sections/S{i},P{1 if i < 3 else 2}" for i in (1, 2, 3)
    ] + [f"S4,{study}/slides/S4.tiff,,P2"]
    results = tmp_path / "results"
    config = {
        **yaml.safe_load((REPO / "config" / "config.yaml").read_text()),
        "samples": str(_sheet(tmp_path, rows)),
        "results": str(results),
        "train_config": str(REPO / "configs" / "train" / "demo.yaml"),
    }
    (tmp_path / "workflow.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path)]
    cmd += ["--configfile", str(tmp_path / "workflow.yaml"), "--cores", "2", "-q"]

    # run until the model is trained and an embedding job holds its output lock, then kill everything at once
    run = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 400
    locks: list[Path] = []
    while time.monotonic() < deadline and run.poll() is None:
        locks = list(results.glob("samples/*/embed/.embedded.h5ad.lock"))
        if (results / "model" / "versions.yml").exists() and locks:
            break
        time.sleep(0.1)
    assert run.poll() is None, (
        "the workflow ended before it could be killed:\n" + run.stdout.read().decode()[-3000:]
    )
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = _outputs(results)
    assert "model/run/checkpoints/best.pt" in before and not (results / "report").exists()
    left = [lock for lock in locks if lock.exists()]  # lock files the killed jobs left behind
    assert left
    killed = [lock.parent.parent.name for lock in left]

    # a killed Snakemake leaves its lock: unlock, then the plan is exactly what did not finish
    assert subprocess.run([*cmd, "--unlock"], env=env, capture_output=True).returncode == 0
    plan = subprocess.run([*cmd[:-1], "-n", "--rerun-incomplete"], env=env, capture_output=True, text=True)
    counts = job_counts(plan.stdout)
    assert counts.get("read", 0) == counts.get("pair", 0) == counts.get("train", 0) == 0, plan.stdout[-3000:]
    finished = {p.split("/")[1] for p in before if p.startswith("samples/") and "/embed/" in p}
    assert counts["embed"] == 3 - len(finished) >= len(killed) >= 1
    assert counts["report"] == counts["index"] == 1 and counts["predict"] == 2

    rerun = subprocess.run([*cmd, "--rerun-incomplete"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = _outputs(results)
    assert {k: after.get(k) for k in before} == before  # what had finished was not made again
    for name in killed:  # redone, the left lock file in the way notwithstanding
        assert f"samples/{name}/embed/embedded.h5ad" in after
    assert not list(results.glob("samples/*/*/.*.lock"))  # clean exits leave no lock file

    # every step of every sample, each with its versions.yml
    expected = {
        "S1": ["read", "pair", "embed"],
        "S2": ["read", "pair", "embed"],
        "S3": ["read", "pair", "embed", "predict/S3", "evaluate"],
        "S4": ["predict/S4"],
    }
    for name, steps in expected.items():
        assert sorted(p.name for p in (results / "samples" / name).iterdir()) == sorted(
            {s.split("/")[0] for s in steps}
        )
        for step in steps:
            entry = yaml.safe_load((results / "samples" / name / step / "versions.yml").read_text())
            assert entry[step.split("/")[0]]["histokg"]
    ckpt = results / "model" / "run" / "checkpoints" / "best.pt"
    sha = file_sha256(ckpt)
    for step in (
        "samples/S3/embed",
        "samples/S4/predict/S4",
        "samples/S3/evaluate",
        "index",
        "report",
        "model",
    ):
        entry = next(iter(yaml.safe_load((results / step / "versions.yml").read_text()).values()))
        assert entry["checkpoint_sha256"] == sha, step
    assert (results / "index" / "index" / "CURRENT").is_file()
    report = (results / "report" / "report.md").read_text()
    assert "| S3 | P2 | yes | held out | read, pair, embed, predict, evaluate |" in report
    assert "| S4 | P2 | no | H&E only | predict |" in report
    # nothing is left to do
    final = subprocess.run([*cmd[:-1], "-n"], env=env, capture_output=True, text=True)
    assert job_counts(final.stdout) == {} and "Nothing to be done" in final.stdout + final.stderr
