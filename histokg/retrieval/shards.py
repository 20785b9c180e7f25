"""One slide's region embeddings on disk (a *shard*) and how a slide becomes one.

A :class:`SlideSpec` says what to embed: a whole-slide image (tissue tiles, no transcriptomics),
one library of an ``.h5ad`` (spots), or one section of a synthetic study folder; plus the slide's
id, patient and labels. :func:`embed_spec` embeds it with a checkpoint (through
:func:`histokg.checkpoint.load_model`) and writes ``shards/<slide_id>.npz`` and ``thumbs/<slide_id>.png``
atomically; a shard records the checkpoint's SHA-256 so that an index never mixes models.

Shard arrays: ``vectors`` (n, d) L2-normalised image-tower embeddings, ``coords`` (n, 2) level-0
pixel centres (x, y), ``names`` region names; optionally ``expr`` (n, genes) log1p CP10k of the
model's gene panel, ``kg`` (n, entities) KG activations (when the data has counts and a KG bundle is
known), ``labels`` (n,) region labels (e.g. expression clusters or the synthetic truth).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histokg import budget
from histokg.errors import InputError
from histokg.io import atomic_open, atomic_path
from histokg.keys import Key
from histokg.retrieval.ids import check_slide_id, safe_slide_id

log = logging.getLogger(__name__)

SHARD_VERSION = 1
SPEC_KINDS = ("slide", "h5ad", "study")
THUMB_MAX_PX = 1200


@dataclass(frozen=True)
class SlideSpec:
    """What to embed for one slide of an index."""

    slide_id: str
    path: str
    kind: str = "slide"  # "slide" (whole-slide tiles), "h5ad" (spots of one library), "study" (one section)
    library_id: str | None = None  # the library inside an .h5ad or study (default: slide_id)
    patient: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    mpp: float | None = None  # for plain images without MPP
    label_key: str | None = None  # obs column with region labels (spots); None: "region" if present

    def __post_init__(self) -> None:
        check_slide_id(self.slide_id)
        if self.kind not in SPEC_KINDS:
            raise InputError(f"slide {self.slide_id}: kind {self.kind!r} is not one of {list(SPEC_KINDS)}")

    def key(self) -> str:
        """What the shard must match to be reused (resuming a build)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass
class SlideShard:
    """One slide's regions: embeddings, positions, optional measurements, and the slide's metadata."""

    meta: dict[str, Any]
    vectors: np.ndarray
    coords: np.ndarray
    names: np.ndarray
    expr: np.ndarray | None = None
    genes: list[str] = field(default_factory=list)
    kg: np.ndarray | None = None
    entities: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None

    @property
    def slide_id(self) -> str:
        return str(self.meta["slide_id"])

    def __len__(self) -> int:
        return len(self.vectors)

    def save(self, path: str | Path) -> Path:
        arrays: dict[str, np.ndarray] = {
            "vectors": np.asarray(self.vectors, np.float32),
            "coords": np.asarray(self.coords, np.float32),
            "names": np.asarray(self.names, dtype=str),
            "meta": np.asarray(json.dumps(self.meta)),
        }
        if self.expr is not None:
            arrays["expr"] = np.asarray(self.expr, np.float16)
            arrays["genes"] = np.asarray(self.genes, dtype=str)
        if self.kg is not None:
            arrays["kg"] = np.asarray(self.kg, np.float16)
            arrays["entities"] = np.asarray(self.entities, dtype=str)
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, dtype=str)
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SlideShard:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return cls(
                    meta=meta,
                    vectors=z["vectors"],
                    coords=z["coords"],
                    names=z["names"],
                    expr=z["expr"].astype(np.float32) if "expr" in z else None,
                    genes=[str(g) for g in z["genes"]] if "genes" in z else [],
                    kg=z["kg"].astype(np.float32) if "kg" in z else None,
                    entities=[str(e) for e in z["entities"]] if "entities" in z else [],
                    labels=z["labels"] if "labels" in z else None,
                )
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"shard {path} cannot be read: {exc}") from None


# --------------------------------------------------------------------------- spec tables


