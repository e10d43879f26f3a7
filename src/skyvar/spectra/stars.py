"""One star, many spectra: grouping spectra by sky position across files, plans and catalogue ids.

LAMOST gives the same star different catalogue ids (OBJNAME, OBSID, designation) in different plans, so
survey-scale pipelines identify a star by its position: spectra closer than ``radius_arcsec`` are linked
(astropy ``search_around_sky``, a KD-tree) and the connected groups (friends of friends) are stars.
"""

from __future__ import annotations

import numpy as np


def group_stars(ra, dec, radius_arcsec: float = 3.0) -> np.ndarray:
    """Star index per spectrum: friends-of-friends within ``radius_arcsec`` (ra, dec in degrees; a
    spectrum with NaN coordinates is its own star). Indices are 0..n_star-1 in order of first appearance."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    n = len(ra)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ok_all = np.isfinite(ra) & np.isfinite(dec)
    if ok_all.sum() > 1:
        # Repeated observations usually carry identical input-catalogue coordinates: link the distinct
        # positions only (a star with m spectra would otherwise cost m^2 neighbour pairs)
        pos = np.stack([ra[ok_all], dec[ok_all]], axis=1)
        uniq, inv = np.unique(pos, axis=0, return_inverse=True)
        if len(uniq) < ok_all.sum():
            sub = group_stars(uniq[:, 0], uniq[:, 1], radius_arcsec)
            lab = np.full(n, -1, dtype=np.int64)
            lab[ok_all] = sub[inv.ravel()]
            nxt = sub.max() + 1 if len(sub) else 0
            lab[~ok_all] = nxt + np.arange(int((~ok_all).sum()))
            _, first = np.unique(lab, return_index=True)
            order = np.argsort(first)
            remap = np.empty(len(order), dtype=np.int64)
            remap[np.unique(lab)[order] - lab.min()] = np.arange(len(order))
            return remap[lab - lab.min()]
    ok = ok_all
    rows, cols = [np.arange(n)], [np.arange(n)]
    if ok.sum() > 1:
        import astropy.units as u
        from astropy.coordinates import SkyCoord, search_around_sky

        idx = np.flatnonzero(ok)
        c = SkyCoord(ra[idx] * u.deg, dec[idx] * u.deg)
        i, j, _, _ = search_around_sky(c, c, radius_arcsec * u.arcsec)
        rows.append(idx[i])
        cols.append(idx[j])
    r = np.concatenate(rows)
    c2 = np.concatenate(cols)
    _, labels = connected_components(coo_matrix((np.ones(len(r)), (r, c2)), shape=(n, n)), directed=False)
    # renumber by first appearance so that star ids do not depend on scipy's labelling
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[labels]
