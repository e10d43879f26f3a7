"""Batched Lomb-Scargle periodograms, frequency grids and the minute-cadence periodicity search.

Normalisations
--------------
``"standard"`` is astropy's (``LombScargle(..., normalization="standard")``, floating mean by default):
``P = [SS*YC^2 + CC*YS^2 - 2 CS*YC*YS] / (YY * (CC*SS - CS^2))`` with the weighted, mean-subtracted sums
of Zechmeister & Kuerster (2009), ``0 <= P <= 1``. ``"variance"`` is the variance-scaled power of the
minute-cadence paper (its "Eq. 1 of Coughlin et al. 2020 / Eq. 5 of Lin et al. 2022a", i.e. Horne &
Baliunas 1986): the classical periodogram divided by the sample variance, ``(N - 1)/2 * P_standard``,
which for Gaussian noise follows ``Exp(1)`` at each frequency, so the independent-frequency FAP is
eq. 5, ``FAP = 1 - [1 - exp(-Pwr_max)]^N_eff`` (:func:`fap_independent`).

Backends (:func:`lomb_scargle`)
-------------------------------
* ``"shared"`` (torch, CPU or GPU): rows that sample one common set of epochs (all sources of a
  staring run, each missing a few frames) share ``cos(2 pi f t_n)``, so every trigonometric sum is a
  matrix product ``(B x N) @ (N x F)`` on the union time grid with masked points weighted 0. This is
  the fast path for survey fields; exact in float64, ~1e-5 relative in float32.
* ``"torch"``: direct sums for rows with their own time stamps, chunked ``(B, N, F)`` tensors; meant
  for the GPU (on the CPU it is correct but slower than ``"nifty"``).
* ``"nifty"``: nifty-ls (finufft) on the CPU: one batched call for a shared grid (masked points get
  infinite errors, i.e. zero weight), one call per row otherwise.
* ``"astropy"``: the reference, one ``LombScargle`` per row (``method="fast"`` or ``"slow"``).
* ``"auto"``: ``"shared"`` when the union of the rows' epochs is at most ``shared_factor`` times the
  longest row, else ``"torch"`` on CUDA and ``"nifty"`` on the CPU.
Phases are reduced modulo one cycle in float64 before the trigonometric functions, so long baselines
(years) at high frequency keep their accuracy in float32.

Frequency grids (:func:`frequency_grid`)
----------------------------------------
* ``"run"`` (one uninterrupted minute-cadence run, the paper's short-period search): ``2/T`` to the
  pseudo-Nyquist frequency, half the mean sampling rate ``(N - 1)/(2T)``.
* ``"spliced"`` (runs of one field days-months apart): a fixed ``3-12 d^-1`` (the window function is
  amplified below 3 d^-1 for such sampling).
* ``"survey"`` (sparse multi-season data, ZTF-like, tens-hundreds of epochs over years): the pseudo-
  Nyquist frequency means nothing here (VanderPlas 2018, Sect. 4.1.3 - irregular sampling has no
  Nyquist limit), so the upper end is set by the periods looked for: ``survey_fmax = 50 d^-1``
  (29 min) by default, reaching contact binaries, RR Lyrae (0.2-1 d; 1-5 d^-1 and their harmonics)
  and delta Scuti stars; the lower end is ``max(2/T, survey_fmin)`` with ``survey_fmin = 0.02 d^-1``
  (50 d).
In every mode the spacing is ``df = 1/(n0 T)`` with ``n0 = oversample = 5`` samples per peak
(VanderPlas 2018, Sect. 7.1: a peak has width ~1/T, and n0 = 5-10 resolves it); for a 5-year ZTF
baseline that is 1.1e-4 d^-1, i.e. ~4.6e5 frequencies up to 50 d^-1, which is what makes batched
NUFFT or GEMM evaluation necessary. Spliced runs are the exception: two short runs a baseline ``T``
apart give a comb of fringes of FWHM ~1/(2T) under a broad envelope of width ~1/T_run, so n0 = 5
samples a fringe off its top by up to 10 % in power, more than the envelope changes between
neighbouring fringes, and the argmax lands on the wrong fringe (in our tests a 6.45 d^-1 signal at
S/N 15 per point was never recovered within 1 % at n0 = 5, always at n0 >= 20 for runs 3 days
apart); :class:`PeriodSearch` therefore uses ``spliced_oversample = 20``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.calibration import binned_excess_threshold, fit_cdf_calibration, plot_cdf_calibration
from skyvar.lightcurves.runs import (
    FLAG_DEGENERATE,
    FLAG_TOO_SHORT,
    StageLog,
    batch_key,
    clean_batch,
    group_runs,
    split_runs,
)
from skyvar.utils.log import get_logger

log = get_logger(__name__)

LN10 = np.log(10.0)
NORMALIZATIONS = ("standard", "variance")


# ----------------------------------------------------------------------------- frequency grids
@dataclasses.dataclass(frozen=True)
class FrequencyGrid:
    """Uniform grid ``fmin + df * arange(nf)`` in cycles per day."""

    fmin: float
    df: float
    nf: int

    @property
    def fmax(self) -> float:
        return self.fmin + self.df * (self.nf - 1)

    @property
    def freq(self) -> np.ndarray:
        return self.fmin + self.df * np.arange(self.nf)


def frequency_grid(
    mode: str,
    span: float,
    n_points: int | None = None,
    oversample: float = 5.0,
    fmin: float | None = None,
    fmax: float | None = None,
    spliced_range: tuple[float, float] = (3.0, 12.0),
    survey_fmin: float = 0.02,
    survey_fmax: float = 50.0,
    max_nf: int = 5_000_000,
) -> FrequencyGrid:
    """Frequency grid (d^-1) for one of the sampling modes ``run | spliced | survey`` (module docstring).

    ``span`` is the baseline ``T`` (days), ``n_points`` the number of epochs (needed for the run
    mode's pseudo-Nyquist frequency ``(N-1)/(2T)``). ``fmin``/``fmax`` override the mode's limits.
    """
    if not (span > 0 and np.isfinite(span)):
        raise ValueError(f"frequency_grid needs a positive baseline, got span={span}")
    if mode == "run":
        if n_points is None or n_points < 2:
            raise ValueError("run mode needs n_points >= 2 for the pseudo-Nyquist frequency")
        lo, hi = 2.0 / span, 0.5 * (n_points - 1) / span
    elif mode == "spliced":
        lo, hi = spliced_range
    elif mode == "survey":
        lo, hi = max(2.0 / span, survey_fmin), survey_fmax
    else:
        raise ValueError(f"unknown frequency-grid mode {mode!r}; use run, spliced or survey")
    lo = float(fmin) if fmin is not None else lo
    hi = float(fmax) if fmax is not None else hi
    if not hi > lo:
        raise ValueError(f"empty frequency range [{lo}, {hi}] d^-1 for mode {mode!r} (span {span} d)")
    df = 1.0 / (oversample * span)
    nf = int(np.floor((hi - lo) / df)) + 1
    if nf > max_nf:
        raise ValueError(f"{nf} frequencies ({lo:g}-{hi:g} d^-1, df={df:.3g}) exceed max_nf={max_nf}; "
                         "lower oversample or fmax")
    return FrequencyGrid(float(lo), float(df), max(nf, 1))


def classify_sampling(n_runs: np.ndarray, median_dt: np.ndarray, cadence_limit: float = 0.02) -> np.ndarray:
    """Sampling mode per light curve: ``run`` (one uninterrupted minute-cadence run), ``spliced``
    (several such runs) or ``survey`` (median spacing above ``cadence_limit`` days = 29 min)."""
    n_runs = np.asarray(n_runs)
    median_dt = np.asarray(median_dt, dtype=np.float64)
    mode = np.where(n_runs > 1, "spliced", "run").astype(object)
    mode[~(median_dt <= cadence_limit)] = "survey"
    return mode


# ----------------------------------------------------------------------------- FAP (eq. 5)
def fap_independent(pwr_max: np.ndarray, n_eff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 5, ``FAP = 1 - [1 - exp(-Pwr_max)]^N_eff`` for variance-scaled powers. Returns ``(fap, log10_fap)``.

    Evaluated in log space: ``log10_fap`` is exact for any power (``Pwr = 1000`` gives ~ -434),
    ``fap`` underflows gracefully. NaN or ``N_eff <= 0`` give NaN.
    """
    P = np.asarray(pwr_max, dtype=np.float64)
    M = np.asarray(n_eff, dtype=np.float64)
    P, M = np.broadcast_arrays(P, M)
    ok = np.isfinite(P) & np.isfinite(M) & (M > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        Pc = np.maximum(P, 0.0)
        q = np.exp(-Pc)  # single-frequency tail
        lnl = np.where(q < 1e-8, -Pc + q / 2, np.log(-np.log1p(-q)))  # ln(-ln(1-q))
        ln_u = np.log(M) + lnl
        u = np.exp(ln_u)
        ln_fap = np.where(u < 1e-4, ln_u + np.log1p(-u / 2 + u * u / 6), np.log(-np.expm1(-u)))
    ln_fap = np.where(ok, ln_fap, np.nan)
    return np.exp(ln_fap), ln_fap / LN10


# ----------------------------------------------------------------------------- Lomb-Scargle core
def _as_grid(freq) -> tuple[np.ndarray, FrequencyGrid | None]:
    if isinstance(freq, FrequencyGrid):
        return freq.freq, freq
    f = np.asarray(freq, dtype=np.float64).ravel()
    if f.size >= 2:
        d = np.diff(f)
        if np.allclose(d, d[0], rtol=1e-9, atol=0):
            return f, FrequencyGrid(float(f[0]), float(d[0]), int(f.size))
    return f, None


def _prepare(t, y, mask, dy, use_errors: bool, center_data: bool, fit_mean: bool):
    """Weights normalised to sum 1 over valid points, weighted-mean-centred y, YY, n per row."""
    t = np.atleast_2d(np.asarray(t, dtype=np.float64))
    y = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if t.shape != y.shape:
        if t.shape[0] == 1 and t.shape[1] == y.shape[1]:
            t = np.broadcast_to(t, y.shape)
        else:
            raise ValueError(f"t {t.shape} and y {y.shape} must have the same shape")
    if mask is None:
        mask = np.isfinite(y) & np.isfinite(t)
    mask = np.atleast_2d(np.asarray(mask, dtype=bool)) & np.isfinite(y) & np.isfinite(t)
    if use_errors:
        if dy is None:
            raise ValueError("use_errors=True needs dy")
        dy = np.broadcast_to(np.atleast_2d(np.asarray(dy, dtype=np.float64)), y.shape)
        good = np.isfinite(dy) & (dy > 0)
        if np.any(mask & ~good):
            raise ValueError("use_errors=True but some valid points have non-finite or non-positive errors")
        w = np.where(mask, 1.0 / np.where(good, dy, 1.0) ** 2, 0.0)
    else:
        w = mask.astype(np.float64)
    n = mask.sum(axis=1)
    wsum = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w / wsum
    w = np.where(mask, w, 0.0)
    y0 = np.where(mask, y, 0.0)
    if center_data or fit_mean:
        y0 = np.where(mask, y0 - (w * y0).sum(axis=1, keepdims=True), 0.0)
    yy = (w * y0 * y0).sum(axis=1)
    return t, y0, w, mask, n, yy


def _power_from_sums(YC, YS, C, S, C2, S2, YY, fit_mean):
    """Standard-normalised power from the weighted trigonometric sums (torch tensors or numpy arrays).

    ``CC = sum w cos^2 - C^2`` etc. use ``cos^2 = (1 + cos 2x)/2``; with ``fit_mean`` False the mean
    terms ``C, S`` are dropped (astropy's ``fit_mean=False``)."""
    CC = 0.5 * (1 + C2)
    SS = 0.5 * (1 - C2)
    CS = 0.5 * S2
    if fit_mean:
        CC = CC - C * C
        SS = SS - S * S
        CS = CS - C * S
    D = CC * SS - CS * CS
    return (SS * YC * YC + CC * YS * YS - 2 * CS * YC * YS) / (YY * D)


def _power_from_sums_inplace(YC, YS, C, S, C2, S2, YY, fit_mean):
    """Same as :func:`_power_from_sums` for torch tensors with 4 temporaries instead of ~20 (eager CPU path)."""
    CC = C2.add(1).mul_(0.5)
    SS = C2.neg().add_(1).mul_(0.5)
    CS = S2.mul(0.5)
    if fit_mean:
        CC.addcmul_(C, C, value=-1)
        SS.addcmul_(S, S, value=-1)
        CS.addcmul_(C, S, value=-1)
    D = CC * SS
    D.addcmul_(CS, CS, value=-1)
    num = SS.mul_(YC).mul_(YC)
    num.addcmul_(CC.mul_(YS), YS)
    num.addcmul_(CS.mul_(YC), YS, value=-2)
    return num.div_(D).div_(YY)


def _trig(t_rel, freq, torch, dtype, device, double: bool = True):
    """cos/sin of 2 pi f t (and of 2 x that) with phases reduced mod 1 in float64; shapes (..., F)."""
    ph = torch.remainder(t_rel[..., None] * freq, 1.0)
    ang = (2 * np.pi) * ph
    out = [torch.cos(ang).to(dtype), torch.sin(ang).to(dtype)]
    if double:
        ang2 = (2 * np.pi) * torch.remainder(2 * ph, 1.0)
        out += [torch.cos(ang2).to(dtype), torch.sin(ang2).to(dtype)]
    return out


_POWER_FNS: dict = {}


def _power_max(YC, YS, C, S, C2, S2, YY):
    return _nan_max(_power_from_sums(YC, YS, C, S, C2, S2, YY, True))


def _power_max_nomean(YC, YS, C2, S2, YY):
    return _nan_max(_power_from_sums(YC, YS, None, None, C2, S2, YY, False))


def _power_max_eager(YC, YS, C, S, C2, S2, YY):
    return _nan_max(_power_from_sums_inplace(YC, YS, C, S, C2, S2, YY, True))


def _power_max_nomean_eager(YC, YS, C2, S2, YY):
    return _nan_max(_power_from_sums_inplace(YC, YS, None, None, C2, S2, YY, False))


def _nan_max(p):
    import torch

    return torch.nan_to_num(p, nan=-1.0, posinf=-1.0, neginf=-1.0).max(dim=1)


def _power_fn(fit_mean: bool, compile_: bool):
    """The fused power-and-argmax kernel; compiled with torch.compile (Inductor: C++/OpenMP on the CPU,
    Triton on the GPU) when asked, which removes ~20 passes over (B, F) temporaries (20-40x faster
    than eager on the CPU). Falls back to eager if compilation is unavailable."""
    key = (fit_mean, compile_)
    if key in _POWER_FNS:
        return _POWER_FNS[key]
    if not compile_:
        fn = _power_max_eager if fit_mean else _power_max_nomean_eager
        _POWER_FNS[key] = fn
        return fn
    fn = _power_max if fit_mean else _power_max_nomean
    if compile_:
        import torch

        try:
            fn = torch.compile(fn, dynamic=True)
        except Exception as e:  # pragma: no cover - platform dependent
            log.warning("torch.compile unavailable (%s); using eager power kernel", e)
    _POWER_FNS[key] = fn
    return fn


def _power_chunk(YC, YS, C, S, C2, S2, YY, fit_mean, reduce, compile_):
    """(max, argmax) of the chunk (reduce='max') or the full power."""
    if reduce == "max":
        fn = _power_fn(fit_mean, compile_)
        try:
            return fn(YC, YS, C, S, C2, S2, YY) if fit_mean else fn(YC, YS, C2, S2, YY)
        except Exception as e:  # compiled kernel failed at run time: fall back for good
            if not compile_:
                raise
            log.warning("compiled power kernel failed (%s); falling back to eager", e)
            _POWER_FNS[(fit_mean, True)] = _power_fn(fit_mean, False)
            return _power_chunk(YC, YS, C, S, C2, S2, YY, fit_mean, reduce, False)
    return _power_from_sums_inplace(YC, YS, C, S, C2, S2, YY, fit_mean)


def _merge_max(v, i, f_offset, best_p, best_i):
    upd = v > best_p
    best_p[upd] = v[upd]
    best_i[upd] = i[upd] + f_offset


def _ls_shared(t, y0, w, mask, yy, freq, fit_mean, dtype, device, reduce, b_chunk, f_chunk, compile_):
    """GEMM path on the union time grid: per frequency chunk the (U, F) cos/sin tables are built once
    and every row chunk costs two matrix products, ``(w y) @ [cos|sin]`` and ``w @ [cos|sin|cos2|sin2]``
    (rows weight the epochs they lack by 0). A sparse "all minus missing" form of the second product
    was tried and was slower on the CPU (memory-bound gathers against a compute-bound GEMM)."""
    import torch

    tu, inv = np.unique(t[mask], return_inverse=True)
    B, _ = y0.shape
    U = tu.size
    rr, _ = np.nonzero(mask)
    Wu = np.zeros((B, U))
    Yu = np.zeros((B, U))
    Wu[rr, inv] = w[mask]
    Yu[rr, inv] = (w * y0)[mask]
    dev = torch.device(device)
    tt = torch.as_tensor(tu - tu[0], dtype=torch.float64, device=dev)
    fr = torch.as_tensor(freq, dtype=torch.float64, device=dev)
    F = fr.numel()
    out = None if reduce == "max" else np.empty((B, F), dtype=np.float64)
    best_p = torch.full((B,), -np.inf, dtype=dtype, device=dev)
    best_i = torch.zeros(B, dtype=torch.int64, device=dev)
    Yt = torch.as_tensor(Yu, dtype=dtype, device=dev)
    Wt = torch.as_tensor(Wu, dtype=dtype, device=dev)
    YYt = torch.as_tensor(yy, dtype=dtype, device=dev)[:, None]
    for fa in range(0, F, f_chunk):
        fb = min(F, fa + f_chunk)
        Fc = fb - fa
        c, s, c2, s2 = _trig(tt, fr[fa:fb], torch, dtype, dev)
        ycs = torch.cat([c, s], dim=1)  # (U, 2Fc): one GEMM gives YC and YS
        wtrig = torch.cat([c, s, c2, s2] if fit_mean else [c2, s2], dim=1)
        del c, s, c2, s2
        for ba in range(0, B, b_chunk):
            bb = min(B, ba + b_chunk)
            yr = Yt[ba:bb] @ ycs
            wr = Wt[ba:bb] @ wtrig
            if fit_mean:
                C, S, C2, S2 = wr[:, :Fc], wr[:, Fc:2 * Fc], wr[:, 2 * Fc:3 * Fc], wr[:, 3 * Fc:]
            else:
                C = S = None
                C2, S2 = wr[:, :Fc], wr[:, Fc:]
            r = _power_chunk(yr[:, :Fc], yr[:, Fc:], C, S, C2, S2, YYt[ba:bb], fit_mean, reduce, compile_)
            if reduce == "max":
                _merge_max(r[0], r[1], fa, best_p[ba:bb], best_i[ba:bb])
            else:
                out[ba:bb, fa:fb] = r.double().cpu().numpy()
    if reduce == "max":
        return best_p.double().cpu().numpy(), best_i.cpu().numpy()
    return out


def _ls_direct(t, y0, w, mask, yy, freq, fit_mean, dtype, device, reduce, b_chunk, f_chunk, compile_):
    import torch

    B, L = y0.shape
    dev = torch.device(device)
    t_ref = np.where(mask, t, np.inf).min(axis=1, keepdims=True)
    t_ref = np.where(np.isfinite(t_ref), t_ref, 0.0)
    tt = torch.as_tensor(np.where(mask, t - t_ref, 0.0), dtype=torch.float64, device=dev)
    Wt = torch.as_tensor(w, dtype=dtype, device=dev)
    WYt = torch.as_tensor(w * y0, dtype=dtype, device=dev)
    YYt = torch.as_tensor(yy, dtype=dtype, device=dev)[:, None]
    fr = torch.as_tensor(freq, dtype=torch.float64, device=dev)
    F = fr.numel()
    out = None if reduce == "max" else np.empty((B, F), dtype=np.float64)
    best_p = torch.full((B,), -np.inf, dtype=dtype, device=dev)
    best_i = torch.zeros(B, dtype=torch.int64, device=dev)
    for ba in range(0, B, b_chunk):
        bb = min(B, ba + b_chunk)
        wy = WYt[ba:bb, None, :]
        ww = Wt[ba:bb, None, :]
        for fa in range(0, F, f_chunk):
            fb = min(F, fa + f_chunk)
            c, s = _trig(tt[ba:bb], fr[fa:fb], torch, dtype, dev, double=False)  # (b, L, Fc)
            YC = torch.bmm(wy, c)[:, 0]
            YS = torch.bmm(wy, s)[:, 0]
            C2 = torch.bmm(ww, 2 * c * c - 1)[:, 0]
            S2 = torch.bmm(ww, 2 * s * c)[:, 0]
            if fit_mean:
                C = torch.bmm(ww, c)[:, 0]
                S = torch.bmm(ww, s)[:, 0]
            else:
                C = S = None
            r = _power_chunk(YC, YS, C, S, C2, S2, YYt[ba:bb], fit_mean, reduce, compile_)
            if reduce == "max":
                _merge_max(r[0], r[1], fa, best_p[ba:bb], best_i[ba:bb])
            else:
                out[ba:bb, fa:fb] = r.double().cpu().numpy()
    if reduce == "max":
        return best_p.double().cpu().numpy(), best_i.cpu().numpy()
    return out


def _ls_nifty(t, y, mask, dy, use_errors, grid, fit_mean, center_data, shared, reduce, b_chunk, nthreads):
    import nifty_ls

    B = y.shape[0]
    F = grid.nf
    out = None if reduce == "max" else np.empty((B, F), dtype=np.float64)
    best_p = np.full(B, -np.inf)
    best_i = np.zeros(B, dtype=np.int64)
    kw = dict(fmin=grid.fmin, fmax=grid.fmax, Nf=grid.nf, center_data=center_data, fit_mean=fit_mean,
              normalization="standard", backend="finufft")
    if nthreads is not None:
        kw["nthreads"] = nthreads
    if shared:
        if nthreads is None and B < 64:
            kw["nthreads"] = 1
        tu, inv = np.unique(t[mask], return_inverse=True)
        rr, _ = np.nonzero(mask)
        Yu = np.zeros((B, tu.size))
        Du = np.full((B, tu.size), np.inf)  # infinite error = zero weight for epochs a row lacks
        Yu[rr, inv] = y[mask]
        Du[rr, inv] = dy[mask] if use_errors else 1.0
        for ba in range(0, B, b_chunk):
            bb = min(B, ba + b_chunk)
            p = nifty_ls.lombscargle(tu, Yu[ba:bb], dy=Du[ba:bb], **kw).power
            p = np.atleast_2d(p)
            if reduce == "max":
                i = np.nanargmax(np.nan_to_num(p, nan=-1.0), axis=1)
                best_i[ba:bb], best_p[ba:bb] = i, p[np.arange(bb - ba), i]
            else:
                out[ba:bb] = p
    else:
        if nthreads is None:
            kw["nthreads"] = 1  # one short light curve per call: threads only add OpenMP overhead
        for b in range(B):  # nifty-ls 1.1 batches only shared time grids
            m = mask[b]
            if m.sum() < 3:
                best_p[b] = np.nan
                if out is not None:
                    out[b] = np.nan
                continue
            p = nifty_ls.lombscargle(t[b, m], y[b, m], dy=dy[b, m] if use_errors else None, **kw).power
            if reduce == "max":
                i = int(np.nanargmax(np.nan_to_num(p, nan=-1.0)))
                best_i[b], best_p[b] = i, p[i]
            else:
                out[b] = p
    if reduce == "max":
        return best_p, best_i
    return out


def _ls_astropy(t, y, mask, dy, use_errors, freq, fit_mean, center_data, reduce, method):
    from astropy.timeseries import LombScargle

    B = y.shape[0]
    out = np.full((B, freq.size), np.nan)
    for b in range(B):
        m = mask[b]
        if m.sum() < 3:
            continue
        ls = LombScargle(t[b, m], y[b, m], dy[b, m] if use_errors else None, fit_mean=fit_mean,
                         center_data=center_data, normalization="standard")
        out[b] = ls.power(freq, method=method, assume_regular_frequency=True)
    if reduce == "max":
        i = np.argmax(np.nan_to_num(out, nan=-1.0), axis=1)
        return out[np.arange(B), i], i
    return out


def is_shared_grid(t: np.ndarray, mask: np.ndarray, shared_factor: float = 1.5) -> bool:
    """True when the union of the rows' valid epochs is at most ``shared_factor`` x the longest row."""
    n = mask.sum(axis=1)
    if n.size == 0 or n.max() == 0:
        return False
    U = np.unique(t[mask]).size
    return U <= shared_factor * n.max()


def lomb_scargle(
    t: np.ndarray,
    y: np.ndarray,
    freq: np.ndarray | FrequencyGrid,
    mask: np.ndarray | None = None,
    dy: np.ndarray | None = None,
    use_errors: bool = False,
    fit_mean: bool = True,
    center_data: bool = True,
    normalization: str = "standard",
    backend: str = "auto",
    dtype: str = "float64",
    device: str = "cpu",
    reduce: str | None = None,
    b_chunk: int | None = None,
    f_chunk: int = 4096,
    shared_factor: float = 1.5,
    nthreads: int | None = None,
    astropy_method: str = "fast",
    compile: bool | str = "auto",
):
    """Lomb-Scargle periodograms of many light curves at once.

    Parameters
    ----------
    t, y : (B, L) arrays (or 1-D for one light curve); times in days, values (magnitudes).
    freq : frequencies in d^-1 (1-D array or :class:`FrequencyGrid`), common to all rows.
        ``"nifty"`` needs a uniform grid.
    mask : (B, L) bool, True where valid (default: finite values).
    dy, use_errors : errors and whether to weight by ``1/dy^2`` (astropy's ``dy``); default unweighted.
    fit_mean, center_data : as in astropy (floating-mean generalised LS by default).
    normalization : ``"standard"`` (astropy) or ``"variance"`` ((N-1)/2 x standard, Exp(1) null).
    backend : ``auto | shared | torch | nifty | astropy`` (module docstring).
    dtype, device : torch dtype (``float64``/``float32``) and device for the torch backends.
    reduce : None for the full ``(B, F)`` power, ``"max"`` for ``(pwr_max, i_max)`` only
        (memory O(B); the way to run 1e5 light curves x 1e4 frequencies).
    compile : torch.compile the fused power/argmax kernel of the torch backends (``reduce="max"``):
        True, False, or ``"auto"`` (when ``B x F >= 2e8``, where the one-off compilation, ~10-40 s on
        a CPU, pays for itself).

    Rows with fewer than 3 valid points or zero variance give NaN.
    """
    import torch

    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if reduce not in (None, "max"):
        raise ValueError("reduce must be None or 'max'")
    squeeze = np.ndim(y) == 1
    freq_arr, grid = _as_grid(freq)
    if freq_arr.size == 0:
        raise ValueError("empty frequency grid")
    t2, y0, w, m2, n, yy = _prepare(t, y, mask, dy, use_errors, center_data, fit_mean)
    B = y0.shape[0]
    if backend == "auto":
        if is_shared_grid(t2, m2, shared_factor):
            backend = "shared"
        elif str(device).startswith("cuda"):
            backend = "torch"
        else:
            backend = "nifty" if grid is not None else "torch"
    if compile == "auto":
        compile = reduce == "max" and B * freq_arr.size >= 2e8
    tdtype = {"float64": torch.float64, "float32": torch.float32}[str(dtype).replace("torch.", "")]
    if backend == "shared":
        bc = b_chunk or 1024
        res = _ls_shared(t2, y0, w, m2, yy, freq_arr, fit_mean, tdtype, device, reduce, bc, f_chunk, bool(compile))
    elif backend == "torch":
        bc = b_chunk or max(1, int(2e7 // max(1, y0.shape[1] * min(f_chunk, freq_arr.size))))
        res = _ls_direct(t2, y0, w, m2, yy, freq_arr, fit_mean, tdtype, device, reduce, bc, f_chunk, bool(compile))
    elif backend == "nifty":
        if grid is None:
            raise ValueError("the nifty backend needs a uniform frequency grid")
        shared = is_shared_grid(t2, m2, shared_factor)
        yr = np.where(m2, np.atleast_2d(np.asarray(y, dtype=np.float64)), 0.0)
        dyr = (np.where(m2, np.broadcast_to(np.atleast_2d(np.asarray(dy, dtype=np.float64)), yr.shape), 1.0)
               if use_errors else None)
        res = _ls_nifty(t2, yr, m2, dyr, use_errors, grid, fit_mean, center_data, shared, reduce,
                        b_chunk or 512, nthreads)
    elif backend == "astropy":
        yr = np.atleast_2d(np.asarray(y, dtype=np.float64))
        dyr = np.broadcast_to(np.atleast_2d(np.asarray(dy, dtype=np.float64)), yr.shape) if use_errors else None
        res = _ls_astropy(t2, yr, m2, dyr, use_errors, freq_arr, fit_mean, center_data, reduce, astropy_method)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    bad = (n < 3) | ~(yy > 0)
    scale = np.where(bad, np.nan, (n - 1) / 2.0 if normalization == "variance" else 1.0)
    if reduce == "max":
        p, i = res
        p = np.asarray(p, dtype=np.float64) * scale
        i = np.where(bad, -1, i)
        if squeeze:
            return p[0], i[0]
        return p, i
    res = np.asarray(res) * scale[:, None]
    return res[0] if squeeze else res


# ----------------------------------------------------------------------------- multi-band
def combine_bands(batch: LightCurveBatch, scale: bool = False) -> tuple[LightCurveBatch, np.ndarray]:
    """Merge the bands of each source into one light curve for a joint periodogram.

    Each band is shifted by its median (and with ``scale`` divided by its robust sigma, IQR/1.349, so
    a noisy band does not dominate), then all points of a source are merged and sorted by time. This
    is the single-term shared-phase model with per-band offsets (VanderPlas & Ivezic 2015, Nterms=1)
    in its simplest pre-centred form; it assumes similar amplitudes in the bands (use ``scale`` when
    they differ). Returns the combined batch (``band`` = the bands joined by ``+``) and, for every
    input row, the index of its combined row.
    """
    from skyvar.lightcurves.runs import row_quantiles

    clean, _ = clean_batch(batch)
    n = clean.mask.sum(axis=1)
    srt = np.sort(np.where(clean.mask, clean.mag, np.nan), axis=1)
    q25, med, q75 = row_quantiles(srt, n, (0.25, 0.5, 0.75))
    y = clean.mag - med[:, None]
    if scale:
        rs = (q75 - q25) / 1.3489795003921634
        y = y / np.where(rs > 0, rs, 1.0)[:, None]
    codes, uniq = pd.factorize(pd.Series(clean.source_id))
    r, c = np.nonzero(clean.mask)
    g = codes[r]
    order = np.lexsort((clean.time[r, c], g))
    r, c, g = r[order], c[order], g[order]
    G = len(uniq)
    counts = np.bincount(g, minlength=G)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(r.size) - starts[g]
    L = int(counts.max()) if G else 0
    t = np.full((G, L), np.nan)
    m = np.full((G, L), np.nan)
    e = np.full((G, L), np.nan)
    msk = np.zeros((G, L), dtype=bool)
    t[g, pos], m[g, pos], e[g, pos], msk[g, pos] = clean.time[r, c], y[r, c], clean.mag_err[r, c], True
    bu, bidx = np.unique(clean.band.astype(str), return_inverse=True)
    presence = np.zeros((G, bu.size), dtype=np.int64)
    presence[codes, bidx] = 1
    combo = presence @ (1 << np.arange(bu.size, dtype=np.int64))
    cu, cinv = np.unique(combo, return_inverse=True)
    labels = np.array(["+".join(bu[(k >> np.arange(bu.size)) & 1 == 1]) for k in cu])  # one per combination
    comb = LightCurveBatch(source_id=np.asarray(uniq), band=labels[cinv], time=t, mag=m, mag_err=e, mask=msk)
    return comb, codes


# ----------------------------------------------------------------------------- the pipeline stage
def _median_dt(seg_time: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import warnings

    d = np.where(mask[:, 1:] & mask[:, :-1], np.diff(seg_time, axis=1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (fewer than 2 points) give NaN
        out = np.nanmedian(d, axis=1) if d.shape[1] else np.full(len(d), np.nan)
    return out


class PeriodSearch:
    """Pipeline stage: variance-scaled Lomb-Scargle periodicity search with FAP calibration.

    Per light curve (one batch row) the sampling mode is chosen (:func:`classify_sampling`):

    * ``run`` - one uninterrupted minute-cadence run: LS from 2/T to the pseudo-Nyquist frequency.
    * ``spliced`` - several runs of the same field: LS over ``spliced_range`` (3-12 d^-1) on the whole
      light curve, and in addition the run-mode LS on each run separately (``*_run`` columns: the
      run with the lowest FAP).
    * ``survey`` - sparse multi-season sampling: the survey grid (module docstring).

    Columns: ``f_max`` (d^-1), ``period`` (= 1/f_max, days), ``pwr_max`` (variance-scaled), ``fap``,
    ``log10_fap`` (eq. 5 with ``N_eff = (f range) x T``), ``fap_cal``, ``log10_fap_cal``, ``n_eff``,
    ``ls_mode``, ``f_max_run``, ``pwr_max_run``, ``log10_fap_run``, ``period_candidate_fap``
    (``FAP_cal <= fap_threshold``, calibrated per observation/splice as the paper's Figure 5),
    ``period_candidate_binned`` (a run whose Pwr_max is above the 10 sigma excess of its frequency bin
    in the Pwr_max-f_max diagram of its observation, Figure 4), ``period_candidate`` (binned for run
    mode; binned or FAP for the others, as the paper uses them), ``period_flag``.
    ``finalize`` fits the calibrations and thresholds over all partitions, writes
    ``out_dir/period_runs.parquet`` and Figures 4 and 5 plus phase-folded plots of the top
    candidates under ``out_dir/plots/<name>/``.
    """

    def __init__(
        self,
        name: str = "periodogram",
        min_epochs: int = 50,
        run_gap: float = 0.25,
        cadence_limit: float = 0.02,
        oversample: float = 5.0,
        spliced_oversample: float = 20.0,
        spliced_range: tuple[float, float] = (3.0, 12.0),
        survey_fmin: float = 0.02,
        survey_fmax: float = 50.0,
        run_fmin_factor: float = 2.0,
        fit_mean: bool = True,
        use_errors: bool = False,
        backend: str = "auto",
        dtype: str = "float32",
        device: str = "auto",
        compile: bool | str = "auto",
        fap_threshold: float = 1e-3,
        calibrate: bool = True,
        calibration_bin: float = 1.0,
        log10_cdf_min: float = -1.0,
        min_calibration_runs: int = 100,
        n_freq_bins: int = 100,
        n_sigma: float = 10.0,
        min_per_bin: int = 10,
        runs_for_spliced: bool = True,
        combine_bands: bool = False,
        combine_scale: bool = False,
        plots: bool = True,
        n_plots: int = 12,
        plot_buffer: int = 64,
    ):
        self.name = name
        self.min_epochs = int(min_epochs)
        self.run_gap = float(run_gap)
        self.cadence_limit = float(cadence_limit)
        self.oversample = float(oversample)
        self.spliced_oversample = float(spliced_oversample)
        self.spliced_range = tuple(float(v) for v in spliced_range)
        self.survey_fmin = float(survey_fmin)
        self.survey_fmax = float(survey_fmax)
        self.run_fmin_factor = float(run_fmin_factor)
        self.fit_mean = bool(fit_mean)
        self.use_errors = bool(use_errors)
        self.backend = backend
        self.dtype = dtype
        self.compile = compile
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.fap_threshold = float(fap_threshold)
        self.calibrate = bool(calibrate)
        self.calibration_bin = float(calibration_bin)
        self.log10_cdf_min = float(log10_cdf_min)
        self.min_calibration_runs = int(min_calibration_runs)
        self.n_freq_bins = int(n_freq_bins)
        self.n_sigma = float(n_sigma)
        self.min_per_bin = int(min_per_bin)
        self.runs_for_spliced = bool(runs_for_spliced)
        self.combine_bands = bool(combine_bands)
        self.combine_scale = bool(combine_scale)
        self.plots = bool(plots)
        self.n_plots = int(n_plots)
        self.plot_buffer = int(plot_buffer)
        self.reset()

    def reset(self) -> None:
        """Forget what was kept in memory (a new run without an ``out_dir``)."""
        self._log = StageLog(self.name)
        self._top: list[pd.DataFrame] = []
        self.calibrations: dict = {}
        self.thresholds: dict = {}

    def _ls(self, t, y, mask, dy, grid):
        return lomb_scargle(t, y, grid, mask=mask, dy=dy, use_errors=self.use_errors, fit_mean=self.fit_mean,
                            normalization="variance", backend=self.backend, dtype=self.dtype, device=self.device,
                            reduce="max", compile=self.compile)

    def _search_runs(self, segs, idx) -> pd.DataFrame:
        """Run-mode LS on the runs ``idx`` of ``segs``, grouped by observation (one grid per group)."""
        sb = segs.batch
        gid = group_runs(segs.t_start[idx], segs.t_end[idx], self.run_gap)
        res = {k: np.full(idx.size, np.nan) for k in ("f_max", "pwr_max", "log10_fap", "n_eff", "fmin", "fmax")}
        for g in np.unique(gid):
            sel = idx[gid == g]
            span = segs.span[sel]
            npts = segs.n_points[sel]
            T = float(np.max(span))
            # one grid per observation: the finest spacing (longest run) and the median sampling rate
            rate = float(np.median((npts - 1) / np.maximum(span, 1e-12)))
            lo = self.run_fmin_factor / float(np.median(span))
            hi = 0.5 * rate
            if not hi > lo:
                continue
            grid = frequency_grid("run", T, n_points=2, oversample=self.oversample, fmin=lo, fmax=hi)
            p, i = self._ls(sb.time[sel], sb.mag[sel], sb.mask[sel], sb.mag_err[sel], grid)
            f = np.where(i >= 0, grid.fmin + grid.df * np.maximum(i, 0), np.nan)
            n_eff = (grid.fmax - grid.fmin) * span
            _, lfap = fap_independent(p, n_eff)
            w = np.searchsorted(idx, sel)
            res["f_max"][w], res["pwr_max"][w], res["log10_fap"][w], res["n_eff"][w] = f, p, lfap, n_eff
            res["fmin"][w], res["fmax"][w] = grid.fmin, grid.fmax
        return pd.DataFrame(res)

    def search(self, batch: LightCurveBatch) -> tuple[pd.DataFrame, pd.DataFrame]:
        clean, row_flags = clean_batch(batch)
        n = len(clean)
        segs_all = split_runs(clean, gap=self.run_gap, min_points=1, clean=False)
        n_runs = segs_all.n_segments
        nvalid = clean.mask.sum(axis=1)
        mdt = _median_dt(clean.time, clean.mask)
        mode = classify_sampling(n_runs, mdt, self.cadence_limit)
        out = pd.DataFrame({
            "f_max": np.full(n, np.nan), "period": np.full(n, np.nan), "pwr_max": np.full(n, np.nan),
            "fap": np.full(n, np.nan), "log10_fap": np.full(n, np.nan), "fap_cal": np.full(n, np.nan),
            "log10_fap_cal": np.full(n, np.nan), "n_eff": np.full(n, np.nan), "ls_mode": mode.astype(str),
            "f_max_run": np.full(n, np.nan), "pwr_max_run": np.full(n, np.nan),
            "log10_fap_run": np.full(n, np.nan),
            "period_candidate_fap": np.zeros(n, bool), "period_candidate_binned": np.zeros(n, bool),
            "period_candidate": np.zeros(n, bool),
        })
        # --- run mode, on every uninterrupted run long enough (single-run rows and runs of spliced rows)
        segs = split_runs(clean, gap=self.run_gap, min_points=self.min_epochs, clean=False)
        is_min_cad = mode[segs.parent] != "survey"
        if not self.runs_for_spliced:
            is_min_cad &= mode[segs.parent] == "run"
        ridx = np.flatnonzero(is_min_cad)
        runs = pd.DataFrame()
        if ridx.size:
            rr = self._search_runs(segs, ridx)
            runs = pd.DataFrame({
                "row": segs.parent[ridx], "source_id": segs.batch.source_id[ridx], "band": segs.batch.band[ridx],
                "run_index": segs.index[ridx], "t_start": segs.t_start[ridx], "t_end": segs.t_end[ridx],
                "n_points": segs.n_points[ridx], **{k: rr[k].to_numpy() for k in rr},
            })
            best = _best_per_row(runs["row"].to_numpy(), runs["log10_fap"].to_numpy())
            b = runs.iloc[best]
            r = b["row"].to_numpy()
            out.loc[r, "f_max_run"] = b["f_max"].to_numpy()
            out.loc[r, "pwr_max_run"] = b["pwr_max"].to_numpy()
            out.loc[r, "log10_fap_run"] = b["log10_fap"].to_numpy()
            single = mode[r] == "run"
            for c in ("f_max", "pwr_max", "log10_fap", "n_eff"):
                out.loc[r[single], c] = b[c].to_numpy()[single]
            self._top.append(self._top_runs(segs, ridx, runs))
        # --- spliced and survey modes on whole light curves
        for md in ("spliced", "survey"):
            rows = np.flatnonzero((mode == md) & (nvalid >= self.min_epochs))
            if rows.size == 0:
                continue
            span = np.where(clean.mask[rows], clean.time[rows], -np.inf).max(axis=1) - \
                np.where(clean.mask[rows], clean.time[rows], np.inf).min(axis=1)
            T = float(np.max(span))
            if md == "spliced":
                grid = frequency_grid("spliced", T, oversample=self.spliced_oversample,
                                      spliced_range=self.spliced_range)
            else:
                grid = frequency_grid("survey", T, oversample=self.oversample, survey_fmin=self.survey_fmin,
                                      survey_fmax=self.survey_fmax)
            p, i = self._ls(clean.time[rows], clean.mag[rows], clean.mask[rows], clean.mag_err[rows], grid)
            f = np.where(i >= 0, grid.fmin + grid.df * np.maximum(i, 0), np.nan)
            n_eff = (grid.fmax - grid.fmin) * span
            _, lfap = fap_independent(p, n_eff)
            out.loc[rows, "f_max"], out.loc[rows, "pwr_max"] = f, p
            out.loc[rows, "log10_fap"], out.loc[rows, "n_eff"] = lfap, n_eff
            self._top.append(self._top_rows(clean, rows, lfap, f, md))
        out["period"] = 1.0 / out["f_max"]
        out["fap"] = 10.0 ** out["log10_fap"]
        short = ~np.isfinite(out["pwr_max"].to_numpy())
        row_flags[short & (nvalid < self.min_epochs)] |= FLAG_TOO_SHORT
        row_flags[short & (nvalid >= self.min_epochs)] |= FLAG_DEGENERATE
        too_short_runs = short & (mode != "survey") & (nvalid >= self.min_epochs)
        row_flags[too_short_runs] |= FLAG_TOO_SHORT
        out["period_flag"] = row_flags
        rows_tab = pd.DataFrame({
            "source_id": clean.source_id, "band": clean.band, "ls_mode": mode.astype(str),
            "t_start": np.where(clean.mask, clean.time, np.inf).min(axis=1, initial=np.inf),
            "t_end": np.where(clean.mask, clean.time, -np.inf).max(axis=1, initial=-np.inf),
            "f_max": out["f_max"].to_numpy(), "pwr_max": out["pwr_max"].to_numpy(),
            "log10_fap": out["log10_fap"].to_numpy(), "n_runs": n_runs,
        })
        return out, runs, rows_tab

    def __call__(self, batch: LightCurveBatch, out_dir: str | Path | None = None) -> pd.DataFrame:
        self._top = []
        codes = None
        if self.combine_bands:
            batch, codes = combine_bands(batch, self.combine_scale)
        out, runs, rows_tab = self.search(batch)
        key = batch_key(batch)
        if len(runs):
            self._log.add("runs", runs.drop(columns=["row"]), out_dir, key)
        self._log.add("rows", rows_tab, out_dir, key)
        top = [t for t in self._top if len(t)]
        if top:
            self._log.add("top", pd.concat(top, ignore_index=True), out_dir, key)
        self._top = []
        return out if codes is None else out.iloc[codes].reset_index(drop=True)

    # -------------------------------------------------------------- candidate light curves for plots
    def _top_runs(self, segs, ridx, runs) -> pd.DataFrame:
        if not (self.plots and self.plot_buffer > 0):
            return pd.DataFrame()
        lf = runs["log10_fap"].to_numpy()
        # the lowest FAPs, and the highest powers in each decade of frequency (Figure 4 selects per bin)
        order = np.argsort(np.where(np.isfinite(lf), lf, np.inf))[: self.plot_buffer]
        logf = np.floor(np.log10(np.where(runs["f_max"].to_numpy() > 0, runs["f_max"].to_numpy(), np.nan)) * 4)
        pw = runs["pwr_max"].to_numpy()
        extra = pd.DataFrame({"b": logf, "p": pw}).dropna().sort_values("p").groupby("b").tail(2).index.to_numpy()
        order = np.union1d(order[np.isfinite(lf[order])], extra)
        sel = ridx[order]
        return _long_table(segs.batch, sel, segs.n_points[sel], {
            "kind": "run", "run_index": segs.index[sel], "log10_fap": lf[order],
            "f_max": runs["f_max"].to_numpy()[order], "fmin": runs["fmin"].to_numpy()[order],
            "fmax": runs["fmax"].to_numpy()[order]})

    def _top_rows(self, clean, rows, lfap, f, md) -> pd.DataFrame:
        if not (self.plots and self.plot_buffer > 0):
            return pd.DataFrame()
        order = np.argsort(np.where(np.isfinite(lfap), lfap, np.inf))[: self.plot_buffer]
        order = order[np.isfinite(lfap[order])]
        sel = rows[order]
        return _long_table(clean, sel, clean.mask[sel].sum(axis=1), {
            "kind": md, "run_index": np.full(order.size, -1), "log10_fap": lfap[order], "f_max": f[order],
            "fmin": np.full(order.size, np.nan), "fmax": np.full(order.size, np.nan)})

    # -------------------------------------------------------------- whole run set
    def calibrate_all(self, runs: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Binned 10 sigma thresholds per observation (runs) and FAP calibration per observation/splice."""
        runs = runs.copy()
        rows = rows.copy()
        self.calibrations, self.thresholds = {}, {}
        if len(runs):
            runs["obs_group"] = group_runs(runs["t_start"].to_numpy(), runs["t_end"].to_numpy(), self.run_gap)
            runs["pwr_threshold"] = np.nan
            for g, idx in runs.groupby("obs_group").indices.items():
                sub = runs.iloc[idx]
                ok = np.isfinite(sub.f_max) & np.isfinite(sub.pwr_max)
                if ok.sum() == 0:
                    continue
                lo = np.nanmin(sub.fmin)
                hi = np.nanmax(sub.fmax)
                thr = binned_excess_threshold(sub.f_max[ok], sub.pwr_max[ok], n_bins=self.n_freq_bins,
                                              n_sigma=self.n_sigma, min_per_bin=self.min_per_bin, range=(lo, hi))
                self.thresholds[int(g)] = thr
                runs.iloc[idx, runs.columns.get_loc("pwr_threshold")] = thr(sub.f_max.to_numpy())
            runs["candidate_binned"] = runs["pwr_max"] > runs["pwr_threshold"]
        # FAP calibration: run-mode rows by observation, spliced rows by their set of observations,
        # survey rows together
        rows["cal_group"] = rows["ls_mode"].astype(str)
        if len(runs):
            single = runs.merge(rows[["source_id", "band", "ls_mode"]], on=["source_id", "band"], how="left")
            single = single[single.ls_mode == "run"]
            gmap = dict(zip(single.source_id.astype(str) + "\x1f" + single.band.astype(str),
                            "run:" + single.obs_group.astype(str)))
            key = rows.source_id.astype(str) + "\x1f" + rows.band.astype(str)
            rm = rows.ls_mode == "run"
            rows.loc[rm, "cal_group"] = key[rm].map(gmap).fillna("run:?").to_numpy()
        sp_ = rows.ls_mode == "spliced"
        if sp_.any():
            day0 = np.floor(rows.loc[sp_, "t_start"].to_numpy() - 0.25)
            day1 = np.floor(rows.loc[sp_, "t_end"].to_numpy() - 0.25)
            rows.loc[sp_, "cal_group"] = [f"spliced:{a:.0f}-{b:.0f}" for a, b in zip(day0, day1)]
        lf = rows["log10_fap"].to_numpy()
        k = np.ones(len(rows))
        for g, idx in rows.groupby("cal_group").indices.items():
            cal = fit_cdf_calibration(lf[idx], self.calibration_bin, self.log10_cdf_min, self.min_calibration_runs)
            self.calibrations[g] = cal
            if self.calibrate and cal.fitted:
                k[idx] = cal.k
            elif self.calibrate:
                log.warning("%s: FAP calibration group %s (%d light curves) not fitted (%s); k = 1",
                            self.name, g, len(idx), cal.reason)
        rows["k_fap"] = k
        rows["log10_fap_cal"] = k * lf
        rows["candidate_fap"] = rows["log10_fap_cal"] <= np.log10(self.fap_threshold)
        return runs, rows

    def finalize(self, features: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
        out_dir = Path(out_dir)
        keys = None
        if {"source_id", "band"} <= set(features.columns) and not self.combine_bands:
            keys = features[["source_id", "band"]]
        runs = self._log.collect("runs", out_dir, keys)
        rows = self._log.collect("rows", out_dir, keys, unique=("source_id", "band"))
        if not len(rows):
            log.warning("%s: nothing to calibrate (no partition computed)", self.name)
            return features
        runs, rows = self.calibrate_all(runs, rows)
        from skyvar.utils.atomic import atomic_path, write_json_atomic

        if len(runs):
            with atomic_path(out_dir / "period_runs.parquet") as tmp:
                runs.to_parquet(tmp, index=False)
        write_json_atomic(out_dir / "plots" / self.name / "calibration.json",
                          {str(g): c.as_dict() for g, c in self.calibrations.items()})
        if not {"source_id", "band"} <= set(features.columns):
            log.warning("%s: features have no source_id/band; calibrated columns not merged", self.name)
            return features
        features = features.copy()
        key_f, key_r, key_runs = (self._key(features), self._key(rows), self._key(runs) if len(runs) else None)
        rr = rows.set_index(key_r)
        rr = rr[~rr.index.duplicated()]
        features["log10_fap_cal"] = key_f.map(rr.log10_fap_cal).to_numpy()
        features["fap_cal"] = 10.0 ** features["log10_fap_cal"]
        features["period_candidate_fap"] = key_f.map(rr.candidate_fap).astype("boolean").fillna(False).to_numpy(bool)
        if len(runs):
            anyb = runs.groupby(key_runs).candidate_binned.any()
            features["period_candidate_binned"] = key_f.map(anyb).astype("boolean").fillna(False).to_numpy(bool)
        is_run = features.get("ls_mode", pd.Series("run", index=features.index)).astype(str) == "run"
        features["period_candidate"] = features["period_candidate_binned"] | (
            features["period_candidate_fap"] & ~is_run.to_numpy())
        log.info("%s: %d periodic candidates (%d binned %g-sigma, %d FAP_cal <= %g)", self.name,
                 int(features.period_candidate.sum()), int(features.period_candidate_binned.sum()), self.n_sigma,
                 int(features.period_candidate_fap.sum()), self.fap_threshold)
        if self.plots:
            try:
                top = self._log.collect("top", out_dir, keys, unique=("source_id", "band", "kind", "run_index", "point"))
                self._plot(runs, rows, features, top, out_dir / "plots" / self.name)
            except Exception as e:  # never lose the table for a plot
                log.error("%s: plotting failed: %s", self.name, e)
        return features

    def _join(self, k: tuple) -> str:
        return str(k[0]) if self.combine_bands else f"{k[0]}\x1f{k[1]}"

    def _key(self, df: pd.DataFrame) -> pd.Series:
        """Row key: source and band, or the source alone when bands are combined."""
        if self.combine_bands:
            return df.source_id.astype(str)
        return df.source_id.astype(str) + "\x1f" + df.band.astype(str)

    def _plot(self, runs, rows, features, top, pdir: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from skyvar.utils.atomic import savefig_atomic

        if len(runs) and self.thresholds:
            groups = sorted(self.thresholds)
            ncol = min(3, len(groups))
            nrow = int(np.ceil(len(groups) / ncol))
            fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.5 * nrow), squeeze=False)
            for ax, g in zip(axes.flat, groups):
                sub = runs[runs.obs_group == g]
                thr = self.thresholds[g]
                c = sub.candidate_binned.to_numpy(bool)
                ax.scatter(sub.f_max[~c], sub.pwr_max[~c], s=2, c="0.5", label=f"N={int((~c).sum())} below")
                ax.scatter(sub.f_max[c], sub.pwr_max[c], s=25, facecolors="none", edgecolors="tab:red",
                           label=f"N={int(c.sum())} above")
                ax.stairs(thr.threshold, thr.edges, color="tab:red", lw=1, label=f"{thr.n_sigma:g} sigma")
                ax.set_yscale("log")
                ax.set_xlabel("f_max (d^-1)")
                ax.set_ylabel("Pwr_max")
                ax.set_title(f"observation {g} (t0={sub.t_start.min():.2f})", fontsize=9)
                ax.legend(fontsize=7)
            for ax in list(axes.flat)[len(groups):]:
                ax.set_visible(False)
            fig.suptitle("Pwr_max - f_max diagram (cf. paper Fig. 4)")
            savefig_atomic(fig, pdir / "pwr_fmax.png")
            plt.close(fig)
        if self.calibrations:
            groups = sorted(self.calibrations)
            ncol = min(3, len(groups))
            nrow = int(np.ceil(len(groups) / ncol))
            fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
            for ax, g in zip(axes.flat, groups):
                plot_cdf_calibration(ax, self.calibrations[g], label=g, quantity="FAP")
            for ax in list(axes.flat)[len(groups):]:
                ax.set_visible(False)
            fig.suptitle("FAP calibration (cf. paper Fig. 5)")
            savefig_atomic(fig, pdir / "fap_cdf.png")
            plt.close(fig)
        cand = features[features.period_candidate]
        if not len(cand) or not len(top):
            return
        keys = set(self._key(cand))
        tk = self._key(top)
        top = top[tk.isin(keys).to_numpy()]
        if not len(top):
            return
        order = top.groupby([top.source_id.astype(str), top.band.astype(str), top.kind, top.run_index],
                            sort=False).log10_fap.first().sort_values()
        groups = top.groupby([top.source_id.astype(str), top.band.astype(str), top.kind, top.run_index], sort=False)
        # half of the figures for short-period (run-mode, binned 10-sigma) candidates, as the paper's Fig. 10
        binned = set(self._key(features[features.period_candidate_binned]))
        is_run = np.array([k[2] == "run" and self._join(k) in binned for k in order.index], dtype=bool)
        n_run = min(int(is_run.sum()), max(self.n_plots // 2, self.n_plots - int((~is_run).sum())))
        picks = list(order.index[is_run][:n_run]) + list(order.index[~is_run][: self.n_plots - n_run])
        for gkey in picks:  # at most n_plots figures
            p = groups.get_group(gkey).sort_values("point")
            f_max = float(p.f_max.iloc[0])
            if not np.isfinite(f_max):
                continue
            P = 1.0 / f_max
            t, m, e = p.time.to_numpy(), p.mag.to_numpy(), p.mag_err.to_numpy()
            kind = p.kind.iloc[0]
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
            if kind == "run":
                grid = frequency_grid("run", t[-1] - t[0], 2, self.oversample, fmin=float(p.fmin.iloc[0]),
                                      fmax=float(p.fmax.iloc[0]))
            elif kind == "spliced":
                grid = frequency_grid("spliced", t[-1] - t[0], oversample=self.spliced_oversample,
                                      spliced_range=self.spliced_range)
            else:
                grid = frequency_grid("survey", t[-1] - t[0], oversample=self.oversample,
                                      survey_fmin=self.survey_fmin, survey_fmax=self.survey_fmax)
            pw = lomb_scargle(t, m, grid, normalization="variance", fit_mean=self.fit_mean, backend="nifty")
            a1.plot(grid.freq, pw, "k-", lw=0.3)
            a1.axvline(f_max, c="tab:red", lw=0.8, ls=":")
            span = t[-1] - t[0]
            if kind != "run" and grid.nf > 2000:  # fringes of the run separation: zoom on the peak
                ins = a1.inset_axes([0.58, 0.55, 0.4, 0.4])
                z = np.abs(grid.freq - f_max) < 12.0 / span
                ins.plot(grid.freq[z], pw[z], "k-", lw=0.6)
                ins.axvline(f_max, c="tab:red", lw=0.8, ls=":")
                ins.tick_params(labelsize=6)
            a1.set_xlabel("frequency (d^-1)")
            a1.set_ylabel("power (variance-scaled)")
            a1.set_title(f"{gkey[0]} {gkey[1]} ({kind if gkey[3] < 0 else f'run {gkey[3]}'}) "
                         f"log10 FAP={p.log10_fap.iloc[0]:.1f}", fontsize=9)
            ph = np.mod((t - t[0]) / P, 1.0)
            for off in (0, 1):
                a2.errorbar(ph + off, m, e, fmt=".", ms=3, c="k", lw=0.4)
            a2.invert_yaxis()
            a2.set_xlabel(f"phase (P = {P * 24 * 60:.2f} min = {P:.5f} d)")
            a2.set_ylabel("mag")
            sid = str(gkey[0]).replace("/", "_")
            savefig_atomic(fig, pdir / "candidates" / f"{sid}_{gkey[1]}_{kind}{max(int(gkey[3]), 0)}.png")
            plt.close(fig)


def _long_table(batch: LightCurveBatch, sel: np.ndarray, npts: np.ndarray, per_lc: dict) -> pd.DataFrame:
    """Long (one row per point) table of the light curves ``sel`` of ``batch`` plus per-curve values."""
    if len(sel) == 0:
        return pd.DataFrame()
    k = np.repeat(np.arange(len(sel)), npts)
    i = sel[k]
    j = np.arange(npts.sum()) - np.repeat(np.cumsum(npts) - npts, npts)
    df = pd.DataFrame({"source_id": batch.source_id[i], "band": batch.band[i], "point": j,
                       "time": batch.time[i, j], "mag": batch.mag[i, j], "mag_err": batch.mag_err[i, j]})
    for c, v in per_lc.items():
        df[c] = v if np.ndim(v) == 0 else np.asarray(v)[k]
    return df


def _best_per_row(rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    s = np.where(np.isfinite(score), score, np.inf)
    order = np.lexsort((s, rows))
    first = np.ones(order.size, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    return order[first]
