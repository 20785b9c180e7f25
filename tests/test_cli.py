"""The histokg command line: real subcommands on small inputs, and user errors as one clear line."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
from click.testing import CliRunner

from histokg.cli import cli


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_synth_read_pair(tmp_path):
    study = tmp_path / "study"
    run("synth", study, "--set", "n_sections=1", "--set", "width_um=800", "--set", "height_um=700")
    assert (study / "slides" / "S1.tiff").is_file() and (study / "config.yaml").is_file()
    out = run(
        "read",
        "visium",
        study / "sections" / "S1",
        "--slide",
        study / "slides" / "S1.tiff",
        "-o",
        tmp_path / "s1.h5ad",
    )
    assert "spots x" in out
    run("pair", tmp_path / "s1.h5ad", "-o", tmp_path / "paired.h5ad", "--overlay-dir", tmp_path / "ov")
    paired = ad.read_h5ad(tmp_path / "paired.h5ad")
    assert "patch_partial" in paired.obs and (tmp_path / "ov" / "S1_spots.png").is_file()


def test_tile_and_convert(cmu_slide, tmp_path):
    out = run("tile", cmu_slide, tmp_path / "tiles", "--set", "patch_px=256")
    assert "tiles ->" in out and (tmp_path / "tiles" / "CMU-1-Small-Region.h5").is_file()
    assert (tmp_path / "tiles" / "CMU-1-Small-Region_tiling_config.yaml").read_text().count(
        "patch_px: 256"
    ) == 1
    run("convert", cmu_slide, tmp_path / "cmu.tiff")
    assert (tmp_path / "cmu.tiff").stat().st_size > 100_000


def test_user_errors_are_one_line_with_status_2(tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"garbage" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "histokg.cli", "tile", str(bad), str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.startswith("error: slide ")
        and "bad.svs" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    proc = subprocess.run(
        [sys.executable, "-m", "histokg.cli", "synth", str(tmp_path / "s"), "--set", "n_section=2"],
        capture_output=True,
        text=True,
    )
    assert (
        proc.returncode == 2 and "unknown config key 'n_section'; did you mean 'n_sections'?" in proc.stderr
    )
