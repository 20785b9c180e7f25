"""`histokg bench` on a tiny synthetic folder in the legacy-ST layout (fast); the real runs are `slow`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histokg.bench.config import BenchConfig
from histokg.bench.data import load_sections, make_folds
from histokg.cli import main
from histokg.config import load_config
from histokg.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
PITCH_PX = 100  # 200 um legacy-ST pitch at 2 um/px
SETS = (
    "HALLMARK_E2F_TARGETS",
    "HALLMARK_EPITHELIAL_MESENCHYMAL_TRANSITION",
    "HALLMARK_INTERFERON_GAMMA_RESPONSE",
)


def _hallmark(name: str) -> list[str]:
    for line in (REPO / "pathways_kg" / "data" / "h.all.v2024.1.Hs.symbols.gmt").read_text().splitlines():
        parts = line.split("\t")
        if parts[0] == name:
            return parts[2:]
    raise KeyError(name)


def write_legacy_study(root: Path, n_sections: int = 3, seed: int = 0) -> Path:
    """Sections of 8 x 6 spots: a purple, nucleus-dense region (E2F genes up) and a pink stromal one
    (EMT genes up), split by a random vertical boundary; interferon genes are high in a random corner.
    Counts are Poisson around the region means; cluster labels are the regions."""
    rng = np.random.default_rng(seed)
    genes_a, genes_b, genes_c = (_hallmark(s)[:30] for s in SETS)
    other = [g for g in _hallmark("HALLMARK_HYPOXIA") if g not in {*genes_a, *genes_b, *genes_c}][:30]
    genes = list(dict.fromkeys([*genes_a, *genes_b, *genes_c, *other]))
    for sub in ("counts", "spots", "images", "cluster_labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for s in range(n_sections):
        sid = f"T{s + 1}"
        nx, ny = 8, 6
        width, height = (nx + 1) * PITCH_PX, (ny + 1) * PITCH_PX
        boundary = rng.uniform(2.5, 5.5)
        img = np.empty((height, width, 3), np.float32)
        yy, xx = np.mgrid[0:height, 0:width]
        tumour = (xx / PITCH_PX) < boundary + 0.5
        img[:] = np.where(tumour[..., None], [150, 90, 170], [235, 170, 200])
        dots = rng.random((height, width)) < np.where(tumour, 0.08, 0.01)
        img[dots] = [60, 30, 110]
        img += rng.normal(0, 8, img.shape) + rng.normal(0, 10, 3)  # texture + a section-wide stain shift
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{sid}_HE.jpg", quality=92
        )
        rows, spots, labels = [], [], []
        corner = rng.integers(0, 2, size=2)
        for x in range(1, nx + 1):
            for y in range(1, ny + 1):
                px, py = x * PITCH_PX + rng.normal(0, 1), y * PITCH_PX + rng.normal(0, 1)
                region = "tumour" if x < boundary + 0.5 else "stroma"
                mu = np.full(len(genes), 1.0)
                mu[[genes.index(g) for g in genes_a]] = 8.0 if region == "tumour" else 1.0
                mu[[genes.index(g) for g in genes_b]] = 1.0 if region == "tumour" else 8.0
                near = (x > nx / 2) == corner[0] and (y > ny / 2) == corner[1]
                mu[[genes.index(g) for g in genes_c]] = 6.0 if near else 1.5
                rows.append(rng.poisson(mu * rng.uniform(0.7, 1.3)))
                spots.append((x, y, x, y, px, py, 1))
                labels.append((f"{px:.2f}x{py:.2f}", "C", sid, region, x, y, px, py))
        ids = [f"{x}x{y}" for x, y, *_ in spots]
        counts = pd.DataFrame(np.asarray(rows), index=ids, columns=genes)
        with gzip.open(root / "counts" / f"{sid}.tsv.gz", "wt") as fh:
            counts.to_csv(fh, sep="\t")
        pd.DataFrame(spots, columns=["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]).to_csv(
            root / "spots" / f"{sid}_selection.tsv", sep="\t", index=False
        )
        table = pd.DataFrame(
            labels, columns=["", "patient_id", "ids", "label", "x", "y", "pixel_x", "pixel_y"]
        )
        table.to_csv(root / "cluster_labels" / f"{sid}-cluster-annotation.tsv", sep="\t", index=False)
    return root


TINY = [
    "features.image_encoder=test_efficientnet",
    "features.image_weights=null",
    "features.patch_px=32",
    "features.views=2",
    "kg.dim=8",
    "kg.epochs=2",
    "kg.tune_temperatures=[0.5]",
    "heads.epochs=3",
    "heads.batch_size=16",
    "heads.embed_dim=16",
    "heads.expr_hidden=[32]",
    "panel.n_genes=40",
    "panel.n_mean=30",
    "panel.n_top=10",
    "kg.expression_genes=60",
    "ablations.families_off=true",
    "ablations.lam=[0.6]",
    "ablations.uniformity_lam=[0.1]",
    "ablations.kg_models=[kg2e]",
    "ablations.expression_prior=[kg_uniformity]",
    "ablations.expr_input_kg=[infonce]",
    "ablations.expr_input_kg_shuffled=[infonce]",
    "ablations.image_inputs=[naive+context]",
    "ablations.image_input_losses=[kg_uniformity]",
]


@pytest.fixture(scope="module")
def legacy_study(tmp_path_factory) -> Path:
    return write_legacy_study(tmp_path_factory.mktemp("legacy"))


def test_sections_labels_and_folds(legacy_study):
    sections = load_sections([legacy_study])
    assert list(sections) == ["T1", "T2", "T3"]
    assert all(a.n_obs == 48 and a.obs["label"].notna().all() for a in sections.values())
    assert [f.test for f in make_folds(list(sections))] == [("T1",), ("T2",), ("T3",)]
    fold = make_folds(list(sections), train=["T1", "T2"], test=["T3"])
    assert fold[0].train == ("T1", "T2")
    with pytest.raises(InputError, match="in both --train and --test"):
        make_folds(list(sections), train=["T1", "T2"], test=["T2"])


@pytest.mark.slow  # 45 s; make test keeps the bench's fast paths (test_bench_takes_h5ad_files_after_data, test_engine)
def test_bench_end_to_end_on_a_tiny_legacy_folder(legacy_study, tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "bench",
        "--data",
        str(legacy_study),
        "--losses",
        "infonce,kg_soft,kg_uniformity,kg_gaussian",
        "--seeds",
        "2",
    ]
    args += ["--out", str(out), "--set", "cache_dir=" + str(tmp_path / "cache")]
    for item in TINY:
        args += ["--set", item]
    main(args)
    printed = capsys.readouterr().out
    assert "kg_soft" in printed and "frozen_pca_ridge" in printed
    results = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in results["runs"]}
    assert {
        "mean",
        "naive_ridge",
        "frozen_pca_ridge",
        "frozen_ridge_cv",
        "frozen_knn",
        "infonce",
        "kg_soft",
        "kg_gaussian",
    } <= methods
    assert {
        "kg_soft[lam=0.6]",
        "infonce[expr=kg]",
        "kg_soft[configured prior]",
        "kg_uniformity[lam=0.1]",
        "kg_soft[kg=kg2e]",
        "kg_uniformity[W=expression]",
        "kg_uniformity[+naive+context]",
        "kg_uniformity[+naive+context][W=expression]",  # the image-input row's no-KG twin
        "infonce[expr=kg shuffled]",  # expr=kg's control: the KG's gene sets over permuted genes
        "frozen_ridge_cv[+naive+context]",
    } <= methods
    by_method = {(r["method"], r["slide"], r["seed"]): r["metrics"] for r in results["runs"]}
    key = ("T1", 0)
    assert by_method[("infonce[expr=kg]", *key)] != by_method[("infonce[expr=kg shuffled]", *key)]
    control = results["folds"][0]["prior"]["auroc"]["expression/control"]
    assert 0.5 < control["train"]["combined"] <= 1.0
    assert any(m.startswith("kg_soft[-") for m in methods)  # each kernel off in turn
    # every held-out slide scored per seed, never pooled
    soft = [r for r in results["runs"] if r["method"] == "kg_soft"]
    assert sorted((r["slide"], r["seed"]) for r in soft) == [
        (s, k) for s in ("T1", "T2", "T3") for k in (0, 1)
    ]
    m = soft[0]["metrics"]
    for key in ("panel/pearson_heg10", "panel/pearson_hvg10", "panel/pearson_all", "panel/mse", "mean30/pearson_heg10",
                "pathway/pearson_hallmark", "recall@5_i2e", "recall@5_e2i", "ridge:panel/pearson_heg10"):  # fmt: skip
        assert np.isfinite(m[key]), key
    assert 0.0 <= m["interval90/coverage"] <= 1.0 and m["interval90/z"] > 0
    # the floor: a constant prediction carries no information
    mean_rows = [r for r in results["runs"] if r["method"] == "mean"]
    assert all(r["metrics"]["panel/pearson_heg10"] == 0 for r in mean_rows)
    # the planted colour -> expression link is found by the simplest probe
    naive = [r["metrics"]["panel/pearson_heg10"] for r in results["runs"] if r["method"] == "naive_ridge"]
    assert np.mean(naive) > 0.3
    # prior diagnostics: tuned on training slides, reported per kernel, next to each KG result
    fold = results["folds"][0]
    assert fold["prior"]["candidates"] and "combined" in fold["prior"]["auroc"]["transe/tuned"]["train"]
    assert fold["prior"]["auroc"]["expression_panel500"]["train"]["centred_cosine"] > 0.5
    assert soft[0]["prior_auroc"]["train"] > 0.5
    summary = {(s["method"], s["slide"]): s for s in results["summary"]}
    assert summary[("kg_soft", "all")]["n_seeds"] == 2
    assert summary[("kg_soft", "T1")]["panel/pearson_heg10"]["std"] >= 0
    md = (out / "results.md").read_text()
    assert "| kg_soft | loss | all |" in md and "Prior quality" in md and "Wall time per stage" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["features"]["computed"] == ["T1", "T2", "T3"]

    # a folder holding results is never mixed with another run
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "already holds bench results" in capsys.readouterr().err
    # --overwrite replaces them; the frozen features come from the cache
    # (without the ablations: this run checks the folder and the cache, not the bench again)
    plain = args[: args.index("--set") + 2]  # up to and with the cache_dir --set
    for item in TINY:
        if not item.startswith("ablations."):
            plain += ["--set", item]
    main([*plain, "--overwrite", "--losses", "infonce", "--seeds", "1"])
    again = json.loads((out / "results.json").read_text())
    assert again["features"]["computed"] == []
    assert {r["method"] for r in again["runs"] if r["kind"] == "loss"} == {"infonce"}


def test_bench_bad_inputs_are_one_line_errors(legacy_study, tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "counts").mkdir(parents=True)
    (broken / "counts" / "X1.tsv").write_text("\tA\n1x1\t3\n")
    (broken / "spots").mkdir()
    (broken / "spots" / "X1_selection.tsv").write_text("x\ty\tpixel_x\tpixel_y\n1\t1\t5\t5\n")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--data", str(broken), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "section X1 has no image images/X1_HE.jpg" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(
            [
                "bench",
                "--data",
                str(legacy_study),
                "--train",
                "T1",
                "--test",
                "T9",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert "unknown sections ['T9']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--data", str(legacy_study), "--losses", "infonse", "--out", str(tmp_path / "o")])
    assert "unknown losses ['infonse']" in capsys.readouterr().err


def test_bench_takes_h5ad_files_after_data(legacy_study, tmp_path):
    from histokg.st.contract import write_h5ad

    files = []
    for sid, adata in load_sections([legacy_study]).items():
        files.append(tmp_path / f"{sid}.h5ad")
        write_h5ad(adata, files[-1])
    out = tmp_path / "bench"
    args = ["bench", "--data", *map(str, files), "--train", "T1,T2", "--test", "T3", "--losses", "infonce"]
    args += [
        "--seeds",
        "1",
        "--out",
        str(out),
        "--set",
        "cache_dir=" + str(tmp_path / "cache"),
        "--set",
        "baselines=[mean]",
    ]
    for item in TINY:
        if not item.startswith("ablations."):
            args += ["--set", item]
    main(args)
    results = json.loads((out / "results.json").read_text())
    assert results["sections"] == {"T1": 48, "T2": 48, "T3": 48}
    assert {r["slide"] for r in results["runs"]} == {"T3"}
    assert "panel/pearson_heg10" in results["runs"][-1]["metrics"]


def test_bench_configs_load():
    for path in sorted((REPO / "configs" / "bench").glob("*.yaml")):
        cfg = load_config(BenchConfig, path)
        assert cfg.seeds >= 1, path
    her2st = REPO / "configs" / "bench" / "her2st.yaml"
    cfg = load_config(BenchConfig, her2st, ["features.stain_jitter=0.2", "heads.batches=within_slide"])
    assert cfg.features.stain_jitter == 0.2 and cfg.heads.batches == "within_slide"
    with pytest.raises(ConfigError, match=r"features\.stain_jitter: jitters views 1-7"):
        load_config(BenchConfig, her2st, ["features.stain_jitter=0.2", "features.views=1"])
    with pytest.raises(ConfigError, match=r"heads\.batches: 'by_patient' is not one of mixed, within_slide"):
        load_config(BenchConfig, her2st, ["heads.batches=by_patient"])
    settings = ["features.stain_norm=reinhard", "features.stages=[2,3,4]", "heads.gene_set_reg=1.0"]
    cfg = load_config(BenchConfig, her2st, settings)
    assert (cfg.features.stain_norm, cfg.features.stages, cfg.heads.gene_set_reg) == (
        "reinhard",
        (2, 3, 4),
        1.0,
    )
    with pytest.raises(
        ConfigError, match=r"features\.stages: must be distinct stage indices >= 0, got \[2, 2\]"
    ):
        load_config(BenchConfig, her2st, ["features.stages=[2,2]"])
    with pytest.raises(ConfigError, match=r"heads\.gene_set_reg: must be a finite number >= 0, got -1"):
        load_config(BenchConfig, her2st, ["heads.gene_set_reg=-1"])


def test_bench_without_kg_genes_runs_the_rest_and_says_why(tmp_path, capsys):
    """Data whose genes the KG does not know (e.g. mouse Ensembl ids): KG losses and pathway targets are
    skipped with the reason in the notes; baselines and plain losses still run."""
    root = write_legacy_study(tmp_path / "legacy", n_sections=2)
    for path in (root / "counts").iterdir():
        table = pd.read_csv(path, sep="\t", index_col=0)
        table.columns = [f"ENSMUSG{i:011d}" for i in range(table.shape[1])]
        with gzip.open(path, "wt") as fh:
            table.to_csv(fh, sep="\t")
    out = tmp_path / "bench"
    args = ["bench", "--data", str(root), "--losses", "infonce,kg_soft", "--seeds", "1", "--out", str(out)]
    args += ["--set", "cache_dir=" + str(tmp_path / "cache")]
    for item in TINY:
        if not item.startswith("ablations."):
            args += ["--set", item]
    main(args)
    results = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in results["runs"]}
    assert "infonce" in methods and "naive_ridge" in methods and "kg_soft" not in methods
    assert any("knowledge graph unavailable" in n for n in results["notes"])
    assert any("losses skipped" in n and "kg_soft" in n for n in results["notes"])
    assert not any(k.startswith("pathway/") for r in results["runs"] for k in r["metrics"])


def test_patients_and_leave_one_patient_out_folds(legacy_study, tmp_path):
    from histokg.bench.data import section_patients

    sections = load_sections([legacy_study])
    patients, source = section_patients(sections)
    assert patients == {"T1": "T", "T2": "T", "T3": "T"} and "leading letters" in source
    with pytest.raises(InputError, match="lopo: every section is patient 'T'"):
        make_folds(list(sections), "lopo", patients=patients)
    table = tmp_path / "patients.csv"
    table.write_text("sample,patient\nT1,P1\nT2,P1\nT3,P2\n")
    patients, source = section_patients(sections, table)
    assert patients == {"T1": "P1", "T2": "P1", "T3": "P2"} and source == "table patients.csv"
    folds = make_folds(list(sections), "lopo", patients=patients)
    assert [(f.train, f.test) for f in folds] == [(("T3",), ("T1", "T2")), (("T1", "T2"), ("T3",))]
    table.write_text("sample,patient\nT1,P1\n")
    with pytest.raises(InputError, match=r"patients table .*no row for sections \['T2', 'T3'\]"):
        section_patients(sections, table)


def test_the_leakage_check_fails_a_fold_that_fits_on_held_out_data():
    from histokg.bench.data import Fold
    from histokg.bench.leakage import LeakageError, Ledger

    patients = {"C2": "C", "C3": "C", "C4": "C", "A1": "A"}
    loso = Ledger(Fold(("C2", "C3", "A1"), ("C4",)), patients, by_patient=False)
    loso.fitted("gene panel", np.array(["C2", "C3", "A1"]))
    assert loso.unseen == {"C4"}
    with pytest.raises(LeakageError, match=r"gene panel was fitted on held-out section\(s\) \['C4'\]"):
        loso.fitted("gene panel", ["C2", "C4"])
    lopo = Ledger(Fold(("A1",), ("C2", "C3", "C4")), patients, by_patient=True)
    assert lopo.unseen == {"C2", "C3", "C4"}
    lopo.fitted("ridge", ["A1"])
    assert lopo.protocol()["fitted_on"] == {"ridge": ["A1"]} and lopo.protocol()["held_out_patients"] == ["C"]


def test_a_bench_whose_panel_sees_the_held_out_section_fails(legacy_study, tmp_path, monkeypatch, capsys):
    """Inject leakage (the fold's training AnnData also holds the held-out section): the run stops."""
    import histokg.bench.folds as folds_module

    real = folds_module.combine
    monkeypatch.setattr(folds_module, "combine", lambda sections, ids: real(sections, list(sections)))
    args = [
        "bench",
        "--data",
        str(legacy_study),
        "--losses",
        "infonce",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "b"),
    ]
    args += ["--set", "cache_dir=" + str(tmp_path / "cache")]
    args += [a for item in TINY if not item.startswith("ablations.") for a in ("--set", item)]
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the progress bars write to stderr too
    assert exc.value.code == 2 and err.startswith("error: leakage in fold")
    assert (
        "leakage in fold test=T1: model gene panel (scanpy HVG) was fitted on held-out section(s) ['T1']"
        in err
    )
