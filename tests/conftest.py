"""Shared fixtures: a small generated synthetic study and the real data under ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from histokg.synth import SynthConfig, generate_study
from histokg.testing import shared_data_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Exported ONNX towers of the tests go to a folder of the session, never to the user's cache."""
    if "HISTOKG_CACHE_DIR" not in os.environ:
        os.environ["HISTOKG_CACHE_DIR"] = str(tmp_path_factory.mktemp("histokg-cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def cmu_slide(shared_data: Path) -> Path:
    return shared_data / "wsi" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def her2st(shared_data: Path) -> Path:
    return shared_data / "her2st"


SMALL_STUDY = SynthConfig(seed=7, n_sections=3, width_um=1500.0, height_um=1300.0)


@pytest.fixture(scope="session")
def synth_study(tmp_path_factory) -> Path:
    """A small synthetic study (3 sections), generated once per test session."""
    out = tmp_path_factory.mktemp("study")
    generate_study(out, SMALL_STUDY)
    return out


@pytest.fixture(scope="session")
def synth_adata(synth_study: Path):
    from histokg.st.study import load_study

    return load_study(synth_study)


@pytest.fixture(scope="session")
def legacy_section(tmp_path_factory) -> dict[str, Path]:
    """A tiny legacy-ST section (6 x 6 spots on an 800 px JPEG, 5 um/px): tests/bad_values_fixtures.py."""
    from bad_values_fixtures import write_legacy_section

    return write_legacy_section(tmp_path_factory.mktemp("legacy"))


@pytest.fixture(scope="session")
def legacy_adata(legacy_section):
    from histokg.st import read_legacy_st

    return read_legacy_st(legacy_section["counts"], legacy_section["spots"], legacy_section["image"])
