"""The one resampling function of skyvar's spectra code: linear interpolation with variance propagation.

Every spectrum that changes grid goes through :func:`resample_linear`: a LAMOST file onto the CNN's
log-λ grid (:mod:`skyvar.spectra.preprocess`), MRS exposures onto the relative-RV grid
(:mod:`skyvar.spectra.rv`), template basis vectors onto the simulator's fine grid and Doppler-shifted
rows in the simulator (:mod:`skyvar.sim.spectra`). It replaces four hand-written copies that differed in
edge handling.

Conventions. The abscissa is whatever the caller passes (Å, log10 Å, pixel index); it must increase
along each row. Linear interpolation between the two bracketing samples with weight ``t``::

    f_new = (1 - t) f_a + t f_b,     var_new = (1 - t)^2 var_a + t^2 var_b

(the variance of the interpolated value for independent pixels; ``ivar`` is 1/variance, 0 = no
information). A new pixel is *bad* when it lies outside the row's abscissa range or a neighbour used with
non-zero weight is bad (masked, ivar <= 0 or not finite). Outside the range the flux is the nearest edge
value (so callers that only want values, e.g. template rows, can ignore the mask).
"""

from __future__ import annotations

import numpy as np


def _as_rows(x) -> tuple[np.ndarray, np.ndarray]:
    """Stack a 1-D array, a 2-D array or a list of 1-D arrays of different lengths into a padded (N, L)
    float64 array (padding +inf) and the per-row lengths."""
    if isinstance(x, np.ndarray) and x.ndim == 1:
        return np.asarray(x, dtype=np.float64)[None, :], np.array([len(x)])
    if isinstance(x, np.ndarray) and x.ndim == 2:
        return np.asarray(x, dtype=np.float64), np.full(len(x), x.shape[1])
    rows = [np.asarray(r, dtype=np.float64).ravel() for r in x]
    lens = np.array([len(r) for r in rows])
    out = np.full((len(rows), max(lens) if len(rows) else 0), np.inf)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lens


def _pad_values(v, lens: np.ndarray, fill, dtype) -> np.ndarray:
    if isinstance(v, np.ndarray) and v.ndim == 2:
        return v
    out = np.full((len(lens), max(lens) if len(lens) else 0), fill, dtype=dtype)
    for i, r in enumerate(v):
        r = np.asarray(r).ravel()
        out[i, : len(r)] = r
    return out


def _uniform_step(x: np.ndarray) -> float | None:
    """The step of a uniformly spaced 1-D abscissa (relative tolerance 1e-9), else None."""
    if len(x) < 3:
        return None
    d = np.diff(x)
    step = (x[-1] - x[0]) / (len(x) - 1)
    return float(step) if step > 0 and np.allclose(d, step, rtol=1e-9, atol=0) else None


