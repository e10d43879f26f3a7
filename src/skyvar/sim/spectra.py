"""``python -m skyvar.sim spectra survey=lamost_lrs key=value ...``: LAMOST-like single and binary spectra.

The training and test sets of the binary-star CNN (Jing et al.), rebuilt from templates because the
paper's Gaia-CMD-labelled LAMOST sample is not public. Runs from the package alone: the templates and
the noise shape are shipped in ``skyvar/resources/spectra`` (``redrock_dir`` / ``noise_reference_dir``
point at the full files instead).

- **Stars**: main-sequence primaries with 3800 < Teff < 6500 K drawn from the redrock F/G/K/M
  archetypes broadened to R ≈ 1800 (``skyvar.spectra.templates``). The archetypes carry no log g or
  [Fe/H] (the paper's log g > 4 cut cannot be applied); Teff is estimated from their colour.
- **Split by template**: every library template belongs to one of train/val/test (80/10/10,
  ``split_fractions``, seeded); a spectrum of a split is built only from that split's templates (both
  components of a binary), so no test star shares a template with a training star.
- **Binaries** (``dv_distribution='orbit'``, default): primary mass from Teff on the Pecaut & Mamajek
  (2013) dwarf sequence; mass ratio q uniform in [``q_min``, 1] (Raghavan et al. 2010: flat between
  0.2 and 0.95); log-normal periods (Raghavan et al. 2010: mean log P = 5.03, sigma 2.28, P in days)
  truncated to separations between 2.5 (R1 + R2) and ``a_max_au`` (wider pairs are resolved by Gaia
  and a LAMOST fibre); circular below 12 d, eccentricity uniform in [0, ``e_max``] above; isotropic
  inclination, uniform mean anomaly and periastron argument. The secondary's Teff, radius,
  luminosity and absolute V, G, Ks magnitudes come from the same dwarf sequence at M2 = q M1; its
  template is, among the 10 templates of the split nearest to that Teff, the one whose metallicity
  proxy (Lick Mgb + Fe5270 + Fe5335 strength relative to templates of the same Teff) is closest to the
  primary's — the archetypes have no [Fe/H], this keeps the pair chemically alike. Velocities:
  ``v1 = v0 + Δv q/(1+q)``, ``v2 = v0 - Δv/(1+q)`` with Δv the relative orbital velocity at the
  drawn phase. ``dv_distribution='uniform'`` draws |Δv| uniform in [0, ``drv_max``] (the v1 mock of
  the first released model: line splitting dominates there).
- **Labels**. ``label_mode='mass_ratio'`` (default): ``single`` (label 0) and ``binary_mid``
  (q in [``q_train_min``, ``q_train_max``], label 1) — the paper's intermediate-mass-ratio class.
  ``label_mode='cmd'``: the paper's own labelling — systems of the population (``binary_pop``: q in
  [q_min, 1]) and singles are placed on the Gaia colour–magnitude diagram (M_G versus G − Ks of the
  summed light) and labelled by the offset above the single-star sequence at the same colour,
  ΔM_G + N(0, ``cmd_sigma``): single if |ΔM_G| < 0.25, binary if −0.5 < ΔM_G < −0.25, excluded
  (split ``excluded``) otherwise; low-q binaries thus count as singles, as in the paper.
  ``binary_eval``: binaries of the realistic population (all q) from the *test* templates, split
  ``eval``, for per-|Δv| / per-light-ratio / population metrics. Every binary row records q, light
  ratio (V-band F2/F1), |Δv|, period, eccentricity, inclination, ΔM_G and the CMD label.
- **Observation**: CCM89 extinction (E(B−V) uniform in [0, ``ebv_max``]), a smooth multiplicative
  flux-calibration error, LAMOST-like per-pixel noise: variance ``(f + b) / (K G(λ))`` where ``G(λ)``
  is the median ``flux * ivar`` shape of real LAMOST files (packaged) and ``K`` sets the median S/N per
  pixel over 4000–5300 Å to ``SNR_g`` (log-uniform in [``snr_min``, ``snr_max``]); ``b`` a sky/read
  floor; sky-subtraction residuals at sky-line pixels, cosmic-ray hits and occasional masked chunks.

Outputs in ``out_dir`` (numpy arrays memory-mappable, rows = spectra on the LAMOST native grid):
``wavelength.npy`` (Å, vacuum), ``flux.npy``, ``ivar.npy`` (float32), ``andmask.npy`` (uint8),
``meta.parquet`` (one row per spectrum: id, label, subset, split, is_binary, q, light_ratio, dv_abs,
period, ecc, incl, dm_g, label_cmd, teff1, teff2, mass1, mass2, rv1, rv2, snr_g, ebv, template
indices) and ``config.json``. ``write_fits=N`` also writes the first N spectra of the test split and
of the eval subset as LAMOST-layout FITS files under ``fits/``. Same config and seed give the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from skyvar.utils.log import get_logger

log = get_logger(__name__)

C_KMS = 299792.458
G_SI = 6.674e-11
MSUN_KG = 1.98892e30
RSUN_M = 6.957e8
AU_M = 1.495978707e11
SUBSETS = ("single", "binary_mid", "binary_pop", "binary_eval")


@dataclasses.dataclass
class SpectraSimConfig:
    survey: str = "lamost_lrs"
    out_dir: str = "datasets/lamost_lrs_sim"
    seed: int = 2025
    n_single: int = 36000
    n_binary: int = 4000  # training-side binaries (binary_mid or binary_pop)
    n_eval_binary: int = 3000  # realistic population from the test templates: evaluation only
    label_mode: str = "mass_ratio"  # mass_ratio | cmd
    q_train_min: float = 0.71
    q_train_max: float = 0.93
    q_min: float = 0.1
    dv_distribution: str = "orbit"  # orbit (realistic population) | uniform (|Δv| ~ U(0, drv_max))
    logp_mean: float = 5.03  # log10 P [d], Raghavan et al. 2010
    logp_sigma: float = 2.28
    a_max_au: float = 1000.0  # wider pairs are resolved (not one LAMOST/Gaia source)
    e_max: float = 0.6
    p_circ_days: float = 12.0
    cmd_sigma: float = 0.1  # mag, scatter of the observed offset from the single-star sequence
    teff_min: float = 3800.0
    teff_max: float = 6500.0
    resolution: float = 1800.0
    snr_min: float = 20.0
    snr_max: float = 300.0
    rv_sys_sigma: float = 40.0  # km/s, systemic velocity spread
    drv_max: float = 150.0  # km/s, maximum |v1 - v2| of dv_distribution=uniform
    ebv_max: float = 0.3
    fluxcal_sigma: float = 0.05  # rms of the smooth multiplicative calibration error
    sky_floor: float = 0.02  # variance floor (sky + read noise) as a fraction of the median g-band flux
    sky_residual: float = 2.0  # residual amplitude at sky lines in units of the pixel sigma
    cosmic_rate: float = 0.5  # mean cosmic-ray hits per spectrum (unmasked)
    bad_chunk_prob: float = 0.05  # probability of a masked chunk (ANDMASK set, ivar 0)
    # Star-to-star and instrument differences the 5-component PCA templates lack (the domain gap measured on
    # real LAMOST spectra, docs/results/binary_spectra.md): every component's line depths (its deviation from
    # its own smooth pseudo-continuum) are scaled by 1 + eps(λ), eps a Gaussian random field of rms
    # line_depth_scatter and correlation length line_depth_scale [Å]; the summed spectrum gets a multiplicative
    # ripple of rms ripple_amplitude and scale ripple_scale [Å] (flat-field / flux-calibration residuals).
    line_depth_scatter: float = 0.45
    line_depth_scale: float = 30.0
    ripple_amplitude: float = 0.01
    ripple_scale: float = 80.0
    split_fractions: list = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])
    redrock_dir: str | None = None  # None: the templates shipped with skyvar
    bosz_dir: str | None = None  # BOSZ models as extra primaries (needs bosz_fraction > 0)
    bosz_fraction: float = 0.0
    noise_reference_dir: str | None = None  # None: the packaged noise shape of the real LAMOST files
    chunk: int = 1000
    write_fits: int = 0


# LAMOST LRS native grid: log10 λ = 3.5682 + 1e-4 k (COEFF0, COEFF1 of the files), 3909 pixels.
LAMOST_COEFF0 = 3.5682
LAMOST_DLOG = 1e-4
LAMOST_NPIX = 3909
FINE = 10  # fine pixels per native pixel for Doppler shifts (6.9 km/s steps)
MARGIN = 40  # native pixels of margin each side for shifts


def lamost_wavelength() -> np.ndarray:
    return 10 ** (LAMOST_COEFF0 + LAMOST_DLOG * np.arange(LAMOST_NPIX))


def fine_loglam() -> np.ndarray:
    """Fine grid whose consecutive blocks of FINE pixels tile the native pixels (plus margins)."""
    n = (LAMOST_NPIX + 2 * MARGIN) * FINE
    start = LAMOST_COEFF0 - MARGIN * LAMOST_DLOG - (FINE - 1) / 2 * LAMOST_DLOG / FINE
    return start + np.arange(n) * LAMOST_DLOG / FINE


def ccm89_extinction(wave_A, ebv: np.ndarray | float, rv: float = 3.1) -> np.ndarray:
    """A_λ [mag] of Cardelli, Clayton & Mathis (1989), optical/NIR branches (0.3–3.3 μm⁻¹), for E(B−V).

    Returns shape ``(len(ebv), len(wave))`` for array ``ebv``. A_λ / A_V = 1 at 5495 Å (x = 1.82 μm⁻¹).
    """
    x = 1e4 / np.asarray(wave_A, dtype=float)
    a = np.empty_like(x)
    b = np.empty_like(x)
    ir = x < 1.1
    a[ir] = 0.574 * x[ir] ** 1.61
    b[ir] = -0.527 * x[ir] ** 1.61
    y = x[~ir] - 1.82
    a[~ir] = np.polyval([0.32999, -0.77530, 0.01979, 0.72085, -0.02427, -0.50447, 0.17699, 1.0], y)
    b[~ir] = np.polyval([-2.09002, 5.30260, -0.62251, -5.38434, 1.07233, 2.28305, 1.41338, 0.0], y)
    av = rv * np.asarray(ebv, dtype=float)
    return np.multiply.outer(av, a + b / rv)


def noise_gain_curve(reference_dir: str | Path | None, wave: np.ndarray) -> np.ndarray:
    """Relative counts per flux unit G(λ) (median g-band value 1) from real LAMOST files' ``flux * ivar``.

    For photon noise ivar = K G / f, so ``flux * ivar`` traces throughput (and sky-line variance). The median
    over files removes each star's own features. ``reference_dir=None``: the curve measured on the 11 shared
    LAMOST files, shipped with the package; a directory without usable files: a smooth blue-weak fallback.
    """
    from skyvar.spectra.io import SpectrumError, read_lamost_lrs
    from skyvar.utils.inputs import expand_inputs

    if reference_dir is None:  # the shape measured on the shared real files, shipped with the package
        from skyvar.spectra.resources import lrs_noise_gain

        w, G = lrs_noise_gain()
        return np.interp(wave, w, G).astype(np.float64)
    curves = []
    if reference_dir is not None and Path(reference_dir).exists():
        for f in expand_inputs(reference_dir):
            try:
                s = read_lamost_lrs(f)
            except SpectrumError:
                continue
            g = s.flux * s.ivar
            good = s.good & (s.flux > 0)
            gband = good & (s.wavelength > 4000) & (s.wavelength < 5300)
            if gband.sum() < 100:
                continue
            c = np.interp(wave, s.wavelength[good], g[good] / np.median(g[gband]), left=np.nan, right=np.nan)
            curves.append(c)
    if curves:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid ends no file covers
            G = np.nanmedian(np.array(curves), axis=0)
        G = np.where(np.isfinite(G), G, np.nanmin(G))
    else:
        log.warning("no LAMOST reference files: using a smooth fallback noise curve")
        G = np.clip((wave - 3600.0) / 1500.0, 0.05, 2.5)
    return np.clip(G, 0.02, None)


@functools.lru_cache(maxsize=2)
def _library(redrock_dir: str, bosz_dir: str | None, resolution: float):
    """The template library on the simulator's fine grid (cached: building it costs seconds)."""
    from skyvar.spectra.templates import build_stellar_library

    return build_stellar_library(redrock_dir, bosz_dir, loglam=fine_loglam(), resolution=resolution)


def _shift_rows(spec: np.ndarray, shift_pix: np.ndarray) -> np.ndarray:
    """Rows of ``spec`` moved by ``shift_pix`` fine pixels (to the red for positive), linear interpolation."""
    from skyvar.spectra.resample import resample_linear

    g = np.arange(spec.shape[1], dtype=np.float64)
    return resample_linear(g[None, :] - np.asarray(shift_pix, dtype=np.float64)[:, None], g, spec)


def _fine_pixels(scale_A: float) -> float:
    """Fine pixels spanned by ``scale_A`` Å at 5500 Å."""
    return scale_A / (5500.0 * np.log(10) * LAMOST_DLOG / FINE)


def _box_smooth(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-like smoothing of rows (three passes of a box of width ~ sigma sqrt(4)): O(n) per pass."""
    from scipy.ndimage import uniform_filter1d

    w = max(int(round(2.0 * sigma_px)), 1)
    out = np.asarray(a, dtype=np.float32)
    for _ in range(3):
        out = uniform_filter1d(out, w, axis=-1, mode="nearest")
    return out


def _bin_to_native(fine: np.ndarray) -> np.ndarray:
    m = fine.reshape(fine.shape[0], -1, FINE).mean(axis=2)
    return m[:, MARGIN:MARGIN + LAMOST_NPIX]


def _vband_weight(wave: np.ndarray) -> np.ndarray:
    """Johnson-V-like response (Gaussian, centre 5450 Å, FWHM 880 Å), normalised to unit sum."""
    w = np.exp(-0.5 * ((wave - 5450.0) / (880.0 / 2.3548)) ** 2)
    return w / w.sum()


# ---------------------------------------------------------------------------------------------- orbits
def solve_kepler(mean_anomaly: np.ndarray, e: np.ndarray, n_iter: int = 30) -> np.ndarray:
    """Eccentric anomaly E from M = E - e sin E (Newton's method, vectorised; e < 1)."""
    M = np.mod(np.asarray(mean_anomaly, dtype=float), 2 * np.pi)
    e = np.asarray(e, dtype=float)
    E = np.where(e > 0.8, np.pi * np.ones_like(M), M)
    for _ in range(n_iter):
        E = E - (E - e * np.sin(E) - M) / (1 - e * np.cos(E))
    return E


def draw_orbits(rng: np.random.Generator, m1, m2, cfg: SpectraSimConfig) -> dict:
    """Orbits of binaries with masses ``m1``, ``m2`` [Msun] (see the module docstring for the laws).

    Returns period [d], semi-major axis [AU], eccentricity, inclination [deg], the relative velocity
    semi-amplitude k_rel = K1 + K2 [km/s] and dv = v1 - v2 [km/s] at a uniformly drawn mean anomaly.
    """
    from skyvar.spectra.templates import ms_radius_from_mass

    m1 = np.asarray(m1, dtype=float)
    m2 = np.asarray(m2, dtype=float)
    n = len(m1)
    mt = (m1 + m2) * MSUN_KG
    a_min = 2.5 * (ms_radius_from_mass(m1) + ms_radius_from_mass(m2)) * RSUN_M  # m: no contact/Roche overflow

    def period_of(a_m):
        return 2 * np.pi * np.sqrt(a_m**3 / (G_SI * mt)) / 86400.0

    lo = np.log10(period_of(a_min))
    hi = np.log10(period_of(cfg.a_max_au * AU_M))
    logp = np.full(n, np.nan)
    todo = np.arange(n)
    for _ in range(1000):  # truncated log-normal by rejection (a few rounds at most)
        if not len(todo):
            break
        x = rng.normal(cfg.logp_mean, cfg.logp_sigma, len(todo))
        ok = (x > lo[todo]) & (x < hi[todo])
        logp[todo[ok]] = x[ok]
        todo = todo[~ok]
    if len(todo):  # pragma: no cover - only for absurd limits
        logp[todo] = rng.uniform(lo[todo], hi[todo])
    P = 10**logp
    a = (G_SI * mt * (P * 86400.0) ** 2 / (4 * np.pi**2)) ** (1 / 3)
    e = np.where(P > cfg.p_circ_days, rng.uniform(0.0, cfg.e_max, n), 0.0)
    cosi = rng.uniform(0.0, 1.0, n)
    sini = np.sqrt(1 - cosi**2)
    omega = rng.uniform(0, 2 * np.pi, n)
    E = solve_kepler(rng.uniform(0, 2 * np.pi, n), e)
    nu = 2 * np.arctan2(np.sqrt(1 + e) * np.sin(E / 2), np.sqrt(1 - e) * np.cos(E / 2))
    k_rel = 2 * np.pi * a * sini / (P * 86400.0 * np.sqrt(1 - e**2)) / 1e3
    dv = k_rel * (np.cos(nu + omega) + e * np.cos(omega))
    return {"period": P, "a_au": a / AU_M, "ecc": e, "incl": np.degrees(np.arccos(cosi)), "k_rel": k_rel, "dv": dv}


# ------------------------------------------------------------------------------------------------- CMD
def cmd_offset(mass1, mass2=None) -> np.ndarray:
    """ΔM_G of a system above the single-star sequence at its G − Ks colour (negative = brighter), the
    paper's binary indicator (Liu 2019; Jing et al.), from the Pecaut & Mamajek dwarf sequence.

    ``mass2`` NaN or None: a single star (offset 0 by construction)."""
    from skyvar.spectra.templates import MAIN_SEQUENCE, ms_absmag_from_mass

    m1 = np.asarray(mass1, dtype=float)
    m2 = np.full_like(m1, np.nan) if mass2 is None else np.asarray(mass2, dtype=float)
    g1, k1 = ms_absmag_from_mass(m1, "mg"), ms_absmag_from_mass(m1, "mks")
    has2 = np.isfinite(m2)
    g2 = np.where(has2, ms_absmag_from_mass(np.where(has2, m2, 1.0), "mg"), np.inf)
    k2 = np.where(has2, ms_absmag_from_mass(np.where(has2, m2, 1.0), "mks"), np.inf)
    g = -2.5 * np.log10(10 ** (-0.4 * g1) + 10 ** (-0.4 * g2))
    k = -2.5 * np.log10(10 ** (-0.4 * k1) + 10 ** (-0.4 * k2))
    seq_c = (MAIN_SEQUENCE["mg"] - MAIN_SEQUENCE["mks"])[::-1]  # increasing with decreasing mass
    seq_g = MAIN_SEQUENCE["mg"][::-1][np.argsort(seq_c)]
    seq_c = np.sort(seq_c)
    return g - np.interp(g - k, seq_c, seq_g)


def cmd_label(dm_obs) -> np.ndarray:
    """The paper's classes from the observed offset: 0 single (|ΔM_G| < 0.25), 1 binary
    (−0.5 < ΔM_G < −0.25), −1 excluded (ΔM_G <= −0.5 high mass ratio, or >= 0.25)."""
    dm = np.asarray(dm_obs, dtype=float)
    out = np.full(dm.shape, -1, dtype=np.int8)
    out[np.abs(dm) < 0.25] = 0
    out[(dm > -0.5) & (dm <= -0.25)] = 1
    return out


class SpectraSimulator:
    def __init__(self, cfg: SpectraSimConfig):
        from skyvar.spectra.templates import metallicity_proxy

        if cfg.label_mode not in ("mass_ratio", "cmd"):
            raise ValueError(f"label_mode must be 'mass_ratio' or 'cmd', got {cfg.label_mode!r}")
        if cfg.dv_distribution not in ("orbit", "uniform"):
            raise ValueError(f"dv_distribution must be 'orbit' or 'uniform', got {cfg.dv_distribution!r}")
        self.cfg = cfg
        self.loglam = fine_loglam()
        self.fine_wave = 10**self.loglam
        self.wave = lamost_wavelength()
        t0 = time.perf_counter()
        self.lib = _library(cfg.redrock_dir, cfg.bosz_dir, cfg.resolution)
        log.info("template library: %d spectra (%.1f s)", len(self.lib), time.perf_counter() - t0)
        self.gain = noise_gain_curve(cfg.noise_reference_dir, self.wave).astype(np.float32)
        # Sky-line pixels: where G dips well below its running median (sky variance).
        from scipy.ndimage import median_filter

        self.sky_pix = self.gain < 0.6 * median_filter(self.gain, 41, mode="nearest")
        self.vweight = _vband_weight(self.fine_wave).astype(np.float32)
        teff = self.lib.teff
        # metallicity proxy of every template (Lick indices over 4800-5400 Å only: cheap)
        sl = (self.fine_wave > 4780) & (self.fine_wave < 5420)
        spec = self.lib.coeff @ self.lib.basis[:, sl]
        self.zmet = metallicity_proxy(self.fine_wave[sl], spec, teff)
        # split by template: each library entry belongs to train, val or test
        trng = np.random.default_rng([cfg.seed, 17])
        f = np.asarray(cfg.split_fractions, dtype=float)
        f = f / f.sum()
        perm = trng.permutation(len(self.lib))
        n_tr, n_va = int(round(f[0] * len(perm))), int(round(f[1] * len(perm)))
        self.template_split = np.empty(len(self.lib), dtype=object)
        self.template_split[perm[:n_tr]] = "train"
        self.template_split[perm[n_tr:n_tr + n_va]] = "val"
        self.template_split[perm[n_tr + n_va:]] = "test"
        self.template_split = self.template_split.astype(str)
        in_range = (teff > cfg.teff_min) & (teff < cfg.teff_max)
        is_bosz = self.lib.source == "bosz"
        self.pools = {}
        for s in ("train", "val", "test"):
            here = self.template_split == s
            prim = np.flatnonzero(in_range & ~is_bosz & here)
            sec = np.flatnonzero(~is_bosz & here)
            if len(prim) == 0:
                raise ValueError(f"no template in the primary Teff range for split {s}")
            order = np.argsort(teff[sec], kind="stable")
            self.pools[s] = {"primary": prim, "primary_bosz": np.flatnonzero(in_range & is_bosz & here),
                             "secondary": sec[order], "secondary_teff": teff[sec[order]]}

    # ------------------------------------------------------------------ draws
    def _secondary_templates(self, rng, split: np.ndarray, teff2: np.ndarray, t1: np.ndarray, k: int = 10):
        """Among the ``k`` templates of the row's split nearest to ``teff2``, the one whose metallicity
        proxy is closest to the primary's (ties broken at random)."""
        out = np.full(len(t1), -1, dtype=np.int64)
        for s, pool in self.pools.items():
            rows = np.flatnonzero(split == s)
            if not len(rows):
                continue
            st, sidx = pool["secondary_teff"], pool["secondary"]
            kk = min(k, len(sidx))
            pos = np.clip(np.searchsorted(st, teff2[rows]) - kk // 2, 0, len(sidx) - kk)
            cand = sidx[pos[:, None] + np.arange(kk)[None, :]]  # (n, k)
            d = np.abs(self.zmet[cand] - self.zmet[t1[rows]][:, None]) + 1e-3 * rng.random(cand.shape)
            out[rows] = cand[np.arange(len(rows)), np.argmin(d, axis=1)]
        return out

    def draw_parameters(self, rng: np.random.Generator, subset: np.ndarray, split: np.ndarray) -> dict:
        from skyvar.spectra.templates import ms_absmag_v_from_mass, ms_mass_from_teff, ms_teff_from_mass

        cfg = self.cfg
        n = len(subset)
        t1 = np.zeros(n, dtype=np.int64)
        for s, pool in self.pools.items():
            rows = np.flatnonzero(split == s)
            if not len(rows):
                continue
            t1[rows] = rng.choice(pool["primary"], len(rows))
            if cfg.bosz_fraction > 0 and len(pool["primary_bosz"]):
                use = rng.random(len(rows)) < cfg.bosz_fraction
                t1[rows[use]] = rng.choice(pool["primary_bosz"], int(use.sum()))
        teff1 = self.lib.teff[t1]
        m1 = ms_mass_from_teff(teff1)
        is_bin = subset != "single"
        q = np.full(n, np.nan)
        mid = subset == "binary_mid"
        q[mid] = rng.uniform(cfg.q_train_min, cfg.q_train_max, mid.sum())
        pop = (subset == "binary_eval") | (subset == "binary_pop")
        # q >= q_min and M2 >= 0.09 Msun (the end of the dwarf table; fainter companions add no light)
        qlo = np.maximum(cfg.q_min, 0.09 / m1[pop])
        q[pop] = rng.uniform(qlo, 1.0)
        m2 = np.where(is_bin, m1 * np.nan_to_num(q), np.nan)
        teff2 = np.where(is_bin, ms_teff_from_mass(np.where(is_bin, m2, 1.0)), np.nan)
        t2 = np.where(is_bin, self._secondary_templates(rng, split, np.nan_to_num(teff2), t1), -1)
        twin = is_bin & (np.nan_to_num(q) >= 0.999)  # the same template is the physical limit
        t2[twin] = t1[twin]
        v0 = rng.normal(0.0, cfg.rv_sys_sigma, n)
        orb = {k: np.full(n, np.nan) for k in ("period", "a_au", "ecc", "incl", "k_rel", "dv")}
        if is_bin.any():
            if cfg.dv_distribution == "orbit":
                o = draw_orbits(rng, m1[is_bin], m2[is_bin], cfg)
                for k in orb:
                    orb[k][is_bin] = o[k]
            else:
                orb["dv"][is_bin] = rng.uniform(0.0, cfg.drv_max, is_bin.sum()) * rng.choice([-1.0, 1.0], is_bin.sum())
        dv = np.nan_to_num(orb["dv"])
        qq = np.nan_to_num(q, nan=1.0)
        rv1 = np.where(is_bin, v0 + dv * qq / (1 + qq), v0)
        rv2 = np.where(is_bin, v0 - dv / (1 + qq), np.nan)
        mv1 = ms_absmag_v_from_mass(m1)
        mv2 = np.where(is_bin, ms_absmag_v_from_mass(np.where(is_bin, m2, 1.0)), np.inf)
        dm = cmd_offset(m1, m2)
        dm_obs = dm + rng.normal(0.0, cfg.cmd_sigma, n)
        return dict(t1=t1, t2=t2, teff1=teff1, teff2=teff2, mass1=m1, mass2=m2, q=q, rv1=rv1, rv2=rv2,
                    dv=orb["dv"], period=orb["period"], a_au=orb["a_au"], ecc=orb["ecc"], incl=orb["incl"],
                    light_ratio=np.where(is_bin, 10 ** (-0.4 * (mv2 - mv1)), 0.0), dm_g=dm_obs,
                    label_cmd=cmd_label(dm_obs), zmet1=self.zmet[t1],
                    snr_g=np.exp(rng.uniform(np.log(cfg.snr_min), np.log(cfg.snr_max), n)),
                    ebv=rng.uniform(0.0, cfg.ebv_max, n), template_source=self.lib.source[t1])

    def _random_field(self, rng, n: int, scale_A: float, rms: float) -> np.ndarray:
        """(n, n_fine) float32 smooth Gaussian random fields of standard deviation ``rms`` and correlation
        length ~``scale_A`` Å at 5500 Å (a Gaussian kernel approximated by three box filters, drawn on the
        native grid and interpolated onto the fine one)."""
        nn = LAMOST_NPIX + 2 * MARGIN
        w = rng.standard_normal((n, nn)).astype(np.float32)
        sig_px = scale_A / (5500.0 * np.log(10) * LAMOST_DLOG)
        f = _box_smooth(w, sig_px)
        f *= rms / max(float(np.std(f)), 1e-12)
        g = np.arange(nn, dtype=np.float64)
        fine_pos = (np.arange(nn * FINE) - (FINE - 1) / 2) / FINE
        from skyvar.spectra.resample import resample_linear

        return resample_linear(fine_pos, g, f)

    def render(self, p: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noisy LAMOST-like (flux, ivar, andmask) on the native grid for the parameter rows ``p``."""
        from skyvar.spectra.templates import ms_absmag_v_from_mass

        cfg = self.cfg
        n = len(p["t1"])
        dl = LAMOST_DLOG / FINE

        def component(tidx, rv, mass):
            s = self.lib.spectra(tidx)
            if cfg.line_depth_scatter > 0:
                cont = _box_smooth(s, _fine_pixels(50.0))
                eps = self._random_field(rng, len(s), cfg.line_depth_scale, cfg.line_depth_scatter)
                s = s + eps * (s - cont)
            s /= (s @ self.vweight)[:, None]  # unit V-band flux
            s *= (10 ** (-0.4 * ms_absmag_v_from_mass(mass)))[:, None].astype(np.float32)
            return _shift_rows(s, np.log10(1 + rv / C_KMS) / dl)

        fine = component(p["t1"], p["rv1"], p["mass1"])
        isb = p["t2"] >= 0
        if isb.any():
            fine[isb] += component(p["t2"][isb], p["rv2"][isb], p["mass2"][isb])
        flux = _bin_to_native(fine).astype(np.float64)
        if cfg.ripple_amplitude > 0:
            flux *= 1 + self._random_field(rng, n, cfg.ripple_scale, cfg.ripple_amplitude)[:, ::FINE][
                :, MARGIN:MARGIN + LAMOST_NPIX]
        # Observation: extinction, smooth calibration error, arbitrary overall scale.
        flux *= 10 ** (-0.4 * ccm89_extinction(self.wave, p["ebv"]))
        x = (np.log10(self.wave) - np.log10(self.wave).mean()) / np.ptp(np.log10(self.wave)) * 2
        legendre = np.polynomial.legendre.legvander(x, 3)[:, 1:]  # (npix, 3), mean-free shapes
        flux *= 1 + (rng.normal(0, cfg.fluxcal_sigma, (n, 3)) @ legendre.T)
        flux *= (10 ** rng.uniform(2.5, 3.5, n) / np.median(flux, axis=1))[:, None]
        # Noise: var = (f + b) / (K G); K such that the median S/N over 4000–5300 Å equals snr_g;
        # b = sky_floor * median g-band flux (sky + read noise).
        gband = (self.wave > 4000) & (self.wave < 5300)
        if cfg.sky_floor > 0:
            flux = np.clip(flux, 0.0, None)
            b = cfg.sky_floor * np.median(flux[:, gband], axis=1)[:, None]
            h = flux[:, gband] * np.sqrt(self.gain[gband] / (flux[:, gband] + b))
        else:  # no floor: PCA templates that dip below 0 in the far blue of cool stars are clipped
            flux = np.clip(flux, 1e-6, None)
            b = np.zeros((n, 1))
            h = np.sqrt(flux[:, gband] * self.gain[gband])
        K = (p["snr_g"] / np.median(h, axis=1)) ** 2
        var = (flux + b) / (K[:, None] * self.gain[None, :])
        sigma = np.sqrt(var)
        noisy = flux + sigma * rng.standard_normal(flux.shape)
        noisy[:, self.sky_pix] += cfg.sky_residual * sigma[:, self.sky_pix] * rng.standard_normal(
            (n, int(self.sky_pix.sum())))
        ivar = 1.0 / var
        andmask = np.zeros(flux.shape, dtype=np.uint8)
        # Cosmic rays: unmasked positive spikes of 5–50 sigma.
        n_cr = rng.poisson(cfg.cosmic_rate, n)
        rows = np.repeat(np.arange(n), n_cr)
        cols = rng.integers(0, LAMOST_NPIX, len(rows))
        noisy[rows, cols] += rng.uniform(5, 50, len(rows)) * sigma[rows, cols]
        # Masked chunks (bad columns, dead fibre segments): ANDMASK set, ivar 0.
        bad = np.flatnonzero(rng.random(n) < cfg.bad_chunk_prob)
        for r in bad:  # a handful of rows per chunk
            w = int(rng.integers(10, 200))
            s0 = int(rng.integers(0, LAMOST_NPIX - w))
            andmask[r, s0:s0 + w] = 1
            ivar[r, s0:s0 + w] = 0.0
        return noisy.astype(np.float32), ivar.astype(np.float32), andmask


def assign_splits(rng: np.random.Generator, subset: np.ndarray, fractions) -> np.ndarray:
    """Train/val/test (80/10/10 by default) within each training subset; ``eval`` for binary_eval.

    Rows are assigned to splits here and then built from that split's templates (split by template)."""
    split = np.full(len(subset), "eval", dtype=object)
    f = np.asarray(fractions, dtype=float)
    f = f / f.sum()
    for name in ("single", "binary_mid", "binary_pop"):
        idx = np.flatnonzero(subset == name)
        idx = idx[rng.permutation(len(idx))]
        n_tr = int(round(f[0] * len(idx)))
        n_va = int(round(f[1] * len(idx)))
        split[idx[:n_tr]] = "train"
        split[idx[n_tr:n_tr + n_va]] = "val"
        split[idx[n_tr + n_va:]] = "test"
    return split.astype(str)


def simulate_to_disk(cfg: SpectraSimConfig) -> Path:
    """Write the data set described in the module docstring; returns ``out_dir``."""
    import pandas as pd

    from skyvar.utils.atomic import atomic_path, write_json_atomic

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    sim = SpectraSimulator(cfg)
    train_bin = "binary_mid" if cfg.label_mode == "mass_ratio" else "binary_pop"
    subset = np.array(["single"] * cfg.n_single + [train_bin] * cfg.n_binary + ["binary_eval"] * cfg.n_eval_binary)
    subset = subset[rng.permutation(len(subset))]
    n = len(subset)
    split = assign_splits(rng, subset, cfg.split_fractions)
    tsplit = np.where(split == "eval", "test", split)  # evaluation binaries use the test templates
    params = sim.draw_parameters(rng, subset, tsplit)
    t0 = time.perf_counter()
    with atomic_path(out / "flux.npy") as tf, atomic_path(out / "ivar.npy") as ti, \
            atomic_path(out / "andmask.npy") as tm:
        F = np.lib.format.open_memmap(tf, mode="w+", dtype=np.float32, shape=(n, LAMOST_NPIX))
        IV = np.lib.format.open_memmap(ti, mode="w+", dtype=np.float32, shape=(n, LAMOST_NPIX))
        M = np.lib.format.open_memmap(tm, mode="w+", dtype=np.uint8, shape=(n, LAMOST_NPIX))
        for s in range(0, n, cfg.chunk):
            sl = slice(s, min(n, s + cfg.chunk))
            # One child generator per chunk: chunk size does not change the noise of other chunks.
            crng = np.random.default_rng([cfg.seed, s // cfg.chunk])
            f, iv, m = sim.render({k: v[sl] for k, v in params.items()}, crng)
            F[sl], IV[sl], M[sl] = f, iv, m
            log.info("simulated %d / %d spectra (%.0f s)", sl.stop, n, time.perf_counter() - t0)
        F.flush()
        IV.flush()
        M.flush()
        del F, IV, M
    np.save(out / "wavelength.npy", sim.wave)
    is_bin = subset != "single"
    if cfg.label_mode == "mass_ratio":
        label = (subset == "binary_mid").astype(np.int8)
    else:
        label = np.where(subset == "binary_eval", is_bin, params["label_cmd"]).astype(np.int8)
        excl = (subset != "binary_eval") & (params["label_cmd"] < 0)
        split = np.where(excl, "excluded", split)
    meta = pd.DataFrame({
        "id": np.arange(n), "label": label, "subset": subset, "split": split, "is_binary": is_bin,
        "template_split": tsplit, "q": params["q"], "light_ratio": params["light_ratio"],
        "dv_abs": np.abs(params["dv"]), "period": params["period"], "a_au": params["a_au"], "ecc": params["ecc"],
        "incl": params["incl"], "dm_g": params["dm_g"], "label_cmd": params["label_cmd"],
        "teff1": params["teff1"], "teff2": params["teff2"], "mass1": params["mass1"], "mass2": params["mass2"],
        "rv1": params["rv1"], "rv2": params["rv2"], "snr_g": params["snr_g"], "ebv": params["ebv"],
        "template1": params["t1"], "template2": params["t2"], "zmet1": params["zmet1"],
        "template_source": params["template_source"],
    })
    with atomic_path(out / "meta.parquet") as tp:
        meta.to_parquet(tp, index=False)
    if cfg.write_fits:
        _write_fits_examples(out, meta, cfg.write_fits)
    write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
    log.info("wrote %d spectra to %s (%.0f s)", n, out, time.perf_counter() - t0)
    return out


def _write_fits_examples(out: Path, meta, n_each: int) -> None:
    """LAMOST-layout FITS files of the first ``n_each`` test and eval spectra (truth in the header)."""
    from skyvar.spectra.io import write_lamost_lrs
    from skyvar.spectra.spectrum import Spectrum

    flux = np.load(out / "flux.npy", mmap_mode="r")
    ivar = np.load(out / "ivar.npy", mmap_mode="r")
    am = np.load(out / "andmask.npy", mmap_mode="r")
    wave = np.load(out / "wavelength.npy")
    rows = np.concatenate([np.flatnonzero(meta["split"].to_numpy() == "test")[:n_each],
                           np.flatnonzero(meta["split"].to_numpy() == "eval")[:n_each]])
    for r in rows:
        m = meta.iloc[r]
        s = Spectrum(wavelength=wave, flux=np.asarray(flux[r]), ivar=np.asarray(ivar[r]),
                     mask=(np.asarray(am[r]) != 0) | ~(np.asarray(ivar[r]) > 0), vacuum=True,
                     meta={"andmask": np.asarray(am[r])})
        hdr = {"OBSID": int(m["id"]), "RA": float(r % 360), "DEC": 0.0, "SNRG": round(float(m["snr_g"]), 2),
               "CLASS": "STAR", "SUBCLASS": "SIM", "SIMLABEL": int(m["label"]),
               "SIMQ": float(np.nan_to_num(m["q"], nan=0.0)), "SIMSUBST": str(m["subset"])}
        write_lamost_lrs(out / "fits" / f"sim-{int(m['id']):06d}.fits", s, header=hdr)


def main(overrides: list[str]) -> int:
    from skyvar.utils.config import config_from_dotlist

    if any(o in ("-h", "--help") for o in overrides):
        print(__doc__)
        for f in dataclasses.fields(SpectraSimConfig):
            print(f"  {f.name} = {f.default if f.default is not dataclasses.MISSING else f.default_factory()}")
        return 0
    try:
        cfg = config_from_dotlist(SpectraSimConfig, overrides)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if cfg.survey != "lamost_lrs":
        print(f"spectra: unknown survey {cfg.survey!r}; only survey=lamost_lrs exists", file=sys.stderr)
        return 2
    cfg = resolve_paths(cfg)
    try:
        simulate_to_disk(cfg)
    except ValueError as e:
        print(f"spectra: {e}", file=sys.stderr)
        return 2
    return 0


def resolve_paths(cfg: SpectraSimConfig) -> SpectraSimConfig:
    """Resolve ``${oc.env:SKYVAR_SHARED,../shared}``-style interpolations in the optional template and
    noise directories (None, the default, means the data shipped with the package)."""
    from omegaconf import OmegaConf

    from skyvar.paths import shared_dir

    sd = shared_dir()
    shared_default = str(sd) if sd else "/nonexistent-shared"
    out = {}
    for k in ("redrock_dir", "bosz_dir", "noise_reference_dir"):
        v = getattr(cfg, k)
        if v is not None and "${" in v:
            v = OmegaConf.create({"x": v.replace("${oc.env:SKYVAR_SHARED,../shared}", shared_default)}).x
        out[k] = v
    return dataclasses.replace(cfg, **out)
