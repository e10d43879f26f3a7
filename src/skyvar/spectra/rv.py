"""Relative radial velocities by maximum likelihood between epochs of one star (Xiong et al. §3.1).

For star i with several spectra, the reference f_ref is its highest-SNR spectrum; the likelihood of a
relative velocity v of epoch t is eq. 3 of the paper,

    ln p(v) = sum_lambda [ -(f_t(lambda, v) - f_ref(lambda))^2 / (2 (s_t^2 + s_ref^2))
                           - 0.5 ln(s_t^2 + s_ref^2) - 0.5 ln 2 pi ],

over the window 6400–6700 Å (red arm) or 5000–5300 Å (blue arm), where f_t(lambda, v) is epoch t
Doppler-shifted by -v onto the reference pixels, both continuum-normalised
(:mod:`skyvar.spectra.continuum`). Positive v: the epoch is redshifted relative to the reference.

Grid and shift. All spectra of an arm are resampled once onto a common grid uniform in log10(lambda)
(step 1e-5 dex = 6.9 km/s per pixel, the LAMOST MRS co-add sampling), so a velocity is a shift by
s = log10(doppler factor) / step pixels, identical for every pixel and every spectrum:

1. coarse: every integer pixel shift within +-``v_max``, no interpolation. ``coarse='fft'`` (default)
   holds the weights 1/(s_t^2 + s_ref^2) at the unshifted target variance, which turns the chi-square
   at all shifts into three FFT cross-correlations; ``coarse='direct'`` evaluates eq. 3 at each shift.
   This stage only has to land within a pixel of the peak.
2. refinement: ``n_refine`` fractional shifts within +-``refine_halfwidth`` pixels of the coarse peak;
3. zoom and Gaussian fit: successive grids of ``n_fit`` shifts centred on the current estimate with
   half-width ``fit_nsigma`` x sigma, until a Gaussian fitted to p(v) (least squares, Guo's
   iteratively re-weighted log-parabola) lies inside a grid spanning about +-fit_nsigma of its sigma.
   Its mean is the velocity and its standard deviation the uncertainty (the paper's epsilon_RV).

Fractional shifts use the Fourier shift theorem (``interp='fft'``) on a tapered segment around the
window: a Fourier shift is unitary, so the noise variance of the shifted spectrum does not depend on the
shift. Linear interpolation (``interp='linear'``, what a plain ``np.interp`` implementation does)
averages neighbouring pixels, shrinking the noise by up to 2x at half-pixel shifts, which pulls low-SNR
velocities towards half-pixel values (4x worse scatter at SNR 20 in the tests); it is kept for
comparison. Within one refinement grid the target variance is taken at the grid's integer shift
(interpolating it would put a kink in ln p at every integer shift, fatal at high SNR where the peak is
1e-3 pixel wide); the variance array is smooth on the few-pixel scale of a grid. Masked pixels are
filled by interpolation (so the Fourier shift does not ring) and left out of the sum, with the same set
of pixels for every v of a grid, so that ln p does not jump when a bad pixel moves.

Known limitation (of the method, shared with the paper): comparing two *noisy* spectra puts a
noise x noise-derivative term in the estimator that eq. 3's curvature ignores; at SNR ~20 the scatter
is ~1.5x the Gaussian-fit uncertainty when reference and epoch have the same SNR, less when the
reference is much better (as in the paper's choice of the highest-SNR epoch).

Everything is vectorised over (spectra x velocities x pixels) in torch on ``device`` (CPU or CUDA),
in chunks of at most ``chunk_elements`` elements.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from skyvar.flags import RVFlag
from skyvar.spectra.continuum import normalize
from skyvar.spectra.resample import resample_linear
from skyvar.spectra.spectrum import Spectrum
from skyvar.utils.log import get_logger

log = get_logger(__name__)

C_KMS = 299792.458
DLOGLAM = 1e-5  # log10(Å) per pixel of the common grid (LAMOST MRS co-add sampling)
WINDOWS = {"R": (6400.0, 6700.0), "B": (5000.0, 5300.0)}  # paper §4, Å
GRID_RANGES = {"R": (6300.0, 6840.0), "B": (4900.0, 5370.0)}  # common-grid coverage per arm, Å
BIG_VAR = 1e8  # variance given to masked pixels (normalised flux units)

# bits of ``flag`` (the registry skyvar.flags.RVFlag; `skyvar flags rv` decodes them)
FLAG_EDGE = int(RVFlag.EDGE)  # coarse peak at the edge of +-v_max; rv NaN (no velocity)
FLAG_FIT = int(RVFlag.FIT)  # Gaussian fit failed (no peak); rv and rv_err NaN
FLAG_BROAD = int(RVFlag.BROAD)  # likelihood wider than the fit grid allows; rv_err is a lower limit
FLAG_FEW_PIXELS = int(RVFlag.FEW_PIXELS)  # too few usable pixels in the window; rv NaN
FLAG_REFERENCE = int(RVFlag.REFERENCE)  # the star's reference compared with itself (rv = 0 by construction)
FLAG_WEAK_PEAK = int(RVFlag.WEAK_PEAK)  # likelihood peak not significant; rv NaN
FLAG_LOW_SNR = int(RVFlag.LOW_SNR)  # exposure S/N below the pipeline's min_snr (paper: 5); rv NaN
NO_VELOCITY = FLAG_EDGE | FLAG_FIT | FLAG_FEW_PIXELS | FLAG_WEAK_PEAK | FLAG_LOW_SNR


def log_grid(wmin: float, wmax: float, dloglam: float = DLOGLAM) -> np.ndarray:
    """Wavelengths [Å] uniform in log10 from ``wmin`` to at least ``wmax``."""
    n = int(math.ceil((math.log10(wmax) - math.log10(wmin)) / dloglam)) + 1
    return 10.0 ** (math.log10(wmin) + dloglam * np.arange(n))


def velocity_from_shift(shift_px, dloglam: float = DLOGLAM):
    """Relativistic velocity [km/s] of a shift by ``shift_px`` pixels of a log10 grid with step ``dloglam``."""
    q2 = 10.0 ** (2.0 * np.asarray(shift_px, dtype=np.float64) * dloglam)
    return C_KMS * (q2 - 1.0) / (q2 + 1.0)


def shift_from_velocity(v_kms, dloglam: float = DLOGLAM):
    """Inverse of :func:`velocity_from_shift`: pixels of shift for a velocity [km/s]."""
    b = np.asarray(v_kms, dtype=np.float64) / C_KMS
    return 0.5 * np.log10((1.0 + b) / (1.0 - b)) / dloglam


def doppler_shift_wavelength(wave, v_kms):
    """Observed wavelength of rest wavelength ``wave`` for a source receding at ``v_kms`` (relativistic)."""
    b = np.asarray(v_kms, dtype=np.float64) / C_KMS
    return np.asarray(wave) * np.sqrt((1.0 + b) / (1.0 - b))


# --------------------------------------------------------------------------------------- likelihood
def _fill_bad(flux: torch.Tensor, good: torch.Tensor) -> torch.Tensor:
    """Replace bad pixels by linear interpolation between the nearest good neighbours (edge: nearest)."""
    n, G = flux.shape
    ar = torch.arange(G, device=flux.device).expand(n, G)
    prev = torch.where(good, ar, torch.full_like(ar, -1)).cummax(1).values
    nxt = torch.where(good, ar, torch.full_like(ar, G)).flip(1).cummin(1).values.flip(1)
    has_p, has_n = prev >= 0, nxt < G
    fp = flux.gather(1, prev.clamp(0, G - 1))
    fn = flux.gather(1, nxt.clamp(0, G - 1))
    w = (ar - prev).to(flux.dtype) / (nxt - prev).clamp(min=1).to(flux.dtype)
    interp = fp + w * (fn - fp)
    filled = torch.where(has_p & has_n, interp, torch.where(has_p, fp, torch.where(has_n, fn, torch.ones_like(flux))))
    return torch.where(good, flux, filled)


def lnlike(f: torch.Tensor, fv: torch.Tensor, r: torch.Tensor, rv: torch.Tensor, use: torch.Tensor | None = None,
           norm_term: bool = True) -> torch.Tensor:
    """Eq. 3 without its v-independent terms, summed over the last axis.

    ``f``, ``fv``: shifted target flux and variance (n, V, P); ``r``, ``rv``: reference (n, P); ``use``
    (n, V, P) or (n, 1, P) bool: pixels that enter the sum (None: all). Returns (n, V). The ln term is
    written ln(1 + s_t^2 / s_ref^2); the dropped part -0.5 sum (ln s_ref^2 + ln 2 pi) is
    :func:`lnlike_constant`. ``norm_term=False`` keeps only the chi-square part.
    """
    r = r[:, None, :]
    rv = rv[:, None, :]
    out = (f - r) ** 2 / (fv + rv)
    if norm_term:
        out = out + torch.log1p(fv / rv)
    if use is not None:
        out = out * use
    return -0.5 * out.sum(-1)


def lnlike_constant(rv: torch.Tensor, use: torch.Tensor | None = None) -> torch.Tensor:
    """The v-independent part of eq. 3 left out by :func:`lnlike`: -0.5 sum (ln s_ref^2 + ln 2 pi)."""
    term = torch.log(rv.to(torch.float64)) + math.log(2 * math.pi)
    if use is not None:
        term = term * use
    return -0.5 * term.sum(-1)


def lnlike_reference(wave, t_flux, t_var, r_flux, r_var, window, v_kms) -> np.ndarray:
    """Straight numpy evaluation of eq. 3 with ``np.interp`` (linear interpolation of flux and variance)
    for one target/reference pair on their own grids; a check for the vectorised code, not fast."""
    wave = np.asarray(wave, dtype=np.float64)
    m = (wave >= window[0]) & (wave <= window[1])
    out = []
    for v in np.atleast_1d(v_kms):
        ws = doppler_shift_wavelength(wave[m], v)
        f = np.interp(ws, wave, t_flux)
        s2 = np.interp(ws, wave, t_var) + r_var[m]
        out.append(np.sum(-((f - r_flux[m]) ** 2) / (2 * s2) - 0.5 * np.log(s2) - 0.5 * np.log(2 * np.pi)))
    return np.array(out)


def lowpass_filter(flux: torch.Tensor, f_cut: float) -> torch.Tensor:
    """Remove Fourier components above ``f_cut`` cycles/pixel (cosine roll-off from 0.8 to 1.2 f_cut).

    At R = 7500 on the 6.9 km/s grid the line spread function (sigma ~2.5 pixels) leaves < 1 % of the
    signal above 0.2 cycles/pixel, while white noise spreads evenly up to 0.5: filtering both spectra
    removes noise that carries no velocity information but whose derivative, multiplied by the other
    spectrum's noise, dominates the scatter of two-noisy-spectra comparisons at low SNR. The variances
    are left unchanged, so the curvature of ln p still measures the (signal) information.
    """
    n = flux.shape[-1]
    X = torch.fft.rfft(flux - 1.0, dim=-1)
    f = torch.arange(X.shape[-1], device=flux.device, dtype=flux.dtype) / n
    x = ((f - 0.8 * f_cut) / (0.4 * f_cut)).clamp(0, 1)
    H = 0.5 + 0.5 * torch.cos(math.pi * x)
    return torch.fft.irfft(X * H, n=n, dim=-1) + 1.0


def _next_odd_smooth(n: int) -> int:
    """Smallest odd 3-5-7-smooth integer >= n (fast FFT length without a Nyquist bin)."""
    m = n if n % 2 else n + 1
    while True:
        k = m
        for p in (3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


def _solve3(M: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched 3x3 symmetric solve by the adjugate (torch's batched LAPACK path is slow for tiny
    systems); singular systems give zeros."""
    a, b_, c = M[:, 0, 0], M[:, 0, 1], M[:, 0, 2]
    d, e, f = M[:, 1, 1], M[:, 1, 2], M[:, 2, 2]
    A11 = d * f - e * e
    A12 = c * e - b_ * f
    A13 = b_ * e - c * d
    A22 = a * f - c * c
    A23 = b_ * c - a * e
    A33 = a * d - b_ * b_
    det = a * A11 + b_ * A12 + c * A13
    scale = (a.abs() * d.abs() * f.abs()).clamp(min=1e-300)
    good = det.abs() > 1e-13 * scale
    det = torch.where(good, det, torch.ones_like(det))
    x0 = (A11 * b[:, 0] + A12 * b[:, 1] + A13 * b[:, 2]) / det
    x1 = (A12 * b[:, 0] + A22 * b[:, 1] + A23 * b[:, 2]) / det
    x2 = (A13 * b[:, 0] + A23 * b[:, 1] + A33 * b[:, 2]) / det
    out = torch.stack([x0, x1, x2], -1)
    return torch.where(good[:, None], out, torch.zeros_like(out))


