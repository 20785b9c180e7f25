"""Small numeric helpers on embedding vectors (numpy only, so that light modules can use them)."""

from __future__ import annotations

import numpy as np


def normalize(x: np.ndarray) -> np.ndarray:
    """``x`` (one vector or rows of vectors) scaled to unit L2 norm, as float32 (zero stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
