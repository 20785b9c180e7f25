"""write_json: always valid JSON (non-finite floats -> null), atomic, numpy/torch/paths converted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pathways_kg.io import write_json


def _strict_load(path: Path):
    """Parse as strict JSON: NaN, Infinity and -Infinity are not JSON and must not be accepted."""

    def reject(token: str):
        raise ValueError(f"non-JSON constant {token} in {path}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


def test_non_finite_floats_become_null_anywhere(tmp_path):
    import torch

    obj = {
        "best_metric": float("-inf"),
        "nan": float("nan"),
        "np64": np.float64("inf"),
        "np32": np.float32("nan"),
        "ok": 0.5,
        "nested": {"history": [{"loss": math.nan, "recall@5": 0.25}, (1.0, -math.inf)]},
        "array": np.array([[1.0, np.nan], [np.inf, 2.0]], dtype=np.float32),
        "tensor": torch.tensor([float("nan"), 3.0]),
        "ints": [np.int64(3), np.bool_(True), True, None, "NaN"],
        np.int64(7): Path("a/b"),
        "keys": {float("inf"): 1, 0.5: 2},
    }
    path = tmp_path / "summary.json"
    write_json(path, obj)
    data = _strict_load(path)
    assert data["best_metric"] is None and data["nan"] is None
    assert data["np64"] is None and data["np32"] is None and data["ok"] == 0.5
    assert data["nested"] == {"history": [{"loss": None, "recall@5": 0.25}, [1.0, None]]}
    assert data["array"] == [[1.0, None], [None, 2.0]]
    assert data["tensor"] == [None, 3.0]
    assert data["ints"] == [3, True, True, None, "NaN"]
    assert data["7"] == "a/b" and data["keys"] == {"inf": 1, "0.5": 2}


def test_unserialisable_value_leaves_previous_file(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError, match="cannot serialise set"):
        write_json(path, {"a": {1, 2}})
    assert _strict_load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind
