"""The embedding bundle: a folder that hands a trained KG embedding to histokg.

Layout::

    bundle/
      entities.safetensors    entity tensors (see below), row i = bundle.json "entities"[i]
      relations.safetensors   relation tensors, row j = bundle.json "relations"[j]
      bundle.json             model, dims, seed, metrics (trained and random baseline), ids, provenance
      entities.tsv            the graph's entity table (id, type, label, source)
      triples.tsv             the graph's triples; its sha256 is bundle.json "graph"."sha256"

Tensor keys by storage kind: ``real`` (TransE): ``entity``/``relation`` (n, d); ``complex`` (RotatE,
ComplEx): ``entity``/``relation`` (n, d, 2) real and imaginary parts; ``gaussian`` (KG2E):
``entity_mean``, ``entity_var``, ``relation_mean``, ``relation_var`` (n, d) with ``var`` the
diagonal covariance. Loading reads safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pathways_kg.errors import KGError
from pathways_kg.io import atomic_path, file_sha256, read_json_object, write_json
from pathways_kg.models import get_model
from pathways_kg.registry import did_you_mean
from pathways_kg.schema import ENTITY_TYPES, RELATIONS

logger = logging.getLogger(__name__)

FORMAT = "pathways_kg.bundle/1"


@dataclass(frozen=True, eq=False)
class Bundle:
    model: str
    entity_ids: tuple[str, ...]
    entity_types: tuple[str, ...]
    relation_ids: tuple[str, ...]
    relation_families: tuple[str, ...]
    entity_tensors: dict[str, np.ndarray]
    relation_tensors: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def storage(self) -> str:
        return get_model(self.model).storage

    @cached_property
    def entity_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.entity_ids)}

    @cached_property
    def relation_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.relation_ids)}

    def entity_vectors(self) -> np.ndarray:
        """One real vector per entity for similarity: the embedding (real), ``[re, im]`` (complex), the mean (KG2E)."""
        if self.storage == "gaussian":
            return self.entity_tensors["entity_mean"]
        x = self.entity_tensors["entity"]
        return x.reshape(len(x), -1) if x.ndim == 3 else x

    def gaussians(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, var)`` of the entity Gaussians of a KG2E bundle."""
        if self.storage != "gaussian":
            raise KGError(f"bundle model {self.model!r} has no Gaussian embeddings (train with --model kg2e)")
        return self.entity_tensors["entity_mean"], self.entity_tensors["entity_var"]

    def triples_path(self) -> Path:
        if self.path is None:
            raise KGError("this bundle was not loaded from a folder, so it has no triples file")
        return self.path / "triples.tsv"


