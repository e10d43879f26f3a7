"""Attribution of a periodic signal seen in several neighbouring sources to the one that owns it.

In a dense field the light curve of a constant star a few pixels from a variable picks up part of the
variable's signal (PSF wings, a shared fit). Survey pipelines (e.g. the ZTF/ATLAS variable catalogues,
OGLE's blend checks) resolve this by attributing the signal to the source with the largest variation
*in flux*: leakage only ever moves a fraction of the owner's flux change into the neighbour, so the
neighbour's absolute flux amplitude is smaller even when its relative (magnitude) amplitude is
larger, which is the usual case when the neighbour is fainter.

:func:`attribute_blends` groups sources whose BLS periods agree (same period, or a factor of two)
within ``radius_px`` of each other (friends of friends) and keeps the signal on the source with the
largest flux amplitude ``depth × 10^(−0.4 m)``; the others are aliases.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["attribute_blends"]


def _same_period(p1: np.ndarray, p2: np.ndarray, rtol: float, harmonics: bool) -> np.ndarray:
    r = p1 / p2
    ok = np.abs(r - 1.0) < rtol
    if harmonics:
        ok |= (np.abs(r - 2.0) < 2 * rtol) | (np.abs(r - 0.5) < 0.5 * rtol)
    return ok


def attribute_blends(x: np.ndarray, y: np.ndarray, mag: np.ndarray, period: np.ndarray, depth: np.ndarray,
                     radius_px: float = 4.0, period_rtol: float = 0.01, harmonics: bool = True,
                     eligible: np.ndarray | None = None) -> pd.DataFrame:
    """Friends-of-friends groups of neighbours sharing a periodic signal, and the owner of each.

    Parameters (one entry per source): ``x, y`` anchor position [px]; ``mag`` the source's median
    magnitude; ``period`` [d] and ``depth`` [relative flux] of its best BLS box; ``eligible`` the
    sources with a signal worth attributing (default: finite period and depth > 0). Two eligible
    sources are linked when they are closer than ``radius_px`` and their periods agree within
    ``period_rtol`` (relative; also at a ratio of 2 or 1/2 with ``harmonics``).

    Returns a frame in input order: ``blend_group`` (−1 for sources in no group of two or more),
    ``blend_n`` (group size, 1 outside groups), ``blend_owner`` (row index of the group's owner, own
    index outside groups), ``flux_amplitude`` (``depth × 10^(−0.4 mag)``, relative to the zero point)
    and ``blend_alias`` (True for every group member but the owner).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    x, y, mag, period, depth = (np.asarray(a, float) for a in (x, y, mag, period, depth))
    n = len(x)
    amp = depth * 10 ** (-0.4 * mag)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(period) & (period > 0) & np.isfinite(amp) & (depth > 0)
    if eligible is not None:
        ok &= np.asarray(eligible, bool)
    out = pd.DataFrame({"blend_group": np.full(n, -1, np.int64), "blend_n": np.ones(n, np.int64),
                        "blend_owner": np.arange(n, dtype=np.int64), "flux_amplitude": amp,
                        "blend_alias": np.zeros(n, bool)})
    idx = np.flatnonzero(ok)
    if len(idx) < 2:
        return out
    pairs = cKDTree(np.c_[x[idx], y[idx]]).query_pairs(float(radius_px), output_type="ndarray")
    if not len(pairs):
        return out
    i, j = idx[pairs[:, 0]], idx[pairs[:, 1]]
    keep = _same_period(period[i], period[j], period_rtol, harmonics)
    i, j = i[keep], j[keep]
    if not len(i):
        return out
    g = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    size = np.bincount(comp, minlength=comp.max() + 1)
    in_group = size[comp] > 1
    # owner: the largest flux amplitude of its component
    order = np.lexsort((-amp, comp))
    first = np.ones(n, bool)
    first[1:] = comp[order][1:] != comp[order][:-1]
    owner_of_comp = np.empty(comp.max() + 1, np.int64)
    owner_of_comp[comp[order][first]] = order[first]
    rows = np.flatnonzero(in_group)
    out.loc[rows, "blend_group"] = comp[rows]
    out.loc[rows, "blend_n"] = size[comp[rows]]
    out.loc[rows, "blend_owner"] = owner_of_comp[comp[rows]]
    out["blend_alias"] = in_group & (out["blend_owner"].to_numpy() != np.arange(n))
    return out
