"""Stellar template spectra (redrock PCA archetypes and BOSZ models) for simulating survey spectra.

Everything is kept *linear*: a library spectrum is ``coeff[i] @ basis`` on a fine uniform log10-λ grid
(vacuum Å). Redrock star templates are stored by DESI as a few PCA basis vectors per spectral class plus
one coefficient row per archetype, so the whole library (thousands of spectra) costs only the basis
vectors; the instrumental broadening to resolution R is applied to the basis once (convolution is
linear). BOSZ models enter as extra basis rows with a one-hot coefficient.

Stellar parameters:

- BOSZ files carry Teff, log g, [M/H] in their headers.
- Redrock archetypes carry none. Their Teff is estimated from the spectrophotometric colour
  ``F(4400–4600 Å) / F(6900–7100 Å)`` (f_λ): the colour is converted to a black-body colour temperature
  T_col and mapped to Teff with a power law fitted on the BOSZ models (known Teff 5000–6750 K). This is
  an approximation (~100 K inside the BOSZ range, a few hundred K outside it, worse for M dwarfs whose
  TiO bands distort the colour); log g and
  [M/H] of redrock archetypes are unknown (NaN), so a log g cut cannot be applied to them.

Main-sequence relations (mass, Teff, absolute V magnitude) follow the mean dwarf sequence of Pecaut &
Mamajek (2013, ApJS 208, 9; values rounded from their table), interpolated in log quantities.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from skyvar.spectra.io import SpectrumReadError, open_fits
from skyvar.spectra.resample import resample_linear

C_KMS = 299792.458
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))

# Mean dwarf sequence (Pecaut & Mamajek 2013, rounded): spectral type, Teff [K], M_V [mag], mass [Msun].
MAIN_SEQUENCE = np.array([
    # Teff   M_V    mass
    [7220, 2.51, 1.61],  # F0V
    [6810, 2.99, 1.46],  # F2V
    [6510, 3.40, 1.33],  # F5V
    [6170, 4.00, 1.18],  # F8V
    [5930, 4.36, 1.10],  # G0V
    [5770, 4.79, 1.02],  # G2V
    [5660, 5.06, 0.98],  # G5V
    [5490, 5.50, 0.94],  # G8V
    [5280, 5.89, 0.88],  # K0V
    [5040, 6.26, 0.82],  # K2V
    [4830, 6.52, 0.78],  # K3V
    [4600, 6.91, 0.73],  # K4V
    [4450, 7.30, 0.69],  # K5V
    [4050, 8.16, 0.64],  # K7V
    [3850, 8.91, 0.57],  # M0V
    [3660, 9.60, 0.50],  # M1V
    [3560, 10.14, 0.44],  # M2V
    [3430, 11.14, 0.37],  # M3V
    [3210, 12.66, 0.23],  # M4V
    [3060, 14.30, 0.16],  # M5V
    [2810, 16.60, 0.10],  # M6V
])


def ms_mass_from_teff(teff) -> np.ndarray:
    """Main-sequence mass [Msun] for Teff [K] (clipped to the table, 2810–7220 K)."""
    t = MAIN_SEQUENCE[::-1]
    return 10 ** np.interp(np.log10(teff), np.log10(t[:, 0]), np.log10(t[:, 2]))


def ms_teff_from_mass(mass) -> np.ndarray:
    """Main-sequence Teff [K] for a mass [Msun] (clipped to 0.10–1.61 Msun)."""
    t = MAIN_SEQUENCE[::-1]
    return 10 ** np.interp(np.log10(mass), np.log10(t[:, 2]), np.log10(t[:, 0]))


def ms_absmag_v_from_mass(mass) -> np.ndarray:
    """Main-sequence absolute V magnitude for a mass [Msun] (linear in log mass between table rows)."""
    t = MAIN_SEQUENCE[::-1]
    return np.interp(np.log10(mass), np.log10(t[:, 2]), t[:, 1])


def planck_lambda(wave_A, teff) -> np.ndarray:
    """Black-body f_λ (arbitrary scale) at wavelengths [Å] for temperatures [K] (broadcasting)."""
    x = 1.438776877e8 / (np.asarray(wave_A, dtype=float) * np.asarray(teff, dtype=float))  # hc/λkT, λ in Å
    return np.asarray(wave_A, dtype=float) ** -5 / np.expm1(np.minimum(x, 700.0))


COLOUR_BANDS = ((4400.0, 4600.0), (6900.0, 7100.0))
# (B, log10 A) of Teff = A * T_colour**B fitted on the 7 shared BOSZ models (used when none are given).
BOSZ_TCOL_FIT = (0.716, 1.040)


def colour_ratio(wave, flux) -> np.ndarray:
    """F(4400–4600 Å) / F(6900–7100 Å) of f_λ spectra ``flux[..., npix]`` on ``wave`` [Å]."""
    (b0, b1), (r0, r1) = COLOUR_BANDS
    b = np.mean(flux[..., (wave > b0) & (wave < b1)], axis=-1)
    r = np.mean(flux[..., (wave > r0) & (wave < r1)], axis=-1)
    return b / r


def colour_temperature(ratio) -> np.ndarray:
    """Black-body temperature [K] whose colour_ratio equals ``ratio`` (1500–50000 K, monotone inversion)."""
    grid_t = np.geomspace(1500.0, 50000.0, 2000)
    w = np.linspace(3000, 11000, 8001)
    rr = colour_ratio(w, planck_lambda(w[None, :], grid_t[:, None]))
    return np.interp(np.asarray(ratio, dtype=float), rr, grid_t)  # rr increases with T


@dataclasses.dataclass
class RedrockTemplate:
    subtype: str
    wavelength: np.ndarray  # (npix,) Å, vacuum, rest frame
    basis: np.ndarray  # (nbasis, npix)
    coeff: np.ndarray  # (narchetype, nbasis)


@dataclasses.dataclass
class BoszSpectrum:
    wavelength: np.ndarray  # Å (vacuum)
    flux: np.ndarray  # f_λ, surface flux units of BOSZ
    teff: float
    logg: float
    mh: float
    alpha: float
    resolution: float
    name: str


def load_redrock_template(path: str | os.PathLike) -> RedrockTemplate:
    """One ``rrtemplate-STAR-<X>-v*.fits``: BASIS_VECTORS (CRVAL1/CDELT1 linear λ) and ARCHETYPE_COEFF."""
    path = Path(path)
    with open_fits(path) as hdul:
        hdr = hdul[0].header
        basis = np.asarray(hdul[0].data, dtype=np.float64)
        if "ARCHETYPE_COEFF" not in hdul:
            raise SpectrumReadError(f"{path}: no ARCHETYPE_COEFF extension (cannot rebuild archetypes)")
        coeff = np.asarray(hdul["ARCHETYPE_COEFF"].data, dtype=np.float64)
    if basis.ndim != 2 or coeff.ndim != 2 or coeff.shape[1] != basis.shape[0]:
        raise SpectrumReadError(f"{path}: basis {basis.shape} and coefficients {coeff.shape} do not match")
    if "LOGLAM" in hdr and bool(hdr["LOGLAM"]):
        wave = 10 ** (hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(basis.shape[1]))
    else:
        wave = hdr["CRVAL1"] + hdr["CDELT1"] * np.arange(basis.shape[1])
    return RedrockTemplate(subtype=str(hdr.get("RRSUBTYP", path.stem)).strip(), wavelength=wave, basis=basis,
                           coeff=coeff)


def load_redrock_templates(directory: str | os.PathLike, subtypes=("F", "G", "K", "M")) -> dict[str, RedrockTemplate]:
    directory = Path(directory)
    out = {}
    for st in subtypes:
        files = sorted(directory.glob(f"rrtemplate-STAR-{st}-*.fits"))
        if not files:
            raise FileNotFoundError(f"no redrock STAR-{st} template in {directory}")
        out[st] = load_redrock_template(files[-1])
    return out


def load_bosz(path: str | os.PathLike) -> BoszSpectrum:
    """A BOSZ model (table: Wavelength [Å], SpecificIntensity f_λ, Continuum; header T_EFF, LOGG, MH)."""
    path = Path(path)
    with open_fits(path) as hdul:
        hdr = hdul[0].header
        tab = hdul[1].data
        wave = np.asarray(tab["Wavelength"], dtype=np.float64)
        flux = np.asarray(tab["SpecificIntensity"], dtype=np.float64)
    return BoszSpectrum(wavelength=wave, flux=flux, teff=float(hdr["T_EFF"]), logg=float(hdr["LOGG"]),
                        mh=float(hdr["MH"]), alpha=float(hdr.get("ALPHA", 0.0)),
                        resolution=float(hdr.get("INSBROAD", np.inf)), name=path.name)


def load_bosz_dir(directory: str | os.PathLike) -> list[BoszSpectrum]:
    files = sorted(Path(directory).glob("*.fits"))
    if not files:
        raise FileNotFoundError(f"no BOSZ models in {directory}")
    return [load_bosz(f) for f in files]


def broaden_to_resolution(flux, dloglam: float, resolution: float, native_resolution: float = np.inf) -> np.ndarray:
    """Gaussian instrumental broadening on a uniform log10-λ grid (last axis) from ``native_resolution``
    to ``resolution`` (R = λ/FWHM); the kernel is the quadrature difference, constant in velocity."""
    inv2 = 1.0 / resolution**2 - (0.0 if not np.isfinite(native_resolution) else 1.0 / native_resolution**2)
    if inv2 <= 0:
        return np.asarray(flux, dtype=float)
    sigma_loglam = np.sqrt(inv2) * FWHM_TO_SIGMA / np.log(10.0)  # Δλ/λ -> Δlog10 λ
    return gaussian_filter1d(np.asarray(flux, dtype=float), sigma_loglam / dloglam, axis=-1, mode="nearest")


@dataclasses.dataclass
class TemplateLibrary:
    """Library spectra ``coeff @ basis`` on a uniform log10-λ grid (vacuum, rest frame) at ``resolution``."""

    loglam: np.ndarray  # (nfine,) log10 Å
    basis: np.ndarray  # (nbasis, nfine) float32
    coeff: np.ndarray  # (n, nbasis) float32
    teff: np.ndarray  # (n,) K (estimated for redrock)
    logg: np.ndarray  # (n,) NaN where unknown
    mh: np.ndarray  # (n,) NaN where unknown
    source: np.ndarray  # (n,) 'redrock-G', 'bosz', ...
    resolution: float

    @property
    def wavelength(self) -> np.ndarray:
        return 10**self.loglam

    def __len__(self) -> int:
        return len(self.teff)

    def spectra(self, idx) -> np.ndarray:
        """f_λ of library entries ``idx`` (m, nfine), each scaled to unit mean over 5000–6000 Å."""
        return np.asarray(self.coeff[np.asarray(idx)] @ self.basis, dtype=np.float32)


def build_stellar_library(redrock_dir: str | os.PathLike | None, bosz_dir: str | os.PathLike | None = None,
                          loglam: np.ndarray | None = None, resolution: float = 1800.0,
                          subtypes=("F", "G", "K", "M")) -> TemplateLibrary:
    """Redrock archetypes of ``subtypes`` plus BOSZ models, broadened to ``resolution`` on ``loglam``.

    Every entry is scaled to unit mean f_λ over 5000–6000 Å so that callers set luminosities explicitly.
    """
    if loglam is None:
        loglam = np.arange(np.log10(3500.0), np.log10(9500.0), 1e-5)
    dlog = float(np.median(np.diff(loglam)))
    wave = 10**loglam
    norm_band = (wave > 5000) & (wave < 6000)
    teff, logg, mh, source = [], [], [], []
    nb = 0
    blocks = []
    if redrock_dir is not None:
        for st, tpl in load_redrock_templates(redrock_dir, subtypes).items():
            # Redrock wavelengths are rest-frame vacuum on a linear grid: resample to log-λ, then broaden.
            b = resample_linear(loglam, np.log10(tpl.wavelength), tpl.basis)
            b = broaden_to_resolution(b, dlog, resolution)
            spec = tpl.coeff @ b
            scale = spec[:, norm_band].mean(axis=1)
            good = scale > 0
            blocks.append((b, tpl.coeff[good] / scale[good, None]))
            teff.append(colour_temperature(colour_ratio(wave, spec[good])))
            logg.append(np.full(good.sum(), np.nan))
            mh.append(np.full(good.sum(), np.nan))
            source.append(np.full(good.sum(), f"redrock-{st}"))
    bosz_teff, bosz_tcol = [], []
    if bosz_dir is not None:
        for m in load_bosz_dir(bosz_dir):
            f = resample_linear(loglam, np.log10(m.wavelength), m.flux)
            f = broaden_to_resolution(f, dlog, resolution, native_resolution=m.resolution)
            f = f / f[norm_band].mean()
            blocks.append((f[None, :], np.ones((1, 1))))
            teff.append(np.array([m.teff]))
            logg.append(np.array([m.logg]))
            mh.append(np.array([m.mh]))
            source.append(np.array(["bosz"]))
            bosz_teff.append(m.teff)
            bosz_tcol.append(float(colour_temperature(colour_ratio(wave, f))))
    if not blocks:
        raise ValueError("no template source given")
    # Calibrate redrock colour temperatures to Teff with the BOSZ models (known Teff): a power law
    # Teff = A * T_col**B fitted in log-log (the ratio is not constant: 0.98 at 5000 K, 0.87 at 6750 K).
    # Without BOSZ, the fit to the shared BOSZ set is used.
    if len(bosz_teff) >= 3 and np.ptp(bosz_teff) > 0:
        B, logA = np.polyfit(np.log10(bosz_tcol), np.log10(bosz_teff), 1)
    else:
        B, logA = BOSZ_TCOL_FIT
    ntot_basis = sum(b.shape[0] for b, _ in blocks)
    nrows = sum(c.shape[0] for _, c in blocks)
    basis = np.zeros((ntot_basis, len(loglam)), dtype=np.float32)
    coeff = np.zeros((nrows, ntot_basis), dtype=np.float32)
    r = 0
    for b, c in blocks:
        basis[nb:nb + b.shape[0]] = b
        coeff[r:r + c.shape[0], nb:nb + b.shape[0]] = c
        nb += b.shape[0]
        r += c.shape[0]
    src = np.concatenate(source)
    teff_all = np.concatenate(teff)
    is_rr = np.char.startswith(src.astype(str), "redrock")
    teff_all[is_rr] = 10 ** (logA + B * np.log10(teff_all[is_rr]))
    return TemplateLibrary(loglam=np.asarray(loglam), basis=basis, coeff=coeff, teff=teff_all,
                           logg=np.concatenate(logg), mh=np.concatenate(mh), source=src, resolution=resolution)

