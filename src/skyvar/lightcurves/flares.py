"""Flare detection in minute-cadence light curves: Osten's consecutive-outlier statistic with FDRs.

Follows Lin et al. (WFST minute-cadence paper, Section 3.2), which applies Osten et al. (2012) as in
Lin et al. (2022a, TMTS):

1. **Detrending.** Every uninterrupted run is fitted (one linear least-squares fit, unweighted) with a
   4th-order Fourier series plus a 2nd-order polynomial,
   ``m(t) = a0 + sum_k [a_k cos(2 pi k (t-t0)/P_b) + b_k sin(2 pi k (t-t0)/P_b)] + c1 x + c2 x^2``
   with ``x = 2 (t-t0)/T - 1``. The paper does not state the Fourier base period ``P_b``; we use the
   run's own span, ``P_b = T`` (``base_period_factor = 1``), so the shortest harmonic is ``T/4``
   (45-60 min for a 3-4 h run): slow trends (airmass, long-period variables) are removed while
   minute-scale flares survive, and flares lasting ~1 h or more are partly absorbed, exactly the
   limitation the paper notes for its "energetic" flares. ``base_period`` (days) or
   ``base_period_factor`` override it.
2. **Normalisation** (eq. 2): ``V_i = (median(m_dtr) - m_dtr,i) / sigma_dtr`` with the robust standard
   deviation ``sigma_dtr = IQR / 1.349``; positive ``V`` is brighter. Not in the paper: ``sigma_dtr`` is
   floored at ``sigma_floor_err`` times the run's median reported error and at ``sigma_floor_quantum``
   times the magnitude quantisation step (the smallest non-zero difference between the run's
   magnitudes), because an exactly constant, saturated (pinned) or coarsely rounded run has a
   detrended IQR of round-off (~1e-15 mag) or zero, and dividing by it turned round-off into
   phi_VV ~ 27 (log10 FDR = -10.9) for a constant curve. A one-quantum step is no evidence of
   anything. A floored scatter below ``min_sigma`` (1e-6 mag: no photometry is that precise) is
   degenerate: NaN statistics and ``FLAG_DEGENERATE``.
3. **phi_VV** (eq. 3): ``phi_i = V_i V_{i+1}`` over consecutive points with both ``V > 0``;
   ``phi_VV,max`` per run. A run without such a pair gets ``phi_VV,max = 0``.
4. **FDR** (eq. 4): ``FDR = 1 - [1 - Ki1(phi_max) / (2 pi)]^(N-1)``, where
   ``Ki1(x) = int_x^inf K0(t) dt`` is the Bickley-Naylor function (the product of two independent
   N(0,1) variables has density ``K0(|z|)/pi``; requiring both factors positive halves the tail).
   :func:`log_ki1` evaluates it accurately for all ``x >= 0`` and :func:`flare_fdr` returns
   ``log10 FDR`` so that large ``phi`` never underflow (FDR < 1e-308 is routine for big flares).
5. **Calibration** (``log10 CDF = k log10 FDR`` over the bins with ``log10 CDF >= -1``, per
   observation; :mod:`skyvar.lightcurves.calibration`), ``FDR_cal = FDR^k``; candidates at
   ``FDR_cal <= 1e-6``. Figure 3 is drawn by :meth:`FlareSearch.finalize`.
6. **Long flares** that the detrending absorbs: light curves whose inverse von Neumann ratio is above
   the magnitude-dependent 10 sigma excess (3rd-order polynomial in median magnitude, as the paper's
   Section 3.1) *and* whose brightness distribution is skewed towards brightening are flagged
   ``flare_long_candidate`` for inspection (the paper found its four "energetic" flares by visually
   checking high-1/eta light curves).

Runs with fewer than ``min_epochs`` points (50, as the paper) give NaN and ``FLAG_TOO_SHORT``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.special as sp

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.calibration import binned_excess_threshold, fit_cdf_calibration, plot_cdf_calibration
from skyvar.lightcurves.indices import variability_indices
from skyvar.lightcurves.runs import (
    FLAG_DEGENERATE,
    FLAG_TOO_SHORT,
    Segments,
    StageLog,
    batch_key,
    clean_batch,
    group_runs,
    row_quantiles,
    split_runs,
)
from skyvar.utils.log import get_logger

log = get_logger(__name__)

LN10 = np.log(10.0)
_LAG_U, _LAG_W = np.polynomial.laguerre.laggauss(60)
_KI1_SWITCH = 2.0


# ----------------------------------------------------------------------------- the FDR of eq. 4
def log_ki1(x: np.ndarray) -> np.ndarray:
    """Natural log of the Bickley-Naylor function ``Ki1(x) = int_x^inf K0(t) dt`` for ``x >= 0``.

    For ``x < 2`` it is ``pi/2 - int_0^x K0`` with the tabulated integral ``scipy.special.iti0k0``
    (equivalently the Struve-function closed form ``(pi x/2)[K0 L_-1 + K1 L_0]``); the subtraction
    loses at most ~1 digit there. For ``x >= 2`` the tail is written as
    ``e^-x int_0^inf k0e(x+u) e^-u du`` (``k0e = e^x K0``) and evaluated with 60-node Gauss-Laguerre
    quadrature, which is smooth there and accurate to ~1e-14 relative; the ``e^-x`` factor is kept in
    the log so arbitrarily large ``x`` stay finite. Negative ``x`` raise; NaN propagates.
    """
    x = np.asarray(x, dtype=np.float64)
    if np.any(x < 0):
        raise ValueError("log_ki1 needs x >= 0")
    out = np.full(x.shape, np.nan)
    small = x < _KI1_SWITCH
    if small.any():
        out[small] = np.log(np.pi / 2 - sp.iti0k0(x[small])[1])
    large = x >= _KI1_SWITCH
    if large.any():
        xl = x[large]
        s = sp.k0e(xl[..., None] + _LAG_U) @ _LAG_W
        out[large] = -xl + np.log(s)
    return out


def ki1(x: np.ndarray) -> np.ndarray:
    """Bickley-Naylor function ``Ki1(x) = int_x^inf K0(t) dt`` (underflows to 0 beyond x ~ 740)."""
    return np.exp(log_ki1(x))


def flare_fdr(phi_max: np.ndarray, n_pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4: ``FDR = 1 - [1 - Ki1(phi)/(2 pi)]^M`` with ``M = N - 1`` pairs. Returns ``(fdr, log10_fdr)``.

    ``log10_fdr`` is computed without forming ``FDR`` when it is small, so it is exact to rounding
    for any ``phi`` (e.g. ``phi = 1e4`` gives ``log10 FDR ~ -4343``), and ``fdr = 10**log10_fdr``
    underflows gracefully to 0. NaN inputs give NaN; ``M <= 0`` gives NaN.
    """
    phi = np.asarray(phi_max, dtype=np.float64)
    M = np.asarray(n_pairs, dtype=np.float64)
    phi, M = np.broadcast_arrays(phi, M)
    ok = np.isfinite(phi) & np.isfinite(M) & (M > 0)
    lp = np.full(phi.shape, np.nan)
    lp[ok] = log_ki1(np.maximum(phi[ok], 0.0)) - np.log(2 * np.pi)  # ln p, p = single-pair tail
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = np.exp(lp)
        # ln(-ln(1-p)): ln p + ln(1 + p/2 + p^2/3 ...) for small p, exact otherwise
        lnl = np.where(p < 1e-8, lp + p / 2, np.log(-np.log1p(-p)))
        ln_u = np.log(M) + lnl  # u = -M ln(1-p) > 0 ; FDR = 1 - e^-u
        u = np.exp(ln_u)
        # ln(1 - e^-u) = ln u + ln((1 - e^-u)/u), series for small u
        ln_fdr = np.where(u < 1e-4, ln_u + np.log1p(-u / 2 + u * u / 6), np.log(-np.expm1(-u)))
    ln_fdr = np.where(ok, ln_fdr, np.nan)
    log10_fdr = ln_fdr / LN10
    return np.exp(ln_fdr), log10_fdr