def save_bundle(bundle: Bundle, out_dir: str | Path, graph_dir: str | Path | None = None) -> Path:
    """Write ``bundle`` into ``out_dir`` (each file atomically); copy the graph files from ``graph_dir``.

    Non-finite tensors are refused; bundle.json records the sha256 of every tensor and of the graph
    files, which :func:`load_bundle` verifies.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    arrays = {
        name: {k: np.ascontiguousarray(v, dtype="<f4") for k, v in tensors.items()}
        for name, tensors in _files(bundle).items()
    }
    for name, tensors in arrays.items():
        for key, value in tensors.items():
            _check_finite(value, out / name, key)
    out.mkdir(parents=True, exist_ok=True)
    if graph_dir is not None:
        from pathways_kg.graph import resolve_graph_dir

        for src in resolve_graph_dir(graph_dir):
            if src.resolve() != (out / src.name).resolve():
                with atomic_path(out / src.name) as tmp:
                    shutil.copyfile(src, tmp)
    for name, tensors in arrays.items():
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp))
    meta = copy.deepcopy(dict(bundle.meta))
    meta.update(
        format=FORMAT,
        model=bundle.model,
        entities=[[e, t] for e, t in zip(bundle.entity_ids, bundle.entity_types, strict=True)],
        relations=[[r, f] for r, f in zip(bundle.relation_ids, bundle.relation_families, strict=True)],
        tensors={
            name: {
                key: {"shape": list(v.shape), "dtype": "float32", "sha256": tensor_sha256(v)}
                for key, v in t.items()
            }
            for name, t in arrays.items()
        },
    )
    graph = meta.setdefault("graph", {})
    for key, file in (("sha256", "triples.tsv"), ("entities_sha256", "entities.tsv")):
        if (out / file).is_file():
            graph[key] = file_sha256(out / file)
    write_json(out / "bundle.json", meta)
    return out


def tensor_sha256(array: np.ndarray) -> str:
    """sha256 of a tensor's values as contiguous little-endian float32 (the bytes safetensors stores)."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def load_bundle(path: str | Path | Bundle) -> Bundle:
    """Read a bundle folder (safetensors + JSON; never unpickles). A :class:`Bundle` is returned as is.

    Refuses, with a :class:`KGError` naming the file (and tensor key) at fault: a bundle.json that is
    not a bundle's (missing or malformed keys, unknown model), unreadable safetensors, tensors with
    NaN or Inf, tensors or graph files whose sha256 differs from the one recorded at save time, and
    shapes that do not fit the ids and the model.
    """
    if isinstance(path, Bundle):
        return path
    folder = Path(path)
    meta_path = folder / "bundle.json"
    meta = _read_meta(folder, meta_path)
    try:
        spec = get_model(meta["model"])
    except KGError as exc:
        raise KGError(f"{meta_path}: {exc}") from None
    tensors = {name: _read_tensors(folder / name) for name in TENSOR_FILES}
    _verify_tensors(tensors, meta, folder, meta_path)
    entities, relations = meta["entities"], meta["relations"]
    bundle = Bundle(
        model=spec.name,
        entity_ids=tuple(e for e, _ in entities),
        entity_types=tuple(t for _, t in entities),
        relation_ids=tuple(r for r, _ in relations),
        relation_families=tuple(f for _, f in relations),
        entity_tensors=tensors["entities.safetensors"],
        relation_tensors=tensors["relations.safetensors"],
        meta=meta,
        path=folder,
    )
    _check_shapes(bundle, folder)
    graph = meta.get("graph", {})
    for key, file in (("sha256", "triples.tsv"), ("entities_sha256", "entities.tsv")):
        expected, actual = graph.get(key), folder / file
        if expected and actual.is_file() and file_sha256(actual) != expected:
            raise KGError(
                f"{actual}: sha256 differs from bundle.json graph.{key}; the graph was changed after training"
            )
    return bundle


TENSOR_FILES = ("entities.safetensors", "relations.safetensors")


def _files(bundle: Bundle) -> dict[str, dict[str, np.ndarray]]:
    return dict(zip(TENSOR_FILES, (bundle.entity_tensors, bundle.relation_tensors), strict=True))


def _read_meta(folder: Path, meta_path: Path) -> dict[str, Any]:
    if not meta_path.is_file():
        raise KGError(f"{folder}: not an embedding bundle (no bundle.json)")
    meta = read_json_object(meta_path, KGError)
    if meta.get("format") != FORMAT:
        raise KGError(f"{meta_path}: unsupported bundle format {meta.get('format')!r} (expected {FORMAT!r})")
    for key in ("model", "entities", "relations"):
        if key not in meta:
            raise KGError(f"{meta_path}: missing key {key!r}")
    if not isinstance(meta["model"], str):
        raise KGError(f"{meta_path}: 'model' must be a model name, got {meta['model']!r}")
    for key in ("model_kwargs", "metrics", "graph"):
        if not isinstance(meta.get(key, {}), dict):
            raise KGError(f"{meta_path}: {key!r} must be an object, got {meta[key]!r}")
    for which, values in meta.get("metrics", {}).items():
        if not isinstance(values, dict) or not all(v is None or _is_number(v) for v in values.values()):
            raise KGError(f"{meta_path}: metrics.{which} must map metric names to numbers, got {values!r}")
    for key, what in (("entities", "type"), ("relations", "family")):
        rows = meta[key]
        if not isinstance(rows, list) or not rows:
            raise KGError(f"{meta_path}: {key!r} must be a non-empty list of [id, {what}] pairs")
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
                raise KGError(f"{meta_path}: {key}[{i}] must be an [id, {what}] pair of strings, got {row!r}")
        counts = collections.Counter(r[0] for r in rows)
        dup = next((x for x, n in counts.items() if n > 1), None)
        if dup is not None:
            raise KGError(f"{meta_path}: {key} lists {dup!r} {counts[dup]} times")
    for i, (eid, etype) in enumerate(meta["entities"]):
        if etype not in ENTITY_TYPES:
            raise KGError(
                f"{meta_path}: entities[{i}] {eid!r} has unknown type {etype!r}{did_you_mean(etype, ENTITY_TYPES)}"
            )
    for i, (rid, family) in enumerate(meta["relations"]):
        if rid not in RELATIONS:
            raise KGError(
                f"{meta_path}: relations[{i}]: unknown relation {rid!r}{did_you_mean(rid, RELATIONS)}"
            )
        if family != RELATIONS[rid].family:
            raise KGError(
                f"{meta_path}: relations[{i}]: {rid!r} belongs to family {RELATIONS[rid].family!r}, not {family!r}"
            )
    return meta


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _read_tensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not file.is_file():
        raise KGError(f"{file}: missing (every bundle has {' and '.join(TENSOR_FILES)})")
    try:
        tensors = load_file(str(file))
    except (OSError, SafetensorError, ValueError, TypeError) as exc:
        raise KGError(f"{file}: cannot read as safetensors ({_reason(exc)})") from None
    for key, value in tensors.items():
        if value.dtype.kind != "f":
            raise KGError(f"{file}: tensor {key!r} has dtype {value.dtype}, expected floating point")
        _check_finite(value, file, key)
    return tensors


