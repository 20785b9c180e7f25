"""Embeddings from a trained checkpoint into AnnData (scanpy style).

- :func:`embed`: image-tower embeddings of every spot (``obsm["X_histokg"]``) and, where the spots
  have counts for the model's gene panel, expression-tower embeddings (``obsm["X_histokg_expr"]``).
- :func:`embed_slide`: a slide without transcriptomics: tissue grid tiles of the model's patch
  geometry become the observations (with thumbnail and scale factors, so ``squidpy.pl.spatial_scatter``
  shows them), embedded in streamed batches: memory is bounded by the batch, not the slide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from histokg import keys
from histokg.checkpoint import LoadedModel, load_model
from histokg.devices import resolve_device
from histokg.embedding import embed_expression, embed_spots
from histokg.errors import InputError
from histokg.keys import Key
from histokg.pp import panel_log1p
from histokg.st.contract import build_anndata, check_spots, spatial_uns
from histokg.st.pairing import PairingConfig
from histokg.wsi import TilingConfig, open_slide, tile_slide

log = logging.getLogger(__name__)


def _as_model(model: LoadedModel | str | Path, device) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, device)


@torch.no_grad()
def embed(
    adata: ad.AnnData,
    model: LoadedModel | str | Path,
    *,
    key_added: str = keys.IMAGE,
    expression: bool = True,
    slide_dir: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Embed every observation of ``adata`` (spots or tiles) with a trained model.

    Writes ``obsm[key_added]`` (image tower, L2-normalised) and, when ``expression`` and the data
    carry ``layers["counts"]``, ``obsm[keys.expr_key(key_added)]`` (expression tower); records the model
    in ``uns["histokg"]["params"]``. Panel genes the data lacks are measured zeros (logged); when
    most of the panel is missing this raises (``expression=False`` embeds the images only).
    ``slide_dir`` finds slides that moved since reading by their file name. Patches go through the
    library's one embedding routine (:func:`histokg.embedding.embed_spots`: the model's backbone features,
    cached in ``cache_dir`` when given, then its head); ``progress(done, total)`` follows the patches.
    """
    check_spots(adata, "the AnnData given to tl.embed")
    adata = adata.copy() if copy else adata
    device = resolve_device(device)
    loaded = _as_model(model, device)
    net = loaded.model.to(device).eval()
    has_counts = expression and Key.layers.counts in adata.layers and adata.n_vars > 0
    inputs = _expression_inputs(adata, loaded) if has_counts else None  # input errors before any compute
    adata.obsm[key_added] = embed_spots(
        net,
        adata,
        loaded.pairing,
        cache_dir=cache_dir,
        batch_size=batch_size,
        num_workers=num_workers,
        slide_dir=slide_dir,
        device=device,
        progress=progress,
        what=f"obsm[{key_added!r}] (image tower)",
    )
    if inputs is not None:
        adata.obsm[keys.expr_key(key_added)] = embed_expression(
            net,
            inputs,
            device=device,
            what=f"obsm[{keys.expr_key(key_added)!r}] (expression tower, {loaded.config.expr_input} input)",
        )
    adata.uns.setdefault(Key.uns.histokg, {})[Key.histokg.params] = loaded.params
    return adata if copy else None


def _expression_inputs(adata: ad.AnnData, loaded: LoadedModel) -> np.ndarray:
    """What the expression tower reads for each spot: panel log1p CP10k, or KG activations."""
    source = f"{_libraries_text(adata)} (model panel)"
    if loaded.config.expr_input == "kg":
        from histokg.priors import KGPrior

        counts = adata.layers[Key.layers.counts]
        _check_counted(
            adata, np.asarray(counts.sum(axis=1)).ravel() > 0, f"{_libraries_text(adata)}", "genes"
        )
        prior = KGPrior.from_bundle(loaded.kg_bundle(), list(adata.var_names), loaded.prior)
        return np.asarray(prior.activations(counts), np.float32)
    inputs = panel_log1p(adata, loaded.genes, source=source)
    _check_counted(adata, inputs.any(axis=1), source, f"{len(loaded.genes)} panel genes")
    return inputs


def _check_counted(adata: ad.AnnData, counted: np.ndarray, source: str, genes: str) -> None:
    """Spots without a count in the genes the expression tower reads all get one identical embedding:
    an error when no spot has one, a warning naming them otherwise."""
    if counted.all():
        return
    missing = np.flatnonzero(~counted)
    if not counted.any():
        raise InputError(
            f"{source}: none of the {adata.n_obs} spots has a count in the {genes}; every expression "
            "embedding would be the same. Is it the right count matrix? Pass expression=False "
            "(--images-only) to embed the patches only"
        )
    log.warning(
        "%s: %d of %d spots have no count in the %s (e.g. %s); their expression embeddings are all the "
        "same (that of an empty spot)",
        source,
        len(missing),
        adata.n_obs,
        genes,
        [str(adata.obs_names[i]) for i in missing[:3]],
    )


def _libraries_text(adata: ad.AnnData) -> str:
    if Key.obs.library_id not in adata.obs:
        return "the data"
    libs = list(map(str, pd.unique(adata.obs[Key.obs.library_id].astype(str))))
    return f"the data of section{'s' if len(libs) > 1 else ''} {', '.join(libs[:4])}"


