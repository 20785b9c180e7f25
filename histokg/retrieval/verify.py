"""``histokg index verify``: check every file of an index's current generation, and repair what can be.

:func:`verify_index` checks the pointer (``CURRENT``), the manifest, the SHA-256 of every file the
manifest lists, the FAISS index against the manifest (size, dimension, the region ids of every
slide), the prototypes, the centre, the stored descriptors (one finite row per slide), and every
slide's shard (present, its recorded hash, readable, its region count, checkpoint and dimension) and
thumbnail. Each problem is one line naming the file; leftovers that do not break the index (a
generation a killed change did not finish, files of a killed migration, stray temporary files) are
notes.

:func:`repair_index` fixes what can be fixed without the slides: a pointer that is missing or broken
(the newest complete generation is named again), a FAISS index or stored descriptors that are
missing, damaged or disagree with the manifest (rebuilt from the shards, as a new generation), and
the leftovers; an index written before generations is migrated. A missing or damaged shard, or
damaged prototypes or centre, needs the slides: the message says to rebuild the index from its slides
(``histokg index build --overwrite`` embeds again only the slides whose shards are damaged).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histokg.errors import InputError
from histokg.io import file_sha256
from histokg.retrieval import faiss_index as fi
from histokg.retrieval import generations as gens

# what a repair does about a problem
POINTER, REBUILD = "pointer", "rebuild"


@dataclass
class Problem:
    message: str
    fix: str | None = None  # POINTER, REBUILD, or None (needs the slides)


@dataclass
class Report:
    """What :func:`verify_index` found: ``problems`` break the index, ``notes`` do not."""

    path: Path
    generation: str | None = None
    n_slides: int = 0
    n_regions: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def repairable(self) -> bool:
        return all(p.fix for p in self.problems)

    def lines(self) -> list[str]:
        return [p.message for p in self.problems]


def verify_index(path: str | Path) -> Report:
    """Check the index in folder ``path`` (nothing is changed)."""
    path = Path(path)
    report = Report(path)
    if not path.is_dir():
        report.problems.append(Problem(f"{path} is not a folder"))
        return report
    _check_leftovers(path, report)
    try:
        layout = gens.current(path)
    except InputError as exc:
        if not (path / gens.POINTER).exists():
            msg = f"{path} holds no index (no {gens.POINTER} and no {gens.MANIFEST})"
            if gens.generation_dirs(path) or gens.staging_dir(path).is_dir():
                msg += "; a build was killed before its index was written: run it again to resume"
            report.problems.append(Problem(msg))
        else:
            fixable = _complete_generations(path) or (path / gens.MANIFEST).is_file()
            report.problems.append(Problem(str(exc), POINTER if fixable else None))
        return report
    report.generation = layout.generation
    if layout.generation is None:
        report.notes.append(
            f"{path}: an index written before generations; --repair (or its next build or add) makes it "
            "generation 1, with its descriptors stored"
        )
    _check_generation(layout, report)
    return report


def _complete_generations(path: Path) -> list[Path]:
    return [g for g in gens.generation_dirs(path) if (g / gens.MANIFEST).is_file()]


def _check_leftovers(path: Path, report: Report) -> None:
    current = gens.current_generation(path)
    number = gens.generation_number(current) if current else 0
    kept = gens.kept_generations(path)
    for gen in gens.generation_dirs(path):
        if gen.name in kept:
            continue
        if gens.generation_number(gen.name) > number:
            report.notes.append(f"{gen}: a generation a killed change did not finish; --repair removes it")
        else:
            report.notes.append(f"{gen}: an earlier generation no reader needs; --repair removes it")
    if current:
        legacy = [n for n in (*gens.LEGACY_FILES, *gens.LEGACY_DIRS) if (path / n).exists()]
        if legacy:
            report.notes.append(
                f"{path}: {', '.join(legacy)} of the index before generation 1 (a migration was killed); "
                "--repair removes them"
            )
    staged = sorted(gens.staging_dir(path).glob("shards/*.npz"))
    if staged:
        names = ", ".join(p.stem for p in staged[:4]) + (" ..." if len(staged) > 4 else "")
        report.notes.append(
            f"{gens.staging_dir(path)}: {len(staged)} embedded slide(s) not in the index ({names}); "
            "running the build or add again reuses them"
        )
    for tmp in gens.stray_files(path):
        report.notes.append(f"{tmp}: a temporary file of a killed write; --repair removes it")


def _check_generation(layout: gens.Layout, report: Report) -> None:
    from histokg.retrieval.index import read_manifest

    root = layout.root
    try:
        manifest = read_manifest(root / gens.MANIFEST)
    except InputError as exc:
        report.problems.append(Problem(str(exc), POINTER if _older_complete(layout) else None))
        return
    report.n_slides = len(manifest["slides"])
    report.n_regions = sum(int(s.get("n_regions", 0)) for s in manifest["slides"])
    files = manifest.get("files", {})
    bad: set[str] = set()
    names = gens.GENERATION_FILES if layout.generation else gens.LEGACY_FILES[1:]
    for name in names:
        file = root / name
        if not file.is_file():
            if name in files or layout.generation is None:
                report.problems.append(Problem(f"{file} is missing", _fix_for(name)))
                bad.add(name)
        elif name in files and file_sha256(file) != files[name]:
            report.problems.append(
                Problem(
                    f"{file}: its SHA-256 differs from the manifest's (changed after it was written)",
                    _fix_for(name),
                )
            )
            bad.add(name)
    arrays = {}
    for name in ("prototypes.npy", "center.npy"):
        if name not in bad:
            arrays[name] = _check_array(root / name, report)
    _check_shapes(root, manifest, arrays, report)
    if "regions.faiss" not in bad:
        _check_faiss(root / "regions.faiss", manifest, report)
    if "descriptors.npz" not in bad and (root / "descriptors.npz").is_file():
        _check_descriptors(root / "descriptors.npz", manifest, report)
    for meta in manifest["slides"]:
        _check_slide(layout, manifest, meta, report)


def _fix_for(name: str) -> str | None:
    return REBUILD if name in ("regions.faiss", "descriptors.npz") else None


def _older_complete(layout: gens.Layout) -> bool:
    if layout.generation is None:
        return False
    n = gens.generation_number(layout.generation)
    return any(gens.generation_number(g.name) < n for g in _complete_generations(layout.path))


def _check_array(file: Path, report: Report) -> np.ndarray | None:
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        report.problems.append(Problem(f"{file} cannot be read ({exc})"))
        return None


def _check_shapes(root: Path, manifest: dict, arrays: dict, report: Report) -> None:
    dim = int(manifest["dim"])
    protos, center = arrays.get("prototypes.npy"), arrays.get("center.npy")
    if protos is not None and (protos.ndim != 2 or protos.shape[1] != dim):
        report.problems.append(
            Problem(f"{root / 'prototypes.npy'}: shape {protos.shape}, expected (k, {dim})")
        )
    if center is not None and center.shape != (dim,):
        report.problems.append(Problem(f"{root / 'center.npy'}: shape {center.shape}, expected ({dim},)"))


def _check_faiss(file: Path, manifest: dict, report: Report) -> None:
    import faiss

    from histokg.retrieval.index import region_id

    try:
        index = fi.load(file)
    except InputError as exc:
        report.problems.append(Problem(str(exc), REBUILD))
        return
    n = sum(int(s["n_regions"]) for s in manifest["slides"])
    if index.d != int(manifest["dim"]):
        report.problems.append(
            Problem(f"{file}: dimension {index.d}, the manifest says {manifest['dim']}", REBUILD)
        )
    elif index.ntotal != n:
        report.problems.append(
            Problem(f"{file} holds {index.ntotal} vectors but the manifest lists {n} regions", REBUILD)
        )
    elif isinstance(index, faiss.IndexIDMap2):
        ids = np.sort(faiss.vector_to_array(index.id_map))
        expected = np.sort(
            np.concatenate(
                [region_id(s["ordinal"], np.arange(int(s["n_regions"]))) for s in manifest["slides"]]
                or [np.zeros(0, np.int64)]
            )
        )
        if not np.array_equal(ids, expected):
            report.problems.append(
                Problem(f"{file}: its region ids are not those of the manifest's slides", REBUILD)
            )


def _check_descriptors(file: Path, manifest: dict, report: Report) -> None:
    from histokg.retrieval.index import DESCRIPTOR_PREFIX, read_descriptors

    try:
        stored = read_descriptors(file.parent)
    except InputError as exc:
        report.problems.append(Problem(str(exc), REBUILD))
        return
    ids = [s["slide_id"] for s in manifest["slides"]]
    if [str(s) for s in stored.get("slide_ids", [])] != ids:
        report.problems.append(Problem(f"{file}: its slides are not the manifest's", REBUILD))
        return
    for key, arr in stored.items():
        if key.startswith(DESCRIPTOR_PREFIX) or key == "kg_means":
            if arr.ndim != 2 or len(arr) != len(ids):
                report.problems.append(
                    Problem(f"{file}: {key} has shape {arr.shape}, not one row per slide", REBUILD)
                )
            elif key != "kg_means" and not np.isfinite(arr).all():
                report.problems.append(Problem(f"{file}: {key} holds non-finite values", REBUILD))


def _check_slide(layout: gens.Layout, manifest: dict, meta: dict, report: Report) -> None:
    from histokg.retrieval.shards import SlideShard

    sid = meta["slide_id"]
    file = layout.shard_path(sid)
    again = "rebuild the index from its slides (index build --overwrite embeds only this one again)"
    if not file.is_file():
        report.problems.append(Problem(f"{file} is missing (slide {sid}); {again}"))
        return
    recorded = meta.get("shard_sha256")
    if recorded and file_sha256(file) != recorded:
        report.problems.append(
            Problem(f"{file}: its SHA-256 differs from the manifest's (slide {sid}); {again}")
        )
        return
    try:
        shard = SlideShard.load(file)
    except InputError as exc:
        report.problems.append(Problem(f"{exc}; {again}"))
        return
    checks: list[tuple[bool, Callable[[], str]]] = [
        (shard.slide_id == sid, lambda: f"it is slide {shard.slide_id}, not {sid}"),
        (
            len(shard) == int(meta["n_regions"]),
            lambda: f"{len(shard)} regions, the manifest lists {meta['n_regions']}",
        ),
        (
            shard.meta.get("checkpoint_sha256") == manifest["checkpoint_sha256"],
            lambda: "it was embedded with another checkpoint than the index's",
        ),
        (
            shard.vectors.ndim == 2 and shard.vectors.shape[1] == int(manifest["dim"]),
            lambda: "wrong dimension",
        ),
    ]
    for good, what in checks:
        if not good:
            report.problems.append(Problem(f"{file}: {what()}; {again}"))
            return
    if meta.get("thumbnail") and not layout.thumb_path(sid).is_file():
        report.problems.append(
            Problem(f"{layout.thumb_path(sid)} is missing (slide {sid}'s thumbnail)", REBUILD)
        )


# --------------------------------------------------------------------------- repair


def repair_index(path: str | Path) -> tuple[list[str], Report]:
    """Repair what :func:`verify_index` finds where the files allow; returns (what was done, the
    report of the index afterwards). Nothing that holds data the index needs is removed."""
    path = Path(path)
    done: list[str] = []
    report = verify_index(path)
    if any(p.fix == POINTER for p in report.problems):
        done += _repair_pointer(path)
        report = verify_index(path)
    legacy = (
        report.generation is None and (path / gens.MANIFEST).is_file() and not (path / gens.POINTER).exists()
    )
    if legacy:
        done += _stage_unlisted_legacy_shards(path)
    if all(p.fix == REBUILD for p in report.problems) and (report.problems or legacy):
        done += _rewrite(path, report)
    current = gens.current_generation(path)
    if current and (path / current / gens.MANIFEST).is_file():
        removed = gens.clean_up(path, gens.kept_generations(path))
        done += [f"removed {path / name}" for name in removed]
    return done, verify_index(path)


def _repair_pointer(path: Path) -> list[str]:
    """Name the newest generation that verifies without problems; else fall back to the index
    written before generations, if its files are there."""
    for gen in reversed(_complete_generations(path)):
        probe = Report(path, gen.name)
        _check_generation(gens.Layout(path, gen, gen.name), probe)
        if probe.ok:
            gens.switch(path, gen)
            return [f"{path / gens.POINTER} now names {gen.name}, the newest complete generation"]
    if (path / gens.MANIFEST).is_file() and (path / gens.POINTER).exists():
        (path / gens.POINTER).unlink()
        return [f"removed {path / gens.POINTER}: the index written before generations is the index"]
    return []


def _rewrite(path: Path, report: Report) -> list[str]:
    """The current generation again as a new one, with its FAISS index rebuilt from the shards where it
    is broken and its descriptors computed afresh (also migrates an index written before generations)."""
    from histokg.retrieval.index import RetrievalIndex, read_manifest, region_id
    from histokg.retrieval.shards import SlideShard

    layout = gens.current(path)
    manifest = read_manifest(layout.root / gens.MANIFEST)
    rebuild = any(p.fix == REBUILD and "regions.faiss" in p.message for p in report.problems)
    if rebuild:
        train = None
        if manifest["kind"] == "ivf":
            train = np.concatenate(
                [SlideShard.load(layout.shard_path(s["slide_id"])).vectors for s in manifest["slides"]]
            )
        regions = fi.make_index(manifest["kind"], int(manifest["dim"]), train)
        for s in manifest["slides"]:
            vectors = SlideShard.load(layout.shard_path(s["slide_id"])).vectors
            fi.add(regions, vectors, region_id(s["ordinal"], np.arange(len(vectors))))
    else:
        regions = fi.load(layout.root / "regions.faiss")
    prototypes = np.load(layout.root / "prototypes.npy", allow_pickle=False)
    center = np.load(layout.root / "center.npy", allow_pickle=False)
    index = RetrievalIndex(layout, manifest, regions, prototypes, center)
    index.save()
    what = "rebuilt regions.faiss from the shards and " if rebuild else ""
    was = f"generation {layout.generation}" if layout.generation else "the index written before generations"
    return [f"{path}: {what}wrote {index.generation} from {was}, with its descriptors stored"]


def _stage_unlisted_legacy_shards(path: Path) -> list[str]:
    """Shards an index written before generations holds but does not list (an add killed before its
    manifest) go to ``staging/``, so that running the add again reuses them."""
    from histokg.retrieval.index import read_manifest

    listed = {s["slide_id"] for s in read_manifest(path / gens.MANIFEST)["slides"]}
    done = []
    for shard in sorted((path / "shards").glob("*.npz")):
        if shard.stem in listed:
            continue
        for sub, name in (("shards", shard.name), ("thumbs", f"{shard.stem}.png")):
            src = path / sub / name
            if src.is_file():
                dst = gens.staging_dir(path) / sub / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
        done.append(
            f"moved {shard} (not in the index) to {gens.staging_dir(path)}, for running the add again"
        )
    return done
