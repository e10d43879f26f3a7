"""Template library and main-sequence relations."""

import numpy as np
import pytest

from skyvar.spectra.templates import (
    BOSZ_TCOL_FIT,
    broaden_to_resolution,
    build_stellar_library,
    colour_ratio,
    colour_temperature,
    ms_absmag_v_from_mass,
    ms_mass_from_teff,
    ms_teff_from_mass,
    planck_lambda,
)
from tests.conftest import shared_data


def test_main_sequence_relations():
    assert ms_teff_from_mass(1.0) == pytest.approx(5750, abs=60)  # the Sun: 5772 K, M_V 4.81
    assert ms_absmag_v_from_mass(1.0) == pytest.approx(4.85, abs=0.15)
    m = np.linspace(0.2, 1.5, 50)
    assert np.all(np.diff(ms_teff_from_mass(m)) > 0) and np.all(np.diff(ms_absmag_v_from_mass(m)) < 0)
    np.testing.assert_allclose(ms_mass_from_teff(ms_teff_from_mass(m)), m, rtol=1e-6)


def test_colour_temperature_inverts_planck():
    w = np.linspace(3000, 11000, 8001)
    for t in (3500.0, 5772.0, 9000.0):
        assert colour_temperature(colour_ratio(w, planck_lambda(w, t))) == pytest.approx(t, rel=0.005)


def test_broadening_gives_resolution():
    dlog = 1e-5
    loglam = np.arange(np.log10(6000), np.log10(7000), dlog)
    f = np.zeros_like(loglam)
    f[len(f) // 2] = 1.0
    b = broaden_to_resolution(f, dlog, 1800.0)
    lam0 = 10 ** loglam[len(f) // 2]
    above = 10 ** loglam[b > b.max() / 2]
    assert above.max() - above.min() == pytest.approx(lam0 / 1800.0, rel=0.05)


def test_library_from_shared_templates():
    lib = build_stellar_library(shared_data("spectra", "redrock"), shared_data("spectra", "bosz"), subtypes=("G",))
    bosz = lib.source == "bosz"
    assert bosz.sum() == 7 and (lib.source == "redrock-G").sum() == 955
    # The colour-temperature calibration (power law fitted on BOSZ) reproduces their Teff within 150 K,
    # and the stored fit used without BOSZ is that fit.
    w = lib.wavelength
    t_col = colour_temperature(colour_ratio(w, lib.spectra(np.flatnonzero(bosz))))
    B, logA = np.polyfit(np.log10(t_col), np.log10(lib.teff[bosz]), 1)
    assert np.all(np.abs(10 ** (logA + B * np.log10(t_col)) - lib.teff[bosz]) < 150)
    np.testing.assert_allclose((B, logA), BOSZ_TCOL_FIT, atol=0.01)  # the fallback used without BOSZ
    g = lib.teff[lib.source == "redrock-G"]
    assert 5300 < np.median(g) < 6200  # G dwarfs
    band = (w > 5000) & (w < 6000)
    np.testing.assert_allclose(lib.spectra([0, 1, 2])[:, band].mean(axis=1), 1.0, rtol=1e-4)
