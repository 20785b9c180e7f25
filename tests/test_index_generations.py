"""Index generations: a build or add killed at any step leaves the old index or the new one; verify, repair,
and indexes written before generations (the layout of runs/demo/index) still load and migrate."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures)

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from retrieval_fixtures import (  # noqa: F401  (fixtures)
    built_index,
    kg_bundle,
    mix_table,
    retrieval_ckpt,
)

from histokg.cli import main
from histokg.errors import InputError
from histokg.retrieval import faiss_index as fi
from histokg.retrieval import generations as gens
from histokg.retrieval import query as q
from histokg.retrieval.build import add_to_index, build_index
from histokg.retrieval.index import RetrievalIndex, region_id
from histokg.retrieval.shards import SlideShard, specs_from_paths, specs_from_table
from histokg.retrieval.verify import verify_index

BASE = ["S1", "carcinoma-1", "benign-1"]  # the index before the change (S1 has counts: KG activations)
ADDED = ["S2", "inflamed-1"]  # what `index add` adds
LATER = "carcinoma-2"  # what a second add adds afterwards

# Runs one change with a fault hook that SIGKILLs the process at the N-th step (0: never), printing each
# step; the same test-only hook (histokg.retrieval.generations.fault_hook) marks every write point.
KILLED = """
import os, signal, sys
from histokg.retrieval import generations

target, op, index_dir, mix_table, study, checkpoint, *slides = sys.argv[1:]
seen = []

def hook(step):
    seen.append(step)
    print(step, flush=True)
    if len(seen) == int(target):
        os.kill(os.getpid(), signal.SIGKILL)

generations.fault_hook = hook
from histokg.retrieval.build import add_to_index, build_index
from histokg.retrieval.shards import specs_from_paths, specs_from_table

specs = [s for s in specs_from_table(mix_table) + specs_from_paths([study], patient="P1") if s.slide_id in slides]
if op == "add":
    add_to_index(index_dir, specs, checkpoint, scheduler="sync")
else:
    build_index(specs, checkpoint, index_dir, scheduler="sync", n_prototypes=4, overwrite=True)
