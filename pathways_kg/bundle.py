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

import json
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pathways_kg.errors import KGError
from pathways_kg.io import atomic_path, file_sha256, write_json
from pathways_kg.models import get_model

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
    """Write ``bundle`` into ``out_dir`` (each file atomically); copy the graph files from ``graph_dir``."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if graph_dir is not None:
        from pathways_kg.graph import resolve_graph_dir

        for src in resolve_graph_dir(graph_dir):
            if src.resolve() != (out / src.name).resolve():
                with atomic_path(out / src.name) as tmp:
                    shutil.copyfile(src, tmp)
    for name, tensors in (("entities", bundle.entity_tensors), ("relations", bundle.relation_tensors)):
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(tmp))
    meta = dict(bundle.meta)
    meta.update(
        format=FORMAT,
        model=bundle.model,
        entities=[[e, t] for e, t in zip(bundle.entity_ids, bundle.entity_types, strict=True)],
        relations=[[r, f] for r, f in zip(bundle.relation_ids, bundle.relation_families, strict=True)],
    )
    if (out / "triples.tsv").is_file():
        meta.setdefault("graph", {})["sha256"] = file_sha256(out / "triples.tsv")
    write_json(out / "bundle.json", meta)
    return out


def load_bundle(path: str | Path | Bundle) -> Bundle:
    """Read a bundle folder (safetensors + JSON; never unpickles). A :class:`Bundle` is returned as is."""
    if isinstance(path, Bundle):
        return path
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = Path(path)
    meta_path = folder / "bundle.json"
    if not meta_path.is_file():
        raise KGError(f"{folder}: not an embedding bundle (no bundle.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KGError(f"{meta_path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if meta.get("format") != FORMAT:
        raise KGError(f"{meta_path}: unsupported bundle format {meta.get('format')!r} (expected {FORMAT!r})")
    tensors = {}
    for name in ("entities", "relations"):
        file = folder / f"{name}.safetensors"
        try:
            tensors[name] = load_file(str(file))
        except (FileNotFoundError, SafetensorError) as exc:
            raise KGError(f"{file}: cannot read ({exc})") from None
    entities, relations = meta["entities"], meta["relations"]
    bundle = Bundle(
        model=meta["model"],
        entity_ids=tuple(e for e, _ in entities),
        entity_types=tuple(t for _, t in entities),
        relation_ids=tuple(r for r, _ in relations),
        relation_families=tuple(f for _, f in relations),
        entity_tensors=tensors["entities"],
        relation_tensors=tensors["relations"],
        meta=meta,
        path=folder,
    )
    _check_shapes(bundle, meta_path)
    expected = meta.get("graph", {}).get("sha256")
    triples = folder / "triples.tsv"
    if expected and triples.is_file() and file_sha256(triples) != expected:
        raise KGError(
            f"{triples}: sha256 differs from bundle.json graph.sha256; the graph was changed after training"
        )
    return bundle


def _check_shapes(bundle: Bundle, where: Path) -> None:
    keys = {"real": ("entity",), "complex": ("entity",), "gaussian": ("entity_mean", "entity_var")}[
        bundle.storage
    ]
    for key in keys:
        if key not in bundle.entity_tensors:
            raise KGError(f"{where}: entities.safetensors lacks {key!r} for model {bundle.model!r}")
        if len(bundle.entity_tensors[key]) != len(bundle.entity_ids):
            raise KGError(
                f"{where}: {key!r} has {len(bundle.entity_tensors[key])} rows for {len(bundle.entity_ids)} entities"
            )
