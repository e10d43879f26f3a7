"""Preprocessing: grid, air/vacuum, resampling, Ho et al. smoothing (against a direct sum), masks, rejections."""

import numpy as np
import pytest

from skyvar.spectra.preprocess import (
    PreprocessConfig,
    Preprocessor,
    air_to_vacuum,
    common_grid,
    smooth_continuum,
    smoothing_matrix,
    vacuum_to_air,
)
from skyvar.spectra.spectrum import Spectrum
from tests.spectra.lrs_helpers import lamost_like


def test_air_vacuum():
    # Hα: 6562.80 Å in air is 6564.61 Å in vacuum (NIST); [O I] 5577.34 air -> 5578.89 vacuum
    assert air_to_vacuum(6562.80) == pytest.approx(6564.61, abs=0.01)
    assert air_to_vacuum(5577.34) == pytest.approx(5578.89, abs=0.01)
    w = np.linspace(3500, 9500, 50)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(w)), w, atol=1e-4)


def test_common_grid_on_lamost_pixels():
    g = common_grid(PreprocessConfig())
    k = np.round((np.log10(g) - 3.5682) / 1e-4)
    np.testing.assert_allclose(np.log10(g), 3.5682 + 1e-4 * k, atol=1e-12)
    assert g[0] >= 3900 and g[-1] <= 8800 and g[0] < 3901 and g[-1] > 8797


def test_smoothing_equals_direct_sum():
    rng = np.random.default_rng(1)
    wave = np.linspace(4000, 4600, 301)
    flux = rng.uniform(0.5, 1.5, (2, 301))
    ivar = rng.uniform(0.0, 4.0, (2, 301))
    ivar[0, 100:130] = 0
    W = smoothing_matrix(wave, L=50.0, truncate=100.0)
    cont, _ = smooth_continuum(flux, ivar, W)
    for j in (0, 115, 300):
        w = np.exp(-((wave[j] - wave) ** 2) / 50.0**2)
        expect = np.sum(flux * ivar * w, axis=1) / np.sum(ivar * w, axis=1)
        np.testing.assert_allclose(cont[:, j], expect, rtol=1e-5)


def test_normalisation_flattens_continuum_and_keeps_lines():
    s = lamost_like()
    b = Preprocessor()([s])
    good = ~b.mask[0]
    w = b.wavelength
    far = good & (np.abs(w[:, None] - np.array([4862.7, 5891.6, 6564.6, 8544.4])).min(1) > 60)
    assert abs(np.median(b.flux[0][far]) - 1.0) < 0.01
    # Hα keeps most of its 40 % depth (the 50 Å kernel is much wider than the 3 Å line)
    assert b.flux[0][np.argmin(np.abs(w - 6564.6))] < 0.7
    assert np.all(b.flux[0][b.mask[0]] == 1.0)


def test_kernel_width_matters():
    """A 350 Å kernel cannot follow a 200 Å-scale continuum wiggle that the 50 Å one removes."""
    s = lamost_like(seed=3)
    s.flux = s.flux * (1 + 0.1 * np.sin(s.wavelength / 30.0))
    res = {}
    for L in (50.0, 350.0):
        b = Preprocessor(PreprocessConfig(smooth_L=L))([s])
        res[L] = np.std(b.flux[0][~b.mask[0]])
    assert res[50.0] < 0.6 * res[350.0]


def test_fixed_regions_are_masked():
    b = Preprocessor()([lamost_like()])
    w = b.wavelength
    for lo, hi in ((5750, 6000), (7580, 7700)):
        assert b.mask[0][(w > lo) & (w < hi)].all()
    assert b.mask[0][np.argmin(np.abs(w - 5578.9))]


def test_air_spectrum_is_moved_to_vacuum():
    n = 3909
    wave_air = 10 ** (3.5682 + 1e-4 * np.arange(n))
    flux = 1000 * (1 - 0.5 * np.exp(-0.5 * ((wave_air - 6562.80) / 3.0) ** 2))
    s = Spectrum(wavelength=wave_air, flux=flux, ivar=np.full(n, 1e-2), mask=np.zeros(n, bool), vacuum=False)
    b = Preprocessor()([s])
    w = b.wavelength
    sel = (w > 6540) & (w < 6590)
    wmin = np.sum(w[sel] * (1 - b.flux[0][sel])) / np.sum(1 - b.flux[0][sel])
    assert wmin == pytest.approx(6564.61, abs=0.3)


def test_rejections_are_per_spectrum():
    good = lamost_like(seed=1)
    masked = lamost_like(seed=2)
    masked.mask[:2500] = True
    negative = lamost_like(seed=3)
    negative.flux = -np.abs(negative.flux)
    n = 1500
    w_red = np.linspace(6000, 9000, n)
    red = Spectrum(wavelength=w_red, flux=np.ones(n), ivar=np.ones(n), mask=np.zeros(n, bool))
    b = Preprocessor()([good, masked, negative, red], names=["good", "masked", "neg", "red"])
    assert b.index.tolist() == [0]
    msgs = {f["index"]: f["error"] for f in b.failures}
    assert "masked" in msgs[1] and "% of pixels masked" in msgs[1]
    assert "non-positive flux" in msgs[2]
    assert "outside the model's range" in msgs[3]


def test_from_arrays_matches_spectrum_path():
    s = [lamost_like(seed=k) for k in range(3)]
    p = Preprocessor()
    a = p(s)
    b = p.from_arrays(s[0].wavelength, np.array([x.flux for x in s]), np.array([x.ivar for x in s]),
                      np.array([x.mask for x in s]))
    np.testing.assert_allclose(a.flux, b.flux, atol=1e-6)


def test_mixed_grids_batch_equals_one_by_one():
    a, b = lamost_like(seed=1), lamost_like(n=3904, seed=2)
    c = lamost_like(seed=3)
    c.vacuum = False
    p = Preprocessor()
    together = p([a, b, c])
    alone = np.vstack([p([s]).flux for s in (a, b, c)])
    np.testing.assert_allclose(together.flux, alone, atol=1e-6)
