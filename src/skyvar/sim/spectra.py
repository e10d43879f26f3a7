"""``python -m skyvar.sim spectra survey=lamost_lrs key=value ...``: LAMOST-like single and binary spectra.

The training set of the binary-star CNN (Jing et al.), rebuilt from templates because the paper's
Gaia-CMD-labelled LAMOST sample is not public:

- **Stars**: main-sequence primaries with 3800 < Teff < 6500 K drawn from the redrock archetypes (and
  BOSZ models), broadened to R ≈ 1800 (``skyvar.spectra.templates``). Redrock archetypes carry no log g,
  so the paper's log g > 4 cut cannot be applied to them (stated in the docs).
- **Binaries**: a secondary of mass ``q * M1`` (main-sequence mass–Teff relation) is the library entry
  of nearest Teff; each component is scaled to its main-sequence absolute V magnitude (the flux ratio
  in the band follows the mass–luminosity relation) and Doppler-shifted by its own radial velocity:
  ``v1 = v0 + Δv q/(1+q)``, ``v2 = v0 - Δv/(1+q)`` (momentum conservation about the systemic v0) with
  |Δv| uniform in [0, ``drv_max``] km/s — mostly unresolved at R ≈ 1800 (167 km/s FWHM).
- **Labels and subsets** as the paper: ``single`` (label 0) and intermediate mass-ratio binaries
  ``binary_mid`` (q in ``q_train``, label 1) at ``n_single : n_binary`` ≈ 18 : 1, split 80/10/10;
  ``binary_eval``: binaries with q uniform in [``q_min``, 1] (high-q and low-q included) kept for
  evaluation only (split ``eval``).
- **Observation**: interstellar extinction (CCM89, R_V = 3.1, E(B−V) uniform in [0, ``ebv_max``]),
  a smooth multiplicative flux-calibration error, LAMOST-like per-pixel noise: variance
  ``f / (K G(λ))`` where ``G(λ)`` is the median of ``flux * ivar`` of the real LAMOST files in
  ``noise_reference_dir`` (throughput, dichroic and sky-line structure included) and ``K`` sets the
  median S/N per pixel over 4000–5300 Å to ``SNR_g`` (log-uniform in [``snr_min``, ``snr_max``]);
  sky-subtraction residuals at sky-line pixels, cosmic-ray hits and occasional masked chunks.

Outputs in ``out_dir`` (numpy arrays memory-mappable, rows = spectra on the LAMOST native grid):
``wavelength.npy`` (Å, vacuum), ``flux.npy``, ``ivar.npy`` (float32), ``andmask.npy`` (uint8),
``meta.parquet`` (one row per spectrum: id, label, subset, split, q, teff1, teff2, mass1, mass2,
rv1, rv2, snr_g, ebv, template indices) and ``config.json``. ``write_fits=N`` also writes the first
N spectra of the test split and of the eval subset as LAMOST-layout FITS files under ``fits/``.
Same config and seed give the same data.
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
SUBSETS = ("single", "binary_mid", "binary_eval")


@dataclasses.dataclass
class SpectraSimConfig:
    survey: str = "lamost_lrs"
    out_dir: str = "datasets/lamost_lrs_sim"
    seed: int = 2025
    n_single: int = 36000
    n_binary: int = 2000  # intermediate-q binaries (label 1), ≈ 1:18 as the paper
    n_eval_binary: int = 3000  # q uniform in [q_min, 1]: evaluation only
    q_train_min: float = 0.71
    q_train_max: float = 0.93
    q_min: float = 0.3
    teff_min: float = 3800.0
    teff_max: float = 6500.0
    bosz_fraction: float = 0.03  # share of primaries drawn from the BOSZ models (known Teff, log g >= 4)
    resolution: float = 1800.0
    snr_min: float = 20.0
    snr_max: float = 300.0
    rv_sys_sigma: float = 40.0  # km/s, systemic velocity spread
    drv_max: float = 150.0  # km/s, maximum |v1 - v2|
    ebv_max: float = 0.3
    fluxcal_sigma: float = 0.05  # rms of the smooth multiplicative calibration error
    sky_floor: float = 0.02  # variance floor (sky + read noise) as a fraction of the median g-band flux
    sky_residual: float = 2.0  # residual amplitude at sky lines in units of the pixel sigma
    cosmic_rate: float = 0.5  # mean cosmic-ray hits per spectrum (unmasked)
    bad_chunk_prob: float = 0.05  # probability of a masked chunk (ANDMASK set, ivar 0)
    split_fractions: list = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])
    redrock_dir: str = "${oc.env:SKYVAR_SHARED,../shared}/data/spectra/redrock"
    bosz_dir: str = "${oc.env:SKYVAR_SHARED,../shared}/data/spectra/bosz"
    noise_reference_dir: str = "${oc.env:SKYVAR_SHARED,../shared}/data/spectra/lamost_lrs"
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
    over files removes each star's own features. Without reference files: a smooth blue-weak fallback.
    """
    from skyvar.spectra.io import SpectrumError, read_lamost_lrs
    from skyvar.utils.inputs import expand_inputs

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


def _bin_to_native(fine: np.ndarray) -> np.ndarray:
    m = fine.reshape(fine.shape[0], -1, FINE).mean(axis=2)
    return m[:, MARGIN:MARGIN + LAMOST_NPIX]


def _vband_weight(wave: np.ndarray) -> np.ndarray:
    """Johnson-V-like response (Gaussian, centre 5450 Å, FWHM 880 Å), normalised to unit sum."""
    w = np.exp(-0.5 * ((wave - 5450.0) / (880.0 / 2.3548)) ** 2)
    return w / w.sum()


class SpectraSimulator:
    def __init__(self, cfg: SpectraSimConfig):
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
        in_range = (teff > cfg.teff_min) & (teff < cfg.teff_max)
        is_bosz = self.lib.source == "bosz"
        self.primary_rr = np.flatnonzero(in_range & ~is_bosz)
        self.primary_bosz = np.flatnonzero(in_range & is_bosz)
        self.secondary_pool = np.flatnonzero(~is_bosz)
        if len(self.primary_rr) == 0:
            raise ValueError("no template in the primary Teff range")
        order = np.argsort(teff[self.secondary_pool])
        self.secondary_sorted = self.secondary_pool[order]
        self.secondary_teff = teff[self.secondary_sorted]

    # ------------------------------------------------------------------ draws
    def draw_parameters(self, rng: np.random.Generator, subset: np.ndarray) -> dict:
        from skyvar.spectra.templates import ms_mass_from_teff, ms_teff_from_mass

        cfg = self.cfg
        n = len(subset)
        use_bosz = (rng.random(n) < cfg.bosz_fraction) & (len(self.primary_bosz) > 0)
        t1 = np.where(use_bosz, rng.choice(self.primary_bosz, n) if len(self.primary_bosz) else 0,
                      rng.choice(self.primary_rr, n))
        teff1 = self.lib.teff[t1]
        m1 = ms_mass_from_teff(teff1)
        is_bin = subset != "single"
        q = np.full(n, np.nan)
        mid = subset == "binary_mid"
        q[mid] = rng.uniform(cfg.q_train_min, cfg.q_train_max, mid.sum())
        ev = subset == "binary_eval"
        q[ev] = rng.uniform(cfg.q_min, 1.0, ev.sum())
        m2 = np.where(is_bin, m1 * np.nan_to_num(q), np.nan)
        teff2 = np.where(is_bin, ms_teff_from_mass(np.where(is_bin, m2, 1.0)), np.nan)
        # Secondary template: one of the 5 library entries nearest in Teff (variety without bias).
        pos = np.searchsorted(self.secondary_teff, np.nan_to_num(teff2))
        pos = np.clip(pos + rng.integers(-2, 3, n), 0, len(self.secondary_sorted) - 1)
        t2 = np.where(is_bin, self.secondary_sorted[pos], -1)
        # q = 1 twins: the same template for both stars is the physical limit.
        twin = is_bin & (np.nan_to_num(q) >= 0.999)
        t2[twin] = t1[twin]
        v0 = rng.normal(0.0, cfg.rv_sys_sigma, n)
        dv = rng.uniform(0.0, cfg.drv_max, n) * rng.choice([-1.0, 1.0], n)
        qq = np.nan_to_num(q, nan=1.0)
        rv1 = np.where(is_bin, v0 + dv * qq / (1 + qq), v0)
        rv2 = np.where(is_bin, v0 - dv / (1 + qq), np.nan)
        return dict(t1=t1, t2=t2, teff1=teff1, teff2=teff2, mass1=m1, mass2=m2, q=q, rv1=rv1, rv2=rv2,
                    snr_g=np.exp(rng.uniform(np.log(cfg.snr_min), np.log(cfg.snr_max), n)),
                    ebv=rng.uniform(0.0, cfg.ebv_max, n), template_source=self.lib.source[t1])

    def render(self, p: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Noisy LAMOST-like (flux, ivar, andmask) on the native grid for the parameter rows ``p``."""
        from skyvar.spectra.templates import ms_absmag_v_from_mass

        cfg = self.cfg
        n = len(p["t1"])
        dl = LAMOST_DLOG / FINE

        def component(tidx, rv, mass):
            s = self.lib.spectra(tidx)
            s /= (s @ self.vweight)[:, None]  # unit V-band flux
            s *= (10 ** (-0.4 * ms_absmag_v_from_mass(mass)))[:, None].astype(np.float32)
            return _shift_rows(s, np.log10(1 + rv / C_KMS) / dl)

        fine = component(p["t1"], p["rv1"], p["mass1"])
        isb = p["t2"] >= 0
        if isb.any():
            fine[isb] += component(p["t2"][isb], p["rv2"][isb], p["mass2"][isb])
        flux = _bin_to_native(fine).astype(np.float64)
        # Observation: extinction, smooth calibration error, arbitrary overall scale.
        flux *= 10 ** (-0.4 * ccm89_extinction(self.wave, p["ebv"]))
        x = (np.log10(self.wave) - np.log10(self.wave).mean()) / np.ptp(np.log10(self.wave)) * 2
        legendre = np.polynomial.legendre.legvander(x, 3)[:, 1:]  # (npix, 3), mean-free shapes
        flux *= 1 + (rng.normal(0, cfg.fluxcal_sigma, (n, 3)) @ legendre.T)
        flux *= (10 ** rng.uniform(2.5, 3.5, n) / np.median(flux, axis=1))[:, None]
        # Noise: var = (f + b) / (K G); K such that the median S/N over 4000–5300 Å equals snr_g;
        # b = sky_floor * median g-band flux (sky + read noise). With sky_floor = 0 (the released
        # model's data) PCA templates that dip below 0 in the far blue of cool stars are clipped to
        # 1e-6 and get unphysically tiny variances there.
        gband = (self.wave > 4000) & (self.wave < 5300)
        if cfg.sky_floor > 0:
            flux = np.clip(flux, 0.0, None)
            b = cfg.sky_floor * np.median(flux[:, gband], axis=1)[:, None]
        else:
            flux = np.clip(flux, 1e-6, None)
            b = np.zeros((n, 1))
        if cfg.sky_floor > 0:
            h = flux[:, gband] * np.sqrt(self.gain[gband] / (flux[:, gband] + b))
        else:  # the released data set's exact arithmetic
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
    """80/10/10 (by default) train/val/test within each labelled subset; ``eval`` for binary_eval."""
    split = np.full(len(subset), "eval", dtype=object)
    f = np.asarray(fractions, dtype=float)
    f = f / f.sum()
    for name in ("single", "binary_mid"):
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
    subset = np.array(["single"] * cfg.n_single + ["binary_mid"] * cfg.n_binary
                      + ["binary_eval"] * cfg.n_eval_binary)
    subset = subset[rng.permutation(len(subset))]
    n = len(subset)
    params = sim.draw_parameters(rng, subset)
    split = assign_splits(rng, subset, cfg.split_fractions)
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
    meta = pd.DataFrame({
        "id": np.arange(n), "label": (subset == "binary_mid").astype(np.int8), "subset": subset, "split": split,
        "q": params["q"], "teff1": params["teff1"], "teff2": params["teff2"], "mass1": params["mass1"],
        "mass2": params["mass2"], "rv1": params["rv1"], "rv2": params["rv2"], "snr_g": params["snr_g"],
        "ebv": params["ebv"], "template1": params["t1"], "template2": params["t2"],
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
    simulate_to_disk(cfg)
    return 0


def resolve_paths(cfg: SpectraSimConfig) -> SpectraSimConfig:
    """Resolve ``${oc.env:SKYVAR_SHARED,../shared}`` defaults (relative to SKYVAR_ROOT or the cwd)."""
    import os

    from omegaconf import OmegaConf

    root = Path(os.environ.get("SKYVAR_ROOT", "."))
    shared_default = os.environ.get("SKYVAR_SHARED") or str((root / ".." / "shared").resolve())
    out = {}
    for k in ("redrock_dir", "bosz_dir", "noise_reference_dir"):
        v = getattr(cfg, k)
        if v is not None and "${" in v:
            v = OmegaConf.create({"x": v.replace("${oc.env:SKYVAR_SHARED,../shared}", shared_default)}).x
        out[k] = v
    return dataclasses.replace(cfg, **out)
