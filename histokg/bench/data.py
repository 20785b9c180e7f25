"""The sections a benchmark runs on: a legacy-ST folder (her2st layout) or .h5ad files, and its folds.

Legacy-ST folder layout (as ``../shared/data/her2st``)::

    DIR/counts/<id>.tsv[.gz]        spots x genes raw counts, spot ids "<x>x<y>" (array coordinates)
    DIR/spots/<id>_selection.tsv    x y new_x new_y pixel_x pixel_y selected (ST Spot Detector)
    DIR/images/<id>_HE.jpg          full-resolution H&E (or <id>.jpg/.jpeg/.png/.tif/.tiff)
    DIR/cluster_labels/<id>-cluster-annotation.tsv[.gz]   optional: columns x, y, label (expression
                                                          clusters), or DIR/labels/<id>_labeled_coordinates.tsv
                                                          (a pathologist's labels; same columns)

Several legacy-ST folders may be given (e.g. her2st patient C's sections and patient A's): section ids
must be unique across them. Each section is read through :func:`histokg.st.read_legacy_st` (MPP from
the 200 um spot pitch) into the AnnData contract; labels join ``obs[label_key]`` on the array
coordinates. .h5ad files are read as they are (the AnnData contract, with ``obs["library_id"]`` and
``uns["spatial"]``); their labels, if any, are ``obs[label_key]``.

**Patients.** Leave-one-patient-out needs each section's patient: ``obs["patient"]`` where the data has
it, else a sample table (``sample,patient`` CSV, as nf-core sample sheets), else the section id's leading
letters (the her2st convention: section ``C2`` is patient ``C``). :func:`section_patients` says which.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from histokg.errors import InputError
from histokg.keys import Key

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Fold:
    """One train/test split: the model and every fitted choice see ``train`` only."""

    train: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def name(self) -> str:
        return "test=" + "+".join(self.test)


def _first(folder: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def legacy_sections(root: Path) -> dict[str, dict[str, Path | None]]:
    """Section id -> {counts, spots, image, labels} files of a legacy-ST folder; errors name what is missing."""
    counts_dir = root / "counts"
    if not counts_dir.is_dir():
        raise InputError(
            f"--data {root}: no counts/ folder (expected the legacy-ST layout counts/, spots/, images/, "
            "optional cluster_labels/, or .h5ad files)"
        )
    ids = sorted({p.name.split(".")[0] for p in counts_dir.iterdir() if p.name.endswith((".tsv", ".tsv.gz"))})
    if not ids:
        raise InputError(f"--data {root}: counts/ holds no <id>.tsv or <id>.tsv.gz files")
    out: dict[str, dict[str, Path | None]] = {}
    for sid in ids:
        counts = _first(counts_dir, [f"{sid}.tsv.gz", f"{sid}.tsv"])
        spots = _first(root / "spots", [f"{sid}_selection.tsv", f"{sid}.tsv"])
        image = _first(
            root / "images", [f"{sid}_HE{s}" for s in IMAGE_SUFFIXES] + [f"{sid}{s}" for s in IMAGE_SUFFIXES]
        )
        labels = _first(
            root / "cluster_labels", [f"{sid}-cluster-annotation.tsv.gz", f"{sid}-cluster-annotation.tsv"]
        ) or _first(root / "labels", [f"{sid}_labeled_coordinates.tsv", f"{sid}_labeled_coordinates.tsv.gz"])
        if spots is None:
            raise InputError(f"--data {root}: section {sid} has no spots/{sid}_selection.tsv")
        if image is None:
            raise InputError(f"--data {root}: section {sid} has no image images/{sid}_HE.jpg (or .png/.tif)")
        out[sid] = {"counts": counts, "spots": spots, "image": image, "labels": labels}
    return out


def read_labels(path: Path, adata: ad.AnnData, label_key: str) -> None:
    """Join a cluster-annotation table (columns x, y array coordinates and ``label``) into ``obs[label_key]``."""
    try:
        table = pd.read_csv(path, sep="\t")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputError(
            f"cluster labels {path}: cannot be parsed as a tab-separated table ({exc})"
        ) from None
    missing = [c for c in ("x", "y", "label") if c not in table.columns]
    if missing:
        raise InputError(f"cluster labels {path}: missing columns {missing}; found {list(table.columns)}")
    ids = table["x"].round().astype(int).astype(str) + "x" + table["y"].round().astype(int).astype(str)
    labels = pd.Series(table["label"].astype(str).to_numpy(), index=ids)
    labels = labels[~labels.index.duplicated()]
    obs = adata.obs
    spot = obs[Key.obs.array_x].astype(int).astype(str) + "x" + obs[Key.obs.array_y].astype(int).astype(str)
    values = labels.reindex(spot.to_numpy())
    adata.obs[label_key] = pd.Categorical(values.to_numpy())
    log.info("%s: %d of %d spots have a cluster label", path.name, int(values.notna().sum()), adata.n_obs)


def load_sections(
    data: Sequence[str | Path], label_key: str = Key.obs.label, in_tissue_only: bool = True
) -> dict[str, ad.AnnData]:
    """Section id -> AnnData (contract) for one legacy-ST folder or several .h5ad files."""
    from histokg.st import read_legacy_st
    from histokg.st.contract import read_h5ad

    paths = [Path(p) for p in data]
    if not paths:
        raise InputError("--data: give legacy-ST folders or .h5ad files")
    sections: dict[str, ad.AnnData] = {}
    if all(p.is_dir() for p in paths):
        for root in paths:
            for sid, files in legacy_sections(root).items():
                if sid in sections:
                    raise InputError(f"--data {root}: section {sid!r} also appears in another folder")
                adata = read_legacy_st(files["counts"], files["spots"], files["image"], library_id=sid)
                if files["labels"] is not None:
                    read_labels(files["labels"], adata, label_key)
                sections[sid] = adata
    else:
        for path in paths:
            if path.is_dir():
                raise InputError(
                    f"--data {path}: a folder among .h5ad files; give legacy-ST folders or only .h5ad files"
                )
            if path.suffix != ".h5ad":
                raise InputError(f"--data {path}: not an .h5ad file (or give one legacy-ST folder)")
            adata = read_h5ad(path)
            if Key.obs.library_id not in adata.obs:
                raise InputError(f"--data {path}: obs['library_id'] is missing (see the AnnData contract)")
            if Key.layers.counts not in adata.layers:
                raise InputError(f"--data {path}: layers['counts'] (raw counts) is missing")
            libs = adata.obs[Key.obs.library_id].astype(str)
            for lib in pd.unique(libs):
                if lib in sections:
                    raise InputError(f"--data {path}: section {lib!r} appears in more than one input")
                sections[str(lib)] = adata[libs.to_numpy() == lib].copy()
    for sid, adata in list(sections.items()):
        if in_tissue_only and Key.obs.in_tissue in adata.obs:
            adata = adata[adata.obs[Key.obs.in_tissue].to_numpy(bool)].copy()
        if adata.n_obs < 5:
            raise InputError(f"section {sid}: only {adata.n_obs} spots under tissue; too few to benchmark")
        sections[sid] = adata
    if len(sections) < 2:
        raise InputError(
            f"--data: found {len(sections)} section(s) ({list(sections)}); a benchmark needs >= 2"
        )
    log.info("sections: %s", {k: v.n_obs for k, v in sections.items()})
    return sections


PATIENT_KEY = "patient"  # obs column naming each spot's patient, where the data has one


def section_patients(
    sections: dict[str, ad.AnnData], table: str | Path | None = None
) -> tuple[dict[str, str], str]:
    """Section id -> patient, and where that came from: ``obs["patient"]``, a ``sample,patient`` table,
    or the section id's leading letters (her2st: ``C2`` -> ``C``)."""
    import re

    if table:
        path = Path(table)
        try:
            frame = pd.read_csv(path, sep=None, engine="python", dtype=str)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise InputError(f"patients table {path}: cannot be read ({exc})") from None
        missing = [c for c in ("sample", "patient") if c not in frame.columns]
        if missing:
            raise InputError(f"patients table {path}: missing columns {missing}; found {list(frame.columns)}")
        given = dict(zip(frame["sample"].astype(str), frame["patient"].astype(str), strict=True))
        unknown = [s for s in sections if s not in given]
        if unknown:
            raise InputError(f"patients table {path}: no row for sections {unknown}")
        return {s: given[s] for s in sections}, f"table {path.name}"
    out: dict[str, str] = {}
    for sid, adata in sections.items():
        if PATIENT_KEY in adata.obs:
            values = pd.unique(adata.obs[PATIENT_KEY].astype(str))
            if len(values) != 1:
                raise InputError(f"section {sid}: obs['patient'] holds {len(values)} patients; one expected")
            out[sid] = str(values[0])
    if len(out) == len(sections):
        return out, "obs['patient']"
    prefix = {sid: re.match(r"[A-Za-z]*", sid).group(0) for sid in sections}
    if not all(prefix.values()):
        raise InputError(
            f"cannot tell the patients of sections {[s for s, p in prefix.items() if not p]}: no obs['patient'] "
            "and the ids do not start with letters; give a patients table (sample,patient)"
        )
    return prefix, "the section id's leading letters (her2st convention)"


