"""The retrieval index: a folder with the slides' shards, a FAISS region index and a manifest.

Layout::

    manifest.json        format, version, checkpoint SHA-256, model, index kind, slides (id, patient,
                         labels, source, ordinal, ...), KG entities and their labels, gene panel
    regions.faiss        every region vector (IndexIDMap2; id = slide ordinal << 32 | region number)
    prototypes.npy       region prototypes (the ``prototypes`` slide descriptor, the "cluster" colours)
    center.npy           the mean region vector at creation (slide descriptors use centred regions)
    shards/<slide>.npz   one slide's regions (see :mod:`histokg.retrieval.shards`)
    thumbs/<slide>.png   its thumbnail

The manifest is written last, atomically: a crash leaves the previous index readable. Slides are
added without a rebuild (the prototypes learned at creation stay fixed; new regions go into the
FAISS index as they are); an index refuses shards of a different checkpoint. Slide descriptors are
asked for by name from the registry (:mod:`histokg.retrieval.descriptors`); queries live in
:mod:`histokg.retrieval.query`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from histokg.errors import InputError
from histokg.io import atomic_path, read_json_object, write_json
from histokg.retrieval import faiss_index as fi
from histokg.retrieval.descriptors import SlideDescriptor, get_descriptor
from histokg.retrieval.descriptors.prototypes import assign, learn_prototypes
from histokg.retrieval.ids import check_slide_id
from histokg.retrieval.shards import SlideShard

log = logging.getLogger(__name__)

FORMAT = "histokg-retrieval-index"
VERSION = 1
ID_SHIFT = 32


def region_id(ordinal: int, number: np.ndarray | int) -> np.ndarray:
    return (np.int64(ordinal) << ID_SHIFT) | np.asarray(number, dtype=np.int64)


def split_region_id(rid: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    rid = np.asarray(rid, dtype=np.int64)
    return rid >> ID_SHIFT, rid & ((1 << ID_SHIFT) - 1)


class RetrievalIndex:
    """Slides and their regions, searchable by slide, by region and by KG entity.

    Build with :meth:`create`, open with :meth:`load`, grow with :meth:`add`.
    """

    def __init__(
        self, path: Path, manifest: dict, regions, prototypes: np.ndarray, center: np.ndarray
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.regions = regions
        self.prototypes = prototypes
        self.center = center
        self._shards: dict[str, SlideShard] = {}
        self._cache: dict[Any, Any] = {}

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
        """A new index at ``path`` over the given shard files."""
        path = Path(path)
        if (path / "manifest.json").exists() and not overwrite:
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
        index = cls(path, manifest, regions, prototypes, center)
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
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise InputError(
                f"{path} is not a retrieval index (no manifest.json); build one with `histokg index build`"
            )
        manifest = read_json_object(manifest_path, InputError)
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise InputError(
                f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
                f"expected {FORMAT!r} version {VERSION}"
            )
        regions = fi.load(path / "regions.faiss")
        prototypes = np.load(path / "prototypes.npy")
        center = np.load(path / "center.npy")
        index = cls(path, manifest, regions, prototypes, center)
        n = sum(s["n_regions"] for s in manifest["slides"])
        if regions.ntotal != n:
            raise InputError(
                f"{path}: regions.faiss holds {regions.ntotal} vectors but the manifest lists {n} regions"
            )
        return index

    def add(self, shards: Sequence[str | Path]) -> list[str]:
        """Append slides (shard files) to the index without rebuilding it; returns their ids."""
        loaded = [SlideShard.load(p) for p in shards]
        _one_checkpoint(loaded, self.checkpoint_sha256)
        present = set(self.slide_ids)
        for s in loaded:
            if s.slide_id in present:
                raise InputError(
                    f"slide {s.slide_id!r} is already in the index {self.path}; give the new slide another id"
                )
            present.add(s.slide_id)
        self._append(loaded, [Path(p) for p in shards])
        if self.kind == "flat" and self.regions.ntotal > 4 * fi.EXACT_LIMIT:
            log.warning(
                "index %s: %d regions in an exact index; rebuild with kind='hnsw' or 'ivf' for faster queries",
                self.path,
                self.regions.ntotal,
            )
        self.save()
        return [s.slide_id for s in loaded]

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
            dst = self.path / "shards" / f"{shard.slide_id}.npz"
            if src.resolve() != dst.resolve():
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
                thumb = src.parent.parent / "thumbs" / f"{shard.slide_id}.png"
                if thumb.is_file():
                    with atomic_path(self.path / "thumbs" / thumb.name) as tmp:
                        shutil.copyfile(thumb, tmp)
            fi.add(self.regions, shard.vectors, region_id(ordinal, np.arange(len(shard))))
            meta = {k: v for k, v in shard.meta.items() if k != "spec"}
            meta.update(ordinal=ordinal, has_expr=shard.expr is not None, has_kg=shard.kg is not None)
            meta["has_labels"] = shard.labels is not None
            self.manifest["slides"].append(meta)
            self._shards[shard.slide_id] = shard
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
        self.path.mkdir(parents=True, exist_ok=True)
        fi.save(self.regions, self.path / "regions.faiss")
        for name, arr in (("prototypes.npy", self.prototypes), ("center.npy", self.center)):
            with atomic_path(self.path / name) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.path / "manifest.json", self.manifest)

    # ------------------------------------------------------------------ access
    @property
    def checkpoint_sha256(self) -> str:
        return self.manifest["checkpoint_sha256"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

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

    def shard(self, slide_id: str) -> SlideShard:
        self.slide_meta(slide_id)
        if slide_id not in self._shards:
            self._shards[slide_id] = SlideShard.load(self.path / "shards" / f"{slide_id}.npz")
        return self._shards[slide_id]

    def thumbnail_path(self, slide_id: str) -> Path | None:
        self.slide_meta(slide_id)
        p = self.path / "thumbs" / f"{slide_id}.png"
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
        """(slide ids, (n_slides, dim) L2-normalised descriptors), cached."""
        desc = self.descriptor(descriptor)
        key = ("desc", desc.name)
        if key not in self._cache:
            self._cache[key] = (self.slide_ids, desc.matrix().astype(np.float32))
        return self._cache[key]

    def cached(self, key: Any, build) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


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
