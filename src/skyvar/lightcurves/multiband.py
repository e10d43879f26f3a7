"""Multi-band Lomb-Scargle periodograms (VanderPlas & Ivezic 2015) for sparse survey light curves.

The model
---------
A source observed in ``K`` bands gets one period. Following VanderPlas & Ivezic (2015, ApJ 812, 18;
astropy's :class:`~astropy.timeseries.LombScargleMultiband`), the magnitude in band ``k`` at time
``t`` is modelled as

    y_k(t) = c_k + base(t) + band_k(t),

``c_k`` a free offset per band, ``base`` a Fourier series of ``nterms_base`` harmonics of the trial
frequency shared by all bands (a shared phase and shape) and ``band_k`` a Fourier series of
``nterms_band`` harmonics free in each band. ``(nterms_base, nterms_band) = (1, 0)`` is the
shared-phase sinusoid with per-band offsets; ``(0, 1)`` a free sinusoid per band (the sum of the
single-band periodograms weighted by each band's chi2); ``(1, 1)`` is astropy's default, where the
band terms duplicate the base term and a small ``reg_band`` (times the trace of the normal matrix,
astropy's convention) on the band terms picks one solution. The power is astropy's ``standard``
normalisation, ``P = (chi2_0 - chi2(f)) / chi2_0`` with ``chi2_0`` the chi2 about the weighted
per-band means, so ``0 <= P <= 1``.

How it is computed
------------------
Every entry of the normal equations is a weighted trigonometric sum over one band's points: with
``S_k(m) = sum_n w_n exp(i m 2 pi f t_n)`` over band ``k`` (``m = 0 .. 2H``, ``H`` the largest number
of harmonics) and ``Y_k(h) = sum_n w_n y_n exp(i h 2 pi f t_n)`` (``h = 1 .. H``),
``sum w cos(a x) cos(b x) = (Re S(a-b) + Re S(a+b))/2`` and so on. On a uniform grid
``f_j = f0 + j df`` these sums are type-1 non-uniform FFTs (finufft, the library nifty-ls is built
on): one call per harmonic and source, all bands and both weightings in one batched transform, so a
source costs ``O(N log N + F log F)`` instead of the ``O(N F)`` trigonometric evaluations of a direct
sum (astropy's flexible method additionally solves one least-squares problem per frequency in a
Python loop). The per-band offsets are profiled out analytically, the remaining ``p x p`` system
(``p = 2 nterms_base + 2 K nterms_band``) is solved for all frequencies at once. At arbitrary
frequencies (peak refinement, re-ranking) the same sums are evaluated directly.

Units: times in days, frequencies in cycles per day, magnitudes and their errors in mag.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from skyvar.lightcurves.grids import FrequencyGrid

TWO_PI = 2.0 * np.pi


@dataclasses.dataclass
class BandData:
    """One source's points, all bands together: time (d), mag, weight (normalised to sum 1 over all
    points), ``band`` (int code ``0..K-1`` into ``bands``) and the per-band weighted means removed
    from ``y`` (``y`` is centred per band). ``t_ref`` is subtracted from the times."""

    t: np.ndarray
    y: np.ndarray
    w: np.ndarray
    band: np.ndarray
    bands: np.ndarray
    t_ref: float
    mean: np.ndarray  # (K,) weighted mean magnitude per band
    yy: float  # sum w y^2 of the centred values (chi2_0 in units of the normalised weights)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def span(self) -> float:
        return float(self.t.max() - self.t.min()) if len(self.t) else 0.0


def prepare_bands(t, y, band, dy=None, min_points: int = 1) -> BandData:
    """Centre each band on its weighted mean and normalise the weights (``1/dy^2``, or 1 without errors).

    Points with non-finite time, magnitude or (given) error, or a non-positive error, are dropped;
    bands with fewer than ``min_points`` points are dropped too.
    """
    t = np.asarray(t, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    band = np.asarray(band).ravel().astype(str)
    if dy is None:
        dy = np.ones_like(y)
    dy = np.asarray(dy, dtype=np.float64).ravel()
    ok = np.isfinite(t) & np.isfinite(y) & np.isfinite(dy) & (dy > 0)
    t, y, dy, band = t[ok], y[ok], dy[ok], band[ok]
    bands, code, counts = np.unique(band, return_inverse=True, return_counts=True)
    keep = counts >= min_points
    if not keep.all():
        sel = keep[code]
        t, y, dy, band = t[sel], y[sel], dy[sel], band[sel]
        bands, code = np.unique(band, return_inverse=True)
    w = 1.0 / dy**2
    K = len(bands)
    if K == 0:
        return BandData(t, y, w, code, bands, 0.0, np.zeros(0), np.nan)
    wsum = np.bincount(code, weights=w, minlength=K)
    mean = np.bincount(code, weights=w * y, minlength=K) / wsum
    yc = y - mean[code]
    w = w / w.sum()
    t_ref = 0.5 * (t.min() + t.max())
    return BandData(t - t_ref, yc, w, code, bands, float(t_ref), mean, float(np.sum(w * yc * yc)))


# ------------------------------------------------------------------------------------ trig sums
def _phases(t: np.ndarray, f: np.ndarray) -> np.ndarray:
    """exp(i 2 pi f t) with the phase reduced mod 1 in float64 first (years x tens of d^-1)."""
    return np.exp(1j * TWO_PI * np.remainder(np.multiply.outer(f, t), 1.0))


def sums_direct(d: BandData, freq: np.ndarray, H: int) -> tuple[np.ndarray, np.ndarray]:
    """``S (2H+1, K, F)`` and ``Y (H+1, K, F)`` by direct summation at any frequencies ``freq``."""
    freq = np.asarray(freq, dtype=np.float64).ravel()
    K, F = d.n_bands, freq.size
    S = np.zeros((2 * H + 1, K, F), dtype=np.complex128)
    Y = np.zeros((H + 1, K, F), dtype=np.complex128)
    onehot = np.zeros((K, d.t.size))
    onehot[d.band, np.arange(d.t.size)] = 1.0
    wb = onehot * d.w  # (K, N)
    wyb = wb * d.y
    for m in range(2 * H + 1):
        e = _phases(d.t, m * freq)  # (F, N)
        S[m] = wb @ e.T
        if m <= H:
            Y[m] = wyb @ e.T
    return S, Y


class NufftSums:
    """The sums of :func:`sums_direct` on uniform grids ``fmin + j df``, ``j < n_modes``, by finufft
    type-1 transforms: one plan per harmonic ``m`` (its points ``x_n = 2 pi m df t_n`` do not depend on
    ``fmin``), reused for every chunk of a long grid (:func:`scan`)."""

    def __init__(self, d: BandData, df: float, n_modes: int, H: int, eps: float = 1e-9, nthreads: int = 1):
        import finufft

        self.d, self.df, self.F, self.H = d, float(df), int(n_modes), int(H)
        K, N = d.n_bands, d.t.size
        onehot = np.zeros((K, N))
        onehot[d.band, np.arange(N)] = 1.0
        self.w_vec = onehot * d.w
        self.wy_vec = self.w_vec * d.y
        self.wsum = self.w_vec.sum(axis=1)
        self.plans = {}
        for m in range(1, 2 * H + 1):
            n_trans = 2 * K if m <= H else K
            plan = finufft.Plan(1, (self.F,), n_trans=n_trans, eps=eps, isign=1, nthreads=nthreads)
            x = TWO_PI * (np.remainder(m * self.df * d.t + 0.5, 1.0) - 0.5)
            plan.setpts(x)
            self.plans[m] = (plan, np.concatenate([self.w_vec, self.wy_vec]) if m <= H else self.w_vec)

    def __call__(self, fmin: float) -> tuple[np.ndarray, np.ndarray]:
        K, F, H, t = self.d.n_bands, self.F, self.H, self.d.t
        S = np.empty((2 * H + 1, K, F), dtype=np.complex128)
        Y = np.zeros((H + 1, K, F), dtype=np.complex128)
        S[0] = self.wsum[:, None]
        half = F // 2
        for m, (plan, vec) in self.plans.items():
            # sum_n c_n exp(i 2 pi m (f0 + j df) t_n), j = 0..F-1, is finufft's sum over k = j - F//2 of
            # c'_n exp(i k x_n) with x_n = 2 pi m df t_n and c'_n = c_n exp(i 2 pi m (f0 + (F//2) df) t_n)
            shift = np.exp(1j * TWO_PI * np.remainder(m * (fmin + half * self.df) * t, 1.0))
            out = plan.execute(np.ascontiguousarray(vec * shift, dtype=np.complex128))
            S[m] = out[:K]
            if m <= H:
                Y[m] = out[K:]
        return S, Y


def sums_nufft(d: BandData, grid: FrequencyGrid, H: int, eps: float = 1e-9,
               nthreads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Same as :func:`sums_direct` on the uniform ``grid``, by finufft type-1 transforms (one per harmonic)."""
    return NufftSums(d, grid.df, grid.nf, H, eps, nthreads)(grid.fmin)


# ------------------------------------------------------------------------------------ power
def _gram(S: np.ndarray, Y: np.ndarray, H: int):
    """Per-band Gram matrices of the harmonic columns ``[cos 1..H, sin 1..H]`` with the band offset
    profiled out: ``G (K, F, 2H, 2H)``, right-hand sides ``r (K, F, 2H)``."""
    K, F = S.shape[1], S.shape[2]
    W = S[0].real  # (K, F)
    G = np.empty((K, F, 2 * H, 2 * H))
    for a in range(1, H + 1):
        for b in range(1, H + 1):
            dm, sm = abs(a - b), a + b
            re_d, re_s = S[dm].real, S[sm].real
            im_d, im_s = np.sign(a - b) * S[dm].imag, S[sm].imag
            G[:, :, a - 1, b - 1] = 0.5 * (re_d + re_s)  # cos a, cos b
            G[:, :, H + a - 1, H + b - 1] = 0.5 * (re_d - re_s)  # sin a, sin b
            G[:, :, a - 1, H + b - 1] = 0.5 * (im_s - im_d)  # cos a, sin b
            G[:, :, H + b - 1, a - 1] = G[:, :, a - 1, H + b - 1]
    mvec = np.concatenate([S[1:H + 1].real, S[1:H + 1].imag], axis=0).transpose(1, 2, 0)  # (K, F, 2H)
    with np.errstate(invalid="ignore", divide="ignore"):
        G -= mvec[..., :, None] * mvec[..., None, :] / W[..., None, None]
    r = np.concatenate([Y[1:H + 1].real, Y[1:H + 1].imag], axis=0).transpose(1, 2, 0)  # (K, F, 2H)
    return G, r


