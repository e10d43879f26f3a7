"""Light-curve models for simulated variable stars, vectorised over stars and epochs.

Every model returns a *flux multiplier* m(t) (1 = quiescent) for times in days. Conventions:
phase φ = ((t − t0)/P) mod 1 with primary minimum (or transit centre, or pulsation maximum) at φ = 0.

Shapes (documented simplifications, chosen to be realistic enough for detection and classification):
- detached eclipsing binaries: two eclipses of generalised-Gaussian shape exp(−|Δφ/w|^k), depths
  d1 ≥ d2, secondary at φ = 0.5;
- contact (EW) binaries: continuous ellipsoidal variation 1 − A(1 + cos 4πφ)/2 − B(1 + cos 2πφ)/2
  (unequal minima when B > 0);
- transiting planets: the small-planet approximation of Mandel & Agol (2002, §5) with quadratic limb
  darkening: δ = λ_e(z, k) I(r)/⟨I⟩, exact uniform-disc overlap for ingress/egress;
- pulsators: RR Lyrae- and Cepheid-like non-sinusoidal Fourier series in magnitude
  (typical R21, R31, φ21, φ31 of the Fourier decomposition literature);
- flares: the Davenport et al. (2014) empirical template in units of the full width at half maximum.
"""

from __future__ import annotations

import dataclasses

import numpy as np

VAR_TYPES = ("constant", "eb_detached", "eb_contact", "transit", "rrlyrae", "cepheid", "flare")
PERIODIC_TYPES = ("eb_detached", "eb_contact", "transit", "rrlyrae", "cepheid")


@dataclasses.dataclass
class VariabilityConfig:
    """Fractions of all stars and parameter distributions (dense-field paper §2, DESIGN.md §4)."""

    frac_eb: float = 0.01
    frac_eb_contact: float = 0.4  # of the binaries
    frac_transit: float = 0.01
    frac_pulsator: float = 0.0002
    frac_cepheid: float = 0.5  # of the pulsators
    frac_flare: float = 0.001
    # Duquennoy & Mayor (1991): log10 P[d] ~ N(4.8, 2.3), truncated to the range below
    eb_logp_mean: float = 4.8
    eb_logp_sigma: float = 2.3
    eb_period_min: float = 0.2
    eb_period_max: float = 3.5
    # transits and pulsators: uniform periods (paper: 1.45-2.95 d)
    other_period_min: float = 1.45
    other_period_max: float = 2.95
    transit_k_min: float = 0.05  # Rp/R*
    transit_k_max: float = 0.15
    limb_u1: float = 0.35  # quadratic limb darkening, i band, K dwarf
    limb_u2: float = 0.25
    flare_amp_min: float = 0.05  # relative flux at peak
    flare_amp_max: float = 2.0
    flare_fwhm_min_d: float = 5.0 / 1440.0
    flare_fwhm_max_d: float = 60.0 / 1440.0
    flare_max_events: int = 3


def phase(t: np.ndarray, period: np.ndarray, t0: np.ndarray) -> np.ndarray:
    return np.mod((t - t0) / period, 1.0)


def _dphase(ph: np.ndarray, centre: float) -> np.ndarray:
    d = ph - centre
    return d - np.round(d)


def eb_detached(ph, d1, d2, w, k):
    m = 1.0 - d1 * np.exp(-np.abs(_dphase(ph, 0.0) / w) ** k)
    return m - d2 * np.exp(-np.abs(_dphase(ph, 0.5) / w) ** k)


def eb_contact(ph, a, b):
    return 1.0 - a * (1.0 + np.cos(4 * np.pi * ph)) / 2.0 - b * (1.0 + np.cos(2 * np.pi * ph)) / 2.0


