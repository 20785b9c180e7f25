"""A study as a pipeline sees it: the sample sheet, who trains and who is predicted, and the run's report.

The sample sheet follows nf-core's style: a CSV with one row per sample and the columns

``sample``  an id (letters, digits, ``.``, ``_``, ``-``): the output folder, library id and slide id;
``slide``   the H&E slide (any format ``histokg`` reads);
``st_dir``  the spatial transcriptomics folder (e.g. Space Ranger ``outs``), empty for an H&E-only slide;
``patient`` who the section came from.

An optional ``mpp`` column gives a slide's microns per pixel where the file has none (a plain JPEG/PNG);
further columns are slide labels (e.g. ``diagnosis``) handed to the retrieval index. Relative paths are
relative to the sheet's folder. :func:`read_samples` checks everything a run needs before anything runs:
every problem is one :class:`~histokg.errors.InputError` naming the sheet, its row (the line number, the
header being line 1) and the field. :func:`plan_study` splits the samples by the patients that train
(``train_patients``): their sections with transcriptomics train the model (or, with a given checkpoint,
are its reference); every other sample is predicted from its H&E alone, and evaluated where it has
transcriptomics. ``workflow/Snakefile`` runs this plan; :func:`write_report` summarises its outputs.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from histokg.budget import check_mpp
from histokg.errors import InputError
from histokg.io import atomic_open, read_table, short_path
from histokg.keys import Key
from histokg.registry import did_you_mean

COLUMNS = ("sample", "slide", "st_dir", "patient")
OPTIONAL = ("mpp",)
SAMPLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
INDEX_COLUMNS = ("path", "slide_id", "kind", Key.obs.library_id, "patient", "mpp")
STEPS = ("read", "pair", "embed", "predict", "evaluate")  # a sample's folders, in the order they are made


# The workflow's config keys (config/config.yaml) and their defaults; a key not here is refused.
WORKFLOW_DEFAULTS: dict[str, object] = {
    "samples": "config/samples.csv",
    "results": "runs/workflow",
    "train_patients": [],
    "checkpoint": "",
    "train_config": "configs/train/demo.yaml",
    "train_set": [],
    "reader": "visium",
    "read_args": "",
    "pair_args": "",
    "predict_args": "",
    "predict_train": False,
    "evaluate_args": "",
    "index_args": "--scheduler sync",
    "histokg": "",
    "threads": 1,
}


def workflow_config(config: dict, source: str = "config") -> dict:
    """``config`` completed from :data:`WORKFLOW_DEFAULTS`; an unknown key or a value of the wrong type is
    one error naming the key (a typo would otherwise be ignored silently)."""
    out = dict(WORKFLOW_DEFAULTS)
    for key, value in config.items():
        if key not in WORKFLOW_DEFAULTS:
            hint = did_you_mean(key, WORKFLOW_DEFAULTS)
            raise InputError(f"{source}: unknown key {key!r}{hint} (keys: {', '.join(WORKFLOW_DEFAULTS)})")
        default = WORKFLOW_DEFAULTS[key]
        if value is None:
            value = default
        if isinstance(default, list) and isinstance(value, str | int | float):
            value = [str(value)]  # --config train_patients=P1
        if isinstance(default, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        kind = type(default)
        if kind is int and isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InputError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
        if kind is int and value < 1:
            raise InputError(f"{source}: {key} must be >= 1, got {value}")
        out[key] = [str(v) for v in value] if isinstance(value, list) else value
    return out


@dataclass(frozen=True)
class Sample:
    """One row of a sample sheet, paths resolved."""

    sample: str
    slide: Path
    st_dir: Path | None
    patient: str
    labels: tuple[tuple[str, str], ...] = ()
    row: int = 0  # line of the sheet (header = 1)
    mpp: float | None = None  # microns per pixel of a slide that does not carry it

    @property
    def has_st(self) -> bool:
        return self.st_dir is not None


def read_samples(path: str | Path) -> list[Sample]:
    """The samples of sheet ``path``, checked: columns, ids, files, duplicates (one error, nothing written)."""
    path = Path(path)
    frame = read_table(path, "sample sheet", dtype=str, keep_default_na=False)
    frame.columns = _columns(path, frame.columns)
    extra = [c for c in frame.columns if c not in COLUMNS and c not in OPTIONAL]
    samples: list[Sample] = []
    first_row: dict[str, int] = {}
    first_path: dict[Path, tuple[str, int]] = {}
    for i, record in enumerate(frame.to_dict("records")):
        row = i + 2
        values = {k: str(v).strip() for k, v in record.items()}

        def fail(field: str, text: str, row: int = row) -> InputError:
            return InputError(f"sample sheet {path}, row {row}, field {field!r}: {text}")

        name = values["sample"]
        if not name:
            raise fail("sample", "empty; every row needs a sample id")
        if not SAMPLE_ID.fullmatch(name):
            raise fail(
                "sample",
                f"{name!r} is not a usable id (letters, digits, '.', '_', '-'; first a letter or digit; at "
                "most 100 characters): it names the sample's output folder",
            )
        if name in first_row:
            raise fail(
                "sample", f"{name!r} is also the sample of row {first_row[name]}; sample ids must be unique"
            )
        first_row[name] = row
        if not values["patient"]:
            raise fail("patient", f"empty for sample {name!r}; name the patient the section came from")
        slide = _path(path, values["slide"], fail, "slide", name, folder=False)
        st_dir = (
            _path(path, values["st_dir"], fail, "st_dir", name, folder=True) if values["st_dir"] else None
        )
        for field, target in (("slide", slide), ("st_dir", st_dir)):
            if target is None:
                continue
            if target in first_path:
                other, other_row = first_path[target]
                raise fail(field, f"{short_path(target)} is also sample {other!r}'s (row {other_row})")
            first_path[target] = (name, row)
        labels = tuple((c, values[c]) for c in extra if values[c])
        mpp = None
        if values.get("mpp"):
            mpp = check_mpp(values["mpp"], f"sample sheet {path}, row {row}, field 'mpp'")
        samples.append(Sample(name, slide, st_dir, values["patient"], labels, row, mpp))
    return samples


def _columns(path: Path, header) -> list[str]:
    """The sheet's column names, stripped; a missing (maybe misspelt) or repeated one is an error."""
    columns = [str(c).strip() for c in header]
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        hint = did_you_mean(missing[0], [c for c in columns if c not in COLUMNS])
        raise InputError(
            f"sample sheet {path}: no {missing[0]!r} column{hint} (columns: {', '.join(columns)}; needed: "
            f"{', '.join(COLUMNS)})"
        )
    with path.open(encoding="utf-8", newline="") as fh:  # pandas renames a repeated column (x, x.1)
        written = [c.strip() for c in next(csv.reader(fh), [])]
    repeated = sorted({c for c in written if written.count(c) > 1})
    if repeated:
        raise InputError(f"sample sheet {path}: the column {repeated[0]!r} occurs more than once")
    return columns


