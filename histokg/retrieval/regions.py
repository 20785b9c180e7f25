"""A new slide's regions: its tissue tiles embedded with a model, with progress, for querying an index.

:func:`embed_regions` is what the web app runs on an upload: tile the slide at the model's patch
geometry (:func:`histokg.tl.embed.tile_adata`), embed the tiles in chunks with the image tower
(:func:`histokg.tl.embed.embed`) and report progress after each chunk. The vectors it returns are
the ``obsm["X_histokg"]`` a shard would hold, so :func:`histokg.retrieval.query.similar_to_vectors`
can rank the index's slides against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from histokg.errors import InputError
from histokg.keys import Key

if TYPE_CHECKING:
    from histokg.checkpoint import LoadedModel

#: ``progress(stage, done, total)``: ``("tiling", 0, 0)`` before tiling, then ``("embedding", done,
#: n_tiles)`` when embedding starts (done = 0) and after each chunk.
Progress = Callable[[str, int, int], None]

MIN_CHUNK = 32  # tiles per chunk at least; otherwise about 1/PROGRESS_STEPS of the slide per chunk
PROGRESS_STEPS = 20


def embed_regions(
    model: LoadedModel,
    slide: str | Path,
    *,
    mpp: float | None = None,
    progress: Progress | None = None,
    library_id: str | None = None,
    batch_size: int = 32,
    max_tiles: int | None = None,
) -> np.ndarray:
    """(n_tiles, dim) L2-normalised image-tower embeddings of the tissue tiles of ``slide``.

    ``mpp`` for images without one; ``library_id`` names the tiles' library (default: the file's
    stem). Raises InputError when the slide has no tissue tiles, or when its grid holds more than
    ``max_tiles`` tiles (default :data:`histokg.budget.MAX_TILES`; counted from the slide's size before the
    grid is allocated, :func:`histokg.budget.tile_count` gives the number without decoding the image).
    """
    from histokg.tl.embed import embed, tile_adata

    report = progress or (lambda stage, done, total: None)
    report("tiling", 0, 0)
    tiles = tile_adata(slide, model.pairing, library_id=library_id, mpp=mpp, max_tiles=max_tiles)
    n = int(tiles.n_obs)
    if n == 0:
        raise InputError(f"no tissue tiles found on {slide}")
    report("embedding", 0, n)
    chunk = max(MIN_CHUNK, math.ceil(n / PROGRESS_STEPS))
    parts = []
    for start in range(0, n, chunk):
        part = tiles[start : start + chunk].copy()
        embed(part, model, batch_size=batch_size)
        parts.append(part.obsm[Key.obsm.image])
        report("embedding", start + part.n_obs, n)
    return np.concatenate(parts)