"""


def _specs(mix_table, study, slides):
    every = specs_from_table(mix_table) + specs_from_paths([study], patient="P1")
    return [s for s in every if s.slide_id in slides]


def _stage(built_index: Path, index_dir: Path, slides: list[str]) -> None:
    """Put finished shards of ``slides`` into the index's staging folder, as an embedding step leaves them
    (the change under test then only commits; no slide is embedded again)."""
    built = RetrievalIndex.load(built_index)
    for sid in slides:
        for sub, src in (("shards", built.shard_path(sid)), ("thumbs", built.thumbnail_path(sid))):
            if src is not None:
                dst = gens.staging_dir(index_dir) / sub / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)


def _run_killed(target, op, index_dir, mix_table, study, ckpt, slides):
    args = [str(target), op, str(index_dir), str(mix_table), str(study), str(ckpt), *slides]
    return subprocess.run([sys.executable, "-c", KILLED, *args], capture_output=True, text=True)


def _check_usable(index_dir: Path, expected: set[str]) -> RetrievalIndex:
    report = verify_index(index_dir)
    assert report.ok, report.lines()
    index = RetrievalIndex.load(index_dir)
    assert set(index.slide_ids) == expected
    assert index.n_regions == sum(len(index.shard(s)) for s in index.slide_ids)
    for descriptor in ("mean", "prototypes", "kg"):
        res = q.similar_slides(index, "S1", k=2, descriptor=descriptor)
        assert len(res) == 2 and all(np.isfinite(r["score"]) for r in res)
    v = index.shard(sorted(expected)[-1]).vectors[0]
    _, ids = fi.search(index.regions, v[None], 1)
    assert int(ids[0, 0]) >> 32 == index.slide_meta(sorted(expected)[-1])["ordinal"]
    return index


@pytest.fixture(scope="module")
def base_index(built_index, tmp_path_factory) -> Path:
    """An index of BASE (from the fixture's shards) with ADDED embedded and staged, as a killed add leaves it."""
    root = tmp_path_factory.mktemp("generations") / "base"
    built = RetrievalIndex.load(built_index)
    RetrievalIndex.create(root, [built.shard_path(s) for s in BASE], n_prototypes=4)
    _stage(built_index, root, ADDED)
    return root


def _steps(op, index_dir, tmp_path, mix_table, study, ckpt, slides) -> list[str]:
    probe = tmp_path / "probe"
    shutil.copytree(index_dir, probe)
    done = _run_killed(0, op, probe, mix_table, study, ckpt, slides)
    assert done.returncode == 0, done.stderr
    shutil.rmtree(probe)
    return done.stdout.split("\n")[:-1]


def _kill_at_every_step(op, start, tmp_path, built_index, mix_table, study, ckpt, slides, old, new):
    steps = _steps(op, start, tmp_path, mix_table, study, ckpt, slides)
    assert "pointer" in steps and len(steps) >= 10, steps
    for n, step in enumerate(steps, start=1):
        work = tmp_path / f"kill-{n}"
        shutil.copytree(start, work)
        killed = _run_killed(n, op, work, mix_table, study, ckpt, slides)
        assert killed.returncode == -9, (step, killed.stderr)  # SIGKILL: no clean-up ran
        switched = n >= steps.index("pointer") + 1
        _check_usable(work, new if switched else old)
        # the index keeps working: run the change again if it had not switched, then add one more slide
        if not switched:
            if op == "add":
                add_to_index(work, _specs(mix_table, study, slides), ckpt, scheduler="sync")
            else:
                build_index(
                    _specs(mix_table, study, slides),
                    ckpt,
                    work,
                    scheduler="sync",
                    n_prototypes=4,
                    overwrite=True,
                )
        _stage(built_index, work, [LATER])
        add_to_index(work, _specs(mix_table, study, [LATER]), ckpt, scheduler="sync")
        _check_usable(work, new | {LATER})
        assert not gens.staging_dir(work).exists()  # every staged slide went into the index
        shutil.rmtree(work)


def test_index_add_killed_at_every_step_leaves_the_old_or_the_new_index(
    base_index, built_index, mix_table, synth_study, retrieval_ckpt, tmp_path
):
    _kill_at_every_step(
        "add", base_index, tmp_path, built_index, mix_table, synth_study, retrieval_ckpt, ADDED,
        set(BASE), set(BASE + ADDED),
    )  # fmt: skip


@pytest.mark.slow  # 45 s; the add above runs the same writer at every step in the quick suite
def test_index_build_killed_at_every_step_leaves_the_old_or_the_new_index(
    base_index, built_index, mix_table, synth_study, retrieval_ckpt, tmp_path
):
    """``index build --overwrite`` over an existing index: the old index until the switch, then the new one."""
    _kill_at_every_step(  # S1 is reused from the old index, ADDED from staging
        "build", base_index, tmp_path, built_index, mix_table, synth_study, retrieval_ckpt, ["S1", *ADDED],
        set(BASE), {"S1", *ADDED},
    )  # fmt: skip


def test_a_first_build_killed_before_its_switch_leaves_no_index_and_resumes(
    built_index, mix_table, synth_study, retrieval_ckpt, tmp_path
):
    out = tmp_path / "fresh"
    _stage(built_index, out, BASE)
    steps = _steps("build", out, tmp_path, mix_table, synth_study, retrieval_ckpt, BASE)
    killed = _run_killed(
        steps.index("before pointer") + 1, "build", out, mix_table, synth_study, retrieval_ckpt, BASE
    )
    assert killed.returncode == -9
    with pytest.raises(InputError, match="is not a retrieval index"):
        RetrievalIndex.load(out)
    report = verify_index(out)
    assert [p.message for p in report.problems] == [
        f"{out} holds no index (no CURRENT and no manifest.json); a build was killed before its index was "
        "written: run it again to resume"
    ]
    assert any("did not finish" in n for n in report.notes)
    build_index(_specs(mix_table, synth_study, BASE), retrieval_ckpt, out, scheduler="sync", n_prototypes=4)
    _check_usable(out, set(BASE))
    assert [p.name for p in gens.generation_dirs(out)] == ["gen-000002"]  # the unfinished gen-000001 went


# --------------------------------------------------------------------------- indexes written before generations


def _to_legacy(index_dir: Path) -> None:
    """Rewrite a generation as the single-folder layout histokg wrote before generations (runs/demo/index)."""
    layout = gens.current(index_dir)
    for name in ("regions.faiss", "prototypes.npy", "center.npy"):
        shutil.copyfile(layout.root / name, index_dir / name)
    shutil.copytree(layout.root / "shards", index_dir / "shards")
    shutil.copytree(layout.root / "thumbs", index_dir / "thumbs")
    manifest = json.loads((layout.root / "manifest.json").read_text())
    for key in ("generation", "previous", "files"):
        manifest.pop(key)
    manifest["version"] = 1
    for slide in manifest["slides"]:
        slide.pop("thumbnail")
        slide.pop("shard_sha256")
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    (index_dir / "CURRENT").unlink()
    for gen in gens.generation_dirs(index_dir):
        shutil.rmtree(gen)


@pytest.fixture
def legacy_index(base_index, tmp_path) -> Path:
    out = tmp_path / "legacy"
    shutil.copytree(base_index, out)
    shutil.rmtree(gens.staging_dir(out))
    _to_legacy(out)
    return out


def test_an_index_written_before_generations_loads_and_migrates_on_its_first_add(
    legacy_index, built_index, mix_table, synth_study, retrieval_ckpt
):
    index = _check_usable(legacy_index, set(BASE))
    assert index.generation is None and not (legacy_index / "CURRENT").exists()
    _stage(built_index, legacy_index, ADDED)
    add_to_index(legacy_index, _specs(mix_table, synth_study, ADDED), retrieval_ckpt, scheduler="sync")
    migrated = _check_usable(legacy_index, set(BASE + ADDED))
    assert migrated.generation == "gen-000001"
    assert sorted(p.name for p in legacy_index.iterdir()) == ["CURRENT", "gen-000001"]
    np.testing.assert_array_equal(migrated.prototypes, index.prototypes)


def test_a_legacy_add_killed_after_regions_faiss_is_found_and_repaired(legacy_index, built_index, capsys):
    """The issue's case: the old `index add` saved regions.faiss, copied the shard, and was killed before
    the manifest; every query refused the index and nothing repaired it."""
    built = RetrievalIndex.load(built_index)
    regions = fi.load(legacy_index / "regions.faiss")
    shard = SlideShard.load(built.shard_path("S2"))
    fi.add(regions, shard.vectors, region_id(3, np.arange(len(shard))))
    fi.save(regions, legacy_index / "regions.faiss")
    shutil.copyfile(built.shard_path("S2"), legacy_index / "shards" / "S2.npz")
    n = sum(len(built.shard(s)) for s in BASE)
    with pytest.raises(
        InputError, match=f"holds {n + len(shard)} vectors but the manifest lists {n} regions"
    ):
        RetrievalIndex.load(legacy_index)

    with pytest.raises(SystemExit) as err:
        main(["index", "verify", str(legacy_index)])
    assert err.value.code == 2
    out, errors = capsys.readouterr()
    assert (
        f"{legacy_index}/regions.faiss holds {n + len(shard)} vectors but the manifest lists {n} regions"
        in out
    )
    assert errors.strip() == (
        f"error: index {legacy_index} is broken (1 problem(s) above); "
        f"`histokg index verify {legacy_index} --repair` can repair it"
    )
    main(["index", "verify", str(legacy_index), "--repair"])
    out = capsys.readouterr().out
    assert "rebuilt regions.faiss from the shards" in out and out.rstrip().endswith(": OK")
    _check_usable(legacy_index, set(BASE))
    # the shard of the killed add waits in staging/, so running the add again does not embed it again
    assert (gens.staging_dir(legacy_index) / "shards" / "S2.npz").is_file()


# --------------------------------------------------------------------------- verify and repair


@pytest.fixture
def index_copy(base_index, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(base_index, out)
    shutil.rmtree(gens.staging_dir(out))
    return out


def _verify_lines(index_dir, capsys, *extra) -> tuple[int, list[str]]:
    try:
        main(["index", "verify", str(index_dir), *extra])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out.splitlines() + captured.err.splitlines()


def test_verify_names_each_broken_file_and_repairs_what_the_shards_allow(index_copy, capsys):
    code, lines = _verify_lines(index_copy, capsys)
    assert code == 0 and lines[-1].endswith(": OK")
    gen = gens.current(index_copy).root
    (gen / "descriptors.npz").write_bytes(b"garbage")
    regions = fi.load(gen / "regions.faiss")
    regions.remove_ids(np.asarray([0], np.int64))
    fi.save(regions, gen / "regions.faiss")
    code, lines = _verify_lines(index_copy, capsys)
    assert code == 2
    assert (
        f"{gen}/regions.faiss: its SHA-256 differs from the manifest's (changed after it was written)"
        in lines
    )
    assert (
        f"{gen}/descriptors.npz: its SHA-256 differs from the manifest's (changed after it was written)"
        in lines
    )
    assert lines[-1].endswith("--repair` can repair it")
    code, lines = _verify_lines(index_copy, capsys, "--repair")
    assert code == 0, lines
    _check_usable(index_copy, set(BASE))
    assert gens.current(index_copy).generation == "gen-000002"


def test_verify_a_damaged_shard_needs_the_slide_again(
    index_copy, mix_table, synth_study, retrieval_ckpt, capsys, caplog
):
    shard = gens.current(index_copy).shard_path("benign-1")
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.unlink()  # a new file: the hard link of the earlier generation keeps the old bytes
    shard.write_bytes(bytes(data))
    code, lines = _verify_lines(index_copy, capsys, "--repair")
    assert code == 2
    assert (
        f"{shard}: its SHA-256 differs from the manifest's (slide benign-1); rebuild the index from its "
        "slides (index build --overwrite embeds only this one again)"
    ) in lines
    assert "cannot be repaired without the slides" in lines[-1] and lines[-1].startswith("error:")
    # the rebuild takes the two intact shards from the index and embeds benign-1 again
    specs = _specs(mix_table, synth_study, BASE)
    with caplog.at_level("INFO", logger="histokg.retrieval.build"):
        build_index(specs, retrieval_ckpt, index_copy, scheduler="sync", n_prototypes=4, overwrite=True)
    assert "2 of 3 slides already embedded" in caplog.text
    _check_usable(index_copy, set(BASE))


def test_verify_a_broken_pointer_is_repaired_to_the_newest_complete_generation(index_copy, capsys):
    first = gens.current(index_copy).generation
    (index_copy / "CURRENT").write_text("{not json")
    with pytest.raises(InputError, match="CURRENT: not a readable index pointer"):
        RetrievalIndex.load(index_copy)
    code, lines = _verify_lines(index_copy, capsys)
    assert code == 2 and any("CURRENT: not a readable index pointer" in line for line in lines)
    code, lines = _verify_lines(index_copy, capsys, "--repair")
    assert (
        code == 0
        and f"repaired: {index_copy}/CURRENT now names {first}, the newest complete generation" in lines
    )
    _check_usable(index_copy, set(BASE))


def test_the_kg_descriptor_is_stored_with_the_index_and_not_computed_by_queries(index_copy, monkeypatch):
    from histokg.retrieval import values

    index = RetrievalIndex.load(index_copy)
    stored = np.load(index.root / "descriptors.npz")
    assert {"desc_mean", "desc_prototypes", "desc_kg", "kg_means", "slide_ids"} <= set(stored.files)

    def never(*args, **kwargs):
        raise AssertionError("a query recomputed the KG transfer")

    monkeypatch.setattr(values, "transfer_neighbours", never)
    ids, mat = index.descriptors("kg")
    np.testing.assert_array_equal(mat, stored["desc_kg"])
    assert q.similar_slides(index, "benign-1", k=2, descriptor="kg")