def _path(sheet: Path, text: str, fail, field: str, sample: str, *, folder: bool) -> Path:
    what = "a folder" if folder else "a file"
    if not text:
        raise fail(field, f"empty for sample {sample!r}; give {what}")
    target = Path(text).expanduser()
    if not target.is_absolute():
        target = sheet.parent / target
    target = target.resolve()
    if not target.exists():
        raise fail(field, f"{short_path(target)} does not exist")
    if folder and not target.is_dir():
        raise fail(field, f"{short_path(target)} is a file; st_dir is the sample's transcriptomics folder")
    if not folder and not target.is_file():
        raise fail(field, f"{short_path(target)} is not a file; slide is the sample's H&E image")
    return target


@dataclass(frozen=True)
class StudyPlan:
    """Which sample does what (sample ids in sheet order)."""

    samples: dict[str, Sample]
    train: tuple[str, ...]  # sections with transcriptomics of a training patient: train, then reference
    evaluate: tuple[str, ...]  # sections with transcriptomics of other patients: held out, evaluated
    predict: tuple[str, ...]  # every sample not in train: predicted from its H&E alone

    @property
    def with_st(self) -> tuple[str, ...]:
        return tuple(s for s, v in self.samples.items() if v.has_st)


def plan_study(
    samples: Sequence[Sample],
    train_patients: Iterable[str],
    *,
    sheet: str | Path = "",
    field: str = "train_patients",
    train: bool = True,
    predict_train: bool = False,
) -> StudyPlan:
    """Split ``samples`` by ``train_patients`` (each must be a patient of the sheet); ``train``: the
    workflow trains the model (it needs two sections: one trains, one validates); ``predict_train``: the
    training sections are predicted as well (in-sample)."""
    if isinstance(train_patients, str):
        train_patients = [train_patients]
    chosen = [str(p) for p in train_patients]
    patients = sorted({s.patient for s in samples})
    where = f"sample sheet {sheet}" if sheet else "the sample sheet"
    if not chosen:
        raise InputError(
            f"config {field}: empty; name the patients whose sections train (of {', '.join(patients)})"
        )
    for name in chosen:
        if name not in patients:
            raise InputError(
                f"config {field}: patient {name!r} is not in {where}{did_you_mean(name, patients)} "
                f"(patients: {', '.join(patients)})"
            )
    by_id = {s.sample: s for s in samples}
    trainers = tuple(s.sample for s in samples if s.has_st and s.patient in chosen)
    needed = 2 if train else 1
    if len(trainers) < needed:
        raise InputError(
            f"config {field}: the patients {chosen} have {len(trainers)} section(s) with transcriptomics "
            f"(st_dir) in {where}; {'training needs two (one validates)' if train else 'the reference needs one'}"
        )
    held = tuple(s.sample for s in samples if s.has_st and s.sample not in trainers)
    predict = tuple(s.sample for s in samples if predict_train or s.sample not in trainers)
    return StudyPlan(by_id, trainers, held, predict)


