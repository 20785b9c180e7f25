"""Reading a study folder: sections listed in ``study.json``, each read through the Visium reader.

A study folder (written by ``histokg synth``, :func:`histokg.synth.generate_study`) is data, so reading
it lives here, beside the other readers; training, embedding and the CLI read studies without
importing the synthesis code. Layout::

    study.json              manifest: {"regions": [...], "sections": [{library_id, slide, spaceranger,
                            truth, ...}, ...], ...}; paths relative to the folder
    slides/<library_id>.tiff
    sections/<library_id>/  Space Ranger ``outs`` layout, plus truth.csv (per spot: region label,
                            region fractions, cell types, pathway activities)
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd

from histokg.errors import InputError
from histokg.io import read_json_object
from histokg.keys import Key
from histokg.st.contract import concat_sections
from histokg.st.readers.visium import read_visium


def load_study(study_dir: str | Path, with_truth: bool = True) -> ad.AnnData:
    """Read a study folder back through the Visium reader: one AnnData over all sections.

    Ground truth (``region``, a categorical over the manifest's ``regions``, and the region fractions,
    cell-type and pathway columns in ``obsm["truth"]``) joins when ``with_truth``.
    """
    study_dir = Path(study_dir)
    manifest_path = study_dir / "study.json"
    if not study_dir.is_dir():
        raise InputError(f"study folder {study_dir} does not exist or is not a folder")
    if not manifest_path.is_file():
        raise InputError(
            f"{study_dir} is not a histokg study folder: it has no study.json (the manifest "
            f"`histokg synth {study_dir}` writes); for other data, read it into an .h5ad first "
            "(`histokg read visium|legacy|hest`)"
        )
    manifest = read_json_object(manifest_path, InputError)
    if not isinstance(manifest.get("sections"), list):
        raise InputError(f"{manifest_path}: expected a JSON object with a 'sections' list")
    if not manifest["sections"]:
        raise InputError(f"{manifest_path}: the study lists no sections")
    regions = manifest.get("regions")
    if with_truth and not (
        isinstance(regions, list) and regions and all(isinstance(r, str) for r in regions)
    ):
        raise InputError(
            f"{manifest_path}: expected 'regions', a list of region names (found {regions!r:.120})"
        )
    required = (Key.obs.library_id, "slide", "spaceranger", "truth")
    sections = []
    for sec in manifest["sections"]:
        missing = [k for k in required if not isinstance(sec, dict) or k not in sec]
        if missing:
            raise InputError(f"{manifest_path}: a section lacks {missing} (found {sec!r:.120})")
        adata = read_visium(
            study_dir / sec["spaceranger"], slide=study_dir / sec["slide"], library_id=sec[Key.obs.library_id]
        )
        if with_truth:
            truth_path = study_dir / sec["truth"]
            if not truth_path.is_file():
                raise InputError(
                    f"{manifest_path}: truth file {truth_path} of {sec[Key.obs.library_id]} does not exist"
                )
            truth = pd.read_csv(truth_path, index_col=0)
            truth = truth.loc[adata.obs[Key.obs.barcode].to_numpy()]
            unknown = sorted(set(truth[Key.obs.region].astype(str)) - set(regions))
            if unknown:
                raise InputError(f"{truth_path}: regions {unknown[:5]} are not in the manifest's 'regions'")
            adata.obs[Key.obs.region] = pd.Categorical(
                truth[Key.obs.region].to_numpy(), categories=list(regions)
            )
            adata.obsm[Key.obsm.truth] = truth.drop(columns=[Key.obs.region]).set_axis(
                adata.obs_names, axis=0
            )
        sections.append(adata)
    return concat_sections(sections)