def specs_from_paths(
    paths: list[str | Path], *, patient: str | None = None, mpp: float | None = None
) -> list[SlideSpec]:
    """Specs for slide files, ``.h5ad`` files (one spec per library) and study folders (one per section)."""
    specs: list[SlideSpec] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"{path} does not exist")
        if path.is_dir():
            manifest = path / "study.json"
            if not manifest.is_file():
                raise InputError(f"{path} is a folder without study.json; give slide files or .h5ad files")
            study = json.loads(manifest.read_text(encoding="utf-8"))
            for sec in study["sections"]:
                lib = str(sec[Key.obs.library_id])
                labels = {k: str(v) for k, v in (sec.get("labels") or {}).items()}
                specs.append(SlideSpec(safe_slide_id(lib), str(path), "study", lib, patient, labels, mpp))
        elif path.suffix == ".h5ad":
            import anndata as ad

            obs = ad.read_h5ad(path, backed="r").obs
            libs = (
                [str(x) for x in obs[Key.obs.library_id].astype(str).unique()]
                if Key.obs.library_id in obs
                else [path.stem]
            )
            for lib in libs:
                specs.append(SlideSpec(safe_slide_id(lib), str(path), "h5ad", lib, patient, {}, mpp))
        else:
            specs.append(SlideSpec(safe_slide_id(path.stem), str(path), "slide", None, patient, {}, mpp))
    _check_unique(specs)
    return specs