def write_index_table(plan: StudyPlan, paired: dict[str, str | Path], path: str | Path) -> Path:
    """The slide table of ``histokg index build --table`` (atomic): every sample, by its paired spots
    (``paired[sample]``) where it has transcriptomics, else by its slide; patient and labels beside."""
    labels = sorted({k for s in plan.samples.values() for k, _ in s.labels} - set(INDEX_COLUMNS))
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*INDEX_COLUMNS, *labels])
        for name, s in plan.samples.items():
            source, kind = (paired[name], "h5ad") if name in paired else (s.slide, "slide")
            own = dict(s.labels)
            mpp = s.mpp if kind == "slide" and s.mpp else ""
            writer.writerow(
                [Path(source).resolve(), name, kind, name, s.patient, mpp, *(own.get(k, "") for k in labels)]
            )
    return path


def write_report(
    plan: StudyPlan,
    out: str | Path,
    *,
    checkpoint: str | Path,
    evaluations: dict[str, str | Path],
    predictions: dict[str, str | Path],
    index_dir: str | Path | None = None,
    samples_dir: str | Path | None = None,
) -> Path:
    """``report.md`` (atomic): the samples, their roles and the steps that wrote a folder for them under
    ``samples_dir``, each held-out sample's evaluation headline (from its ``results.json``), each
    prediction's size, and where the index is."""
    from histokg.heldout import headline
    from histokg.io import file_sha256

    out = Path(out)
    lines = [
        "# histokg workflow report",
        "",
        f"Model: `{checkpoint}` (SHA-256 `{file_sha256(checkpoint)[:16]}`), trained or referenced on "
        f"{', '.join(plan.train)}.",
        "",
        "| sample | patient | transcriptomics | role | steps (folders under `samples/<sample>/`) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in plan.samples.items():
        role = "train / reference" if name in plan.train else "held out" if s.has_st else "H&E only"
        folder = Path(samples_dir) / name if samples_dir else None
        found = {d.name for d in folder.iterdir() if d.is_dir()} if folder and folder.is_dir() else set()
        steps = [step for step in STEPS if step in found] + sorted(found - set(STEPS))
        lines.append(
            f"| {name} | {s.patient} | {'yes' if s.has_st else 'no'} | {role} | {', '.join(steps)} |"
        )
    if evaluations:
        lines += [
            "",
            "## Held-out evaluation",
            "",
            "| sample | R@5 img->expr | R@5 expr->img | chance@5 | Pearson HEG | Pearson HVG | ARI |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, results in evaluations.items():
            h = headline(json.loads(Path(results).read_text(encoding="utf-8")))
            lines.append(
                f"| {name} | "
                + " | ".join(
                    f"{h[k]:.3f}" if math.isfinite(h[k]) else "n/a"
                    for k in ("recall@5_i2e", "recall@5_e2i", "chance@5", "pearson_heg", "pearson_hvg", "ari")
                )
                + " |"
            )
        lines += ["", "n/a: not measurable on that section (ARI needs region labels in `obs`)."]
    if predictions:
        import anndata as ad

        lines += [
            "",
            "## Predictions from H&E",
            "",
            "| sample | observations | genes |",
            "| --- | --- | --- |",
        ]
        for name, pred in predictions.items():
            backed = ad.read_h5ad(pred, backed="r")
            try:
                lines.append(f"| {name} | {backed.n_obs} | {backed.n_vars} |")
            finally:
                backed.file.close()
    if index_dir:
        lines += [
            "",
            f"Retrieval index: `{_relative(index_dir, out)}` (`histokg index query {index_dir} --slide ID`).",
        ]
    with atomic_open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def _relative(path: str | Path, report: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(report.parent.resolve().parent))
    except ValueError:
        return str(path)