def _cols(H: int, n: int) -> np.ndarray:
    return np.r_[np.arange(n), H + np.arange(n)]


def _regularised_system(S, G, r, H, cb, ck, reg_band):
    """astropy's system for base and band terms together: the offsets stay as columns (a shared one
    and one per band, which duplicate each other like the harmonic columns do), ``reg_band x trace``
    added on every band column (offset and harmonics). Profiling the offsets out first, as the
    unregularised models do, would regularise a different matrix."""
    K, F = G.shape[0], G.shape[1]
    W = S[0].real
    mvec = np.concatenate([S[1:H + 1].real, S[1:H + 1].imag], axis=0).transpose(1, 2, 0)  # (K, F, 2H)
    Gu = G + mvec[..., :, None] * mvec[..., None, :] / W[..., None, None]  # un-profiled Gram
    nb, nk = len(cb), len(ck)
    p = 1 + nb + K * (1 + nk)
    M = np.zeros((F, p, p))
    rhs = np.zeros((F, p))
    B = slice(1, 1 + nb)
    M[:, 0, 0] = W.sum(axis=0)
    M[:, 0, B] = M[:, B, 0] = mvec[:, :, cb].sum(axis=0)
    M[:, B, B] = Gu[:, :, cb][:, :, :, cb].sum(axis=0)
    rhs[:, B] = r[:, :, cb].sum(axis=0)
    for k in range(K):
        o = 1 + nb + k * (1 + nk)
        Kk = slice(o + 1, o + 1 + nk)
        M[:, o, o] = W[k]
        M[:, 0, o] = M[:, o, 0] = W[k]
        M[:, o, Kk] = M[:, Kk, o] = mvec[k][:, ck]
        M[:, 0, Kk] = M[:, Kk, 0] = mvec[k][:, ck]
        M[:, B, o] = M[:, o, B] = mvec[k][:, cb]
        M[:, B, Kk] = Gu[k][:, cb][:, :, ck]
        M[:, Kk, B] = Gu[k][:, ck][:, :, cb]
        M[:, Kk, Kk] = Gu[k][:, ck][:, :, ck]
        rhs[:, Kk] = r[k][:, ck]
    tr = np.trace(M, axis1=1, axis2=2)
    idx = np.arange(1 + nb, p)
    M[:, idx, idx] += reg_band * tr[:, None]
    return M, rhs


