"""Tools on embedded slides (scanpy style): analysis, expression prediction, embedding export.

``histokg.tl.cluster`` / ``spatial_statistics`` / ``kg_scores`` (scanpy/squidpy analysis),
``histokg.tl.predict_expression`` (expression from H&E alone) and ``histokg.tl.embed`` /
``embed_slide`` (checkpoint -> ``obsm["X_histokg"]``, ``obsm["X_histokg_expr"]``).
"""

from histokg.tl.analysis import cluster, kg_scores, spatial_graph, spatial_statistics
from histokg.tl.predict import panel_adata, panel_genes, predict_expression

__all__ = [
    "cluster",
    "kg_scores",
    "panel_adata",
    "panel_genes",
    "predict_expression",
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