# ----------------------------------------------------------------------------- detrending and phi_VV
def detrend_runs(
    time: np.ndarray,
    mag: np.ndarray,
    mask: np.ndarray,
    n_fourier: int = 4,
    poly_order: int = 2,
    base_period: float | None = None,
    base_period_factor: float = 1.0,
    fit_mask: np.ndarray | None = None,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of ``n_fourier`` harmonics plus a ``poly_order`` polynomial to every row.

    Rows are uninterrupted runs (padded, ``mask`` True where valid, valid points first). The Fourier
    base period is ``base_period`` days if given, else ``base_period_factor`` times the row's span.
    Returns ``(model, ok)``: the model magnitudes (NaN where masked) and a per-row flag, False where
    the fit is undetermined (fewer points than parameters + 2, or zero span). ``fit_mask`` (a subset
    of ``mask``) restricts the points entering the fit; the model is evaluated on all of ``mask``. One unweighted linear
    fit, solved by batched normal equations with a 1e-10 relative ridge (well conditioned: the basis
    is built on the scaled time ``u = (t - t0)/T`` in [0, 1]).
    """
    time = np.asarray(time, dtype=np.float64)
    mag = np.asarray(mag, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    S, L = mag.shape
    npar = 1 + 2 * n_fourier + poly_order
    model = np.full((S, L), np.nan)
    n = mask.sum(axis=1)
    fit_mask = mask if fit_mask is None else (np.asarray(fit_mask, dtype=bool) & mask)
    t0 = np.where(n > 0, time[:, 0], 0.0)
    t_last = np.where(n > 0, time[np.arange(S), np.maximum(n - 1, 0)], 0.0)
    span = t_last - t0
    ok = (fit_mask.sum(axis=1) >= npar + 2) & (span > 0)
    for a in range(0, S, chunk):
        b = min(S, a + chunk)
        idx = np.arange(a, b)[ok[a:b]]
        if idx.size == 0:
            continue
        T = span[idx][:, None]
        u = np.where(mask[idx], (time[idx] - t0[idx][:, None]) / T, 0.0)
        pb = (base_period / T) if base_period is not None else np.full_like(T, base_period_factor)
        cols = [np.ones_like(u)]
        c1, s1 = np.cos(2 * np.pi * u / pb), np.sin(2 * np.pi * u / pb)
        ck, sk = c1, s1
        for _ in range(n_fourier):  # harmonics by the angle-addition recurrence: one sin/cos pair only
            cols += [ck, sk]
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        x = 2 * u - 1
        for j in range(1, poly_order + 1):
            cols.append(x**j)
        X = np.stack(cols, axis=-1)  # (c, L, P)
        A = X * fit_mask[idx][..., None]  # zero rows outside the fit
        y = np.where(fit_mask[idx], mag[idx], 0.0)
        At = A.transpose(0, 2, 1)
        AtA = At @ A
        Aty = (At @ y[..., None])[..., 0]
        ridge = 1e-10 * np.trace(AtA, axis1=1, axis2=2)[:, None, None] / npar
        coef = np.linalg.solve(AtA + ridge * np.eye(npar), Aty[..., None])[..., 0]
        mod = (X @ coef[..., None])[..., 0]
        model[idx] = np.where(mask[idx], mod, np.nan)
    return model, ok


@dataclasses.dataclass
class FlareStats:
    """Per-run flare statistics (arrays over runs): see :func:`flare_statistics`."""

    phi_vv_max: np.ndarray
    i_max: np.ndarray  # index of the first point of the max pair (-1 if none)
    t_flare: np.ndarray  # time of the first point of the max pair (days)
    v_peak: np.ndarray  # max V in the pair (robust sigmas)
    n_pairs: np.ndarray
    fdr: np.ndarray
    log10_fdr: np.ndarray
    median_dtr: np.ndarray
    sigma_dtr: np.ndarray
    model: np.ndarray
    V: np.ndarray
    ok: np.ndarray


def magnitude_quantum(mag: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, the smallest non-zero difference between valid magnitudes (NaN if all are equal).

    For continuous photometry this is tiny (~ range / N^2) and irrelevant; for magnitudes rounded to
    a grid (catalogues printing 0.01 or 0.1 mag) it is the grid step. Differences below 1e-12 of the
    magnitude are float noise, not a step.
    """
    mag = np.asarray(mag, dtype=np.float64)
    if mag.ndim != 2 or mag.shape[1] < 2:
        return np.full(mag.shape[0] if mag.ndim == 2 else 1, np.nan)
    srt = np.sort(np.where(mask & np.isfinite(mag), mag, np.nan), axis=1)  # NaN last
    d = np.diff(srt, axis=1)
    tol = 1e-12 * np.maximum(1.0, np.abs(srt[:, :-1]))
    d = np.where(np.isfinite(d) & (d > tol), d, np.inf)
    q = d.min(axis=1)
    return np.where(np.isfinite(q), q, np.nan)


def scatter_floor(seg: LightCurveBatch, err_factor: float = 0.5, quantum_factor: float = 1.0) -> np.ndarray:
    """Per row, the smallest credible scatter (mag): ``max(err_factor * median reported error,
    quantum_factor * magnitude quantum)``; 0 where neither is known (no errors, all values equal)."""
    mask = np.asarray(seg.mask, dtype=bool)
    floor = np.zeros(mask.shape[0])
    if err_factor > 0 and seg.mag_err is not None:
        e = np.asarray(seg.mag_err, dtype=np.float64)
        good = mask & np.isfinite(e) & (e > 0)
        srt = np.sort(np.where(good, e, np.nan), axis=1)
        (med,) = row_quantiles(srt, good.sum(axis=1), (0.5,))
        floor = np.fmax(floor, err_factor * np.nan_to_num(med, nan=0.0))
    if quantum_factor > 0:
        floor = np.fmax(floor, quantum_factor * np.nan_to_num(magnitude_quantum(seg.mag, mask), nan=0.0))
    return floor


def flare_statistics(
    seg: LightCurveBatch,
    n_fourier: int = 4,
    poly_order: int = 2,
    base_period: float | None = None,
    base_period_factor: float = 1.0,
    clip_iterations: int = 0,
    clip_sigma: float = 3.0,
    sigma_floor_err: float = 0.5,
    sigma_floor_quantum: float = 1.0,
    min_sigma: float = 1e-6,
) -> FlareStats:
    """Detrend each run (row of ``seg``), normalise (eq. 2), compute phi_VV,max (eq. 3) and FDR (eq. 4).

    ``seg`` rows must be single uninterrupted runs with valid points first (the output of
    :func:`skyvar.lightcurves.runs.split_runs`). Rows where the detrending is undetermined or the
    scatter is degenerate get NaN (``ok`` False). The robust scatter is floored by
    :func:`scatter_floor` (``sigma_floor_err`` x median error, ``sigma_floor_quantum`` x magnitude
    quantum); a floored scatter below ``min_sigma`` mag is degenerate.

    ``clip_iterations > 0`` (not in the paper, whose detrending is one fit) refits the trend without
    the points brighter than ``clip_sigma`` robust sigmas, so a large flare no longer pulls the
    Fourier series towards itself (with 11 parameters on ~200 points a flare's integrated excess leaks
    into the model with weight ~P/N per point).
    """
    time, mag, mask = seg.time, seg.mag, seg.mask
    S, L = mag.shape
    if S == 0 or L == 0:
        e = np.full(S, np.nan)
        z = np.zeros(S, dtype=np.int64)
        return FlareStats(e, z - 1, e, e, z, e, e, e, e, np.full((S, L), np.nan), np.full((S, L), np.nan),
                          np.zeros(S, bool))
    n = mask.sum(axis=1)
    floor = scatter_floor(seg, sigma_floor_err, sigma_floor_quantum)
    fit_mask = mask
    for it in range(int(clip_iterations) + 1):
        model, ok = detrend_runs(time, mag, mask, n_fourier, poly_order, base_period, base_period_factor,
                                 fit_mask=fit_mask)
        dtr = np.where(mask, mag - model, np.nan)
        srt = np.sort(dtr, axis=1)  # NaN last
        q25, med, q75 = row_quantiles(srt, n, (0.25, 0.5, 0.75))
        sigma = np.fmax((q75 - q25) / 1.3489795003921634, floor)
        ok = ok & np.isfinite(sigma) & (sigma > 0) & (sigma >= min_sigma)
        with np.errstate(invalid="ignore", divide="ignore"):
            V = (med[:, None] - dtr) / sigma[:, None]
        V[~ok] = np.nan
        if it < clip_iterations:
            fit_mask = mask & ~(V > clip_sigma)
    if L > 1:
        pair_ok = (V[:, :-1] > 0) & (V[:, 1:] > 0)  # NaN compares False: masked points never pair
        phi = np.where(pair_ok, V[:, :-1] * V[:, 1:], -np.inf)
        i_max = np.argmax(phi, axis=1)
        phi_max = phi[np.arange(S), i_max]
        has = np.isfinite(phi_max)
        phi_max = np.where(has, phi_max, 0.0)
        i_max = np.where(has, i_max, -1)
    else:
        phi_max = np.zeros(S)
        i_max = np.full(S, -1)
    phi_max = np.where(ok, phi_max, np.nan)
    n_pairs = np.maximum(n - 1, 0)
    fdr, log10_fdr = flare_fdr(phi_max, np.where(ok, n_pairs, 0))
    rows = np.arange(S)
    ic = np.clip(i_max, 0, max(L - 1, 0))
    t_flare = np.where(i_max >= 0, time[rows, ic], np.nan) if L else np.zeros(0)
    v_peak = (np.where(i_max >= 0, np.fmax(V[rows, ic], V[rows, np.clip(ic + 1, 0, L - 1)]), np.nan)
              if L > 1 else np.full(S, np.nan))
    return FlareStats(phi_max, i_max, t_flare, v_peak, n_pairs, fdr, log10_fdr, med, sigma, model, V, ok)


# ----------------------------------------------------------------------------- variability helpers
def _inv_eta_and_asymmetry(seg: LightCurveBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse von Neumann ratio, median magnitude and brightening asymmetry per run.

    ``inv_eta`` is :func:`skyvar.lightcurves.indices.variability_indices`' (paper eq. 1,
    ``sum (m - mean)^2 / sum (m_{i+1} - m_i)^2``). The asymmetry is ``(median - q02) / (q98 - median)``
    of the magnitudes: >> 1 when the light curve brightens (flares), ~1 for symmetric variability,
    < 1 for dimming (eclipses).
    """
    mag, mask = seg.mag, seg.mask
    n = mask.sum(axis=1)
    err = np.where(np.isfinite(seg.mag_err) & (seg.mag_err > 0), seg.mag_err, 1.0)  # errors unused by inv_eta
    inv_eta = np.asarray(variability_indices(mag, err, mask, which=("inv_eta",))["inv_eta"], dtype=np.float64)
    srt = np.sort(np.where(mask, mag, np.nan), axis=1)
    q02, med, q98 = row_quantiles(srt, n, (0.02, 0.5, 0.98))
    with np.errstate(invalid="ignore", divide="ignore"):
        asym = (med - q02) / (q98 - med)
    return inv_eta, med, asym


# ----------------------------------------------------------------------------- the pipeline stage
class FlareSearch:
    """Pipeline stage: Osten/FDR flare search per uninterrupted run, calibrated over the whole run set.

    Called as ``stage(batch, out_dir) -> DataFrame`` (one row per batch row, same order) and, once
    after all partitions, ``stage.finalize(features, out_dir) -> features``, which fits the FDR
    calibration per observation (runs clustered by time), fills ``fdr_cal``/``flare_candidate``,
    flags long flares and writes Figure 3 and flare-window plots under ``out_dir/plots/<name>/``.

    Columns added: ``phi_vv_max, fdr, log10_fdr, fdr_cal, log10_fdr_cal, t_flare, flare_v_peak,
    flare_n_runs, inv_eta_max, flare_candidate, flare_long_candidate, flare_flag`` (bitmask of
    :mod:`skyvar.lightcurves.runs` flags; ``FLAG_TOO_SHORT`` with NaN statistics when no run has
    ``min_epochs`` points). For a light curve with several runs, the statistics are those of its most
    significant run. The per-run table is written to ``out_dir/flare_runs.parquet`` by ``finalize``.

    Between partitions the stage keeps per-run summaries (a few numbers per run) and the light curves
    of each batch's ``plot_buffer`` most significant runs in ``out_dir/<name>/`` side tables
    (:class:`skyvar.lightcurves.runs.StageLog`), so ``finalize`` also works after a resumed run or
    with Dask workers; called without ``out_dir`` they stay in memory.
    """

    def __init__(
        self,
        name: str = "flares",
        min_epochs: int = 50,
        run_gap: float = 0.25,
        n_fourier: int = 4,
        poly_order: int = 2,
        base_period: float | None = None,
        base_period_factor: float = 1.0,
        clip_iterations: int = 0,
        clip_sigma: float = 3.0,
        sigma_floor_err: float = 0.5,
        sigma_floor_quantum: float = 1.0,
        min_sigma: float = 1e-6,
        fdr_threshold: float = 1e-6,
        calibrate: bool = True,
        calibration_bin: float = 0.2,
        log10_cdf_min: float = -1.0,
        min_calibration_runs: int = 100,
        long_flare: bool = True,
        long_flare_n_sigma: float = 10.0,
        long_flare_poly_order: int = 3,
        long_flare_mag_bin: float = 0.5,
        long_flare_asymmetry: float = 3.0,
        plots: bool = True,
        n_plots: int = 12,
        plot_buffer: int = 64,
    ):
        self.name = name
        self.min_epochs = int(min_epochs)
        self.run_gap = float(run_gap)
        self.n_fourier = int(n_fourier)
        self.poly_order = int(poly_order)
        self.base_period = base_period
        self.base_period_factor = float(base_period_factor)
        self.clip_iterations = int(clip_iterations)
        self.clip_sigma = float(clip_sigma)
        self.sigma_floor_err = float(sigma_floor_err)
        self.sigma_floor_quantum = float(sigma_floor_quantum)
        self.min_sigma = float(min_sigma)
        self.fdr_threshold = float(fdr_threshold)
        self.calibrate = bool(calibrate)
        self.calibration_bin = float(calibration_bin)
        self.log10_cdf_min = float(log10_cdf_min)
        self.min_calibration_runs = int(min_calibration_runs)
        self.long_flare = bool(long_flare)
        self.long_flare_n_sigma = float(long_flare_n_sigma)
        self.long_flare_poly_order = int(long_flare_poly_order)
        self.long_flare_mag_bin = float(long_flare_mag_bin)
        self.long_flare_asymmetry = float(long_flare_asymmetry)
        self.plots = bool(plots)
        self.n_plots = int(n_plots)
        self.plot_buffer = int(plot_buffer)
        self.reset()

    def reset(self) -> None:
        """Forget the runs kept in memory (a new run without an ``out_dir``)."""
        self._log = StageLog(self.name)
        self.calibrations: dict = {}

    # -------------------------------------------------------------- per partition
    def search(self, batch: LightCurveBatch) -> tuple[pd.DataFrame, pd.DataFrame, Segments, FlareStats]:
        """Run the uncalibrated search; returns (row table, run table, segments, per-run stats)."""
        clean, row_flags = clean_batch(batch)
        segs = split_runs(clean, gap=self.run_gap, min_points=self.min_epochs, clean=False)
        st = flare_statistics(segs.batch, self.n_fourier, self.poly_order, self.base_period, self.base_period_factor,
                              self.clip_iterations, self.clip_sigma, self.sigma_floor_err, self.sigma_floor_quantum,
                              self.min_sigma)
        inv_eta, med_mag, asym = _inv_eta_and_asymmetry(segs.batch)
        runs = pd.DataFrame({
            "row": segs.parent,
            "source_id": segs.batch.source_id,
            "band": segs.batch.band,
            "run_index": segs.index,
            "t_start": segs.t_start,
            "t_end": segs.t_end,
            "n_points": segs.n_points,
            "median_mag": med_mag,
            "phi_vv_max": st.phi_vv_max,
            "t_flare": st.t_flare,
            "flare_v_peak": st.v_peak,
            "log10_fdr": st.log10_fdr,
            "sigma_dtr": st.sigma_dtr,
            "inv_eta": inv_eta,
            "asymmetry": asym,
            "degenerate": ~st.ok,
        })
        n = len(batch)
        out = pd.DataFrame({
            "phi_vv_max": np.full(n, np.nan),
            "fdr": np.full(n, np.nan),
            "log10_fdr": np.full(n, np.nan),
            "fdr_cal": np.full(n, np.nan),
            "log10_fdr_cal": np.full(n, np.nan),
            "t_flare": np.full(n, np.nan),
            "flare_v_peak": np.full(n, np.nan),
            "flare_n_runs": np.zeros(n, dtype=np.int64),
            "inv_eta_max": np.full(n, np.nan),
            "flare_candidate": np.zeros(n, dtype=bool),
            "flare_long_candidate": np.zeros(n, dtype=bool),
        })
        if len(runs):
            best = _best_per_row(runs["row"].to_numpy(), runs["log10_fdr"].to_numpy())
            b = runs.iloc[best]
            r = b["row"].to_numpy()
            for c in ("phi_vv_max", "log10_fdr", "t_flare", "flare_v_peak"):
                out.loc[r, c] = b[c].to_numpy()
            out.loc[r, "fdr"] = 10.0 ** b["log10_fdr"].to_numpy()
            out["flare_n_runs"] = np.bincount(runs["row"].to_numpy(), minlength=n)
            inv = runs.groupby("row")["inv_eta"].max()
            out.loc[inv.index.to_numpy(), "inv_eta_max"] = inv.to_numpy()
            deg_rows = runs.groupby("row")["degenerate"].all()
            row_flags[deg_rows.index[deg_rows.to_numpy()].to_numpy()] |= FLAG_DEGENERATE
        too_short = out["flare_n_runs"].to_numpy() == 0
        row_flags[too_short] |= FLAG_TOO_SHORT
        out["flare_flag"] = row_flags
        return out, runs, segs, st

    def __call__(self, batch: LightCurveBatch, out_dir: str | Path | None = None) -> pd.DataFrame:
        out, runs, segs, st = self.search(batch)
        key = batch_key(batch)
        self._log.add("runs", runs.drop(columns=["row"]), out_dir, key)
        if self.plots and self.plot_buffer > 0 and len(runs):
            self._log.add("top", self._top_table(runs, segs, st), out_dir, key)
        n_short = int((out["flare_flag"] & FLAG_TOO_SHORT).astype(bool).sum())
        if n_short:
            log.info("%s: %d of %d light curves have no run with >= %d epochs (NaN, flagged too_short)",
                     self.name, n_short, len(out), self.min_epochs)
        return out

    def _top_table(self, runs: pd.DataFrame, segs: Segments, st: FlareStats) -> pd.DataFrame:
        """Long table of the batch's most significant runs (for the candidate plots)."""
        lf = runs["log10_fdr"].to_numpy()
        order = np.argsort(np.where(np.isfinite(lf), lf, np.inf))[: self.plot_buffer]
        order = order[np.isfinite(lf[order])]
        # and the brightening runs with the highest 1/eta (long-flare candidates have unremarkable FDRs)
        ie = np.where(runs["asymmetry"].to_numpy() > self.long_flare_asymmetry, runs["inv_eta"].to_numpy(), np.nan)
        order2 = np.argsort(np.where(np.isfinite(ie), -ie, np.inf))[: max(1, self.plot_buffer // 4)]
        order = np.union1d(order, order2[np.isfinite(ie[order2])])
        if order.size == 0:
            return pd.DataFrame()
        npts = segs.n_points[order]
        i = np.repeat(order, npts)
        j = np.arange(npts.sum()) - np.repeat(np.cumsum(npts) - npts, npts)
        return pd.DataFrame({
            "source_id": segs.batch.source_id[i], "band": segs.batch.band[i], "run_index": segs.index[i],
            "log10_fdr": lf[i], "phi": st.phi_vv_max[i], "i_max": st.i_max[i], "point": j,
            "time": segs.batch.time[i, j], "mag": segs.batch.mag[i, j], "mag_err": segs.batch.mag_err[i, j],
            "model": st.model[i, j], "V": st.V[i, j]})

    # -------------------------------------------------------------- whole run set
    def calibrate_runs(self, runs: pd.DataFrame) -> pd.DataFrame:
        """Group runs into observations, fit ``k`` per observation (pooled fallback), add calibrated columns."""
        runs = runs.copy()
        runs["obs_group"] = group_runs(runs["t_start"].to_numpy(), runs["t_end"].to_numpy(), self.run_gap)
        lf = runs["log10_fdr"].to_numpy()
        pooled = fit_cdf_calibration(lf, self.calibration_bin, self.log10_cdf_min, self.min_calibration_runs)
        self.calibrations = {"pooled": pooled}
        k = np.full(len(runs), pooled.k if self.calibrate else 1.0)
        for g, idx in runs.groupby("obs_group").indices.items():
            cal = fit_cdf_calibration(lf[idx], self.calibration_bin, self.log10_cdf_min, self.min_calibration_runs)
            self.calibrations[int(g)] = cal
            if not self.calibrate:
                continue
            if cal.fitted:
                k[idx] = cal.k
            else:
                log.warning("%s: observation %d (%d runs) not calibrated individually (%s); using the pooled "
                            "k = %.3f%s", self.name, g, len(idx), cal.reason, pooled.k,
                            "" if pooled.fitted else f" (pooled fit also failed: {pooled.reason}; k = 1)")
        runs["k_fdr"] = k
        runs["log10_fdr_cal"] = k * lf
        runs["flare_candidate"] = runs["log10_fdr_cal"] <= np.log10(self.fdr_threshold)
        runs["flare_long_candidate"] = False
        if self.long_flare and len(runs):
            runs["inv_eta_threshold"] = np.nan
            for _, idx in runs.groupby("obs_group").indices.items():
                sub = runs.iloc[idx]
                okk = np.isfinite(sub["inv_eta"]) & np.isfinite(sub["median_mag"])
                if okk.sum() < 20:
                    continue
                thr = binned_excess_threshold(sub["median_mag"][okk], sub["inv_eta"][okk], n_bins=None,
                                              bin_size=self.long_flare_mag_bin, n_sigma=self.long_flare_n_sigma,
                                              min_per_bin=10, poly_order=self.long_flare_poly_order)
                runs.iloc[idx, runs.columns.get_loc("inv_eta_threshold")] = thr(sub["median_mag"].to_numpy())
            runs["flare_long_candidate"] = (
                (runs["inv_eta"] > runs["inv_eta_threshold"]) & (runs["asymmetry"] > self.long_flare_asymmetry)
                & ~runs["flare_candidate"]
            )
        return runs

    def finalize(self, features: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
        out_dir = Path(out_dir)
        keys = features[["source_id", "band"]] if {"source_id", "band"} <= set(features.columns) else None
        runs = self._log.collect("runs", out_dir, keys)
        if not len(runs):
            log.warning("%s: no runs to calibrate (no partition computed, or none long enough)", self.name)
            return features
        runs = self.calibrate_runs(runs)
        from skyvar.utils.atomic import atomic_path, write_json_atomic

        with atomic_path(out_dir / "flare_runs.parquet") as tmp:
            runs.to_parquet(tmp, index=False)
        write_json_atomic(out_dir / "plots" / self.name / "calibration.json",
                          {str(g): c.as_dict() for g, c in self.calibrations.items()})
        features = _merge_best_run(features, runs, "log10_fdr_cal",
                                   {"log10_fdr_cal": "log10_fdr_cal", "flare_candidate": "flare_candidate",
                                    "flare_long_candidate": "flare_long_candidate"},
                                   any_cols=("flare_candidate", "flare_long_candidate"))
        if "log10_fdr_cal" in features:
            features["fdr_cal"] = 10.0 ** features["log10_fdr_cal"]
        n_c = int(features.get("flare_candidate", pd.Series(dtype=bool)).fillna(False).sum())
        n_l = int(features.get("flare_long_candidate", pd.Series(dtype=bool)).fillna(False).sum())
        log.info("%s: %d flare candidates at FDR_cal <= %g, %d long-flare (high 1/eta) candidates among %d runs",
                 self.name, n_c, self.fdr_threshold, n_l, len(runs))
        if self.plots:
            try:
                top = self._log.collect("top", out_dir, keys, unique=("source_id", "band", "run_index", "point"))
                self._plot(runs, top, out_dir / "plots" / self.name)
            except Exception as e:  # plots must never lose the table
                log.error("%s: plotting failed: %s", self.name, e)
        return features

    def _plot(self, runs: pd.DataFrame, top: pd.DataFrame, pdir: Path) -> None:
        from skyvar.utils.atomic import savefig_atomic
        from skyvar.utils.plotting import subplots

        groups = [g for g in self.calibrations if g != "pooled"]
        ncol = min(3, max(1, len(groups)))
        nrow = int(np.ceil(len(groups) / ncol)) if groups else 1
        fig, axes = subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
        for ax, g in zip(axes.flat, groups):
            t0 = runs.loc[runs.obs_group == g, "t_start"].min()
            plot_cdf_calibration(ax, self.calibrations[g], label=f"obs {g} (t0={t0:.2f})", quantity="FDR")
        for ax in list(axes.flat)[len(groups):]:
            ax.set_visible(False)
        fig.suptitle("Flare FDR calibration (cf. paper Fig. 3)")
        savefig_atomic(fig, pdir / "fdr_cdf.png")

        if self.long_flare and "inv_eta_threshold" in runs:
            fig, ax = subplots(figsize=(5.5, 3.8))
            ax.scatter(runs.median_mag, runs.inv_eta, s=2, c="0.6", label="runs")
            ok = np.isfinite(runs.inv_eta_threshold)
            o = np.argsort(runs.median_mag[ok].to_numpy())
            ax.plot(runs.median_mag[ok].to_numpy()[o], runs.inv_eta_threshold[ok].to_numpy()[o], "r-", lw=1,
                    label=f"{self.long_flare_n_sigma:g} sigma excess")
            lc = runs.flare_long_candidate
            ax.scatter(runs.median_mag[lc], runs.inv_eta[lc], s=25, facecolors="none", edgecolors="tab:orange",
                       label=f"long-flare candidates ({int(lc.sum())})")
            fc = runs.flare_candidate
            ax.scatter(runs.median_mag[fc], runs.inv_eta[fc], s=8, c="tab:blue", label=f"FDR candidates ({int(fc.sum())})")
            ax.set_yscale("log")
            ax.set_xlabel("median magnitude")
            ax.set_ylabel("1/eta")
            ax.legend(fontsize=7)
            savefig_atomic(fig, pdir / "inv_eta_vs_mag.png")

        cand = runs[runs.flare_candidate | runs.flare_long_candidate]
        if not len(top) or not len(cand):
            return
        cand = cand.sort_values("log10_fdr_cal")
        groups = top.groupby([top.source_id.astype(str), top.band.astype(str), top.run_index], sort=False)
        n = 0
        for _, r in cand.iterrows():  # at most n_plots figures
            if n >= self.n_plots:
                break
            key = (str(r.source_id), str(r.band), r.run_index)
            if key not in groups.groups:
                continue
            p = groups.get_group(key).sort_values("point")
            time_, mag = p.time.to_numpy(), p.mag.to_numpy()
            fig, (a1, a2) = subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
            t = (time_ - time_[0]) * 24
            a1.errorbar(t, mag, p.mag_err.to_numpy(), fmt=".", ms=3, c="k", lw=0.5)
            a1.plot(t, p.model.to_numpy(), "r-", lw=1, label="Fourier(4)+poly(2) detrend")
            a1.invert_yaxis()
            a1.set_xlabel(f"hours since MJD {time_[0]:.4f}")
            a1.set_ylabel("mag")
            a1.legend(fontsize=7)
            kind = "FDR" if r.flare_candidate else "long flare (1/eta)"
            a1.set_title(f"{r.source_id} {r.band} run {r.run_index} [{kind}]: phi_max={r.phi_vv_max:.1f} "
                         f"log10 FDR_cal={r.log10_fdr_cal:.1f}", fontsize=9)
            i = max(int(p.i_max.iloc[0]), 0)
            lo, hi = max(0, i - 15), min(len(t), i + 25)
            a2.plot(t[lo:hi], p.V.to_numpy()[lo:hi], "k.-", lw=0.6)
            a2.axhline(0, c="0.6", lw=0.5)
            a2.set_xlabel("hours")
            a2.set_ylabel("V (robust sigma)")
            a2.set_title("flare window", fontsize=9)
            savefig_atomic(fig, pdir / "candidates" / f"{r.source_id}_{r.band}_run{r.run_index}.png")
            n += 1


def _best_per_row(rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Index (into the arrays) of the lowest finite ``score`` per distinct ``rows`` value."""
    s = np.where(np.isfinite(score), score, np.inf)
    order = np.lexsort((s, rows))
    first = np.ones(order.size, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    return order[first]


def _merge_best_run(features: pd.DataFrame, runs: pd.DataFrame, score: str, cols: dict, any_cols=()) -> pd.DataFrame:
    """Write per-row values of the best run (lowest ``score``) into ``features`` by (source_id, band)."""
    if not {"source_id", "band"} <= set(features.columns):
        log.warning("features have no source_id/band columns; calibrated columns cannot be merged back")
        return features
    key_f = features["source_id"].astype(str) + "\x1f" + features["band"].astype(str)
    key_r = runs["source_id"].astype(str) + "\x1f" + runs["band"].astype(str)
    codes, uniq = pd.factorize(key_r)
    best = _best_per_row(codes, runs[score].to_numpy())
    b = runs.iloc[best].set_index(key_r.iloc[best].to_numpy())
    features = features.copy()
    for src, dst in cols.items():
        vals = key_f.map(b[src])
        if dst in any_cols:
            anyv = runs.groupby(key_r)[src].any()
            vals = key_f.map(anyv)
            vals = vals.astype("boolean").fillna(False).astype(bool)
        features[dst] = vals.to_numpy()
    return features
