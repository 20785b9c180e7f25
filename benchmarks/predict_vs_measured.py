"""How close ``histokg predict`` on a slide's H&E alone comes to that slide's measured expression.

Each measured spot (an .h5ad from ``histokg read``, with counts) takes the prediction of the nearest
predicted observation (a tile or pseudo-spot of ``predicted.h5ad``) within ``--max-um`` of its centre;
per-gene Pearson (:func:`histokg.metrics.pearson_per_gene`) of the predicted and the measured log1p CP10k
over the matched spots, averaged over the panel's top genes: HEG-n and HVG-n chosen on the *reference*
(the training slides, ``--reference``), never on the slide scored. ``--shuffle`` also scores the same
predictions with the spots permuted (the chance level).

Run: ``python benchmarks/predict_vs_measured.py runs/pred/C2_HE/predicted.h5ad C2.h5ad --reference ref.h5ad``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from histokg import pp
from histokg.keys import Key
from histokg.metrics import pearson_per_gene
from histokg.st.contract import read_h5ad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predicted")
    parser.add_argument("measured")
    parser.add_argument("--reference", required=True, help="the reference .h5ad (chooses the top genes)")
    parser.add_argument("--layer", default=None, help="prediction layer (default: X)")
    parser.add_argument("--top", type=int, nargs="+", default=[50, 20])
    parser.add_argument("--max-um", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    pred, meas, ref = read_h5ad(ns.predicted), read_h5ad(ns.measured), read_h5ad(ns.reference)
    lib_p = str(pred.obs[Key.obs.library_id].iloc[0])
    lib_m = str(meas.obs[Key.obs.library_id].iloc[0])
    mpp = pred.uns["spatial"][lib_p]["metadata"][Key.metadata.mpp]
    mpp_m = meas.uns["spatial"][lib_m]["metadata"][Key.metadata.mpp]
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(pred.obsm[Key.obsm.spatial]).query(meas.obsm[Key.obsm.spatial])
    ok = dist * mpp <= ns.max_um
    genes = list(map(str, pred.var_names))
    values = pred.layers[ns.layer] if ns.layer else pred.X
    predicted = np.asarray(values)[idx[ok]]
    measured = pp.panel_log1p(meas[ok], genes, Key.layers.counts, source=ns.measured)
    r = pearson_per_gene(predicted, measured)
    shuffled = pearson_per_gene(np.random.default_rng(ns.seed).permutation(predicted), measured)
    print(
        f"{ns.predicted}: {pred.n_obs} observations; {int(ok.sum())} of {meas.n_obs} measured spots matched"
    )
    print(f"  (nearest within {ns.max_um:g} um; MPP {mpp:.4g} predicted, {mpp_m:.4g} measured)")
    column = {g: i for i, g in enumerate(genes)}
    for n in ns.top:
        for how in ("mean", "variance"):
            top = pp.top_genes(ref, n, how, genes=genes)
            cols = [column[g] for g in top]
            name = f"{'HEG' if how == 'mean' else 'HVG'}-{n}"
            print(
                f"  {name:<7} mean Pearson {np.nanmean(r[cols]):.3f}  (spots shuffled: {np.nanmean(shuffled[cols]):.3f}); "
                f"best: {', '.join(f'{genes[c]} {r[c]:.2f}' for c in sorted(cols, key=lambda c: -np.nan_to_num(r[c]))[:5])}"
            )
    print(f"  all {len(genes)} panel genes: mean Pearson {np.nanmean(r):.3f}")


if __name__ == "__main__":
    main()
