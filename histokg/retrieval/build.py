"""Building and growing an index over many slides: one Dask task per slide, resumable.

:func:`build_index` embeds every :class:`~histokg.retrieval.shards.SlideSpec` that has no finished
shard yet (a shard counts as finished when it records the same spec and checkpoint), one task per
slide on a Dask cluster: a local cluster by default (``scheduler=None``: worker processes;
``"threads"``: one process, worker threads; ``"sync"``: no cluster, in this process) or the address of
a running scheduler (``tcp://host:8786``) whose workers see the same files. Shards are written to the
index's ``staging/`` folder; when every slide is embedded, the index is written as one new generation
(:mod:`histokg.retrieval.generations`) and the staged shards it took are removed. A killed build or add
resumes where it stopped (the staged shards are reused) and leaves the index as it was until the switch;
a slide that fails is named at the end while the others' shards stay staged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from histokg.errors import InputError
from histokg.io import file_sha256, holding_lock
from histokg.retrieval import generations as gens
from histokg.retrieval.index import RetrievalIndex
from histokg.retrieval.shards import SlideShard, SlideSpec, embed_spec

log = logging.getLogger(__name__)

LOCAL = (None, "processes", "threads", "sync")


def finished(spec: SlideSpec, out_dir: Path, sha: str) -> bool:
    """Whether ``out_dir`` holds a complete shard of ``spec`` made with checkpoint ``sha``."""
    path = out_dir / "shards" / f"{spec.slide_id}.npz"
    if not path.is_file():
        return False
    try:
        meta = SlideShard.load(path).meta
    except InputError:
        return False
    return meta.get("spec") == spec.key() and meta.get("checkpoint_sha256") == sha


def _found(spec: SlideSpec, out_dir: Path, reuse: Mapping[str, Path], sha: str) -> Path | None:
    """A finished shard of ``spec``: in ``out_dir`` (staging), else the intact one of the index being
    replaced (None: embed it)."""
    if finished(spec, out_dir, sha):
        return out_dir / "shards" / f"{spec.slide_id}.npz"
    known = reuse.get(spec.slide_id)
    if known is not None and finished(spec, known.parent.parent, sha):
        return known
    return None


def embed_slides(
    specs: Sequence[SlideSpec],
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    bundle: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    feature_cache: str | Path | None = None,
    reuse: Mapping[str, Path] | None = None,
) -> list[Path]:
    """Embed ``specs`` into shards under ``out_dir``, skipping those finished there or given in ``reuse``
    (slide id -> an intact shard, e.g. of the index being rebuilt); returns every spec's shard path."""
    out_dir = Path(out_dir)
    checkpoint = Path(checkpoint).resolve()
    sha = file_sha256(checkpoint)
    found = {s.slide_id: _found(s, out_dir, reuse or {}, sha) for s in specs}
    todo = [s for s in specs if found[s.slide_id] is None]
    if len(todo) < len(specs):
        log.info("resuming: %d of %d slides already embedded", len(specs) - len(todo), len(specs))
    if any(s.kind != "slide" for s in todo):  # slides with counts: KG activations
        bundle = _kg_bundle(bundle, checkpoint)
    kwargs = {
        "bundle": str(bundle) if bundle else None,
        "device": device,
        "batch_size": batch_size,
        "feature_cache": str(feature_cache) if feature_cache else None,
    }
    failures: list[str] = []
    if todo:
        if scheduler == "sync":
            for spec in tqdm(todo, desc="embedding slides", unit="slide"):
                try:
                    embed_spec(spec, str(checkpoint), str(out_dir), **kwargs)
                except Exception as exc:  # one bad slide must not lose the others
                    failures.append(f"{spec.slide_id}: {exc}")
        else:
            failures = _run_dask(todo, str(checkpoint), str(out_dir), kwargs, scheduler, n_workers)
    if failures:
        raise InputError(
            f"{len(failures)} of {len(todo)} slides failed (the others are saved; run again to resume): "
            + "; ".join(failures)
        )
    return [found[s.slide_id] or out_dir / "shards" / f"{s.slide_id}.npz" for s in specs]


def _kg_bundle(bundle: str | Path | None, checkpoint: Path) -> Path | None:
    """The KG bundle of the build, absolute (workers may run elsewhere): ``bundle`` when given, else the
    checkpoint's (:func:`histokg.checkpoint.resolve_saved_path`); an error naming it when it is not there,
    before any slide is embedded (an index without KG activations is never built silently). Only
    slides with counts need it: plain whole slides have no KG activations."""
    from histokg.checkpoint import checkpoint_bundle

    if bundle is not None:
        bundle = Path(bundle).resolve()
        if not bundle.is_dir():
            raise InputError(f"KG bundle {bundle} does not exist (or is not a folder)")
        return bundle
    found = checkpoint_bundle(checkpoint)
    if found is not None:
        log.info("KG activations from the checkpoint's bundle %s", found)
    return found.resolve() if found is not None else None


