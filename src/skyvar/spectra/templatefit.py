"""Best single-template fits of low-resolution spectra: the domain-gap probe and the detectability ceiling.

A spectrum d(λ) (moved to its rest frame) is modelled as ``P(λ) T_k(λ)`` for every library template
T_k, with P a Legendre polynomial of degree ``degree`` in λ (absorbs extinction, flux calibration and
normalisation: the usual multiplicative polynomial of template fitters such as pPXF or redrock). The
polynomial coefficients are linear: for all templates at once the weighted normal equations are formed
with one matrix product and solved in a batch, so the χ² of every template costs ~1 s per spectrum for
7 500 templates on one CPU core.

Uses in skyvar:

- **domain gap**: the χ²/pixel and the residual spectrum ``d / (P T) - 1`` of *real* LAMOST spectra
  against their best template, beside the same for simulated single stars (whose best template is in
  the library by construction): what the mock lacks shows up as residual structure;
- **ceiling**: the χ² of the best *single*-star fit, given the whole library (the true template of
  every simulated single included) and the primary's velocity, is what an ideal single-epoch detector
  of composite spectra can use; its ROC AUC (singles versus binaries) bounds what a classifier trained
  on the same mock can reach in a regime (e.g. |Δv| < 20 km/s).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from skyvar.spectra.resample import resample_linear

C_KMS = 299792.458


@dataclasses.dataclass
class TemplateFit:
    best: np.ndarray  # (n,) index of the best template
    chi2: np.ndarray  # (n,) χ² of the best template
    n_pix: np.ndarray  # (n,) pixels used
    chi2_all: np.ndarray | None  # (n, n_templates) χ² of every template (keep_all=True)
    model: np.ndarray  # (n, npix) best model P T_best on the input grid (NaN outside)

    @property
    def chi2_red(self) -> np.ndarray:
        return self.chi2 / np.maximum(self.n_pix - 1, 1)


def legendre_design(wave: np.ndarray, degree: int) -> np.ndarray:
    """(npix, degree + 1) Legendre polynomials of λ mapped to [-1, 1]."""
    x = 2 * (wave - wave.min()) / np.ptp(wave) - 1
    return np.polynomial.legendre.legvander(x, degree)


def fit_templates(wave: np.ndarray, flux: np.ndarray, ivar: np.ndarray, templates: np.ndarray,
                  rv_kms: np.ndarray | None = None, degree: int = 15, good: np.ndarray | None = None,
                  keep_all: bool = False, chunk: int = 2048) -> TemplateFit:
    """Fit every row of ``flux`` (n, npix) on ``wave`` [Å] with every template (m, npix) on the same grid
    (rest frame), times a Legendre polynomial of ``degree``.

    ``rv_kms`` (n,): each spectrum is moved to its rest frame (resampled onto ``wave / (1 + v/c)``) before
    the fit; ``ivar`` 0 or ``good`` False marks pixels left out. Returns :class:`TemplateFit`.
    """
    wave = np.asarray(wave, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    n, npix = flux.shape
    T = np.asarray(templates, dtype=np.float64)
    if good is None:
        good = np.ones_like(flux, dtype=bool)
    good = np.atleast_2d(good) & (ivar > 0) & np.isfinite(flux)
    if rv_kms is not None:
        b = np.asarray(rv_kms, dtype=np.float64) / C_KMS
        doppler = np.sqrt((1 + b) / (1 - b))
        # observed pixels at λ_obs = λ_rest D: sample the observed spectrum at wave * D
        f, iv, bad = resample_linear(wave[None, :] * doppler[:, None], wave, flux, np.where(good, ivar, 0.0), ~good)
        flux, ivar, good = np.where(bad, 0.0, f), np.where(bad, 0.0, iv), ~bad
    L = legendre_design(wave, degree)  # (npix, K)
    K = L.shape[1]
    LL = (L[:, :, None] * L[:, None, :]).reshape(npix, K * K)
    best = np.zeros(n, dtype=np.int64)
    chi2 = np.zeros(n)
    chi2_all = np.zeros((n, len(T))) if keep_all else None
    model = np.full((n, npix), np.nan)
    for i in range(n):
        w = np.where(good[i], ivar[i], 0.0)
        d = flux[i]
        dd = np.sum(w * d * d)
        c_best, k_best, x_best = np.inf, -1, None
        row = np.empty(len(T))
        for s in range(0, len(T), chunk):
            Tc = T[s:s + chunk]
            N = ((Tc * Tc) * w) @ LL  # (m, K*K)
            rhs = ((Tc * (w * d)) @ L)  # (m, K)
            N = N.reshape(-1, K, K) + 1e-9 * np.eye(K) * np.trace(N.reshape(-1, K, K), axis1=1, axis2=2)[:, None, None] / K
            try:
                c = np.linalg.solve(N, rhs[..., None])[..., 0]
            except np.linalg.LinAlgError:
                c = np.linalg.lstsq(N[0], rhs[0], rcond=None)[0][None]
            x2 = dd - np.sum(c * rhs, axis=1)
            row[s:s + chunk] = x2
            j = int(np.argmin(x2))
            if x2[j] < c_best:
                c_best, k_best, x_best = x2[j], s + j, c[j]
        best[i], chi2[i] = k_best, c_best
        if keep_all:
            chi2_all[i] = row
        model[i] = (L @ x_best) * T[k_best]
    return TemplateFit(best=best, chi2=chi2, n_pix=good.sum(1), chi2_all=chi2_all, model=model)


def native_templates(lib, wave_native: np.ndarray, fine_per_native: int, margin: int, idx=None) -> np.ndarray:
    """Library spectra (rest frame, noiseless) binned onto the native grid: (m, npix) float64.

    ``lib`` a :class:`~skyvar.spectra.templates.TemplateLibrary` on the simulator's fine grid (blocks of
    ``fine_per_native`` fine pixels per native pixel, ``margin`` native pixels each side)."""
    idx = np.arange(len(lib)) if idx is None else np.asarray(idx)
    nb = lib.basis.reshape(lib.basis.shape[0], -1, fine_per_native).mean(axis=2)[:, margin:margin + len(wave_native)]
    return lib.coeff[idx].astype(np.float64) @ nb.astype(np.float64)