def make_folds(
    ids: Sequence[str],
    folds: str = "loso",
    train: Sequence[str] = (),
    test: Sequence[str] = (),
    patients: dict[str, str] | None = None,
) -> list[Fold]:
    """``loso``: each section held out once, the rest train; ``lopo``: each patient's sections held out
    once, the other patients' sections train; or one explicit ``train``/``test`` split."""
    ids = list(ids)
    if train or test:
        unknown = [s for s in (*train, *test) if s not in ids]
        if unknown:
            raise InputError(f"--train/--test name unknown sections {unknown}; the data has {ids}")
        if not train or not test:
            raise InputError("--train and --test go together: give both")
        shared = sorted(set(train) & set(test))
        if shared:
            raise InputError(
                f"sections {shared} are in both --train and --test; held-out sections must be unseen"
            )
        return [Fold(tuple(train), tuple(test))]
    if folds == "loso":
        return [Fold(tuple(s for s in ids if s != held), (held,)) for held in ids]
    if folds == "lopo":
        if patients is None:
            raise InputError("--folds lopo needs each section's patient")
        order = list(dict.fromkeys(patients[s] for s in ids))
        if len(order) < 2:
            raise InputError(f"--folds lopo: every section is patient {order[0]!r}; it needs >= 2 patients")
        return [
            Fold(tuple(s for s in ids if patients[s] != p), tuple(s for s in ids if patients[s] == p))
            for p in order
        ]
    raise InputError(f"--folds {folds!r}: 'loso', 'lopo' (or --train/--test)")


def combine(sections: dict[str, ad.AnnData], ids: Sequence[str]) -> ad.AnnData:
    """The named sections as one AnnData (genes every section measured; ``obs["library_id"]``)."""
    from histokg.st.contract import concat_sections

    parts = [sections[i] for i in ids]
    out = concat_sections(parts) if len(parts) > 1 else parts[0].copy()
    out.obs[Key.obs.library_id] = out.obs[Key.obs.library_id].astype(str).astype("category")
    return out


def shared_genes(sections: dict[str, ad.AnnData]) -> list[str]:
    """Genes measured in every section, in the first section's order."""
    common = set.intersection(*(set(map(str, a.var_names)) for a in sections.values()))
    first = next(iter(sections.values()))
    return [g for g in map(str, first.var_names) if g in common]


def labels_of(adata: ad.AnnData, label_key: str) -> np.ndarray | None:
    if label_key not in adata.obs:
        return None
    return adata.obs[label_key].astype(object).to_numpy()
