"""Bad option values that used to end in a traceback: devices this machine does not have, file names too
long for the file system, and slide tables that are empty or malformed. Each is one line, exit 2."""

from __future__ import annotations

import pytest
import torch
from bad_values_fixtures import one_line_error

from histokg.errors import ConfigError, InputError

LONG = "a" * 300  # a name longer than any file system takes (NAME_MAX is 255 bytes)


# --------------------------------------------------------------------------- devices


def test_resolve_device_is_the_one_place_devices_are_checked():
    from histokg.devices import resolve_device
    from histokg.train.distributed import DistInfo
    from histokg.train.distributed import resolve_device as train_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == expected
    with pytest.raises(InputError, match=r"^--device 'banana': not a device; use one of auto, cpu, cuda"):
        resolve_device("banana")
    with pytest.raises(InputError, match=r"^--device 'cuda:-1': not a device"):
        resolve_device("cuda:-1")
    with pytest.raises(InputError, match=r"^--device 'meta': not a device"):
        resolve_device("meta")
    if torch.cuda.device_count() < 8:
        with pytest.raises(InputError, match=r"^--device 'cuda:7': (CUDA is not available|no such GPU)"):
            resolve_device("cuda:7")
    with pytest.raises(ConfigError, match=r"^device 'banana': not a device"):
        train_device("banana", DistInfo())  # training's own resolve_device is the shared one


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine's message")
@pytest.mark.parametrize("device", ["banana", "cuda:7"])
def test_device_options_are_one_line(legacy_adata, tmp_path, capsys, device):
    from histokg.st.contract import write_h5ad

    path = write_h5ad(legacy_adata, tmp_path / "s.h5ad")
    expected = "not a device" if device == "banana" else "CUDA is not available; torch sees no GPU"
    for argv in (
        ["embed", "--checkpoint", path, path, "-o", tmp_path / "e.h5ad", "--device", device],
        ["index", "build", path, "--checkpoint", path, "-o", tmp_path / "idx", "--device", device],
    ):
        line = one_line_error(capsys, *argv)
        assert line.startswith(f"error: --device {device!r}: ") and expected in line, line
    line = one_line_error(
        capsys, "train", "--set", f"device={device}", "--set", f"out_dir={tmp_path / 'run'}"
    )
    assert f"device {device!r}: " in line and expected in line, line
    assert not (tmp_path / "e.h5ad").exists() and not (tmp_path / "idx").exists()


def test_bench_devices_are_checked_before_any_data_is_read(tmp_path):
    from histokg.bench.config import BenchConfig
    from histokg.bench.run import Bench
    from histokg.config import from_dict

    for key, section in (("features.device", "features"), ("heads.device", "heads")):
        cfg = from_dict(BenchConfig, {"data": [str(tmp_path / "nothing")], section: {"device": "banana"}})
        with pytest.raises(ConfigError, match=rf"^{key} 'banana': not a device"):
            Bench(cfg, tmp_path).setup()


# --------------------------------------------------------------------------- file names


def test_output_names_too_long_for_the_file_system_are_one_line(
    legacy_section, legacy_adata, tmp_path, capsys
):
    """Before: OSError tracebacks ([Errno 36] File name too long) from every command that writes."""
    from histokg.st.contract import write_h5ad

    path = write_h5ad(legacy_adata, tmp_path / "s.h5ad")
    cases = [
        ["read", "legacy", *legacy_section.values(), "-o", tmp_path / f"{LONG}.h5ad"],
        ["pair", path, "-o", tmp_path / f"{LONG}.h5ad"],
        ["pair", path, "-o", tmp_path / "p.h5ad", "--overlay-dir", tmp_path / LONG],
        ["convert", legacy_section["image"], tmp_path / f"{LONG}.tiff", "--mpp", "5"],
        ["tile", legacy_section["image"], tmp_path / LONG, "--mpp", "5"],
        ["embed", "--checkpoint", path, path, "-o", tmp_path / f"{LONG}.h5ad"],
        ["evaluate", path, "-o", tmp_path / LONG],
        ["synth", tmp_path / LONG],
    ]
    for argv in cases:
        line = one_line_error(capsys, *argv)
        assert "too long for the file system" in line and "..." in line, (argv[0], line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5ad"]  # nothing half-written


def test_a_long_name_the_file_system_takes_is_written_atomically(tmp_path):
    """Names of 242-255 bytes fit the file system but not the temporary name beside them (name + 14)."""
    from histokg.io import atomic_open

    target = tmp_path / ("b" * 250)
    with atomic_open(target, "w") as fh:
        fh.write("ok")
    assert target.read_text() == "ok" and [p.name for p in tmp_path.iterdir()] == [target.name]


# --------------------------------------------------------------------------- slide tables


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty; expected a header row and one row per entry"),
        (b"path,mpp\n", "a header (path, mpp) but no rows"),
        (b'path,mpp\n"unterminated\n', "cannot be parsed as a ','-separated table (Error tokenizing data"),
        (b"\xff\xfe\x00binary\n", "not UTF-8 text (invalid start byte at byte 0)"),
        (b"slide,mpp\nx.svs,0.5\n", "no 'path' column (columns: ['slide', 'mpp'])"),
        (b"path,mpp\n,0.5\n", "row 2: the path is empty"),
    ],
)
def test_empty_or_malformed_slide_tables_are_one_line(legacy_adata, tmp_path, capsys, content, expected):
    """Before: EmptyDataError, ParserError or UnicodeDecodeError tracebacks from ``--table``."""
    from histokg.st.contract import write_h5ad

    checkpoint = write_h5ad(legacy_adata, tmp_path / "s.h5ad")  # never read: the table fails first
    table = tmp_path / "slides.csv"
    table.write_bytes(content)
    for argv in (
        ["index", "build", "--checkpoint", checkpoint, "--table", table, "-o", tmp_path / "idx"],
        ["index", "add", tmp_path, "--checkpoint", checkpoint, "--table", table],
    ):
        line = one_line_error(capsys, *argv)
        assert line.startswith(f"error: slide table {table}") and expected in line, line
    assert not (tmp_path / "idx").exists()