def _run_dask(todo, checkpoint, out_dir, kwargs, scheduler, n_workers) -> list[str]:
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler in LOCAL:
        workers = int(n_workers or max(1, min(len(todo), os.cpu_count() or 1)))
        processes = scheduler != "threads"
        # worker processes talk over TCP on localhost only; threads use in-process transport
        network = {"host": "127.0.0.1"} if processes else {}
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=processes,
            dashboard_address=None,
            silence_logs=logging.WARNING,
            **network,
        )
        client = Client(cluster)
        where = f"local cluster of {workers} {'threads' if scheduler == 'threads' else 'processes'}"
    else:
        cluster = None
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None
        where = f"Dask scheduler {scheduler}"
    log.info("embedding %d slides, one task each, on a %s", len(todo), where)
    failures: list[str] = []
    try:
        futures = {
            client.submit(
                embed_spec, spec, checkpoint, out_dir, key=f"embed-{spec.slide_id}", pure=False, **kwargs
            ): spec
            for spec in todo
        }
        completed = tqdm(as_completed(futures), total=len(futures), desc="embedding slides", unit="slide")
        for done, fut in enumerate(completed, start=1):
            spec = futures[fut]
            try:
                fut.result()
                log.info("%d/%d slides embedded (%s)", done, len(todo), spec.slide_id)
            except Exception as exc:
                log.error("slide %s failed: %s", spec.slide_id, exc)
                failures.append(f"{spec.slide_id}: {exc}")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return failures


@holding_lock("out_dir", "histokg index build", label="index folder")
def build_index(
    specs: Sequence[SlideSpec],
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    kind: str = "auto",
    n_prototypes: int = 16,
    scheduler: str | None = None,
    n_workers: int | None = None,
    bundle: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    feature_cache: str | Path | None = None,
    overwrite: bool = False,
) -> RetrievalIndex:
    """Embed the slides (resumable, on Dask) and build a new index in ``out_dir``.

    Slides are embedded into ``out_dir/staging`` (a rerun after a kill reuses what is there, and with
    ``overwrite`` the shards of the index being replaced that match); the index is then written as one
    new generation (:mod:`histokg.retrieval.generations`): a kill leaves the old index or the new one."""
    out_dir = Path(out_dir)
    if gens.holds_index(out_dir) and not overwrite:
        raise InputError(f"{out_dir} already holds an index; use `histokg index add` or --overwrite")
    if not specs:
        raise InputError("no slides to index")
    shards = embed_slides(
        specs,
        checkpoint,
        gens.staging_dir(out_dir),
        reuse=_intact_shards(out_dir),
        scheduler=scheduler,
        n_workers=n_workers,
        bundle=bundle,
        device=device,
        batch_size=batch_size,
        feature_cache=feature_cache,
    )
    return RetrievalIndex.create(out_dir, shards, kind=kind, n_prototypes=n_prototypes, overwrite=overwrite)


def _intact_shards(path: Path) -> dict[str, Path]:
    """Slide id -> shard of the index in ``path`` whose file still has the hash its manifest recorded
    (a rebuild reuses these and embeds a damaged one again); empty when ``path`` holds no index."""
    from histokg.retrieval.index import read_manifest

    try:
        layout = gens.current(path)
        slides = read_manifest(layout.root / gens.MANIFEST)["slides"]
    except InputError:
        return {}
    intact = {}
    for meta in slides:
        shard = layout.shard_path(meta["slide_id"])
        recorded = meta.get("shard_sha256")
        if shard.is_file() and (not recorded or file_sha256(shard) == recorded):
            intact[meta["slide_id"]] = shard
    return intact


@holding_lock("index_dir", "histokg index add", label="index folder")
def add_to_index(
    index_dir: str | Path,
    specs: Sequence[SlideSpec],
    checkpoint: str | Path,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    bundle: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    feature_cache: str | Path | None = None,
) -> RetrievalIndex:
    """Embed new slides and append them to an existing index (no rebuild); same checkpoint only."""
    index = RetrievalIndex.load(index_dir)
    sha = file_sha256(checkpoint)
    if sha != index.checkpoint_sha256:
        raise InputError(
            f"checkpoint {checkpoint} (sha256 {sha[:12]}...) is not the index's checkpoint "
            f"({index.checkpoint_sha256[:12]}...): embeddings of different checkpoints cannot be mixed"
        )
    present = [s.slide_id for s in specs if s.slide_id in index.slide_ids]
    if present:
        raise InputError(f"slides {present} are already in the index {index_dir}")
    shards = embed_slides(
        specs,
        checkpoint,
        gens.staging_dir(index.path),
        scheduler=scheduler,
        n_workers=n_workers,
        bundle=bundle,
        device=device,
        batch_size=batch_size,
        feature_cache=feature_cache,
    )
    index.add(shards)
    return index
