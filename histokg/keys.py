"""Names of what histokg writes into AnnData, in one place.

The embedding keys: ``tl.embed(adata, key_added=K)`` writes the image tower to ``obsm[K]`` and the
expression tower to ``obsm[expr_key(K)]``; everything that reads embeddings derives the second from
the first, so a custom ``key_added`` works end to end. (The rest of the AnnData contract's names,
``library_id``, ``spatial``, ``counts``, ... are still spelled where they are used; gathering them
here too is part of the architecture issue.)
"""

from __future__ import annotations

IMAGE = "X_histokg"  # obsm: image-tower embeddings (L2-normalised)
UNS = "histokg"  # uns: params of the model that embedded (checkpoint hash, panel, slides)


def expr_key(image_key: str = IMAGE) -> str:
    """The obsm key of the expression-tower embeddings that go with image embeddings ``image_key``."""
    return f"{image_key}_expr"


EXPR = expr_key(IMAGE)  # obsm: expression-tower embeddings
