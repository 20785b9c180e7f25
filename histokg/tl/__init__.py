"""Tools on embedded slides, scanpy style: ``f(adata, ..., *, key_added=..., copy=False)`` writes its
result into ``adata`` and returns None (``copy=True``: a new AnnData, ``adata`` untouched).

``histokg.tl.cluster`` / ``spatial_statistics`` / ``kg_scores`` (scanpy/squidpy analysis),
``histokg.tl.predict_expression`` (expression from H&E alone, into ``layers`` or ``obsm``; read it
back with ``predicted``, or as layers of a panel AnnData with ``panel_adata``) and ``histokg.tl.embed``
(checkpoint -> ``obsm["X_histokg"]``, ``obsm["X_histokg_expr"]``); ``embed_slide`` reads a slide into
a new AnnData of embedded tiles.
"""

from histokg.tl.analysis import cluster, kg_scores, spatial_graph, spatial_statistics
from histokg.tl.predict import add_predictions, panel_adata, panel_genes, predict_expression, predicted

__all__ = [
    "add_predictions",
    "cluster",
    "kg_scores",
    "panel_adata",
    "panel_genes",
    "predict_expression",
    "predicted",
    "spatial_graph",
    "spatial_statistics",
]

try:
    from histokg.tl.embed import embed, embed_slide
except ModuleNotFoundError as exc:  # only the embedding module itself may be absent; anything else is a bug
    if exc.name != "histokg.tl.embed":
        raise
else:
    __all__ += ["embed", "embed_slide"]