def concat_embedded(parts: list[ad.AnnData]) -> ad.AnnData:
    """Concatenate embedded sections/slides; an embedding some parts lack is dropped (never NaN-filled)."""
    from histokg.st.contract import concat_sections

    if len(parts) == 1:
        return parts[0]
    keys = set.intersection(*(set(p.obsm.keys()) for p in parts))
    for p in parts:
        dropped = sorted(set(p.obsm.keys()) - keys)
        if dropped:
            log.warning("obsm %s is not in every input, so it is left out of the concatenation", dropped)
            for key in dropped:
                del p.obsm[key]
    return concat_sections(parts, join="outer")


def read_embedded(
    paths: list[str | Path] | tuple[str | Path, ...], what: str = "embedded .h5ad"
) -> ad.AnnData:
    """Read ``histokg embed`` outputs and concatenate them (:func:`concat_embedded`); several files must
    record one and the same checkpoint (``uns["histokg"]["params"]``), else one error naming the file."""
    from histokg.st.contract import read_h5ad
    from histokg.tl.predict import embedding_checkpoint

    parts = [read_h5ad(p) for p in paths]
    if len(parts) > 1:
        shas = [embedding_checkpoint(a) for a in parts]
        for path, sha in zip(paths, shas, strict=True):
            if not sha:
                raise InputError(
                    f"{what} {path} records no checkpoint (uns['histokg']['params']): it cannot be combined "
                    "with other files; embed it with histokg embed"
                )
            if sha != shas[0]:
                raise InputError(
                    f"{what} {path} was embedded with checkpoint {sha[:12]}, {paths[0]} with {shas[0][:12]}: "
                    "embeddings of two models cannot be combined; embed both with one checkpoint"
                )
    return concat_embedded(parts)


def tile_adata(
    slide_path: str | Path,
    pairing: PairingConfig,
    *,
    library_id: str | None = None,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    max_tiles: int | None = None,
) -> ad.AnnData:
    """AnnData of a slide's tissue tiles (one observation per tile, no genes), in the contract.

    More than ``max_tiles`` grid tiles (default :data:`histokg.budget.MAX_TILES`; the web app's uploads
    pass a smaller cap) is an error before the grid is allocated: :func:`histokg.budget.tile_count` gives
    the number from the slide's size alone.
    """
    cfg = TilingConfig(
        target_mpp=pairing.target_mpp, patch_px=pairing.patch_px, min_tissue=min_tissue, mask=pairing.mask
    )

    def tiles(slide) -> Layout:
        grid = tile_slide(slide, cfg, max_tiles=max_tiles)  # counts the grid before the mask and tiles
        ids = [f"tile_{x}_{y}" for x, y in grid.coords]
        obs = pd.DataFrame({Key.obs.tissue_fraction: grid.tissue_fraction})
        return Layout(ids, grid.centers, grid.size0, obs, {Key.metadata.reader: "tiles"})

    return layout_adata(slide_path, tiles, library_id=library_id, mpp=mpp)


@dataclass
class Layout:
    """Observations laid on a slide: ids, level-0 centres (x, y), their diameter (or side) in level-0
    pixels, extra obs columns and extra ``uns["spatial"][lib]["metadata"]`` fields."""

    ids: list[str]
    centres: np.ndarray
    diameter0: float
    obs: pd.DataFrame
    metadata: dict


def layout_adata(
    slide_path: str | Path,
    layout: Callable[[Any], Layout],
    *,
    library_id: str | None = None,
    mpp: float | None = None,
) -> ad.AnnData:
    """AnnData (no genes) of the observations ``layout(slide)`` lays on a slide (it checks their number
    against :mod:`histokg.budget` before it allocates them, then finds the tissue), in the contract: the
    slide's thumbnail, MPP (given, or the slide's) and the observations' diameter."""
    import scipy.sparse as sp

    slide_path = Path(slide_path)
    library_id = library_id or slide_path.stem
    with open_slide(slide_path, mpp=mpp) as slide:
        laid = layout(slide)
        hires, scale = slide.thumbnail(2000)
        slide_mpp = slide.mpp
    spatial = spatial_uns(
        hires,
        scale,
        laid.diameter0,
        slide_path,
        slide_mpp,
        extra_metadata={Key.metadata.mpp_source: "given" if mpp else "slide", **laid.metadata},
    )
    return build_anndata(
        sp.csr_matrix((len(laid.ids), 0), dtype=np.int32),
        laid.ids,
        [],
        laid.centres,
        library_id,
        spatial,
        obs_extra=laid.obs,
        source=str(slide_path),
    )


def embed_slide(
    slide_path: str | Path,
    model: LoadedModel | str | Path,
    *,
    library_id: str | None = None,
    mpp: float | None = None,
    min_tissue: float = 0.5,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    max_tiles: int | None = None,
) -> ad.AnnData:
    """Tile a slide's tissue at the model's patch geometry and embed every tile.

    More than ``max_tiles`` grid tiles (default :data:`histokg.budget.MAX_TILES`) is an error before
    anything is decoded or embedded.
    """
    device = resolve_device(device)
    loaded = _as_model(model, device)
    adata = tile_adata(
        slide_path, loaded.pairing, library_id=library_id, mpp=mpp, min_tissue=min_tissue, max_tiles=max_tiles
    )
    if adata.n_obs == 0:
        raise InputError(f"slide {slide_path}: no tissue tiles to embed")
    embed(adata, loaded, batch_size=batch_size, num_workers=num_workers, device=device)
    return adata
