"""The astrometric Cramér–Rao bound of ``skyvar.sim.field_validation`` against the analytic Gaussian-PSF
limits, and the recall it implies (the "efficient-estimator expectation" row of the reports).

For a circular Gaussian PSF of width σ (px) and a star of flux f with a known background of variance B
per pixel, the Fisher information on x is Σ_p (f ∂P/∂x)² / (f P + B). In the continuum limit
(σ ≫ 1 px; the pixel adds 1/12 px² to σ²):

- photon-limited (B → 0): σ_x² = σ² / f;
- background-limited (f P ≪ B): σ_x² = 8 π σ⁴ B / f².
"""

import dataclasses

import numpy as np
import pytest

from skyvar.sim.field import FieldSimConfig
from skyvar.sim.field_validation import astrometric_crlb, background_var
from skyvar.sim.psf import PSFConfig

SIGMA_PX = 2.0
SCALE = 0.074


def _cfg(**kw) -> FieldSimConfig:
    psf = PSFConfig(model="gaussian", gaussian_fwhm_arcsec=2.3548 * SIGMA_PX * SCALE, jitter_sigma_arcsec=0.0)
    base = dict(psf=psf, pixel_scale=SCALE, dark_e_s=0.0, read_noise_e=0.0, quantize=False)
    return FieldSimConfig(**{**base, **kw})


def _flux(cfg, mag):
    return cfg.exptime * 10 ** (-0.4 * (mag - cfg.zp))


def test_photon_limited_bound_is_sigma_over_root_flux():
    cfg = _cfg(sky_mag_arcsec2=45.0)  # no sky to speak of
    mag = 16.0
    f = _flux(cfg, mag)
    assert background_var(cfg) * 441 < 1e-3 * f
    s_eff = np.sqrt(SIGMA_PX**2 + 1.0 / 12.0)
    assert astrometric_crlb(np.array([mag]), cfg)[0] == pytest.approx(s_eff / np.sqrt(f), rel=0.02)


def test_background_limited_bound_is_the_gaussian_formula():
    cfg = _cfg(sky_mag_arcsec2=12.0)  # a bright sky: B ~ 4e5 e- per pixel
    B = background_var(cfg)
    mag = 22.0
    f = _flux(cfg, mag)
    assert f / (2 * np.pi * SIGMA_PX**2) < 0.01 * B
    s_eff2 = SIGMA_PX**2 + 1.0 / 12.0
    expected = np.sqrt(8 * np.pi * s_eff2**2 * B) / f
    assert astrometric_crlb(np.array([mag]), cfg)[0] == pytest.approx(expected, rel=0.03)


def test_bound_scales_between_the_limits():
    cfg = _cfg()
    s = astrometric_crlb(np.array([16.0, 18.0, 20.0, 22.0, 24.0, 26.0]), cfg)
    # each 2 mag fainter multiplies the bound by between 10^0.4 (photon-limited, ~ f^-1/2) and 10^0.8
    # (background-limited, ~ f^-1), moving from the first towards the second
    ratio = s[1:] / s[:-1]
    assert np.all(ratio > 10**0.4 * 0.98) and np.all(ratio < 10**0.8 * 1.02)
    assert np.all(np.diff(ratio) > 0)


def test_recall_expectation_of_an_efficient_estimator(monkeypatch):
    """The expected recall within r of an estimator that attains the bound is the 2-D Gaussian integral
    1 − exp(−r²/2σ²) per star, averaged over the targets' luminosity function (σ per magnitude
    stubbed here: the bound itself is tested above)."""
    import skyvar.sim.field_validation as fv

    r = 0.1
    monkeypatch.setattr(fv, "astrometric_crlb", lambda m, cfg: np.full(len(m), 0.05))
    assert fv.recall_ceiling(r, _cfg()) == pytest.approx(1 - np.exp(-(r**2) / (2 * 0.05**2)), rel=1e-9)
    # sigma growing with magnitude: the average is weighted toward the faint (numerous) stars
    cfg = dataclasses.replace(_cfg(), mag_min=20.0, target_mag_max=25.0)
    monkeypatch.setattr(fv, "astrometric_crlb", lambda m, c: 0.01 * 10 ** (0.4 * (np.asarray(m) - 20.0)))
    m = np.linspace(20.0, 25.0, 441)
    w = 10 ** (cfg.lf_slope * m)
    per_star = 1 - np.exp(-(r**2) / (2 * (0.01 * 10 ** (0.4 * (m - 20.0))) ** 2))
    assert fv.recall_ceiling(r, cfg) == pytest.approx(float((w * per_star).sum() / w.sum()), rel=1e-9)
    assert fv.recall_ceiling(r, cfg) < per_star.mean()