def _overlap_fraction(z: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Fraction of the stellar disc (radius 1) covered by a planet disc of radius k at separation z."""
    z = np.abs(z)
    out = np.zeros(np.broadcast(z, k).shape)
    z, k = np.broadcast_arrays(z, k)
    full = z <= 1 - k
    out[full] = k[full] ** 2
    part = (z > np.abs(1 - k)) & (z < 1 + k)
    zp, kp = z[part], k[part]
    k0 = np.arccos(np.clip((kp**2 + zp**2 - 1) / (2 * kp * zp), -1, 1))
    k1 = np.arccos(np.clip((1 - kp**2 + zp**2) / (2 * zp), -1, 1))
    area = kp**2 * k0 + k1 - 0.5 * np.sqrt(np.clip(4 * zp**2 - (1 + zp**2 - kp**2) ** 2, 0, None))
    out[part] = area / np.pi
    return out


def transit(t, period, t0, k, a_rs, b, u1, u2):
    """Flux multiplier of a circular-orbit transit (small-planet approximation, quadratic LD).

    ``a_rs`` is a/R*, ``b`` the impact parameter, ``k`` = Rp/R*.
    """
    ph = _dphase(phase(t, period, t0), 0.0)
    inc_cos = b / a_rs
    x = a_rs * np.sin(2 * np.pi * ph)
    yz = a_rs * inc_cos * np.cos(2 * np.pi * ph)
    z = np.sqrt(x**2 + yz**2)
    front = np.cos(2 * np.pi * ph) > 0  # planet in front of the star
    lam = _overlap_fraction(z, k)
    r = np.clip(z, 0.0, 1.0)
    mu = np.sqrt(1.0 - r**2)
    intensity = 1.0 - u1 * (1 - mu) - u2 * (1 - mu) ** 2
    mean_i = 1.0 - u1 / 3.0 - u2 / 6.0
    return 1.0 - np.where(front, lam * intensity / mean_i, 0.0)


# Fourier parameters (amplitude ratios Rk1 and phase differences φk1) typical of RRab and
# fundamental-mode Cepheids (Simon & Lee 1981; Kovács & Kupi 2007 order of magnitude).
_RRL = dict(r=(1.0, 0.48, 0.33, 0.22), phi=(0.0, 3.9, 1.9, 6.0))
_CEP = dict(r=(1.0, 0.40, 0.20, 0.10), phi=(0.0, 4.3, 2.4, 0.6))


def _fourier_shape(ph, pars):
    return sum(r * np.cos(2 * np.pi * (i + 1) * ph + f) for i, (r, f) in enumerate(zip(pars["r"], pars["phi"])))


_GRID = np.linspace(0, 1, 1024, endpoint=False)


def pulsator(ph: np.ndarray, amp_mag: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Flux multiplier of a magnitude Fourier series with peak-to-peak ``amp_mag``.

    ``ph`` (n, T), ``amp_mag`` (n, 1), ``kind`` (n,) of "rrlyrae"/"cepheid"; maximum light near φ = 0.
    """
    dm = np.zeros(np.shape(ph))
    for name, pars in (("rrlyrae", _RRL), ("cepheid", _CEP)):
        sel = kind == name
        if np.any(sel):
            g = _fourier_shape(_GRID, pars)
            shape = (_fourier_shape(ph[sel], pars) - g.mean()) / (g.max() - g.min())
            dm[sel] = -shape * amp_mag[sel]  # minus: brightest (smallest mag) where the series peaks
    return 10.0 ** (-0.4 * dm)


def davenport_flare(t, t_peak, fwhm, amp):
    """Davenport et al. (2014) flare template; relative flux excess, ``t`` and ``fwhm`` in days."""
    x = (t - t_peak) / fwhm
    xr = np.clip(x, -1.0, 0.0)
    xd = np.clip(x, 0.0, None)  # evaluate each branch only on its own domain (no overflow)
    rise = 1 + 1.941 * xr - 0.175 * xr**2 - 2.246 * xr**3 - 1.125 * xr**4
    decay = 0.6890 * np.exp(-1.600 * xd) + 0.3030 * np.exp(-0.2783 * xd)
    f = np.where((x > -1) & (x <= 0), rise, 0.0) + np.where(x > 0, decay, 0.0)
    return amp * np.clip(f, 0, None)


@dataclasses.dataclass
class VariableStars:
    """Parameters of the variable stars of a field (index into the star catalogue)."""

    index: np.ndarray
    var_type: np.ndarray
    period: np.ndarray  # d, NaN for flares
    t0: np.ndarray  # MJD
    amplitude: np.ndarray  # model amplitude parameter (depth, peak-to-peak mag, flare peak)
    params: dict  # extra per-star arrays (aligned with index)

    def multiplier(self, t: np.ndarray) -> np.ndarray:
        """Flux multipliers, shape (n_variables, n_times)."""
        t = np.atleast_1d(np.asarray(t, float))[None, :]
        n = len(self.index)
        out = np.ones((n, t.shape[1]))
        if n == 0:
            return out
        vt = self.var_type
        P = self.period[:, None]
        T0 = self.t0[:, None]
        p = self.params
        s = vt == "eb_detached"
        if s.any():
            out[s] = eb_detached(phase(t, P[s], T0[s]), p["d1"][s, None], p["d2"][s, None], p["w"][s, None],
                                 p["k"][s, None])
        s = vt == "eb_contact"
        if s.any():
            out[s] = eb_contact(phase(t, P[s], T0[s]), p["d1"][s, None], p["d2"][s, None])
        s = vt == "transit"
        if s.any():
            out[s] = transit(t, P[s], T0[s], p["k"][s, None], p["a_rs"][s, None], p["b"][s, None],
                             p["u1"][s, None], p["u2"][s, None])
        s = np.isin(vt, ("rrlyrae", "cepheid"))
        if s.any():
            ph = phase(t, P[s], T0[s])
            out[s] = pulsator(ph, self.amplitude[s, None], np.asarray(vt[s]))
        s = vt == "flare"
        if s.any():
            tp, fw, am = p["flare_tpeak"][s], p["flare_fwhm"][s], p["flare_amp"][s]
            excess = np.zeros((s.sum(), t.shape[1]))
            for j in range(tp.shape[1]):  # a handful of events per star
                ok = np.isfinite(tp[:, j])
                excess[ok] += davenport_flare(t, tp[ok, j, None], fw[ok, j, None], am[ok, j, None])
            out[s] = 1.0 + excess
        return out


def draw_variables(rng: np.random.Generator, n_stars: int, cfg: VariabilityConfig, t_start: float,
                   t_end: float) -> VariableStars:
    """Choose which stars vary and draw their parameters (all stars eligible, as in the paper)."""
    fr = dict(eb=cfg.frac_eb, transit=cfg.frac_transit, pulsator=cfg.frac_pulsator, flare=cfg.frac_flare)
    counts = {k: int(rng.binomial(n_stars, v)) if v > 0 else 0 for k, v in fr.items()}
    total = sum(counts.values())
    idx = rng.choice(n_stars, size=min(total, n_stars), replace=False)
    types = np.concatenate([np.full(c, k, dtype=object) for k, c in counts.items()])[: len(idx)]
    n = len(idx)
    vt = np.empty(n, dtype="U12")
    period = np.full(n, np.nan)
    amp = np.full(n, np.nan)
    t0 = np.full(n, np.nan)
    z = np.zeros(n)
    par = {k: z.copy() for k in ("d1", "d2", "w", "k", "a_rs", "b", "u1", "u2")}

    eb = types == "eb"
    ne = int(eb.sum())
    if ne:
        contact = rng.random(ne) < cfg.frac_eb_contact
        vt[eb] = np.where(contact, "eb_contact", "eb_detached")
        lo, hi = np.log10(cfg.eb_period_min), np.log10(cfg.eb_period_max)
        logp = _truncnorm(rng, cfg.eb_logp_mean, cfg.eb_logp_sigma, lo, hi, ne)
        period[eb] = 10**logp
        d1 = np.where(contact, rng.uniform(0.05, 0.3, ne), rng.uniform(0.05, 0.5, ne))
        d2 = np.where(contact, rng.uniform(0.0, 0.05, ne), d1 * rng.uniform(0.1, 1.0, ne))
        par["d1"][eb], par["d2"][eb] = d1, d2
        par["w"][eb] = rng.uniform(0.015, 0.06, ne)
        par["k"][eb] = rng.uniform(1.5, 3.0, ne)
        amp[eb] = d1 + np.where(contact, d2, 0.0)
    tr = types == "transit"
    nt = int(tr.sum())
    if nt:
        vt[tr] = "transit"
        period[tr] = rng.uniform(cfg.other_period_min, cfg.other_period_max, nt)
        k = rng.uniform(cfg.transit_k_min, cfg.transit_k_max, nt)
        # a/R* from Kepler's third law for a solar-density host: a/R* = 4.206 P[d]^(2/3)
        a_rs = 4.206 * period[tr] ** (2 / 3) * rng.uniform(0.8, 1.25, nt)
        par["k"][tr], par["a_rs"][tr], par["b"][tr] = k, a_rs, rng.uniform(0, 0.85, nt)
        par["u1"][tr], par["u2"][tr] = cfg.limb_u1, cfg.limb_u2
        amp[tr] = k**2
    pu = types == "pulsator"
    npu = int(pu.sum())
    if npu:
        vt[pu] = np.where(rng.random(npu) < cfg.frac_cepheid, "cepheid", "rrlyrae")
        period[pu] = rng.uniform(cfg.other_period_min, cfg.other_period_max, npu)
        amp[pu] = np.where(vt[pu] == "rrlyrae", rng.uniform(0.3, 1.0, npu), rng.uniform(0.2, 0.8, npu))
    t0[~np.isnan(period)] = t_start + rng.random(int((~np.isnan(period)).sum())) * period[~np.isnan(period)]

    fl = types == "flare"
    nf = int(fl.sum())
    m = cfg.flare_max_events
    tpk = np.full((n, m), np.nan)
    fw = np.full((n, m), np.nan)
    fa = np.full((n, m), np.nan)
    if nf:
        vt[fl] = "flare"
        nev = rng.integers(1, m + 1, nf)
        span = max(t_end - t_start, 1e-3)
        rows = np.flatnonzero(fl)
        for j in range(m):
            on = nev > j
            tpk[rows[on], j] = t_start + rng.random(on.sum()) * span
            fw[rows[on], j] = np.exp(rng.uniform(np.log(cfg.flare_fwhm_min_d), np.log(cfg.flare_fwhm_max_d), on.sum()))
            fa[rows[on], j] = np.exp(rng.uniform(np.log(cfg.flare_amp_min), np.log(cfg.flare_amp_max), on.sum()))
        amp[fl] = np.nanmax(fa[fl], axis=1)
        t0[fl] = tpk[fl, 0]
    par.update(flare_tpeak=tpk, flare_fwhm=fw, flare_amp=fa)
    return VariableStars(index=idx, var_type=vt, period=period, t0=t0, amplitude=amp, params=par)


def _truncnorm(rng, mu, sigma, lo, hi, n):
    from scipy.stats import truncnorm

    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    return truncnorm.rvs(a, b, loc=mu, scale=sigma, size=n, random_state=rng)