def specs_from_table(table: str | Path) -> list[SlideSpec]:
    """Specs from a CSV/TSV with a ``path`` column; optional ``slide_id``, ``kind``, ``library_id``,
    ``patient``, ``mpp``, ``label_key``; every other column is a slide label (e.g. ``diagnosis``)."""
    from histokg.io import read_table

    table = Path(table)
    sep = "\t" if table.suffix in (".tsv", ".txt") else ","
    frame = read_table(table, "slide table", sep=sep, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        raise InputError(f"slide table {table}: no 'path' column (columns: {list(frame.columns)})")
    known = {"path", "slide_id", "kind", Key.obs.library_id, "patient", "mpp", "label_key"}
    specs = []
    for i, row in frame.iterrows():
        if not str(row["path"]).strip():
            raise InputError(f"slide table {table}, row {i + 2}: the path is empty")
        path = Path(row["path"])
        if not path.is_absolute():
            path = (table.parent / path).resolve()
        if not path.exists():
            raise InputError(f"slide table {table}, row {i + 2}: {path} does not exist")
        kind = row.get("kind") or (
            "study" if path.is_dir() else "h5ad" if path.suffix == ".h5ad" else "slide"
        )
        lib = row.get(Key.obs.library_id) or None
        sid = row.get("slide_id") or safe_slide_id(lib or path.stem)
        mpp = budget.check_mpp(row["mpp"], f"slide table {table}, row {i + 2}") if row.get("mpp") else None
        labels = {c: str(row[c]) for c in frame.columns if c not in known and row[c] != ""}
        specs.append(
            SlideSpec(
                sid,
                str(path),
                kind,
                lib,
                row.get("patient") or None,
                labels,
                mpp,
                row.get("label_key") or None,
            )
        )
    _check_unique(specs)
    return specs


def _check_unique(specs: list[SlideSpec]) -> None:
    seen: set[str] = set()
    for s in specs:
        if s.slide_id in seen:
            raise InputError(f"slide id {s.slide_id!r} occurs twice; give unique slide_id values")
        seen.add(s.slide_id)


# --------------------------------------------------------------------------- embedding


@functools.lru_cache(maxsize=2)
def _model(checkpoint: str, device: str):
    from histokg.checkpoint import load_model

    return load_model(checkpoint, device)


@functools.lru_cache(maxsize=4)
def _prior(bundle: str, genes: tuple[str, ...]):
    from histokg.priors import KGPrior

    return KGPrior.from_bundle(bundle, list(genes))


def read_spec(spec: SlideSpec, model) -> Any:
    """The AnnData to embed for ``spec``: tissue tiles of a slide, or the spots of one library."""
    import anndata as ad

    path = Path(spec.path)
    lib = spec.library_id or spec.slide_id
    if spec.kind == "slide":
        from histokg.tl.embed import tile_adata

        return tile_adata(path, model.pairing, library_id=spec.slide_id, mpp=spec.mpp)
    if spec.kind == "h5ad":
        adata = ad.read_h5ad(path)
        if Key.obs.library_id in adata.obs:
            adata = adata[adata.obs[Key.obs.library_id].astype(str) == lib].copy()
        if adata.n_obs == 0:
            raise InputError(f"{path}: no observations with library_id {lib!r}")
        return adata
    return _read_study_section(path, lib)


def _read_study_section(study_dir: Path, lib: str):
    import pandas as pd

    from histokg.st import read_visium

    manifest = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    sections = {str(s[Key.obs.library_id]): s for s in manifest["sections"]}
    if lib not in sections:
        raise InputError(f"study {study_dir}: no section {lib!r} (sections: {sorted(sections)})")
    sec = sections[lib]
    adata = read_visium(study_dir / sec["spaceranger"], slide=study_dir / sec["slide"], library_id=lib)
    truth_path = study_dir / sec.get("truth", "")
    if sec.get("truth") and truth_path.is_file():
        truth = pd.read_csv(truth_path, index_col=0)
        region = truth.loc[adata.obs[Key.obs.barcode].to_numpy(), Key.obs.region]
        adata.obs[Key.obs.region] = region.astype(str).to_numpy()
    return adata


def embed_spec(
    spec: SlideSpec,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    bundle: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    feature_cache: str | Path | None = None,
) -> Path:
    """Embed one slide and write its shard and thumbnail under ``out_dir``; returns the shard path.

    ``feature_cache``: a folder for the tower's features (:class:`histokg.features.FeatureCache`), so that
    a rebuild with the same checkpoint and slides skips the tower."""
    from histokg.tl.embed import embed

    model = _model(str(Path(checkpoint).resolve()), device)
    adata = read_spec(spec, model)
    if adata.n_obs == 0:
        raise InputError(f"slide {spec.slide_id} ({spec.path}): nothing to embed (no tissue tiles or spots)")
    # retrieval needs the image tower only: embed a gene-less view (the expression tower would demand
    # the model's gene panel), then keep the counts for expression and KG activations
    view = adata[:, []].copy()
    embed(view, model, batch_size=batch_size, device=device, cache_dir=feature_cache)
    adata.obsm[Key.obsm.image] = view.obsm[Key.obsm.image]
    adata.uns[Key.uns.histokg] = view.uns[Key.uns.histokg]
    shard = shard_from_adata(adata, spec, model, bundle=bundle)
    return write_shard(shard, _spatial_entry(adata, spec), out_dir)


def _spatial_entry(adata, spec: SlideSpec) -> dict:
    entries = adata.uns.get(Key.uns.spatial, {})
    for lib in (spec.library_id, spec.slide_id):
        if lib in entries:
            return entries[lib]
    return next(iter(entries.values()), {}) if len(entries) == 1 else {}


def shard_from_adata(adata, spec: SlideSpec, model, *, bundle: str | Path | None = None) -> SlideShard:
    """A shard from an embedded AnnData of one slide (``obsm["X_histokg"]``, ``obsm["spatial"]``)."""
    from histokg.pp import panel_log1p

    if Key.obsm.image not in adata.obsm:
        raise InputError(f"slide {spec.slide_id}: obsm['X_histokg'] is missing; embed it first")
    spatial = _spatial_entry(adata, spec)
    scalef = spatial.get(Key.uns.scalefactors, {})
    meta_src = spatial.get(Key.uns.metadata, {})
    has_counts = Key.layers.counts in adata.layers and adata.n_vars > 0
    params = adata.uns.get(Key.uns.histokg, {}).get(Key.histokg.params, model.params)
    meta: dict[str, Any] = {
        "version": SHARD_VERSION,
        "slide_id": spec.slide_id,
        "patient": spec.patient,
        "labels": dict(spec.labels),
        "kind": "spots" if spec.kind != "slide" else "tiles",
        "source": str(spec.path),
        Key.obs.library_id: spec.library_id,
        "spec": spec.key(),
        "checkpoint_sha256": params["checkpoint_sha256"],
        "checkpoint": str(params.get("checkpoint", "")),
        "model": {
            k: params[k] for k in ("model", "loss", "patch_um", "patch_px", "mpp", "embed_dim") if k in params
        },
        "slide_mpp": float(meta_src.get(Key.metadata.mpp, np.nan)),
        "source_image": str(meta_src.get(Key.metadata.source_image_path, "")),
        "region_diameter_px": float(scalef.get(Key.scalefactors.spot_diameter_fullres, np.nan)),
        "thumbnail_scale": float(scalef.get(Key.scalefactors.tissue_hires_scalef, np.nan)),
        "n_regions": int(adata.n_obs),
    }
    if meta["kind"] == "spots":  # the patch around a spot is what was embedded; the spot is drawn
        meta["spot_diameter_px"] = meta["region_diameter_px"]
        meta["region_diameter_px"] = float(model.pairing.patch_um / meta["slide_mpp"])
    shard = SlideShard(
        meta=meta,
        vectors=np.asarray(adata.obsm[Key.obsm.image], np.float32),
        coords=np.asarray(adata.obsm[Key.obsm.spatial], np.float32),
        names=np.asarray(adata.obs_names, dtype=str),
    )
    if has_counts:
        try:
            shard.expr = panel_log1p(adata, model.genes)
            shard.genes = list(model.genes)
        except InputError as exc:  # other species or gene naming: no measured panel genes
            log.warning("slide %s: no measured gene panel: %s", spec.slide_id, exc)
        # an explicit bundle wins; else the checkpoint's, resolved beside the checkpoint (an error when it
        # names one that is not there: an index without KG activations is not built silently)
        bundle = Path(bundle) if bundle else model.kg_bundle()
        if bundle is not None:
            if not bundle.is_dir():
                raise InputError(f"KG bundle {bundle} does not exist (or is not a folder)")
            try:
                prior = _prior(str(bundle.resolve()), tuple(map(str, adata.var_names)))
                shard.kg = np.asarray(prior.activations(adata.layers[Key.layers.counts]), np.float32)
                shard.entities = list(prior.entity_ids)
                meta["kg_bundle"] = str(bundle.resolve())
            except InputError as exc:  # e.g. genes the KG does not name
                log.warning("slide %s: no KG activations: %s", spec.slide_id, exc)
    key = spec.label_key or (Key.obs.region if Key.obs.region in adata.obs else None)
    if key is not None:
        if key not in adata.obs:
            raise InputError(f"slide {spec.slide_id}: label column obs[{key!r}] is missing")
        shard.labels = adata.obs[key].astype(str).to_numpy()
        meta["label_key"] = key
    return shard


def write_shard(shard: SlideShard, spatial: dict, out_dir: str | Path) -> Path:
    """Write the shard and the slide's thumbnail (from ``spatial["images"]["hires"]``) under ``out_dir``."""
    out_dir = Path(out_dir)
    if Key.uns.hires in spatial.get(Key.uns.images, {}):
        img = np.asarray(spatial[Key.uns.images][Key.uns.hires])
        scale = float(shard.meta["thumbnail_scale"])
        if img.dtype.kind == "f":  # scanpy also accepts floats in [0, 1]
            img = np.clip(img * 255.0, 0, 255)
        thumb = Image.fromarray(np.asarray(img[..., :3], dtype=np.uint8))
        if max(thumb.size) > THUMB_MAX_PX:
            factor = THUMB_MAX_PX / max(thumb.size)
            thumb = thumb.resize(
                (round(thumb.width * factor), round(thumb.height * factor)), Image.Resampling.BOX
            )
            shard.meta["thumbnail_scale"] = scale * factor
        with atomic_path(out_dir / "thumbs" / f"{shard.slide_id}.png") as tmp:
            thumb.save(tmp, format="PNG")
        shard.meta["thumbnail_size"] = list(thumb.size)
    path = shard.save(out_dir / "shards" / f"{shard.slide_id}.npz")
    log.info("slide %s: %d regions -> %s", shard.slide_id, len(shard), path)
    return path
