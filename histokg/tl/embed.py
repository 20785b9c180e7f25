"""Embeddings from a trained checkpoint into AnnData (scanpy style).

- :func:`embed`: image-tower embeddings of every spot (``obsm["X_histokg"]``) and, where the spots
  have counts for the model's gene panel, expression-tower embeddings (``obsm["X_histokg_expr"]``).
- :func:`embed_slide`: a slide without transcriptomics: tissue grid tiles of the model's patch
  geometry become the observations (with thumbnail and scale factors, so ``squidpy.pl.spatial_scatter``
  shows them), embedded in streamed batches: memory is bounded by the batch, not the slide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from histokg.config import from_dict
from histokg.errors import InputError
from histokg.io import file_sha256
from histokg.models import DualEncoder, ModelConfig
from histokg.st.contract import build_anndata, spatial_uns
from histokg.st.dataset import SpotPatchDataset, panel_expression
from histokg.st.pairing import PairingConfig
from histokg.wsi import TilingConfig, detect_tissue, open_slide, tile_slide

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A trained dual encoder with what it needs to embed new data."""

    model: DualEncoder
    genes: list[str]
    pairing: PairingConfig
    checkpoint: Path
    sha256: str
    meta: dict

    @property
    def params(self) -> dict:
        cfg = self.meta["config"]
        return {
            "model": cfg["model"]["image_encoder"],
            "loss": cfg["loss"]["name"],
            "checkpoint": str(self.checkpoint),
            "checkpoint_sha256": self.sha256,
            "patch_um": self.pairing.patch_um,
            "patch_px": self.pairing.patch_px,
            "mpp": self.pairing.target_mpp,
            "embed_dim": cfg["model"]["embed_dim"],
            "genes": list(self.genes),
            "train_slides": self.meta.get("train_slides", []),
        }


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the dual encoder of a ``histokg train`` checkpoint (weights-only loading)."""
    from histokg.train.checkpoint import load_checkpoint
    from histokg.train.config import TrainConfig

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    cfg = from_dict(TrainConfig, meta["config"])
    model_cfg: ModelConfig = cfg.model
    if model_cfg.image_weights:  # the checkpoint already holds the weights
        model_cfg = ModelConfig(**{**model_cfg.__dict__, "image_weights": None})
    model = DualEncoder(model_cfg, int(meta["n_expr_inputs"]))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    pairing = PairingConfig(patch_um=cfg.data.patch_um, patch_px=cfg.data.patch_px)
    return LoadedModel(model, list(meta["genes"]), pairing, checkpoint, file_sha256(checkpoint), meta)


def _as_model(model: LoadedModel | str | Path, device) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, device)


@torch.no_grad()
def embed(
    adata: ad.AnnData,
    model: LoadedModel | str | Path,
    *,
    key_added: str = "X_histokg",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    copy: bool = False,
) -> ad.AnnData | None:
    """Embed every observation of ``adata`` (spots or tiles) with a trained model.

    Writes ``obsm[key_added]`` (image tower, L2-normalised) and, when ``layers["counts"]`` covers
    the model's gene panel, ``obsm[key_added + "_expr"]`` (expression tower); records the model in
    ``uns["histokg"]["params"]``.
    """
    adata = adata.copy() if copy else adata
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = _as_model(model, device)
    net = loaded.model.to(device).eval()
    expr_input = loaded.meta["config"]["model"]["expr_input"]
    has_counts = "counts" in adata.layers and adata.n_vars > 0
    if has_counts and expr_input == "genes":
        has_counts = set(loaded.genes) <= set(adata.var_names)
    ds = SpotPatchDataset(adata, loaded.pairing, expression=np.zeros((adata.n_obs, 0), np.float32))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out = np.zeros((adata.n_obs, net.cfg.embed_dim), dtype=np.float32)
    start = 0
    for batch in tqdm(loader, desc="embedding patches", unit="batch"):
        f = net.encode_image(batch["image"].to(device)).cpu().numpy()
        out[start : start + len(f)] = f
        start += len(f)
    adata.obsm[key_added] = out
    if has_counts:
        if expr_input == "kg":
            from histokg.priors import KGPrior, PriorConfig

            prior_cfg = from_dict(PriorConfig, loaded.meta["config"]["prior"])
            prior = KGPrior.from_bundle(prior_cfg.bundle, list(adata.var_names), prior_cfg)
            inputs = np.asarray(prior.activations(adata.layers["counts"]), np.float32)
        else:
            inputs = panel_expression(adata, loaded.genes)
        g = [
            net.encode_expr(torch.from_numpy(inputs[i : i + 1024]).to(device)).cpu().numpy()
            for i in range(0, len(inputs), 1024)
        ]
        adata.obsm[f"{key_added}_expr"] = np.concatenate(g).astype(np.float32)
    elif "counts" in adata.layers and adata.n_vars > 0:
        missing = [g for g in loaded.genes if g not in set(adata.var_names)]
        log.warning(
            "no expression embedding: %d panel genes are absent from the data (e.g. %s)",
            len(missing),
            missing[:3],
        )
    adata.uns.setdefault("histokg", {})["params"] = loaded.params
    ds.close()
    return adata if copy else None


def tile_adata(
    slide_path: str | Path,
    pairing: PairingConfig,
    *,
    library_id: str | None = None,
    mpp: float | None = None,
    min_tissue: float = 0.5,
) -> ad.AnnData:
    """AnnData of a slide's tissue tiles (one observation per tile, no genes), in the contract."""
    slide_path = Path(slide_path)
    library_id = library_id or slide_path.stem
    cfg = TilingConfig(
        target_mpp=pairing.target_mpp, patch_px=pairing.patch_px, min_tissue=min_tissue, mask=pairing.mask
    )
    with open_slide(slide_path, mpp=mpp) as slide:
        mask = detect_tissue(slide, cfg.mask)
        tiles = tile_slide(slide, cfg, mask)
        hires, scale = slide.thumbnail(2000)
        slide_mpp = slide.mpp
    ids = [f"tile_{x}_{y}" for x, y in tiles.coords]
    spatial = spatial_uns(
        hires,
        scale,
        tiles.size0,
        slide_path,
        slide_mpp,
        extra_metadata={"reader": "tiles", "mpp_source": "given" if mpp else "slide"},
    )
    import scipy.sparse as sp

    adata = build_anndata(
        sp.csr_matrix((len(ids), 0), dtype=np.int32),
        ids,
        [],
        tiles.centers,
        library_id,
        spatial,
        obs_extra=pd.DataFrame({"tissue_fraction": tiles.tissue_fraction}),
        source=str(slide_path),
    )
    return adata


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
) -> ad.AnnData:
    """Tile a slide's tissue at the model's patch geometry and embed every tile."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loaded = _as_model(model, device)
    adata = tile_adata(slide_path, loaded.pairing, library_id=library_id, mpp=mpp, min_tissue=min_tissue)
    if adata.n_obs == 0:
        raise InputError(f"slide {slide_path}: no tissue tiles to embed")
    embed(adata, loaded, batch_size=batch_size, num_workers=num_workers, device=device)
    return adata
