"""One-to-one matching of a catalogue to truth within a radius.

The matching is the global greedy assignment by distance (the closest pair anywhere is matched
first, then the closest pair among the rest, …), computed in rounds of mutual nearest neighbours:
a pair that is each other's nearest unmatched partner is exactly what the greedy order would take,
so each round accepts all of them at once (vectorised; a handful of rounds even in dense fields).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def match_catalogs(
    det_xy: np.ndarray, truth_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match detections (N, 2) to truth (M, 2) one-to-one within ``radius`` (same units, e.g. px).

    Returns (det_index, truth_index, distance) of the matched pairs.
    """
    det_xy = np.asarray(det_xy, float).reshape(-1, 2)
    truth_xy = np.asarray(truth_xy, float).reshape(-1, 2)
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    ok_d = np.all(np.isfinite(det_xy), axis=1)
    if len(det_xy) == 0 or len(truth_xy) == 0 or not ok_d.any():
        return empty
    d_idx_all = np.flatnonzero(ok_d)
    sdm = cKDTree(det_xy[ok_d]).sparse_distance_matrix(cKDTree(truth_xy), radius, output_type="ndarray")
    if len(sdm) == 0:
        return empty
    i, j, dist = d_idx_all[sdm["i"]], sdm["j"].astype(int), sdm["v"]
    # exact-zero distances appear as missing entries in sparse output only for the same tree; not here
    out_i, out_j, out_d = [], [], []
    while len(i):
        order = np.lexsort((j, i, dist))  # by distance, ties broken deterministically
        i, j, dist = i[order], j[order], dist[order]
        _, first_i = np.unique(i, return_index=True)
        _, first_j = np.unique(j, return_index=True)
        best_i = np.zeros(len(i), bool)
        best_i[first_i] = True
        best_j = np.zeros(len(i), bool)
        best_j[first_j] = True
        mutual = best_i & best_j
        out_i.append(i[mutual])
        out_j.append(j[mutual])
        out_d.append(dist[mutual])
        keep = ~np.isin(i, i[mutual]) & ~np.isin(j, j[mutual])
        i, j, dist = i[keep], j[keep], dist[keep]
    mi, mj, md = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
    order = np.argsort(mi)
    return mi[order], mj[order], md[order]