@dataclasses.dataclass
class RVResult:
    """Per-spectrum output of :meth:`RelativeRV.measure` (numpy arrays of length N)."""

    rv: np.ndarray  # km/s, relative to the reference spectrum
    rv_err: np.ndarray  # km/s, sigma of the Gaussian fitted to the likelihood
    lnp_max: np.ndarray  # eq. 3 at the best velocity (all terms)
    chi2_red: np.ndarray  # chi-square per usable pixel at the best velocity
    n_pix: np.ndarray  # usable pixels in the window (good in both spectra)
    flag: np.ndarray  # bit mask FLAG_*
    peak_dlnp: np.ndarray | None = None  # ln p of the peak minus the best ln p away from it (coarse grid)


class RelativeRV:
    """Maximum-likelihood relative velocities (eqs. 2–3) for many (target, reference) pairs at once.

    Parameters: ``window`` [Å]; ``v_max`` half-range of the coarse search [km/s]; ``refine_halfwidth``
    [pixels] and ``n_refine`` of the refinement grid; ``n_fit``, ``fit_nsigma`` of the Gaussian-fit grids and
    ``max_levels`` of refinement; ``lowpass`` optional low-pass of both spectra [cycles/pixel] (not in the
    paper; see :func:`lowpass_filter`); ``interp`` 'fft' or 'linear'; ``norm_term`` keep the -0.5 ln(s_t^2 + s_ref^2) term
    of eq. 3; ``device`` 'cpu', 'cuda' or 'auto'; ``dtype`` of the large tensors; ``chunk_elements`` the
    largest (pairs x velocities x pixels) tensor built at once; ``min_pixels`` usable pixels needed;
    ``min_peak_dlnp``: the likelihood peak must stand this far (in ln p, on the coarse grid) above the best
    value more than max(5 px, 4 sigma) away from it, else no velocity is given (12.5 = Δχ² 25, "5 sigma";
    noise-only spectra and spectra locked onto sky residuals fail it); ``err_scale`` multiplies the
    Gaussian-fit width (1: the paper's definition; the pipeline uses 1.4 with ``lowpass=0.2``, the
    calibration of injections into real MRS exposures, docs/results/radial_velocities.md).

    No velocity (rv NaN, flag set) for a peak at the edge of the search range, a failed fit, too few
    pixels or an insignificant peak (``NO_VELOCITY`` bits).
    """

    def __init__(self, window: Sequence[float] = WINDOWS["R"], v_max: float = 500.0, refine_halfwidth: float = 1.5,
                 n_refine: int = 9, n_fit: int = 11, fit_nsigma: float = 4.0, max_levels: int = 8,
                 interp: str = "fft", norm_term: bool = True, device: str = "cpu", dtype: str = "float32",
                 chunk_elements: int = 2**24, min_pixels: int = 100, max_sigma_px: float = 6.0,
                 coarse: str = "fft", lowpass: float | None = None, min_peak_dlnp: float = 12.5,
                 err_scale: float = 1.0):
        if lowpass is not None and not 0 < lowpass < 0.5:
            raise ValueError(f"lowpass must be a frequency in (0, 0.5) cycles per pixel or None, got {lowpass}")
        self.lowpass = lowpass
        self.min_peak_dlnp = float(min_peak_dlnp)
        self.err_scale = float(err_scale)
        if coarse not in ("fft", "direct"):
            raise ValueError(f"coarse must be 'fft' or 'direct', got {coarse!r}")
        self.coarse = coarse
        if interp not in ("fft", "linear"):
            raise ValueError(f"interp must be 'fft' or 'linear', got {interp!r}")
        self.window = (float(window[0]), float(window[1]))
        self.v_max = float(v_max)
        self.refine_halfwidth = float(refine_halfwidth)
        self.n_refine = int(n_refine)
        self.n_fit = int(n_fit)
        self.fit_nsigma = float(fit_nsigma)
        self.max_levels = int(max_levels)
        self.interp = interp
        self.norm_term = bool(norm_term)
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.chunk_elements = int(chunk_elements)
        self.min_pixels = int(min_pixels)
        self.max_sigma_px = float(max_sigma_px)
        self.taper = 16  # pixels of cosine taper at each end of an FFT segment
        self.max_frac_shift = max(self.fit_nsigma * self.max_sigma_px, self.refine_halfwidth) + 1.0
        self.margin = int(math.ceil(self.max_frac_shift)) + self.taper + 8

    # ------------------------------------------------------------------ helpers
    def _window_pixels(self, loglam: np.ndarray, dloglam: float) -> tuple[int, int]:
        p0 = int(np.searchsorted(loglam, math.log10(self.window[0])))
        p1 = int(np.searchsorted(loglam, math.log10(self.window[1]), side="right"))
        return p0, p1

    def _frac_shifted(self, t: torch.Tensor, bad_cs: torch.Tensor, base: torch.Tensor, delta: torch.Tensor,
                      P: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Target flux at window pixels p (0..P-1) sampled at base + p + delta.

        ``t`` (n, G) filled flux; ``bad_cs`` (n, G+1) cumulative count of bad target pixels; ``base``
        (n,) long; ``delta`` (n, V) float pixels, |delta| <= max_frac_shift. Returns flux (n, V, P) and
        ``use`` (n, 1, P): window pixels whose interpolation touches no bad target pixel anywhere in this
        row's delta range, so that the set of summed pixels does not change with v.
        """
        n, G = t.shape
        dev = t.device
        m = self.margin
        p = torch.arange(P, device=dev)
        lo = torch.floor(delta.min(1).values).long()
        hi = torch.floor(delta.max(1).values).long() + 1
        i_lo = (base[:, None] + p + lo[:, None]).clamp(0, G)
        i_hi = (base[:, None] + p + hi[:, None] + 1).clamp(0, G)
        use = (bad_cs.gather(1, i_hi) - bad_cs.gather(1, i_lo) == 0)[:, None, :]
        if self.interp == "linear":
            V = delta.shape[1]
            fl = torch.floor(delta)
            a = (delta - fl).to(t.dtype)[..., None]
            i0 = fl.long() + m
            idx = (base[:, None] - m + torch.arange(P + 2 * m + 1, device=dev)).clamp(0, G - 1)
            funf = t.gather(1, idx).unfold(1, P, 1)
            f0 = funf.gather(1, i0[..., None].expand(n, V, P))
            f1 = funf.gather(1, (i0 + 1)[..., None].expand(n, V, P))
            return (1 - a) * f0 + a * f1, use
        L = _next_odd_smooth(P + 2 * m)
        idx = (base[:, None] - m + torch.arange(L, device=dev)).clamp(0, G - 1)
        seg = (t.gather(1, idx) - 1.0) * self._taper_weights(L, dev, t.dtype)
        X = torch.fft.rfft(seg, dim=-1)
        freqs = torch.arange(X.shape[-1], device=dev, dtype=t.dtype) / L
        ang = (2 * math.pi) * delta.to(t.dtype)[..., None] * freqs
        phase = torch.polar(torch.ones_like(ang), ang)
        shifted = torch.fft.irfft(X[:, None, :] * phase, n=L, dim=-1)[..., m:m + P] + 1.0
        return shifted, use

    def _taper_weights(self, L: int, dev, dtype) -> torch.Tensor:
        w = torch.ones(L, device=dev, dtype=dtype)
        k = self.taper
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(k, device=dev, dtype=dtype) + 0.5) / k)
        w[:k] = ramp
        w[L - k:] = ramp.flip(0)
        return w

    @staticmethod
    def _gauss_fit(x: torch.Tensor, lnp: torch.Tensor, n_iter: int = 6):
        """Least-squares Gaussian fit to p = exp(lnp - max) on grids x (n, V) by Guo's method.

        Returns (mu, sigma, ok, vertex): ok False (sigma NaN) where there is no peak (non-negative
        curvature) or the peak lies outside the grid; ``vertex`` is the parabola's peak whenever the
        curvature is negative (NaN otherwise)."""
        x = x.to(torch.float64)
        ly = (lnp - lnp.max(1, keepdim=True).values).to(torch.float64)
        xc = x.mean(1, keepdim=True)
        xs = (x.max(1, keepdim=True).values - x.min(1, keepdim=True).values).clamp(min=1e-12) / 2
        u = (x - xc) / xs
        use = ly > -12.0
        enough = (ly > -8.0).sum(1) >= 3  # a Gaussian needs three points that carry weight
        A = torch.stack([torch.ones_like(u), u, u * u], -1)  # (n, V, 3)
        w = torch.exp(2 * ly) * use
        coef = torch.zeros(x.shape[0], 3, dtype=torch.float64, device=x.device)
        for _ in range(n_iter):
            Aw = A * w[..., None]
            M = Aw.transpose(1, 2) @ A
            bvec = (Aw * ly[..., None]).sum(1)
            coef = _solve3(M, bvec)
            fit = (A @ coef[..., None])[..., 0]
            w = torch.exp(2 * fit.clamp(max=50.0)) * use
        c = coef[:, 2]
        ok = (c < 0) & enough
        cs = torch.where(ok, c, -torch.ones_like(c))
        mu_u = -coef[:, 1] / (2 * cs)
        sig_u = torch.sqrt(-1.0 / (2 * cs))
        mu = xc[:, 0] + xs[:, 0] * mu_u
        sig = xs[:, 0] * sig_u
        vertex = torch.where(ok, mu, torch.full_like(mu, float("nan")))
        # a peak outside the fitted grid is not a fit
        ok = ok & (mu >= x.min(1).values) & (mu <= x.max(1).values)
        sig = torch.where(ok, sig, torch.full_like(sig, float("nan")))
        return mu, sig, ok, vertex

    # ------------------------------------------------------------------ main
    def measure(self, wave: np.ndarray, flux, ivar, ref_index) -> RVResult:
        """Relative velocity of every row of ``flux`` against row ``ref_index[i]``.

        ``wave`` (G,) the common log10-uniform grid [Å]; ``flux``, ``ivar`` (N, G) continuum-normalised
        (ivar 0 = bad pixel); ``ref_index`` (N,) row of each spectrum's reference.
        """
        wave = np.asarray(wave, dtype=np.float64)
        loglam = np.log10(wave)
        steps = np.diff(loglam)
        dloglam = float(np.mean(steps))
        if not np.allclose(steps, dloglam, rtol=1e-3, atol=0):
            raise ValueError("RelativeRV.measure: wave must be uniform in log10 (use log_grid + skyvar.spectra.resample.resample_linear)")
        flux = torch.as_tensor(np.asarray(flux), dtype=torch.float64)
        ivar = torch.as_tensor(np.asarray(ivar), dtype=torch.float64)
        ref_index = torch.as_tensor(np.asarray(ref_index), dtype=torch.long)
        N, G = flux.shape
        if ivar.shape != flux.shape or ref_index.shape != (N,) or len(wave) != G:
            raise ValueError(f"shape mismatch: wave {wave.shape}, flux {tuple(flux.shape)}, ivar {tuple(ivar.shape)}, "
                             f"ref_index {tuple(ref_index.shape)}")
        if N and (ref_index.min() < 0 or ref_index.max() >= N):
            raise ValueError("ref_index out of range")
        p0, p1 = self._window_pixels(loglam, dloglam)
        P = p1 - p0
        if P < 10:
            raise ValueError(f"window {self.window} covers {P} pixels of the grid {wave[0]:.1f}-{wave[-1]:.1f} Å")
        dv_px = float(velocity_from_shift(1.0, dloglam))
        K = int(math.ceil(self.v_max / dv_px))
        room = min(p0, G - p1) - self.margin - 2
        if room < K:
            if room < 2:
                raise ValueError(f"grid {wave[0]:.1f}-{wave[-1]:.1f} Å leaves no room around the window {self.window}")
            log.warning("coarse search limited to +-%.0f km/s by the grid coverage", room * dv_px)
            K = room

        good = torch.isfinite(flux) & torch.isfinite(ivar) & (ivar > 0)
        var = torch.where(good, 1.0 / torch.where(good, ivar, torch.ones_like(ivar)), torch.full_like(ivar, BIG_VAR))
        fill = _fill_bad(torch.where(torch.isfinite(flux), flux, torch.ones_like(flux)), good)
        if self.lowpass is not None:
            fill = lowpass_filter(fill, self.lowpass)

        out = {k: np.full(N, np.nan) for k in ("rv", "rv_err", "lnp_max", "chi2_red")}
        out["n_pix"] = np.zeros(N, dtype=np.int64)
        out["flag"] = np.zeros(N, dtype=np.int64)
        out["peak_dlnp"] = np.full(N, np.nan)
        V_max = max(2 * K + 1 if self.coarse == "direct" else 1, self.n_refine, self.n_fit)
        L_max = max(P, _next_odd_smooth(P + 2 * self.margin))
        chunk = max(1, self.chunk_elements // (V_max * L_max))
        dev, dt = self.device, self.dtype
        with torch.no_grad():
            for s in range(0, N, chunk):
                rows = torch.arange(s, min(N, s + chunk))
                refs = ref_index[rows]
                t = fill[rows].to(dev, dt)
                tv = var[rows].to(dev, dt)
                r = fill[refs, p0:p1].to(dev, dt)
                rvar = var[refs, p0:p1].to(dev, dt)
                bad = (~good[rows]).to(dev, torch.int32)
                bad_cs = torch.nn.functional.pad(bad.cumsum(1, dtype=torch.int32), (1, 0))
                ruse = good[refs, p0:p1].to(dev)
                res = self._measure_chunk(t, tv, bad_cs, r, rvar, ruse, p0, P, K, dloglam)
                sl = slice(s, s + len(rows))
                for k in ("rv", "rv_err", "lnp_max", "chi2_red", "flag", "n_pix", "peak_dlnp"):
                    out[k][sl] = res[k]
        few = out["n_pix"] < self.min_pixels
        out["flag"][few] |= FLAG_FEW_PIXELS
        self_ref = (ref_index.numpy() == np.arange(N))
        out["flag"][self_ref] |= FLAG_REFERENCE
        weak = ~self_ref & ~(out["peak_dlnp"] >= self.min_peak_dlnp)
        out["flag"][weak] |= FLAG_WEAK_PEAK
        out["rv_err"] *= self.err_scale
        none = (out["flag"] & NO_VELOCITY) != 0
        out["rv"][none] = np.nan
        out["rv_err"][none] = np.nan
        return RVResult(**out)

    def _stage(self, t, tv, bad_cs, r, rvar, ruse3, base, delta, P):
        """ln p on fractional shifts ``delta`` (n, V) around integer ``base``. The target variance is taken
        at the integer shift ``base`` for the whole stage (|delta| is at most a few pixels and the
        variance array is smooth on that scale), which keeps ln p a smooth function of v: interpolating
        the variance too would put a kink at every integer shift."""
        f, use = self._frac_shifted(t, bad_cs, base, delta, P)
        G = t.shape[1]
        fv = tv.gather(1, (base[:, None] + torch.arange(P, device=t.device)).clamp(0, G - 1))[:, None, :]
        use = use & ruse3
        return lnlike(f, fv, r, rvar, use, self.norm_term).to(torch.float64), f, fv, use

    @staticmethod
    def _coarse_fft(t, tv, r, rvar, ruse, p0: int, P: int, K: int) -> torch.Tensor:
        """Chi-square of eq. 3 at every integer shift in one pass of FFT cross-correlations.

        The weights w_p = 1 / (s_t^2 + s_ref^2) are held at the unshifted target variance, which makes
        chi2(k) = sum_p w_p m_{p+k} (t_{p+k} - r_p)^2 a sum of three correlations (m: good target pixel);
        the ln term is then constant and dropped. Every shift is charged one unit per window pixel it
        loses to a bad target pixel, the expected chi-square of that pixel. This stage only has to find
        the peak to within a pixel; the refinement evaluates eq. 3 itself.
        """
        f64 = torch.float64
        w = torch.where(ruse, 1.0 / (rvar.to(f64) + tv[:, p0:p0 + P].to(f64)), torch.zeros_like(rvar, dtype=f64))
        rr = r.to(f64)
        seg = t[:, p0 - K:p0 + P + K].to(f64)
        m = (tv[:, p0 - K:p0 + P + K] < BIG_VAR / 10).to(f64)
        L = _next_odd_smooth(P + 2 * K)

        def corr(a, b):
            A = torch.fft.rfft(a, n=L)
            B = torch.fft.rfft(b, n=L)
            return torch.fft.irfft(torch.conj(A) * B, n=L)[:, :2 * K + 1]

        chi2 = corr(w, m * seg * seg) - 2 * corr(w * rr, m * seg) + corr(w * rr * rr, m)
        lost = ruse.to(f64).sum(1, keepdim=True) - corr(ruse.to(f64), m)
        return -0.5 * (chi2 + lost)

    def _zoom(self, t, tv, bad_cs, r, rvar, ruse3, base, P):
        """Successive grids around the likelihood peak (level 0: +-refine_halfwidth pixels around the
        coarse peak); a row is done when the Gaussian fitted to p on its grid is inside it and the grid
        spans 0.5–1.5 x fit_nsigma sigma. Otherwise the next grid is centred on the best estimate with
        half-width fit_nsigma sigma (at least one step of the current grid, so that a parabola-located peak
        stays inside). Returns per row (mu [px from base], sigma [px], ok, base)."""
        n = t.shape[0]
        dev = t.device
        f64 = torch.float64
        lim = self.max_frac_shift - 1.0
        mu = torch.zeros(n, dtype=f64, device=dev)
        H = torch.full((n,), self.refine_halfwidth, dtype=f64, device=dev)
        out_mu = torch.zeros(n, dtype=f64, device=dev)
        out_sig = torch.full((n,), float("nan"), dtype=f64, device=dev)
        out_ok = torch.zeros(n, dtype=torch.bool, device=dev)
        base = base.clone()
        active = torch.arange(n, device=dev)
        for level in range(self.max_levels):
            if active.numel() == 0:
                break
            npt = self.n_refine if level == 0 else self.n_fit
            u = torch.linspace(-1.0, 1.0, npt, device=dev, dtype=f64)
            k = torch.round(mu[active]).long()
            base[active] += k
            m_a = mu[active] - k
            H_a = H[active]
            x = m_a[:, None] + H_a[:, None] * u
            if active.numel() == n:
                lnp = self._stage(t, tv, bad_cs, r, rvar, ruse3, base, x, P)[0]
            else:
                lnp = self._stage(t[active], tv[active], bad_cs[active], r[active], rvar[active], ruse3[active],
                                  base[active], x, P)[0]
            mu_f, sig_f, ok_f, _ = self._gauss_fit(x, lnp)
            step = 2 * H_a / (npt - 1)
            j = lnp.argmax(1)
            jc = j.clamp(1, npt - 2)
            lm, l0, lp = (lnp.gather(1, (jc + o)[:, None])[:, 0] for o in (-1, 0, 1))
            curv = (lm - 2 * l0 + lp) / step**2
            peaked = (curv < 0) & (j > 0) & (j < npt - 1)
            safe = torch.where(peaked, curv, -torch.ones_like(curv))
            xj = x.gather(1, j[:, None])[:, 0]
            vert = xj + torch.where(peaked, (-(lp - lm) / (2 * step * safe)).clamp(-step, step), 0.0)
            sig_p = torch.where(peaked, 1.0 / torch.sqrt(-safe), H_a)
            # a row is resolved when its Gaussian fit is good and the grid matches its width
            ratio = H_a / (self.fit_nsigma * sig_f)
            at_cap = H_a >= lim - 1e-9
            done = ok_f & (((ratio > 0.5) & (ratio < 1.5)) | at_cap)
            if level == self.max_levels - 1:
                done = torch.ones_like(done)
            rows = active[done]
            out_mu[rows] = torch.where(ok_f[done], mu_f[done], vert[done])
            out_sig[rows] = torch.where(ok_f[done], sig_f[done], torch.full_like(sig_f[done], float("nan")))
            out_ok[rows] = ok_f[done]
            keep = ~done
            # next grid for the rows still active
            edge = (j == 0) | (j == npt - 1)
            new_mu = torch.where(ok_f, mu_f, vert)
            new_sig = torch.where(ok_f, sig_f, sig_p)
            new_H = torch.where(ok_f, self.fit_nsigma * new_sig, torch.maximum(self.fit_nsigma * new_sig, step))
            new_H = torch.where(edge & ~ok_f, H_a, new_H)  # peak beyond the grid: walk with the same width
            new_H = new_H.clamp(min=1e-5, max=lim)
            a_keep = active[keep]
            mu[a_keep] = new_mu[keep].clamp(-lim, lim)
            H[a_keep] = new_H[keep]
            active = a_keep
        return out_mu, out_sig, out_ok, base

    def _measure_chunk(self, t, tv, bad_cs, r, rvar, ruse, p0: int, P: int, K: int, dloglam: float) -> dict:
        n = t.shape[0]
        dev = t.device
        ruse3 = ruse[:, None, :]
        # 1. coarse: every integer shift within +-K pixels (no interpolation)
        if self.coarse == "direct":
            seg = t[:, p0 - K:p0 + P + K]
            segv = tv[:, p0 - K:p0 + P + K].unfold(1, P, 1)
            use_c = (segv < BIG_VAR / 10) & ruse3
            lnp_c = lnlike(seg.unfold(1, P, 1), segv, r, rvar, use_c, self.norm_term)  # (n, 2K+1)
        else:
            lnp_c = self._coarse_fft(t, tv, r, rvar, ruse, p0, P, K)
        kbest = lnp_c.argmax(1)
        flag = torch.zeros(n, dtype=torch.long, device=dev)
        flag |= torch.where((kbest == 0) | (kbest == 2 * K), FLAG_EDGE, 0)
        base = p0 + kbest - K  # absolute index aligned with window pixel 0

        # 2.-3. refinement and Gaussian fit: zoom in on the peak until a grid of +-fit_nsigma sigma holds
        # it, then the Gaussian fitted to p(v) on that grid gives the velocity and its uncertainty
        mu, sig, ok, base = self._zoom(t, tv, bad_cs, r, rvar, ruse3, base, P)
        broad = ok & (sig > self.max_sigma_px)
        flag |= torch.where(~ok, FLAG_FIT, 0) | torch.where(broad, FLAG_BROAD, 0)
        # significance: the coarse peak against the best coarse value away from it
        k_ar = torch.arange(lnp_c.shape[1], device=dev)
        sig_c = torch.where(torch.isfinite(sig), sig, torch.full_like(sig, 0.0))
        w_ex = torch.clamp(torch.ceil(4 * sig_c), min=5).to(torch.long)
        away = (k_ar[None, :] - kbest[:, None]).abs() > w_ex[:, None]
        second = torch.where(away, lnp_c.to(torch.float64), torch.full_like(lnp_c, -float("inf"), dtype=torch.float64))
        peak_dlnp = lnp_c.to(torch.float64).gather(1, kbest[:, None])[:, 0] - second.max(1).values
        # diagnostics at the fitted mean
        lnp_b, f, fv, use = self._stage(t, tv, bad_cs, r, rvar, ruse3, base, mu[:, None], P)
        lnp_best = lnp_b[:, 0]
        chi2 = ((((f - r[:, None, :]) ** 2) / (fv + rvar[:, None, :])) * use).sum(-1)[:, 0].to(torch.float64)
        npix = use.sum(-1)[:, 0]
        lnp_full = lnp_best + lnlike_constant(rvar, use[:, 0, :]) if self.norm_term else lnp_best
        shift_np = ((base - p0).to(torch.float64) + mu).cpu().numpy()
        sig_np = sig.cpu().numpy()
        rv = velocity_from_shift(shift_np, dloglam)
        err = (velocity_from_shift(shift_np + sig_np, dloglam) - velocity_from_shift(shift_np - sig_np, dloglam)) / 2
        err = np.where(ok.cpu().numpy(), err, np.nan)
        return {"rv": rv, "rv_err": err, "lnp_max": lnp_full.cpu().numpy(),
                "chi2_red": (chi2 / npix.clamp(min=1)).cpu().numpy(), "flag": flag.cpu().numpy(),
                "n_pix": npix.cpu().numpy(), "peak_dlnp": peak_dlnp.cpu().numpy()}


# --------------------------------------------------------------------------------------- spectra -> rv
def prepare_arm(spectra: Sequence[Spectrum], arm: str, dloglam: float = DLOGLAM,
                grid_range: Sequence[float] | None = None, continuum: dict | None = None):
    """Resample spectra of one arm onto the common log grid and continuum-normalise them.

    Returns ``(wave (G,), flux (N, G), ivar (N, G))`` with flux normalised to the pseudo-continuum.
    """
    lo, hi = grid_range or GRID_RANGES[arm]
    wave = log_grid(lo, hi, dloglam)
    if len(spectra) == 0:
        return wave, np.zeros((0, len(wave))), np.zeros((0, len(wave)))
    # resampled in log10(λ): linear interpolation there is a constant-velocity weighting
    fl, iv, bad = resample_linear(np.log10(wave), [np.log10(s.wavelength) for s in spectra],
                                  [s.flux for s in spectra], [s.ivar for s in spectra], [s.mask for s in spectra])
    fl, iv = np.where(bad, 0.0, fl), np.where(bad, 0.0, iv)
    fn, ivn, _, _ = normalize(wave, fl, iv, **(continuum or {}))
    return wave, fn, ivn


def reference_indices(groups: Sequence, snr: Sequence[float]) -> np.ndarray:
    """For each row the index of the highest-SNR row of the same group (ties: first)."""
    groups = np.asarray(groups)
    snr = np.asarray(snr, dtype=float)
    snr = np.where(np.isfinite(snr), snr, -np.inf)
    order = np.lexsort((np.arange(len(snr)), -snr, groups))  # by group, then SNR descending
    ref = np.empty(len(snr), dtype=np.int64)
    g_sorted = groups[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = g_sorted[1:] != g_sorted[:-1]
    leader = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    ref[order] = leader
    return ref


def _gauss_fit_for_tests(x, lnp):
    return RelativeRV._gauss_fit(x, lnp)


def relative_velocities(spectra: Sequence[Spectrum], arm: str | None = None, group_key: str = "source",
                        continuum: dict | None = None, **rv_kwargs) -> tuple[RVResult, np.ndarray]:
    """Relative velocities [km/s] of spectra of one MRS arm, each against the highest-SNR spectrum of its
    group (``meta[group_key]``, a star; ``meta['snr']`` chooses the reference).

    ``arm`` 'R' or 'B' (default: ``meta['arm']`` of the first spectrum) picks the window of the paper
    (6400–6700 / 5000–5300 Å, vacuum); other keyword arguments go to :class:`RelativeRV`. Returns the
    :class:`RVResult` (rv, rv_err [km/s], flags …) and the index of every spectrum's reference.
    """
    spectra = list(spectra)
    arm = (arm or spectra[0].meta.get("arm", "R")).upper()[:1]
    wave, fl, iv = prepare_arm(spectra, arm, continuum=continuum)
    ref = reference_indices([s.meta.get(group_key, "star") for s in spectra],
                            [s.meta.get("snr", np.nan) for s in spectra])
    rv_kwargs.setdefault("window", WINDOWS[arm])
    return RelativeRV(**rv_kwargs).measure(wave, fl, iv, ref), ref
