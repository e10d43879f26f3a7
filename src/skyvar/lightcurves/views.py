"""Astronet inputs from light curves: cleaning, box least squares, folding, global/local views.

The preprocessing follows the dense-field paper (§4.1) and Astronet (Shallue & Vanderburg 2018;
Astronet-Triage, Yu et al. 2019), vectorised over many light curves (padded batches, torch on CPU or
GPU, no Python loop over light curves):

1. **Flux and grid.** Magnitudes become relative flux ``f = 10^(-0.4 (m - m_med))`` (``m_med`` the
   light curve's median magnitude, so the quiescent level is 1 and eclipses/transits are dips), with
   errors ``σ_f = 0.4 ln10 f σ_m``. Points are placed on a regular time grid of the survey cadence
   (``cadence``, default the median time step of the batch; CSST: 300 s) common to the batch;
   measurements sharing a slot are averaged with inverse-variance weights. Non-finite values, masked
   or store-flagged points are missing.
2. **3σ outliers.** Points more than ``clip_sigma`` robust standard deviations (1.4826 MAD) above the
   median flux are removed (``clip_side="upper"``, default): one-sided like Astronet-Triage's cut of
   brightening outliers, because the dips are the signal and a symmetric cut would erase the
   eclipses of deep binaries. ``clip_side="both"`` clips both sides.
3. **Gaps.** Missing and clipped slots are filled by linear interpolation between the neighbouring
   measurements when the gap is at most ``max_gap`` days; longer gaps and the ends stay empty.
   Interpolated values feed the median filter and the views but carry zero weight in the BLS.
4. **Median filter** of ``median_window`` slots (NaN-aware) smooths the series used for the views.
5. **Box least squares** (Kovács et al. 2002) on the cleaned, unfiltered measurements with their
   inverse-variance weights (:func:`bls_search`): a log-uniform period grid from ``period_min`` to the
   baseline with a step set by the shortest duration tried, durations from ``durations`` within
   duty cycles ``[min_duty, max_duty]`` of the period, dips only. The objective is the
   log-likelihood improvement of a two-level box model, ``ΔlogL = ½ depth² / σ_depth²`` with
   ``σ_depth² = 1/W_in + 1/W_out`` (Kovács' signal residue; astropy's ``objective="snr"`` ranks boxes
   the same way, its ``"likelihood"`` keeps only ``1/W_in``);
   ``depth_snr = depth / σ_depth``; ``sde`` is the signal detection efficiency
   ``(max − mean) / std`` of the periodogram. ``method="torch"`` (default) bins all light curves of a
   chunk at once per trial period (the grid is shared, so one ``index_add_`` bins every curve);
   ``method="astropy"`` calls :class:`astropy.timeseries.BoxLeastSquares` curve by curve (the peer
   it is tested against).
6. **Folding and views.** Phase time ``x = ((t − t0 + P/2) mod P) − P/2`` (event at 0). The global
   view is the median flux in ``global_bins`` (201) bins over ``[−P/2, P/2)``, each
   ``global_bin_width_factor·P`` wide (Astronet: 1.2 P / 201, overlapping); the local view uses
   ``local_bins`` (61) bins over ``±local_num_durations`` durations (capped at ±P/2), each
   ``local_bin_width_factor`` durations wide. Empty bins are interpolated from their neighbours.
   Each view is normalised to its peak: ``(v − median(v)) / max|v − median(v)|``, so its largest
   excursion is ±1 (the dense-field paper's "normalisation to the peak"); the amplitude itself goes
   to the auxiliary features.
7. **Auxiliary features** (raw, per light curve): period [d], duration [d], depth [relative flux],
   median magnitude, BLS depth S/N, SDE. :class:`AuxScaler` standardises them (log10 for the positive
   scale quantities, then z-scores fitted on a training set).

Bad input never raises: light curves with fewer than ``min_points`` usable points get
``FLAG_TOO_FEW_POINTS``; no dip found or a periodogram peak below ``min_sde`` gives
``FLAG_NO_PERIOD``; a view with too few filled bins gives ``FLAG_BAD_VIEW``. Flagged rows have NaN
views (their BLS numbers are kept when they exist). Same input and config give identical output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import pandas as pd
import torch

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.utils.log import get_logger

log = get_logger(__name__)

FLAG_TOO_FEW_POINTS = 1
FLAG_NO_PERIOD = 2
FLAG_BAD_VIEW = 4
FLAG_OUT_OF_RANGE = 8  # set by callers: the light curve lies outside what a model was trained on
FLAG_NAMES = {FLAG_TOO_FEW_POINTS: "too_few_points", FLAG_NO_PERIOD: "no_significant_period",
              FLAG_BAD_VIEW: "bad_view", FLAG_OUT_OF_RANGE: "out_of_range"}

AUX_FEATURES = ("period", "duration", "depth", "mag", "depth_snr", "sde")
#: Extra auxiliary features with ``ViewConfig.vetting`` (centroid-free vetting statistics, see
#: :func:`vetting_statistics`).
AUX_VETTING = ("depth_secondary_snr", "odd_even_sigma", "n_events")
#: Local-view channels with ``ViewConfig.vetting``.
LOCAL_CHANNELS = ("primary", "secondary", "odd", "even")
#: Auxiliary features standardised on a log10 scale (positive scale quantities).
LOG_FEATURES = ("period", "duration", "depth", "depth_snr", "sde")

LN10_04 = 0.4 * math.log(10.0)
MAX_TRIAL_PERIODS = 50_000


@dataclasses.dataclass
class ViewConfig:
    """Parameters of :func:`compute_views`. Times in days, fluxes relative to the median."""

    cadence: float | None = None  # grid step [d]; None: median time step of the batch
    max_grid_factor: float = 8.0  # refuse grids longer than this times the longest light curve
    drop_flagged: bool = True  # points with a non-zero store flag are missing
    min_points: int = 50
    clip_sigma: float = 3.0
    clip_side: str = "upper"  # upper | both
    max_gap: float = 0.05  # [d] longest gap filled by linear interpolation (CSST: 14 slots)
    median_window: int = 3  # slots
    # BLS
    period_min: float = 0.1
    period_max: float | None = None  # None: the baseline of the batch
    durations: tuple[float, ...] = (0.01, 0.015, 0.02, 0.03, 0.045, 0.065, 0.09, 0.13, 0.18, 0.25, 0.35)
    min_duty: float = 0.015
    max_duty: float = 0.25
    bins_per_duration: int = 2  # phase bins per shortest duration (torch method)
    period_oversample: float = 1.0  # trial periods per shortest-duration phase drift over the baseline
    min_transit_points: int = 3
    min_sde: float = 0.0  # FLAG_NO_PERIOD below this SDE (0: only when no dip is found at all)
    min_depth_snr: float = 0.0
    method: str = "torch"  # torch | astropy
    # views
    global_bins: int = 201
    global_bin_width_factor: float = 1.2 / 201
    local_bins: int = 61
    local_num_durations: float = 3.0
    local_bin_width_factor: float = 0.16
    min_filled_fraction: float = 0.5
    # vetting (eclipsing-binary / blend discriminants, no centroids): the local view gains channels at
    # the secondary eclipse (phase 0.5) and of odd and even events (all on the primary's scale), and
    # the auxiliary features gain AUX_VETTING
    vetting: bool = False
    # execution
    device: str = "cpu"
    chunk_size: int = 2048  # light curves per view-building step
    bls_chunk: int = 256  # light curves per BLS step (small keeps the per-period arrays in cache)
    num_threads: int | None = None  # torch intra-op threads during the call (None: leave as is)


@dataclasses.dataclass
class BLSResult:
    """Best box per light curve (NaN where none): period, duration [d], t0 [same time scale as input,
    mid-event], depth [relative flux], depth_snr, power (ΔlogL), sde, n_in (in-event measurements)."""

    period: np.ndarray
    duration: np.ndarray
    t0: np.ndarray
    depth: np.ndarray
    depth_snr: np.ndarray
    power: np.ndarray
    sde: np.ndarray
    n_in: np.ndarray
    periods: np.ndarray | None = None  # trial periods (nP,)
    periodogram: np.ndarray | None = None  # (n, nP) best ΔlogL per trial period, when kept

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({f"bls_{k}": getattr(self, k) for k in
                             ("period", "duration", "t0", "depth", "depth_snr", "power", "sde", "n_in")})


@dataclasses.dataclass
class GriddedLightCurves:
    """Light curves on the common regular grid ``t_ref + k·dt``, k = 0..K-1 (see module docstring)."""

    t_ref: float
    dt: float
    flux: np.ndarray  # (n, K) cleaned measurements, NaN where missing or clipped
    ivar: np.ndarray  # (n, K) inverse variance of ``flux``; 0 where missing or clipped
    filled: np.ndarray  # (n, K) interpolated over short gaps, then median filtered (NaN in long gaps)
    mag: np.ndarray  # (n,) median magnitude
    n_points: np.ndarray  # (n,) measurements used
    n_clipped: np.ndarray  # (n,)

    @property
    def time(self) -> np.ndarray:
        return self.t_ref + self.dt * np.arange(self.flux.shape[1])


@dataclasses.dataclass
class Views:
    """Output of :func:`compute_views` for ``n`` light curves."""

    source_id: np.ndarray
    global_view: np.ndarray  # (n, global_bins) float32, NaN when flagged
    local_view: np.ndarray  # (n, local_bins) float32 (vetting: (n, 4, local_bins)), NaN when flagged
    aux: np.ndarray  # (n, len(AUX_FEATURES)) raw auxiliary features
    flag: np.ndarray  # (n,) int32 bit mask (FLAG_*)
    bls: BLSResult
    n_points: np.ndarray
    n_clipped: np.ndarray

    def __len__(self) -> int:
        return len(self.flag)

    @property
    def ok(self) -> np.ndarray:
        return self.flag == 0

    def table(self) -> pd.DataFrame:
        """One row per light curve: source_id, flag, n_points, n_clipped, bls_* columns."""
        df = pd.DataFrame({"source_id": self.source_id, "view_flag": self.flag, "n_points": self.n_points,
                           "n_clipped": self.n_clipped})
        return pd.concat([df, self.bls.to_frame()], axis=1)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------- preprocessing
def _row_nanmedian(a: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (mean of the two middle values), NaN for empty rows."""
    if a.size == 0:
        return np.full(a.shape[0], np.nan)
    s = np.sort(a, axis=1)  # NaN sort last
    c = np.isfinite(a).sum(1)
    lo = np.clip((c - 1) // 2, 0, a.shape[1] - 1)
    hi = np.clip(c // 2, 0, a.shape[1] - 1)
    r = np.arange(a.shape[0])
    out = 0.5 * (s[r, lo] + s[r, hi])
    out[c == 0] = np.nan
    return out


def _interp_gaps(y: np.ndarray, valid: np.ndarray, max_slots: int) -> np.ndarray:
    """Linearly interpolate rows of ``y`` over invalid slots in gaps of at most ``max_slots`` slots
    (NaN elsewhere outside valid slots); vectorised over rows."""
    n, K = y.shape
    idx = np.broadcast_to(np.arange(K), (n, K))
    prev = np.maximum.accumulate(np.where(valid, idx, -1), axis=1)
    nxt = np.minimum.accumulate(np.where(valid, idx, K)[:, ::-1], axis=1)[:, ::-1]
    ok = (prev >= 0) & (nxt < K) & ((nxt - prev - 1) <= max_slots)
    r = np.arange(n)[:, None]
    p = np.clip(prev, 0, K - 1)
    q = np.clip(nxt, 0, K - 1)
    yp, yq = y[r, p], y[r, q]
    span = np.maximum(q - p, 1)
    w = (idx - p) / span
    out = np.where(ok, yp + w * (yq - yp), np.nan)
    return np.where(valid, y, out)


def _median_filter_rows(y: np.ndarray, window: int, device: str) -> np.ndarray:
    """NaN-aware running median over ``window`` slots (odd), edges use the available neighbours."""
    if window <= 1:
        return y
    h = window // 2
    t = torch.as_tensor(y, device=device)
    pad = torch.nn.functional.pad(t, (h, h), value=float("nan"))
    win = pad.unfold(1, window, 1)  # (n, K, window)
    # torch.nanmedian returns the lower median for even counts; take the mean of the two middles
    s, _ = torch.sort(win, dim=-1)  # NaN sorts last
    c = torch.isfinite(win).sum(-1)
    lo = ((c - 1) // 2).clamp_min(0)
    hi = (c // 2).clamp_max(window - 1)
    med = 0.5 * (s.gather(-1, lo[..., None]) + s.gather(-1, hi[..., None]))[..., 0]
    med = torch.where(c > 0, med, torch.full_like(med, float("nan")))
    return torch.where(torch.isfinite(t), med, t).cpu().numpy()


def grid_light_curves(batch: LightCurveBatch, cfg: ViewConfig) -> GriddedLightCurves:
    """Steps 1–4 of the module docstring. Raises ``ValueError`` only for a batch whose times cannot
    form a grid (no finite time at all, or a cadence that would need an absurdly long grid)."""
    n = len(batch)
    mag = np.asarray(batch.mag, float)
    time = np.asarray(batch.time, float)
    err = np.asarray(batch.mag_err, float) if batch.mag_err is not None else np.full(mag.shape, np.nan)
    valid = np.asarray(batch.mask, bool) & np.isfinite(time) & np.isfinite(mag)
    if cfg.drop_flagged and batch.flag is not None:
        valid &= np.asarray(batch.flag) == 0
    n_valid = valid.sum(1)
    if not valid.any():
        empty = np.full((n, 1), np.nan)
        return GriddedLightCurves(0.0, cfg.cadence or 1.0, empty, np.zeros((n, 1)), empty.copy(),
                                  np.full(n, np.nan), np.zeros(n, int), np.zeros(n, int))
    tv = np.where(valid, time, np.nan)
    if cfg.cadence:
        dt = float(cfg.cadence)
    else:
        d = np.diff(np.sort(tv, axis=1), axis=1)
        d = d[np.isfinite(d) & (d > 0)]
        if d.size == 0:
            dt = 1.0
        else:
            dt = float(np.median(d))
    t_ref = float(np.nanmin(tv))
    K = int(round((np.nanmax(tv) - t_ref) / dt)) + 1
    if K > max(cfg.max_grid_factor * max(int(n_valid.max()), 1), 16):
        raise ValueError(
            f"light curves span {K} cadences of {dt * 1440:.3g} min but hold at most {int(n_valid.max())} "
            "points: views need a (near-)regular cadence; set ViewConfig.cadence explicitly or raise "
            "max_grid_factor")
    m_med = _row_nanmedian(np.where(valid, mag, np.nan))
    f = 10.0 ** (-0.4 * (mag - m_med[:, None]))
    sf = LN10_04 * f * err
    # Missing or invalid errors: use the row's point-to-point scatter (robust), one value per row.
    good_err = valid & np.isfinite(sf) & (sf > 0)
    if not good_err[valid].all():
        fs = np.where(valid, f, np.nan)
        p2p = np.abs(np.diff(fs, axis=1)) / math.sqrt(2)
        sig = 1.4826 * _row_nanmedian(p2p)
        sig = np.where(np.isfinite(sig) & (sig > 0), sig, 1.0)
        sf = np.where(good_err, sf, sig[:, None])
    w = np.where(valid, 1.0 / np.where(valid, sf, 1.0) ** 2, 0.0)
    k = np.clip(np.rint((np.where(valid, time, t_ref) - t_ref) / dt).astype(np.int64), 0, K - 1)
    flat = (np.arange(n)[:, None] * K + k)[valid]
    W = np.bincount(flat, weights=w[valid], minlength=n * K).reshape(n, K)
    WF = np.bincount(flat, weights=(w * np.where(valid, f, 0.0))[valid], minlength=n * K).reshape(n, K)
    occ = W > 0
    flux = np.where(occ, WF / np.where(occ, W, 1.0), np.nan)
    n_points = occ.sum(1)
    # 3σ rule with a robust σ
    med = _row_nanmedian(flux)
    sig = 1.4826 * _row_nanmedian(np.abs(flux - med[:, None]))
    dev = (flux - med[:, None]) / np.where(sig > 0, sig, np.inf)[:, None]
    bad = dev > cfg.clip_sigma if cfg.clip_side == "upper" else np.abs(dev) > cfg.clip_sigma
    if cfg.clip_side not in ("upper", "both"):
        raise ValueError(f"clip_side must be 'upper' or 'both', got {cfg.clip_side!r}")
    bad &= occ
    n_clipped = bad.sum(1)
    keep = occ & ~bad
    flux = np.where(keep, flux, np.nan)
    W = np.where(keep, W, 0.0)
    max_slots = int(math.floor(cfg.max_gap / dt + 1e-9))
    filled = _interp_gaps(np.where(keep, flux, 0.0), keep, max_slots)
    filled = _median_filter_rows(filled, int(cfg.median_window), cfg.device)
    return GriddedLightCurves(t_ref, dt, flux, W, filled, m_med, n_points - n_clipped, n_clipped)


# ------------------------------------------------------------------------------------------------ BLS
def period_grid(baseline: float, cfg: ViewConfig) -> np.ndarray:
    """Log-uniform-ish trial periods [d]: consecutive periods differ by ``dP/P = d_min(P) / (os·T)``
    so that the accumulated phase drift over the baseline ``T`` stays below ``d_min(P)/os``, with
    ``d_min(P)`` the shortest duration tried at ``P``."""
    p_max = float(cfg.period_max or baseline)
    p = float(cfg.period_min)
    if not (np.isfinite(baseline) and baseline > 0 and p_max > p):
        return np.zeros(0)
    out = []
    while p <= p_max * (1 + 1e-12):
        if len(out) >= MAX_TRIAL_PERIODS:
            raise ValueError(f"a {baseline:.4g}-day baseline with periods up to {p_max:.4g} d needs more than "
                             f"{MAX_TRIAL_PERIODS} trial periods: lower ViewConfig.period_max or split the light curve "
                             "(these views are meant for dense time series of days to weeks)")
        out.append(p)
        d = durations_for(p, cfg)
        p *= 1.0 + d.min() / (cfg.period_oversample * baseline)
    return np.asarray(out)


def durations_for(period: float, cfg: ViewConfig) -> np.ndarray:
    """Durations tried at ``period``: those with duty cycle in [min_duty, max_duty] (at least the one
    closest to that range)."""
    d = np.asarray(cfg.durations, float)
    sel = (d >= cfg.min_duty * period) & (d <= cfg.max_duty * period)
    if not sel.any():
        sel = np.zeros(len(d), bool)
        sel[np.argmin(np.abs(np.log(d / (np.sqrt(cfg.min_duty * cfg.max_duty) * period))))] = True
    return d[sel]


def bls_search(t: np.ndarray, y: np.ndarray, ivar: np.ndarray, cfg: ViewConfig,
               keep_periodogram: bool = False) -> BLSResult:
    """Box least squares for ``n`` light curves sampled at common times ``t`` (K,) [d].

    ``y`` (n, K) relative flux (NaN where missing), ``ivar`` (n, K) inverse variances (0 where
    missing). Only dips are fitted (depth > 0). Returns the best box per curve (see
    :class:`BLSResult`); rows without any valid box get NaN.
    """
    t = np.asarray(t, float)
    y = np.asarray(y, float)
    ivar = np.where(np.isfinite(y), np.asarray(ivar, float), 0.0)
    y = np.where(ivar > 0, y, 0.0)
    used = ivar > 0
    baseline = float(t[used.any(0)].max() - t[used.any(0)].min()) if used.any() else 0.0
    periods = period_grid(baseline, cfg)
    if cfg.method == "astropy":
        res = _bls_astropy(t, y, ivar, periods, cfg, keep_periodogram)
    elif cfg.method == "torch":
        res = _bls_torch(t, y, ivar, periods, cfg, keep_periodogram)
    else:
        raise ValueError(f"unknown BLS method {cfg.method!r} (torch | astropy)")
    res.periods = periods
    return res


def _empty_result(n: int) -> dict:
    return {k: np.full(n, np.nan) for k in ("period", "duration", "t0", "depth", "depth_snr", "power")} | {
        "n_in": np.zeros(n, np.int64)}


def _sde(pg: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = pg.mean(1)
        sd = pg.std(1)
        return np.where(sd > 0, (pg.max(1) - mu) / sd, np.nan)


def _bls_torch(t, y, ivar, periods, cfg, keep):
    """Binned BLS, all curves of a chunk per trial period; the grid is shared, so one ``index_add_``
    over the time axis bins every curve with the same phase index. Scores in float32 (the winning box is re-measured exactly in float64 by :func:`box_statistics`)."""
    n = y.shape[0]
    out = _empty_result(n)
    pg_all = np.zeros((n, len(periods)), np.float32)
    if len(periods) == 0 or n == 0:
        out["sde"] = np.full(n, np.nan)
        return BLSResult(**out, periodogram=pg_all if keep else None)
    dev = torch.device(cfg.device)
    tt = torch.as_tensor(t - t[0], dtype=torch.float64, device=dev)
    plan = []
    for P in periods:  # per-period binning plan, shared by all chunks
        ds = durations_for(P, cfg)
        nb = max(int(math.ceil(P * cfg.bins_per_duration / ds.min())), 4)
        bw = P / nb
        ks = np.unique(np.clip(np.rint(ds / bw).astype(np.int64), 1, nb - 1))
        idx = torch.floor(torch.remainder(tt, P) / bw).long().clamp_(0, nb - 1)
        plan.append((nb, bw, ks, idx))
    for c0 in range(0, n, cfg.bls_chunk):
        sl = slice(c0, min(c0 + cfg.bls_chunk, n))
        w = torch.as_tensor(ivar[sl].T, dtype=torch.float64, device=dev).contiguous()
        yy = torch.as_tensor(y[sl].T, dtype=torch.float64, device=dev).contiguous()
        m = w.shape[1]
        W = w.sum(0)
        ybar = (w * yy).sum(0) / W.clamp_min(1e-300)
        yc = (yy - ybar) * (w > 0)
        # channel-first (3, K, m): each channel's box sums are contiguous slices of its cumulative sum
        stack = torch.stack([w, w * yc, (w > 0).double()], 0).float()
        W32 = W.float()
        pg = torch.zeros((len(periods), m), dtype=torch.float32, device=dev)
        arg = torch.zeros((len(periods), m), dtype=torch.long, device=dev)  # k_index * nb + start bin
        for ip, (nb, _bw, ks, idx) in enumerate(plan):
            kx = int(ks.max())
            S = torch.zeros((3, nb + kx + 1, m), dtype=torch.float32, device=dev)
            S[:, 1 : nb + 1].index_add_(1, idx, stack)
            S[:, nb + 1 :] = S[:, 1 : kx + 1]  # wrap the phase around
            C = S.cumsum_(1)
            best = None
            for ik, k in enumerate(ks):
                Wk = C[0, k : k + nb] - C[0, :nb]  # box of k bins starting at each bin
                Yk = (C[1, k : k + nb] - C[1, :nb]).clamp_(max=0.0)  # dips only
                Nk = C[2, k : k + nb] - C[2, :nb]
                ll = Yk.square_().mul_(W32).div_((Wk * (W32 - Wk)).clamp_min_(1e-30))
                ll.masked_fill_((Nk < cfg.min_transit_points - 0.5) | (Wk >= W32), 0.0)
                v, j = ll.max(0)
                if best is None:
                    best, barg = v, j
                else:
                    upd = v > best
                    best = torch.where(upd, v, best)
                    barg = torch.where(upd, j + ik * nb, barg)
            pg[ip], arg[ip] = best, barg
        ip_best = pg.argmax(0).cpu().numpy()
        best = pg.max(0).values.cpu().numpy().astype(np.float64)
        flat = arg.cpu().numpy()[ip_best, np.arange(m)]
        rows = np.arange(sl.start, sl.stop)
        found = best > 0
        for r_local in np.flatnonzero(found):  # exact statistics of the winning box (cheap, once per curve)
            ip = ip_best[r_local]
            nb, bw, ks, _ = plan[ip]
            k, j0 = ks[flat[r_local] // nb], flat[r_local] % nb
            P = periods[ip]
            out["period"][rows[r_local]] = P
            out["duration"][rows[r_local]] = k * bw
            out["t0"][rows[r_local]] = t[0] + np.mod((j0 + 0.5 * k) * bw, P)
        sel = rows[found]
        if len(sel):
            bw_sel = np.array([plan[i][1] for i in ip_best[found]])
            st = refine_box(t, y[sel], ivar[sel], out["period"][sel], out["duration"][sel], out["t0"][sel], bw_sel,
                            cfg.min_transit_points)
            for key in ("duration", "t0", "depth", "depth_snr", "power", "n_in"):
                out[key][sel] = st[key]
        pg_all[sl] = pg.T.cpu().numpy()
    out["sde"] = np.where(np.isfinite(out["power"]), _sde(pg_all.astype(np.float64)), np.nan)
    return BLSResult(**out, periodogram=pg_all if keep else None)


def refine_box(t, y, ivar, period, duration, t0, bin_width, min_points: int = 3) -> dict[str, np.ndarray]:
    """Refine the binned search's box on the unbinned data: mid-times within ±1 phase bin and durations
    0.8–1.25 times the coarse one, keeping the box of largest exact ΔlogL with a positive depth
    (the binned search quantises box edges to its phase bins)."""
    best = box_statistics(t, y, ivar, period, duration, t0)
    best["duration"], best["t0"] = np.asarray(duration, float).copy(), np.asarray(t0, float).copy()
    for fd in (0.8, 0.9, 1.0, 1.1, 1.25):
        for fs in np.linspace(-1.0, 1.0, 9):
            d = duration * fd
            tc = t0 + fs * bin_width
            st = box_statistics(t, y, ivar, period, d, tc)
            better = (st["power"] > best["power"]) & (st["depth"] > 0) & (st["n_in"] >= min_points)
            if better.any():
                for k in ("depth", "depth_snr", "power", "n_in"):
                    best[k] = np.where(better, st[k], best[k])
                best["duration"] = np.where(better, d, best["duration"])
                best["t0"] = np.where(better, tc, best["t0"])
    best["t0"] = t[0] + np.mod(best["t0"] - t[0], period)
    return best


def box_statistics(t: np.ndarray, y: np.ndarray, ivar: np.ndarray, period: np.ndarray, duration: np.ndarray,
                   t0: np.ndarray) -> dict[str, np.ndarray]:
    """Exact weighted box statistics per row for the box (period, duration, mid-time t0): depth =
    ⟨y⟩_out − ⟨y⟩_in, σ_depth = sqrt(1/W_in + 1/W_out), depth_snr, power = ½ (depth/σ_depth)² and
    n_in (measurements with ``|phase time| < duration/2``)."""
    t = np.asarray(t, float)
    w = np.where(np.isfinite(y), ivar, 0.0)
    yv = np.where(w > 0, y, 0.0)
    P, D, T0 = (np.asarray(a, float)[:, None] for a in (period, duration, t0))
    x = np.mod(t[None, :] - T0 + 0.5 * P, P) - 0.5 * P
    inb = (np.abs(x) < 0.5 * D) & (w > 0)
    Wi = (w * inb).sum(1)
    Wo = (w * ~inb).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = (w * yv * ~inb).sum(1) / Wo - (w * yv * inb).sum(1) / Wi
        err = np.sqrt(1.0 / Wi + 1.0 / Wo)
        snr = depth / err
    return {"depth": depth, "depth_snr": snr, "power": 0.5 * snr**2, "n_in": inb.sum(1).astype(np.int64)}


def aux_names(cfg: ViewConfig) -> tuple[str, ...]:
    """Names of the auxiliary-feature columns :func:`compute_views` returns for ``cfg``."""
    return AUX_FEATURES + (AUX_VETTING if cfg.vetting else ())


def vetting_statistics(t: np.ndarray, y: np.ndarray, ivar: np.ndarray, period: np.ndarray, duration: np.ndarray,
                       t0: np.ndarray) -> dict[str, np.ndarray]:
    """Centroid-free vetting statistics of the best box, per row (``y`` relative flux (n, K) on times
    ``t`` (K,), weights ``ivar``; NaN where undefined):

    - ``depth_secondary_snr``: depth S/N of the same box at phase 0.5 (an eclipsing binary's secondary
      eclipse; a transit has none);
    - ``odd_even_sigma``: |depth(odd events) − depth(even events)| / its error (an eclipsing binary
      found at half its period alternates deep and shallow eclipses);
    - ``n_events``: number of events with at least one in-box measurement.
    """
    t = np.asarray(t, float)
    w = np.where(np.isfinite(y), ivar, 0.0)
    yv = np.where(w > 0, y, 0.0)
    P, D, T0 = (np.asarray(a, float)[:, None] for a in (period, duration, t0))
    u = t[None, :] - T0 + 0.5 * P
    k = np.floor(u / P)
    x = u - k * P - 0.5 * P
    inb = (np.abs(x) < 0.5 * D) & (w > 0)
    ins = (np.abs(np.mod(x, P) - 0.5 * P) < 0.5 * D) & (w > 0) & ~inb  # the box at phase 0.5
    out = ~inb & ~ins & (w > 0)
    Wo = (w * out).sum(1)
    mo = (w * yv * out).sum(1)
    odd = np.mod(k, 2) == 1
    res = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        Ws = (w * ins).sum(1)
        res["depth_secondary_snr"] = (mo / Wo - (w * yv * ins).sum(1) / Ws) / np.sqrt(1.0 / Ws + 1.0 / Wo)
        d, var = [], []
        for sel in (odd, ~odd):
            m = inb & sel
            Wi = (w * m).sum(1)
            d.append(mo / Wo - (w * yv * m).sum(1) / Wi)
            var.append(1.0 / Wi + 1.0 / Wo)
        res["odd_even_sigma"] = np.abs(d[0] - d[1]) / np.sqrt(var[0] + var[1])
    kk = np.where(inb, k, np.nan)
    srt = np.sort(kk, axis=1)
    res["n_events"] = (np.isfinite(srt[:, :1]).sum(1) + (np.diff(srt, axis=1) > 0).sum(1)).astype(float)
    return res


def _bls_astropy(t, y, ivar, periods, cfg, keep):
    """The peer: astropy ``BoxLeastSquares`` per light curve on the same period grid, durations grouped
    so that each call's durations stay shorter than its periods (astropy's requirement)."""
    from astropy.timeseries import BoxLeastSquares

    n = y.shape[0]
    out = _empty_result(n)
    pg_all = np.zeros((n, len(periods)))
    groups: dict[tuple, list[int]] = {}
    for i, P in enumerate(periods):
        groups.setdefault(tuple(durations_for(P, cfg)), []).append(i)
    for r in range(n):
        sel = ivar[r] > 0
        if sel.sum() < max(cfg.min_transit_points + 1, 3) or len(periods) == 0:
            continue
        tr, yr, dy = t[sel], y[r][sel], 1.0 / np.sqrt(ivar[r][sel])
        model = BoxLeastSquares(tr, yr, dy=dy)
        best = (-1.0, None)
        for durs, ii in groups.items():
            # objective "snr" maximises depth / σ_depth, the same statistic as the torch search
            # (ΔlogL = ½ snr² of a two-level box); astropy's "likelihood" is ½ depth² W_in instead
            res = model.power(periods[ii], list(durs), objective="snr", oversample=cfg.bins_per_duration * 5)
            pw = np.where(np.isfinite(res.depth_snr) & (res.depth > 0), 0.5 * res.depth_snr**2, 0.0)
            pg_all[r, ii] = pw
            j = int(np.argmax(pw))
            if pw[j] > best[0]:
                best = (pw[j], (res, j))
        if best[1] is None or best[0] <= 0:
            continue
        res, j = best[1]
        out["period"][r], out["duration"][r] = res.period[j], res.duration[j]
        out["t0"][r], out["depth"][r] = res.transit_time[j], res.depth[j]
        out["depth_snr"][r], out["power"][r] = res.depth_snr[j], 0.5 * res.depth_snr[j] ** 2
        ph = np.abs(np.mod(tr - res.transit_time[j] + 0.5 * res.period[j], res.period[j]) - 0.5 * res.period[j])
        out["n_in"][r] = int((ph < 0.5 * res.duration[j]).sum())
    out["sde"] = np.where(np.isfinite(out["power"]), _sde(pg_all), np.nan)
    return BLSResult(**out, periodogram=pg_all if keep else None)


# ------------------------------------------------------------------------------------------- views
def binned_median(x: torch.Tensor, v: torch.Tensor, lo: torch.Tensor, spacing: torch.Tensor,
                  width: torch.Tensor, nbins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Median of ``v`` in ``nbins`` bins per row, bin ``j`` centred on ``lo + (j + ½)·spacing`` and
    ``width`` wide (bins may overlap). ``x``, ``v`` (n, K) with NaN ``v`` ignored; ``lo``, ``spacing``,
    ``width`` (n,). Returns (medians (n, nbins), counts (n, nbins)); empty bins are NaN."""
    n, K = x.shape
    dev = x.device
    c0 = lo + 0.5 * spacing
    m = int(torch.ceil((width / spacing).max()).item()) + 1 if n else 1
    # first bin whose window reaches x: j >= (x - w/2 - c0)/s
    jlo = torch.ceil((x - 0.5 * width[:, None] - c0[:, None]) / spacing[:, None] - 1e-9).long()
    j = jlo[..., None] + torch.arange(m, device=dev)  # (n, K, m) candidate bins
    cj = c0[:, None, None] + j * spacing[:, None, None]
    inside = (torch.abs(x[..., None] - cj) <= 0.5 * width[:, None, None]) & (j >= 0) & (j < nbins)
    inside &= torch.isfinite(v)[..., None] & torch.isfinite(x)[..., None]
    vals = v[..., None].expand(n, K, m).reshape(n, K * m)
    bins = torch.where(inside, j, torch.full_like(j, nbins)).reshape(n, K * m)
    vals = torch.where(bins < nbins, vals, torch.full_like(vals, float("inf")))
    # sort by value, then stably by bin: values ascend within each bin
    vs, o1 = torch.sort(vals, dim=1, stable=True)
    bs = bins.gather(1, o1)
    bs, o2 = torch.sort(bs, dim=1, stable=True)
    vs = vs.gather(1, o2)
    counts = torch.zeros((n, nbins + 1), dtype=torch.long, device=dev)
    counts.scatter_add_(1, bins, torch.ones_like(bins))
    counts = counts[:, :nbins]
    start = counts.cumsum(1) - counts
    lo_i = (start + (counts - 1).clamp_min(0) // 2).clamp_max(K * m - 1)
    hi_i = (start + counts // 2).clamp_max(K * m - 1)
    med = 0.5 * (vs.gather(1, lo_i) + vs.gather(1, hi_i))
    med = torch.where(counts > 0, med, torch.full_like(med, float("nan")))
    return med, counts


def _fill_and_normalise(view: torch.Tensor, min_filled: float, circular: bool,
                        ref: tuple[np.ndarray, np.ndarray] | None = None):
    """Interpolate empty bins linearly (circularly for the global view), subtract the median and
    divide by the largest absolute excursion. Returns (view, ok, (median, scale)). With ``ref`` =
    (median, scale) of another view, that view's level and scale are used (relative depths survive)
    and empty views become 0 instead of failing."""
    n, B = view.shape
    v = view.cpu().numpy().astype(np.float64)
    good = np.isfinite(v)
    ok = good.mean(1) >= min_filled
    if circular:
        v3 = np.concatenate([v, v, v], 1)
        g3 = np.concatenate([good, good, good], 1)
        f = _interp_gaps(np.where(g3, v3, 0.0), g3, 3 * B)[:, B : 2 * B]
    else:
        f = _interp_gaps(np.where(good, v, 0.0), good, B)
        # flat extrapolation at the ends
        first = np.argmax(good, 1)
        last = B - 1 - np.argmax(good[:, ::-1], 1)
        r = np.arange(n)[:, None]
        idx = np.arange(B)[None, :]
        f = np.where(idx < first[:, None], v[r, first[:, None]], f)
        f = np.where(idx > last[:, None], v[r, last[:, None]], f)
    if ref is not None:
        med, scale = ref
        good_ref = np.isfinite(scale) & (scale > 0) & np.isfinite(med)
        out = (f - med[:, None]) / np.where(good_ref, scale, 1.0)[:, None]
        out = np.where(np.isfinite(out) & good_ref[:, None], out, 0.0)
        return torch.as_tensor(out, dtype=torch.float32), torch.as_tensor(good_ref), ref
    med = _row_nanmedian(f)
    d = f - med[:, None]
    with np.errstate(invalid="ignore"):
        scale = np.nanmax(np.abs(d), axis=1) if B else np.zeros(n)
    ok &= np.isfinite(scale) & (scale > 0)
    out = np.where(ok[:, None], d / np.where(ok, scale, 1.0)[:, None], np.nan)
    return torch.as_tensor(out, dtype=torch.float32), torch.as_tensor(ok), (med, scale)


def make_views(time: np.ndarray, flux: np.ndarray, period: np.ndarray, t0: np.ndarray, duration: np.ndarray,
               cfg: ViewConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold ``flux`` (n, K) sampled at ``time`` (K,) [d] on each row's ``period``/``t0`` and build the
    global and local views (see module docstring). Returns (global (n, G), local (n, L), ok (n,))."""
    n = flux.shape[0]
    G, Lb = cfg.global_bins, cfg.local_bins
    gv = np.full((n, G), np.nan, np.float32)
    lv = np.full((n, len(LOCAL_CHANNELS), Lb) if cfg.vetting else (n, Lb), np.nan, np.float32)
    okall = np.zeros(n, bool)
    rows = np.flatnonzero(np.isfinite(period) & np.isfinite(t0) & np.isfinite(duration) & (period > 0)
                          & (duration > 0))
    dev = torch.device(cfg.device)
    for c0 in range(0, len(rows), cfg.chunk_size):
        r = rows[c0 : c0 + cfg.chunk_size]
        P = torch.as_tensor(period[r], dtype=torch.float64, device=dev)
        T0 = torch.as_tensor(t0[r], dtype=torch.float64, device=dev)
        D = torch.as_tensor(duration[r], dtype=torch.float64, device=dev)
        tt = torch.as_tensor(time, dtype=torch.float64, device=dev)[None, :]
        v = torch.as_tensor(flux[r], dtype=torch.float64, device=dev)
        x = torch.remainder(tt - T0[:, None] + 0.5 * P[:, None], P[:, None]) - 0.5 * P[:, None]
        g, _ = binned_median(x, v, -0.5 * P, P / G, cfg.global_bin_width_factor * P, G)
        half = torch.minimum(cfg.local_num_durations * D, 0.5 * P)
        loc, _ = binned_median(x, v, -half, 2 * half / Lb, cfg.local_bin_width_factor * D, Lb)
        g, okg, _ = _fill_and_normalise(g, cfg.min_filled_fraction, circular=True)
        loc, okl, ref = _fill_and_normalise(loc, cfg.min_filled_fraction, circular=False)
        gv[r] = g.numpy()
        if cfg.vetting:
            xs = torch.remainder(tt - T0[:, None], P[:, None]) - 0.5 * P[:, None]  # secondary at 0
            ev = torch.floor((tt - T0[:, None] + 0.5 * P[:, None]) / P[:, None])
            odd = torch.remainder(ev, 2) == 1
            chans = [loc]
            for xx, vv in ((xs, v), (x, torch.where(odd, v, torch.nan)), (x, torch.where(~odd, v, torch.nan))):
                c, _ = binned_median(xx, vv, -half, 2 * half / Lb, cfg.local_bin_width_factor * D, Lb)
                chans.append(_fill_and_normalise(c, 0.0, circular=False, ref=ref)[0])
            lv[r] = torch.stack(chans, 1).numpy()
        else:
            lv[r] = loc.numpy()
        okall[r] = (okg & okl).numpy()
    return gv, lv, okall


# ----------------------------------------------------------------------------------------- top level
def compute_views(batch: LightCurveBatch, cfg: ViewConfig | None = None, keep_periodogram: bool = False,
                  progress: bool = False) -> Views:
    """Clean, grid, BLS-search and fold every light curve of ``batch``; see the module docstring."""
    cfg = cfg or ViewConfig()
    n = len(batch)
    with _torch_threads(cfg.num_threads), torch.no_grad():
        g = grid_light_curves(batch, cfg)
        enough = g.n_points >= cfg.min_points
        flag = np.where(enough, 0, FLAG_TOO_FEW_POINTS).astype(np.int32)
        res = _empty_result(n)
        res["sde"] = np.full(n, np.nan)
        bls = BLSResult(**res)
        rows = np.flatnonzero(enough)
        if len(rows):
            bls_rows = _chunked_bls(g, rows, cfg, keep_periodogram, progress)
            for k in ("period", "duration", "t0", "depth", "depth_snr", "power", "sde", "n_in"):
                getattr(bls, k)[rows] = getattr(bls_rows, k)
            bls.periods = bls_rows.periods
            if keep_periodogram:
                bls.periodogram = np.zeros((n, len(bls_rows.periods)), np.float32)
                bls.periodogram[rows] = bls_rows.periodogram
        sig = np.isfinite(bls.power) & (bls.power > 0)
        with np.errstate(invalid="ignore"):
            sig &= ~(bls.sde < cfg.min_sde) & ~(bls.depth_snr < cfg.min_depth_snr)
        flag |= np.where(enough & ~sig, FLAG_NO_PERIOD, 0).astype(np.int32)
        gv = np.full((n, cfg.global_bins), np.nan, np.float32)
        lv = np.full((n, len(LOCAL_CHANNELS), cfg.local_bins) if cfg.vetting else (n, cfg.local_bins), np.nan,
                     np.float32)
        todo = np.flatnonzero(flag == 0)
        if len(todo):
            gg, ll, ok = make_views(g.time, g.filled[todo], bls.period[todo], bls.t0[todo], bls.duration[todo], cfg)
            gv[todo], lv[todo] = gg, ll
            flag[todo[~ok]] |= FLAG_BAD_VIEW
        bad = flag != 0
        gv[bad] = np.nan
        lv[bad] = np.nan
    cols = [bls.period, bls.duration, bls.depth, g.mag, bls.depth_snr, bls.sde]
    if cfg.vetting:
        vet = {k: np.full(n, np.nan) for k in AUX_VETTING}
        has = np.flatnonzero(np.isfinite(bls.period) & np.isfinite(bls.duration) & np.isfinite(bls.t0))
        for c0 in range(0, len(has), cfg.chunk_size):
            r = has[c0 : c0 + cfg.chunk_size]
            st = vetting_statistics(g.time, g.flux[r], g.ivar[r], bls.period[r], bls.duration[r], bls.t0[r])
            for k in AUX_VETTING:
                vet[k][r] = st[k]
        cols += [vet[k] for k in AUX_VETTING]
    aux = np.stack(cols, axis=1)
    return Views(source_id=np.asarray(batch.source_id), global_view=gv, local_view=lv, aux=aux, flag=flag,
                 bls=bls, n_points=g.n_points.astype(np.int64), n_clipped=g.n_clipped.astype(np.int64))


def concat_views(parts: list[Views]) -> Views:
    """Concatenate :class:`Views` of consecutive row blocks (periodograms are dropped)."""
    if len(parts) == 1:
        return parts[0]
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    bls = BLSResult(**{k: np.concatenate([getattr(p.bls, k) for p in parts]) for k in
                       ("period", "duration", "t0", "depth", "depth_snr", "power", "sde", "n_in")})
    return Views(source_id=cat("source_id"), global_view=cat("global_view"), local_view=cat("local_view"),
                 aux=cat("aux"), flag=cat("flag"), bls=bls, n_points=cat("n_points"), n_clipped=cat("n_clipped"))


def _chunked_bls(g: GriddedLightCurves, rows: np.ndarray, cfg: ViewConfig, keep: bool, progress: bool) -> BLSResult:
    t = g.time
    parts = []
    it = range(0, len(rows), cfg.chunk_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="BLS", unit="chunk")
    periods = None
    for c0 in it:
        r = rows[c0 : c0 + cfg.chunk_size]
        res = bls_search(t, g.flux[r], g.ivar[r], cfg, keep_periodogram=keep)
        periods = res.periods
        parts.append(res)
    cat = {k: np.concatenate([getattr(p, k) for p in parts]) for k in
           ("period", "duration", "t0", "depth", "depth_snr", "power", "sde", "n_in")}
    pg = np.concatenate([p.periodogram for p in parts]) if keep else None
    return BLSResult(**cat, periods=periods, periodogram=pg)


# --------------------------------------------------------------------------------- aux standardising
@dataclasses.dataclass
class AuxScaler:
    """Standardises auxiliary features: log10 of :data:`LOG_FEATURES`, then ``(x − mean) / std``.

    Non-finite inputs become 0 (the training mean) after scaling.
    """

    names: tuple[str, ...] = AUX_FEATURES
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def _transform_raw(self, aux: np.ndarray) -> np.ndarray:
        a = np.array(aux, dtype=np.float64, copy=True)
        for i, name in enumerate(self.names):
            if name in LOG_FEATURES:
                with np.errstate(invalid="ignore", divide="ignore"):
                    a[:, i] = np.log10(np.where(a[:, i] > 0, a[:, i], np.nan))
        return a

    def fit(self, aux: np.ndarray) -> AuxScaler:
        a = self._transform_raw(aux)
        self.mean = np.nanmean(a, 0)
        sd = np.nanstd(a, 0)
        self.std = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        self.mean = np.where(np.isfinite(self.mean), self.mean, 0.0)
        return self

    def transform(self, aux: np.ndarray) -> np.ndarray:
        if self.mean is None or self.std is None:
            raise RuntimeError("AuxScaler.transform before fit")
        z = (self._transform_raw(aux) - self.mean) / self.std
        return np.where(np.isfinite(z), z, 0.0).astype(np.float32)

    def state(self) -> dict:
        return {"names": list(self.names), "mean": np.asarray(self.mean).tolist(), "std": np.asarray(self.std).tolist()}

    @classmethod
    def from_state(cls, state: dict) -> AuxScaler:
        return cls(tuple(state["names"]), np.asarray(state["mean"], float), np.asarray(state["std"], float))