def power_from_sums(S: np.ndarray, Y: np.ndarray, yy: float, nterms_base: int = 1, nterms_band: int = 0,
                    reg_band: float = 1e-6) -> np.ndarray:
    """Standard-normalised multi-band power (module docstring) from the sums of :func:`sums_direct` /
    :func:`sums_nufft`; ``(F,)``."""
    H = (Y.shape[0] - 1)
    nb, nk = int(nterms_base), int(nterms_band)
    if nb + nk == 0:
        raise ValueError("nterms_base + nterms_band must be positive")
    if max(nb, nk) > H:
        raise ValueError(f"the sums hold {H} harmonics; the model needs {max(nb, nk)}")
    G, r = _gram(S, Y, H)
    K, F = G.shape[0], G.shape[1]
    cb, ck = _cols(H, nb), _cols(H, nk)
    p = 2 * nb + 2 * nk * K
    M = np.zeros((F, p, p))
    rhs = np.zeros((F, p))
    if nb:
        M[:, :2 * nb, :2 * nb] = G[:, :, cb][:, :, :, cb].sum(axis=0)
        rhs[:, :2 * nb] = r[:, :, cb].sum(axis=0)
    for k in range(K):
        if not nk:
            break
        s = slice(2 * nb + 2 * nk * k, 2 * nb + 2 * nk * (k + 1))
        M[:, s, s] = G[k][:, ck][:, :, ck]
        rhs[:, s] = r[k][:, ck]
        if nb:
            M[:, :2 * nb, s] = G[k][:, cb][:, :, ck]
            M[:, s, :2 * nb] = G[k][:, ck][:, :, cb]
    if nb and nk and reg_band:
        M, rhs = _regularised_system(S, G, r, H, cb, ck, reg_band)
    ok = np.isfinite(M).all(axis=(1, 2)) & np.isfinite(rhs).all(axis=1)
    coef = np.full(rhs.shape, np.nan)
    if ok.any():
        try:
            coef[ok] = np.linalg.solve(M[ok], rhs[ok][..., None])[..., 0]
        except np.linalg.LinAlgError:
            coef[ok] = np.einsum("fij,fj->fi", np.linalg.pinv(M[ok]), rhs[ok])
    with np.errstate(invalid="ignore", divide="ignore"):
        power = np.einsum("fi,fi->f", rhs, coef) / yy
    return power


def multiband_power(t, y, band, freq, dy=None, nterms_base: int = 1, nterms_band: int = 0,
                    reg_band: float = 1e-6, method: str = "auto", eps: float = 1e-9) -> np.ndarray:
    """Multi-band Lomb-Scargle power of one source at ``freq`` (d^-1; an array or a
    :class:`~skyvar.lightcurves.grids.FrequencyGrid`). ``method``: ``nufft`` (uniform grids),
    ``direct`` or ``auto``. Same model and normalisation as astropy's ``LombScargleMultiband(t, y,
    band, dy, nterms_base=.., nterms_band=.., reg_band=..).power(freq, method="flexible")``."""
    from skyvar.lightcurves.grids import as_grid

    d = prepare_bands(t, y, band, dy)
    fr, grid = as_grid(freq)
    H = max(nterms_base, nterms_band)
    if method == "auto":
        method = "nufft" if grid is not None and grid.nf > 64 else "direct"
    if method == "nufft":
        if grid is None:
            raise ValueError("method='nufft' needs a uniform frequency grid")
        S, Y = sums_nufft(d, grid, H, eps=eps)
    elif method == "direct":
        S, Y = sums_direct(d, fr, H)
    else:
        raise ValueError(f"unknown method {method!r} (auto | nufft | direct)")
    return power_from_sums(S, Y, d.yy, nterms_base, nterms_band, reg_band)


def scan_power(S: np.ndarray, Y: np.ndarray, yy: float, model: str = "shared") -> np.ndarray:
    """Closed-form power for the two one-harmonic models, without the per-frequency matrices of
    :func:`power_from_sums` (the scan over 1e5-1e6 frequencies): ``"shared"`` = ``(1, 0)``, a
    sinusoid of shared phase and amplitude plus per-band offsets; ``"independent"`` = ``(0, 1)``, the
    chi2-weighted sum of the bands' floating-mean Lomb-Scargle powers."""
    W = S[0].real
    C, Sn = S[1].real, S[1].imag
    C2, S2 = S[2].real, S[2].imag
    YC, YS = Y[1].real, Y[1].imag
    with np.errstate(invalid="ignore", divide="ignore"):
        CC = 0.5 * (W + C2) - C * C / W
        SS = 0.5 * (W - C2) - Sn * Sn / W
        CS = 0.5 * S2 - C * Sn / W
        if model == "shared":
            CC, SS, CS, YC, YS = (np.nansum(a, axis=0) for a in (CC, SS, CS, YC, YS))
            return (SS * YC * YC + CC * YS * YS - 2 * CS * YC * YS) / ((CC * SS - CS * CS) * yy)
        if model == "independent":
            num = (SS * YC * YC + CC * YS * YS - 2 * CS * YC * YS) / (CC * SS - CS * CS)
            return np.nansum(num, axis=0) / yy
    raise ValueError(f"unknown scan model {model!r} (shared | independent)")