def resample_linear(x_new, x, flux, ivar=None, mask=None):
    """Linearly interpolate spectra onto new abscissae, propagating inverse variances and masks.

    Parameters
    ----------
    x_new : array (G,) or (N, G)
        New abscissae, shared by all rows or one row per spectrum (e.g. Doppler-shifted positions).
    x : array (M,), array (N, M) or list of N arrays of different lengths
        Abscissae of the input samples, increasing along each row; shared or per row.
    flux : array (M,), (N, M) or list of N arrays
        Values to interpolate (any units; float32 input stays float32).
    ivar, mask : optional, same layout as ``flux``
        Inverse variance [1/flux²] (0 = bad) and bad-pixel mask (True = bad).

    Returns
    -------
    ``flux_new`` alone when neither ``ivar`` nor ``mask`` is given, else ``(flux_new, ivar_new,
    mask_new)``; shape (G,) for a single 1-D spectrum on a shared ``x_new``, else (N, G).
    ``ivar_new`` is None when ``ivar`` was not given. See the module docstring for the conventions.
    """
    single = isinstance(flux, np.ndarray) and flux.ndim == 1 and np.ndim(x_new) == 1
    X, lens = _as_rows(x)
    shared_x = X.shape[0] == 1
    if isinstance(flux, np.ndarray) and flux.ndim in (1, 2):
        F = flux[None, :] if flux.ndim == 1 else flux
    else:
        F = _pad_values(flux, lens, 0.0, np.float64)
    N = F.shape[0]
    if not shared_x and X.shape[0] != N:
        raise ValueError(f"resample_linear: {X.shape[0]} abscissa rows for {N} spectra")
    if F.shape[1] != X.shape[1]:
        raise ValueError(f"resample_linear: flux has {F.shape[1]} samples, abscissa {X.shape[1]}")
    if min(lens) < 2:
        raise ValueError("resample_linear: every row needs at least two samples")
    XN = np.asarray(x_new, dtype=np.float64)
    XN = XN[None, :] if XN.ndim == 1 else XN
    if XN.shape[0] not in (1, N):
        raise ValueError(f"resample_linear: {XN.shape[0]} rows of new abscissae for {N} spectra")

    # left neighbour index j (N or 1, G) and weight t of the right neighbour
    step = _uniform_step(X[0]) if shared_x else None
    if step is not None:  # uniform grid (pixel positions, log grids): a floor instead of a search
        j = np.floor((XN - X[0, 0]) / step).astype(np.int64)
    elif shared_x:
        j = np.searchsorted(X[0], XN, side="right") - 1
    else:
        import torch

        xs = torch.from_numpy(np.ascontiguousarray(X))
        xv = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(XN, (N, XN.shape[1]))))
        j = torch.searchsorted(xs, xv, right=True).numpy() - 1
    last = (lens - 1)[:, None] if not shared_x else np.array([[lens[0] - 1]])
    j = np.clip(j, 0, last - 1)
    rows = np.arange(X.shape[0])[:, None]
    x0 = X[rows, j]
    x1 = X[rows, j + 1]
    t = np.clip((XN - x0) / (x1 - x0), 0.0, 1.0)
    first = X[:, :1]
    xlast = X[rows[:, :1], last] if not shared_x else X[:, lens[0] - 1:lens[0]]
    inside = (XN >= first) & (XN <= xlast)

    # gather neighbours: shared indices index every row alike, per-row indices need take_along_axis
    def gather(a, idx):
        if idx.shape[0] == 1 and a.shape[0] != 1:
            return a[:, idx[0]]
        return np.take_along_axis(a, np.broadcast_to(idx, (a.shape[0], idx.shape[1])), axis=1)

    dt = F.dtype if np.issubdtype(F.dtype, np.floating) else np.float64
    tt = t.astype(dt, copy=False)
    Fz = np.where(np.isfinite(F), F, 0).astype(dt, copy=False) if not np.isfinite(F).all() else F.astype(dt, copy=False)
    out = gather(Fz, j) * (1 - tt) + gather(Fz, j + 1) * tt
    inside = np.broadcast_to(inside, out.shape)
    if ivar is None and mask is None:
        return out[0] if single else out

    bad = ~np.isfinite(F)
    if mask is not None:
        M = mask[None, :] if isinstance(mask, np.ndarray) and mask.ndim == 1 else (
            mask if isinstance(mask, np.ndarray) else _pad_values(mask, lens, True, bool))
        bad = bad | M.astype(bool)
    if ivar is not None:
        IV = ivar[None, :] if isinstance(ivar, np.ndarray) and ivar.ndim == 1 else (
            ivar if isinstance(ivar, np.ndarray) else _pad_values(ivar, lens, 0.0, np.float64))
        IV = np.asarray(IV, dtype=np.float64)
        bad = bad | ~(IV > 0) | ~np.isfinite(IV)
        with np.errstate(divide="ignore"):
            var = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, IV))
        v = gather(var, j) * (1 - t) ** 2 + gather(var, j + 1) * t**2
    tb = np.broadcast_to(t, out.shape)
    m_new = ~inside | (gather(bad, j) & (tb < 1.0)) | (gather(bad, j + 1) & (tb > 0.0))
    iv_new = None
    if ivar is not None:
        iv_new = np.where(m_new | ~(v > 0), 0.0, 1.0 / np.where(v > 0, v, 1.0))
    if single:
        return out[0], (None if iv_new is None else iv_new[0]), m_new[0]
    return out, iv_new, m_new
