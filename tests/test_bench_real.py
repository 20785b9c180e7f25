"""`histokg bench` on the real her2st sections (slow: frozen features of four 9k-px JPEGs and a KG embedding)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histokg.cli import main

pytestmark = pytest.mark.slow


def test_bench_her2st_train_c2_c4_test_c5(her2st, tmp_path):
    out = tmp_path / "bench"
    sets = ["features.views=1", "kg.epochs=5", "kg.tune_temperatures=[0.5]", "heads.epochs=10", "threads=2"]
    args = ["bench", "--data", str(her2st), "--train", "C2,C3,C4", "--test", "C5", "--seeds", "1"]
    args += ["--losses", "infonce,kg_soft", "--out", str(out), "--set", f"cache_dir={tmp_path / 'cache'}"]
    for item in sets:
        args += ["--set", item]
    main(args)
    results = json.loads((out / "results.json").read_text())
    assert results["sections"] == {"C2": 187, "C3": 180, "C4": 184, "C5": 181}
    by = {(r["method"], r["slide"]): r["metrics"] for r in results["runs"]}
    assert set(results["folds"][0]["test"]) == {"C5"}
    for method in ("mean", "naive_ridge", "frozen_pca_ridge", "frozen_knn", "infonce", "kg_soft"):
        m = by[(method, "C5")]
        assert np.isfinite(m["panel/pearson_heg50"]) and np.isfinite(m["mean250/pearson_all"]), method
        assert np.isfinite(m["pathway/pearson_hallmark"]), method
    # the frozen ImageNet tower carries real signal about expression on an unseen section
    assert by[("frozen_pca_ridge", "C5")]["panel/pearson_heg50"] > 0.1
    assert by[("mean", "C5")]["panel/pearson_heg50"] == 0.0
    auroc = results["folds"][0]["prior"]["auroc"]
    assert 0.5 < auroc["expression_panel500"]["train"]["centred_cosine"] <= 1.0
    assert set(auroc["transe/tuned"]) == {"train", "C5"}
    assert 0.0 < auroc["transe/tuned"]["C5"]["combined"] < 1.0