def _check_finite(value: np.ndarray, file: Path, key: str) -> None:
    bad = ~np.isfinite(value)
    if bad.any():
        n_nan = int(np.isnan(value).sum())
        raise KGError(
            f"{file}: tensor {key!r} holds non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} Inf), "
            f"first at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
        )


def _verify_tensors(
    tensors: dict[str, dict[str, np.ndarray]], meta: dict[str, Any], folder: Path, meta_path: Path
) -> None:
    """Compare every tensor with the keys, shapes and sha256 recorded in bundle.json ``tensors``."""
    recorded = meta.get("tensors")
    if recorded is None:
        logger.warning(
            "%s: written without tensor hashes (an older pathways_kg); its embeddings cannot be verified "
            "(re-run `pathways-kg embed` to get a verifiable bundle)",
            meta_path,
        )
        return
    if not isinstance(recorded, dict) or set(recorded) != set(TENSOR_FILES):
        raise KGError(f"{meta_path}: 'tensors' must map {' and '.join(TENSOR_FILES)} to their tensors")
    for name in TENSOR_FILES:
        file, expected, actual = folder / name, recorded[name], tensors[name]
        if not isinstance(expected, dict) or not all(isinstance(v, dict) for v in expected.values()):
            raise KGError(f"{meta_path}: tensors.{name} must map tensor keys to {{shape, dtype, sha256}}")
        if set(expected) != set(actual):
            missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
            raise KGError(
                f"{file}: tensor keys differ from bundle.json tensors.{name} (missing {missing}, unexpected {extra})"
            )
        for key, value in actual.items():
            if list(value.shape) != expected[key].get("shape"):
                raise KGError(
                    f"{file}: tensor {key!r} has shape {list(value.shape)}, bundle.json records {expected[key].get('shape')}"
                )
            if tensor_sha256(value) != expected[key].get("sha256"):
                raise KGError(
                    f"{file}: tensor {key!r} differs from its sha256 in bundle.json (tensors.{name}.{key}); "
                    "the embeddings were changed after training"
                )


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _check_shapes(bundle: Bundle, folder: Path) -> None:
    """Tensor keys, rows and dimensions fit the model and the ids in bundle.json."""
    storage = bundle.storage
    parts = ("mean", "var") if storage == "gaussian" else ("",)
    dims = set()
    for name, tensors, ids, prefix in (
        ("entities.safetensors", bundle.entity_tensors, bundle.entity_ids, "entity"),
        ("relations.safetensors", bundle.relation_tensors, bundle.relation_ids, "relation"),
    ):
        file = folder / name
        for part in parts:
            key = f"{prefix}_{part}" if part else prefix
            if key not in tensors:
                raise KGError(
                    f"{file}: lacks tensor {key!r} for model {bundle.model!r} (has {sorted(tensors)})"
                )
            x = tensors[key]
            if len(x) != len(ids):
                raise KGError(
                    f"{file}: tensor {key!r} has {len(x)} rows for {len(ids)} {prefix} ids in bundle.json"
                )
            want_ndim = 3 if storage == "complex" else 2
            if x.ndim != want_ndim or (storage == "complex" and x.shape[-1] != 2):
                want = "(n, d, 2)" if storage == "complex" else "(n, d)"
                raise KGError(
                    f"{file}: tensor {key!r} has shape {list(x.shape)}, model {bundle.model!r} stores {want}"
                )
            if part == "var" and (x <= 0).any():
                raise KGError(f"{file}: tensor {key!r} holds non-positive variances")
            dims.add(x.shape[1])
    if len(dims) > 1:
        raise KGError(f"{folder}: entity and relation tensors have different dimensions {sorted(dims)}")