def scan(d: BandData, grid: FrequencyGrid, model: str = "shared", chunk: int = 1 << 12, eps: float = 1e-6,
         nthreads: int = 1) -> np.ndarray:
    """:func:`scan_power` of one source over ``grid`` (float32, ``(nf,)``), in frequency chunks so
    that memory stays ``O(K x chunk)`` for grids of millions of frequencies. Small chunks stay in the
    cache (2^12 is ~2.5x faster than 2^18 on our CPU) and one NUFFT plan per harmonic serves every
    chunk. The NUFFT tolerance ``eps = 1e-6`` (twice as fast as 1e-9) is ample for finding peaks;
    the chosen peak's power is recomputed exactly by direct sums."""
    if model not in ("shared", "independent"):
        raise ValueError(f"unknown scan model {model!r} (shared | independent)")
    out = np.empty(grid.nf, dtype=np.float32)
    n = min(int(chunk), grid.nf)
    sums = NufftSums(d, grid.df, n, 1, eps, nthreads)
    for a in range(0, grid.nf, n):
        S, Y = sums(grid.fmin + a * grid.df)
        m = min(n, grid.nf - a)  # the last chunk runs past fmax: its tail is dropped
        out[a:a + m] = scan_power(S[:, :, :m], Y[:, :, :m], d.yy, model)
    return out


def top_peaks(power: np.ndarray, n: int, half_width: int = 2) -> np.ndarray:
    """Indices of the ``n`` highest local maxima of ``power`` (each the largest within
    ``+-half_width`` samples: ripples of one peak on an oversampled grid count once), best first."""
    p = np.nan_to_num(np.asarray(power, dtype=np.float64), nan=-np.inf)
    if p.size == 0:
        return np.zeros(0, dtype=np.int64)
    from scipy.ndimage import maximum_filter1d

    mx = maximum_filter1d(p, size=2 * half_width + 1, mode="nearest")
    cand = np.flatnonzero((p == mx) & np.isfinite(p))
    # plateaus: keep the first sample of equal neighbours
    cand = cand[np.r_[True, np.diff(cand) > half_width]] if cand.size else cand
    return cand[np.argsort(p[cand], kind="stable")[::-1][:n]]


def fit_bands(d: BandData, freq: float, nterms: int) -> dict:
    """Independent ``nterms``-harmonic fit of each band at ``freq`` (d^-1): per band the number of
    harmonics actually used and the peak-to-peak amplitude of the fitted curve (mag).

    A band with few points gets at most ``(n_k - 1) // 4`` harmonics; and where the phases leave
    gaps a high-order fit swings far beyond the data, so the order is lowered until the fitted curve
    spans at most 1.5 times the band's own peak-to-peak range (NaN if even one harmonic does not)."""
    K = d.n_bands
    n_k = np.bincount(d.band, minlength=K)
    amp = np.full(K, np.nan)
    used = np.zeros(K, dtype=np.int64)
    phase = np.linspace(0.0, 1.0, 200, endpoint=False)
    for k in range(K):
        m = d.band == k
        ph = np.remainder(freq * d.t[m], 1.0)
        sw = np.sqrt(d.w[m])
        span = float(np.ptp(d.y[m])) if m.any() else 0.0
        for h in range(int(min(nterms, max(0, (n_k[k] - 1) // 4))), 0, -1):
            cols = [np.ones(m.sum())] + [f(TWO_PI * j * ph) for j in range(1, h + 1) for f in (np.cos, np.sin)]
            X = np.stack(cols, axis=1)
            coef, *_ = np.linalg.lstsq(X * sw[:, None], d.y[m] * sw, rcond=None)
            curve = sum(coef[2 * j - 1] * np.cos(TWO_PI * j * phase) + coef[2 * j] * np.sin(TWO_PI * j * phase)
                        for j in range(1, h + 1))
            if np.ptp(curve) <= 1.5 * span:
                amp[k], used[k] = float(np.ptp(curve)), h
                break
    return {"amplitude": amp, "nterms": used, "n_points": n_k}
