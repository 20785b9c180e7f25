"""The retrieval index: a folder of generations, each a FAISS region index, the slides' shards and a manifest.

A generation (:mod:`histokg.retrieval.generations`: ``CURRENT`` names it) holds::

    manifest.json        format, version, checkpoint SHA-256, model, index kind, slides (id, patient,
                         labels, source, ordinal, shard hash, ...), KG entities and their labels, gene
                         panel, and the SHA-256 of every file below
    regions.faiss        every region vector (IndexIDMap2; id = slide ordinal << 32 | region number)
    prototypes.npy       region prototypes (the ``prototypes`` slide descriptor, the "cluster" colours)
    center.npy           the mean region vector at creation (slide descriptors use centred regions)
    descriptors.npz      every slide descriptor of every slide, and each slide's mean KG activations,
                         computed when the generation is written, so no query waits for them
    shards/<slide>.npz   one slide's regions (see :mod:`histokg.retrieval.shards`)
    thumbs/<slide>.png   its thumbnail

Every change (:meth:`RetrievalIndex.create`, :meth:`RetrievalIndex.add`) writes a new generation and
switches to it in one atomic rename: a process killed at any point leaves the old index or the new
one. Slides are added without a rebuild (the prototypes learned at creation stay fixed; new regions
go into the FAISS index as they are); an index refuses shards of a different checkpoint. Slide
descriptors are asked for by name from the registry (:mod:`histokg.retrieval.descriptors`); queries
live in :mod:`histokg.retrieval.query`; :mod:`histokg.retrieval.verify` checks and repairs an index.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histokg.errors import InputError
from histokg.io import atomic_open, file_sha256, read_json_object, write_json
from histokg.retrieval import faiss_index as fi
from histokg.retrieval import generations as gens
from histokg.retrieval.descriptors import SlideDescriptor, descriptor_names, get_descriptor
from histokg.retrieval.descriptors.base import SlideDescriptor as _Base
from histokg.retrieval.descriptors.prototypes import assign, learn_prototypes
from histokg.retrieval.ids import check_slide_id
from histokg.retrieval.shards import SlideShard

log = logging.getLogger(__name__)

FORMAT = gens.FORMAT
VERSION = 2  # a generation's manifest; version 1 is an index written before generations
VERSIONS = (1, 2)
ID_SHIFT = 32
DESCRIPTOR_PREFIX = "desc_"  # descriptors.npz: desc_<name> (n_slides, d), slide_ids, kg_means


def region_id(ordinal: int, number: np.ndarray | int) -> np.ndarray:
    return (np.int64(ordinal) << ID_SHIFT) | np.asarray(number, dtype=np.int64)


def split_region_id(rid: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    rid = np.asarray(rid, dtype=np.int64)
    return rid >> ID_SHIFT, rid & ((1 << ID_SHIFT) - 1)


class RetrievalIndex:
    """Slides and their regions, searchable by slide, by region and by KG entity.

    Build with :meth:`create`, open with :meth:`load`, grow with :meth:`add`. ``path`` is the index
    folder; ``root`` the folder of the generation this object reads (:mod:`~histokg.retrieval.generations`).
    """

    def __init__(
        self,
        path: Path | gens.Layout,
        manifest: dict,
        regions,
        prototypes: np.ndarray,
        center: np.ndarray,
        stored: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.layout = path if isinstance(path, gens.Layout) else gens.Layout(Path(path), Path(path), None)
        self.manifest = manifest
        self.regions = regions
        self.prototypes = prototypes
        self.center = center
        self._stored = dict(stored or {})  # descriptors.npz of this generation
        self._shards: dict[str, SlideShard] = {}
        self._pending: dict[str, Path] = {}  # slides added in memory, not committed yet: their shard files
        self._cache: dict[Any, Any] = {}
        self._lock = threading.RLock()  # one computation of each cached value, however many requests ask

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def root(self) -> Path:
        return self.layout.root

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | Path,
        shards: Sequence[str | Path],
        *,
        kind: str = "auto",
        n_prototypes: int = 16,
        seed: int = 0,
        overwrite: bool = False,
    ) -> RetrievalIndex:
        """A new index at ``path`` over the given shard files (one new generation; with ``overwrite``
        it replaces the index there, which stays readable until the switch)."""
        path = Path(path)
        if gens.holds_index(path) and not overwrite:
            raise InputError(f"{path} already holds an index; use `index add` or overwrite=True")
        loaded = [SlideShard.load(p) for p in shards]
        if not loaded:
            raise InputError("an index needs at least one slide")
        sha = _one_checkpoint(loaded, None)
        vectors = np.concatenate([s.vectors for s in loaded])
        dim = vectors.shape[1]
        resolved = fi.resolve_kind(kind, len(vectors))
        t0 = time.perf_counter()
        # Embeddings of one model share a large common component; slide descriptors compare what
        # is left after removing the archive's mean region (fixed at creation, like the prototypes).
        center = vectors.mean(axis=0).astype(np.float32)
        prototypes = learn_prototypes(fi.normalize(vectors - center), n_prototypes, seed=seed)
        regions = fi.make_index(resolved, dim, vectors if resolved == "ivf" else None)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "checkpoint_sha256": sha,
            "checkpoint": loaded[0].meta.get("checkpoint", ""),
            "model": loaded[0].meta.get("model", {}),
            "dim": int(dim),
            "kind": resolved,
            "n_prototypes": len(prototypes),
            "prototype_temperature": 0.1,
            "seed": seed,
            "slides": [],
            "entities": [],
            "entity_labels": {},
            "genes": [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        index = cls(gens.Layout(path, path, None), manifest, regions, prototypes, center)
        index._append(loaded, [Path(p) for p in shards])
        index.save()
        log.info(
            "index %s: %d slides, %d regions (%s) in %.1f s",
            path,
            len(loaded),
            regions.ntotal,
            resolved,
            time.perf_counter() - t0,
        )
        return index

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """The index in folder ``path`` (the generation ``CURRENT`` names, or an index written before
        generations); errors name the file at fault and the repair command."""
        layout = gens.current(path)
        manifest = read_manifest(layout.root / gens.MANIFEST)
        repair = f"; run `histokg index verify {layout.path}` (--repair)"
        for name in manifest.get("files", {}):
            if not (layout.root / name).is_file():
                raise InputError(f"{layout.root / name} is missing{repair}")
        regions = fi.load(layout.root / "regions.faiss")
        prototypes = _load_array(layout.root / "prototypes.npy")
        center = _load_array(layout.root / "center.npy")
        stored = read_descriptors(layout.root) if "descriptors.npz" in manifest.get("files", {}) else {}
        index = cls(layout, manifest, regions, prototypes, center, stored)
        n = sum(s["n_regions"] for s in manifest["slides"])
        if regions.ntotal != n:
            raise InputError(
                f"{layout.root / 'regions.faiss'} holds {regions.ntotal} vectors but the manifest lists "
                f"{n} regions{repair}"
            )
        return index

    def add(self, shards: Sequence[str | Path]) -> list[str]:
        """Append slides (shard files) to the index without rebuilding it (one new generation);
        returns their ids. On any error the index on disk and this object stay as they were."""
        loaded = [SlideShard.load(p) for p in shards]
        _one_checkpoint(loaded, self.checkpoint_sha256)
        present = set(self.slide_ids)
        for s in loaded:
            if s.slide_id in present:
                raise InputError(
                    f"slide {s.slide_id!r} is already in the index {self.path}; give the new slide another id"
                )
            present.add(s.slide_id)
        try:
            self._append(loaded, [Path(p) for p in shards])
            if self.kind == "flat" and self.regions.ntotal > 4 * fi.EXACT_LIMIT:
                log.warning(
                    "index %s: %d regions in an exact index; rebuild with kind='hnsw' or 'ivf' for faster queries",
                    self.path,
                    self.regions.ntotal,
                )
            self.save()
        except BaseException:
            self._reload()  # the in-memory FAISS index already holds the new vectors: start again from disk
            raise
        return [s.slide_id for s in loaded]

    def _reload(self) -> None:
        if not gens.holds_index(self.path):
            return
        fresh = type(self).load(self.path)
        self.__dict__.update(fresh.__dict__)

    def _append(self, loaded: list[SlideShard], sources: list[Path]) -> None:
        dim = self.manifest["dim"]
        ordinal = max((s["ordinal"] for s in self.manifest["slides"]), default=-1) + 1
        for shard, src in zip(loaded, sources, strict=True):
            if shard.vectors.shape[1] != dim:
                raise InputError(
                    f"slide {shard.slide_id}: embedding dimension {shard.vectors.shape[1]} != {dim}"
                )
            if len(shard) >= 1 << ID_SHIFT:
                raise InputError(f"slide {shard.slide_id}: too many regions ({len(shard)})")
            fi.add(self.regions, shard.vectors, region_id(ordinal, np.arange(len(shard))))
            meta = {k: v for k, v in shard.meta.items() if k != "spec"}
            meta.update(ordinal=ordinal, has_expr=shard.expr is not None, has_kg=shard.kg is not None)
            meta["has_labels"] = shard.labels is not None
            self.manifest["slides"].append(meta)
            self._shards[shard.slide_id] = shard
            self._pending[shard.slide_id] = src
            for e in shard.entities:
                if e not in self.manifest["entity_labels"]:
                    self.manifest["entities"].append(e)
                    self.manifest["entity_labels"][e] = e
            if shard.entities and shard.meta.get("kg_bundle"):
                self._entity_labels(shard.meta["kg_bundle"])
            for g in shard.genes:
                if g not in self.manifest["genes"]:
                    self.manifest["genes"].append(g)
            ordinal += 1
        self._cache.clear()

    def _entity_labels(self, bundle: str) -> None:
        from pathways_kg.graph import read_graph

        try:
            graph = read_graph(bundle)
        except Exception as exc:  # the labels are a nicety; ids still work
            log.warning("KG labels not read from %s: %s", bundle, exc)
            return
        for e in self.manifest["entities"]:
            ent = graph.entities.get(e)
            if ent is not None and ent.label:
                self.manifest["entity_labels"][e] = ent.label

    def save(self) -> None:
        """Write this index as a new generation of its folder and switch to it (atomically), then
        remove the generations before the one it replaces and the committed staging files."""
        stored = self._descriptor_arrays()  # before anything is written: the slowest step
        previous = gens.current_generation(self.path)  # the index being replaced, kept for its readers
        gen = gens.new_generation(self.path)
        try:  # a failure before the switch leaves the index as it was, without the half-written folder
            slides, staged = self._link_slides(gen)
            manifest = self._write_files(gen, slides, stored, previous)
        except BaseException:
            shutil.rmtree(gen, ignore_errors=True)
            raise
        gens.switch(self.path, gen)
        self.manifest = manifest
        self.layout = gens.Layout(self.path, gen, gen.name)
        self._stored = stored
        self._pending.clear()
        gens.clean_up(self.path, gens.kept_generations(self.path), staged)

    def _link_slides(self, gen: Path) -> tuple[list[dict], list[Path]]:
        """Each slide's shard and thumbnail linked into ``gen``; (slide records with their shard
        hashes, the staging files of the indexed slides, to remove after the switch)."""
        staging = gens.staging_dir(self.path).resolve()
        slides, staged = [], []
        for meta in self.manifest["slides"]:
            sid, new = meta["slide_id"], meta["slide_id"] in self._pending
            src = self._pending[sid] if new else self.layout.shard_path(sid)
            if not src.is_file():
                raise InputError(
                    f"slide {sid}: its shard {src} is missing; run `histokg index verify {self.path}`"
                )
            gens.link(src, gen / "shards" / f"{sid}.npz")
            thumb = src.parent.parent / "thumbs" / f"{sid}.png" if new else self.layout.thumb_path(sid)
            meta = dict(meta, thumbnail=thumb.is_file())
            if meta["thumbnail"]:
                gens.link(thumb, gen / "thumbs" / f"{sid}.png")
            if new or not meta.get("shard_sha256"):
                meta["shard_sha256"] = file_sha256(gen / "shards" / f"{sid}.npz")
            # staged files of every indexed slide go after the switch (also those a killed clean-up left)
            staged += [staging / "shards" / f"{sid}.npz", staging / "thumbs" / f"{sid}.png"]
            slides.append(meta)
        return slides, staged

    def _write_files(
        self, gen: Path, slides: list[dict], stored: dict[str, np.ndarray], previous: str | None
    ) -> dict:
        """The FAISS index, prototypes, centre and descriptors, then the manifest (last) in ``gen``."""
        fi.save(self.regions, gen / "regions.faiss")
        gens.reached("regions.faiss")
        for name, arr in (("prototypes.npy", self.prototypes), ("center.npy", self.center)):
            with atomic_open(gen / name, "wb") as fh:
                np.save(fh, arr)
            gens.reached(name)
        with atomic_open(gen / "descriptors.npz", "wb") as fh:
            np.savez(fh, **stored)
        gens.reached("descriptors.npz")
        manifest = dict(self.manifest, format=FORMAT, version=VERSION, generation=gen.name, slides=slides)
        manifest["previous"] = previous  # kept until the next change, for readers that loaded it
        manifest["files"] = {name: file_sha256(gen / name) for name in gens.GENERATION_FILES}
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(gen / gens.MANIFEST, manifest)
        gens.reached(gens.MANIFEST)
        return manifest

    def _descriptor_arrays(self) -> dict[str, np.ndarray]:
        """What ``descriptors.npz`` holds for the slides as they are now: every available descriptor's
        matrix (rows of slides already described are kept when a row depends on its slide alone) and
        each slide's mean KG activations."""
        from histokg.retrieval.values import slide_kg_means

        ids = self.slide_ids
        out: dict[str, np.ndarray] = {"slide_ids": np.asarray(ids, dtype=str)}
        old_ids = [str(s) for s in self._stored.get("slide_ids", [])]
        for name in descriptor_names():
            desc = self.descriptor(name)
            if not desc.available():
                continue
            old = self._stored.get(DESCRIPTOR_PREFIX + name)
            per_slide = desc.from_regions and type(desc).matrix is _Base.matrix
            if per_slide and old is not None and len(old) == len(old_ids):
                rows = dict(zip(old_ids, old, strict=True))
                mat = np.stack([rows[s] if s in rows else desc.describe(self.shard(s).vectors) for s in ids])
            else:
                t0 = time.perf_counter()
                mat = desc.matrix()
                log.info("%s descriptor of %d slides in %.1f s", name, len(ids), time.perf_counter() - t0)
            out[DESCRIPTOR_PREFIX + name] = np.asarray(mat, np.float32)
        if self.manifest["entities"]:
            out["kg_means"] = np.asarray(slide_kg_means(self), np.float32)
        return out

    # ------------------------------------------------------------------ access
    @property
    def checkpoint_sha256(self) -> str:
        return self.manifest["checkpoint_sha256"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def generation(self) -> str | None:
        """The generation folder this object reads (None: an index written before generations)."""
        return self.layout.generation

    @property
    def slide_ids(self) -> list[str]:
        return [s["slide_id"] for s in self.manifest["slides"]]

    @property
    def n_regions(self) -> int:
        return int(self.regions.ntotal)

    def slide_meta(self, slide_id: str) -> dict:
        check_slide_id(slide_id)
        for s in self.manifest["slides"]:
            if s["slide_id"] == slide_id:
                return s
        raise InputError(f"slide {slide_id!r} is not in the index ({len(self.slide_ids)} slides)")

    def shard_path(self, slide_id: str) -> Path:
        """The shard file of an indexed slide."""
        self.slide_meta(slide_id)
        return self._pending.get(slide_id) or self.layout.shard_path(slide_id)

    def shard(self, slide_id: str) -> SlideShard:
        self.slide_meta(slide_id)
        if slide_id not in self._shards:
            self._shards[slide_id] = SlideShard.load(self.shard_path(slide_id))
        return self._shards[slide_id]

    def thumbnail_path(self, slide_id: str) -> Path | None:
        self.slide_meta(slide_id)
        p = self.layout.thumb_path(slide_id)
        return p if p.is_file() else None

    def slide_of_ordinal(self, ordinal: int) -> str:
        for s in self.manifest["slides"]:
            if s["ordinal"] == int(ordinal):
                return s["slide_id"]
        raise InputError(f"no slide with ordinal {ordinal}")

    def patient(self, slide_id: str) -> str | None:
        return self.slide_meta(slide_id).get("patient")

    # ------------------------------------------------------------------ descriptors
    def clusters(self, slide_id: str) -> np.ndarray:
        """Each region's prototype (the index's shared region clusters)."""
        vectors = self.centered(self.shard(slide_id).vectors)
        return assign(vectors, self.prototypes, self.prototype_temperature).argmax(axis=1)

    def centered(self, vectors: np.ndarray) -> np.ndarray:
        """Region vectors minus the archive's mean region, re-normalised."""
        return fi.normalize(np.asarray(vectors, np.float32) - self.center)

    @property
    def prototype_temperature(self) -> float:
        return float(self.manifest.get("prototype_temperature", 0.1))

    def descriptor(self, name: str) -> SlideDescriptor:
        """The slide descriptor registered as ``name`` (:mod:`histokg.retrieval.descriptors`), on this index."""
        return get_descriptor(name)(self)

    def describe_vectors(self, vectors: np.ndarray, descriptor: str) -> np.ndarray:
        """A slide descriptor of region vectors that are not (yet) in the index (e.g. an upload)."""
        return self.descriptor(descriptor).describe(vectors)

    def descriptors(self, descriptor: str = "mean") -> tuple[list[str], np.ndarray]:
        """(slide ids, (n_slides, dim) L2-normalised descriptors): as stored with the generation, else
        computed once (concurrent callers wait for that one computation) and kept in memory."""
        desc = self.descriptor(descriptor)

        def build() -> tuple[list[str], np.ndarray]:
            stored = self.stored(DESCRIPTOR_PREFIX + desc.name)
            if stored is not None:
                return self.slide_ids, stored
            log.info(
                "computing the %s descriptor of %d slides (not stored with this index)",
                desc.name,
                len(self.slide_ids),
            )
            return self.slide_ids, desc.matrix().astype(np.float32)

        return self.cached(("desc", desc.name), build)

    def stored(self, key: str) -> np.ndarray | None:
        """An array of this generation's ``descriptors.npz`` (None when absent or out of date)."""
        if self._pending or key not in self._stored:
            return None
        ids = [str(s) for s in self._stored.get("slide_ids", [])]
        return self._stored[key] if ids == self.slide_ids else None

    def cached(self, key: Any, build) -> Any:
        """``build()``, once per key while the index is unchanged; thread-safe."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]


def read_manifest(path: Path) -> dict:
    """A manifest of a retrieval index, checked for its format and version."""
    manifest = read_json_object(path, InputError)
    if manifest.get("format") != FORMAT or manifest.get("version") not in VERSIONS:
        raise InputError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {' or '.join(map(str, VERSIONS))}"
        )
    for key in ("slides", "entities", "entity_labels", "genes", "dim", "kind", "checkpoint_sha256"):
        if key not in manifest:
            raise InputError(f"{path}: key {key!r} is missing")
    for i, slide in enumerate(manifest["slides"]):
        ok = isinstance(slide, dict) and isinstance(slide.get("slide_id"), str)
        if not (
            ok and all(isinstance(slide.get(k), int) and slide[k] >= 0 for k in ("ordinal", "n_regions"))
        ):
            raise InputError(f"{path}: slides[{i}] lacks a slide_id, ordinal or n_regions")
    return manifest


def read_descriptors(root: Path) -> dict[str, np.ndarray]:
    path = root / "descriptors.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path} cannot be read: {exc}") from None


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} cannot be read: {exc}") from None


def _one_checkpoint(shards: Iterable[SlideShard], expected: str | None) -> str:
    """The checkpoint hash all shards share; refuse a mix (naming the slide that differs)."""
    for s in shards:
        sha = s.meta.get("checkpoint_sha256")
        if not sha:
            raise InputError(f"slide {s.slide_id}: the shard records no checkpoint_sha256")
        if expected is None:
            expected = sha
        elif sha != expected:
            raise InputError(
                f"slide {s.slide_id} was embedded with checkpoint {sha[:12]}..., the index holds "
                f"checkpoint {expected[:12]}...: embeddings of different checkpoints cannot be mixed; "
                "re-embed the slide with the index's checkpoint or build a new index"
            )
    assert expected is not None
    return expected
