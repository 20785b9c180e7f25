"""pathways_kg: a phenotype-pathway-tissue knowledge graph, its pykeen embeddings and a file bundle.

Sources (Reactome, MSigDB Hallmark, curated cell types and phenotypes, optional PanglaoDB) become
typed triples (:mod:`pathways_kg.build`), a pykeen model embeds them (:mod:`pathways_kg.embed`), and
the result is a bundle of safetensors + JSON (:mod:`pathways_kg.bundle`) that histokg reads. This
package never imports histokg. Heavy dependencies (pykeen, matplotlib) load only where used.
"""

from __future__ import annotations

from pathways_kg.errors import KGError

__version__ = "0.1.0"
__all__ = ["KGError", "__version__"]
