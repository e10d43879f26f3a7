"""The public API of skyvar.spectra: every name in __all__ resolves and has a docstring; spectra convert to
specutils."""

import numpy as np
import pytest

import skyvar.spectra as sp


def test_every_public_name_resolves_and_is_documented():
    for name in sp.__all__:
        obj = getattr(sp, name)
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name
    assert sp.read_lrs is sp.read_lamost_lrs


def test_to_specutils_roundtrip():
    specutils = pytest.importorskip("specutils")
    from astropy import units as u

    from skyvar.spectra.resources import example_lrs_file

    s = sp.read_lrs(example_lrs_file())
    su = s.to_specutils()
    assert isinstance(su, getattr(specutils, "Spectrum", None) or specutils.Spectrum1D)
    np.testing.assert_allclose(su.spectral_axis.to_value(u.AA), s.wavelength)
    np.testing.assert_allclose(su.flux.value, s.flux)
    np.testing.assert_allclose(su.uncertainty.array, s.ivar)
    assert np.array_equal(su.mask, s.mask) and su.meta["vacuum"] is True and su.meta["obsid"] == s.meta["obsid"]
    b = sp.preprocess_spectra([s])
    bu = b.to_specutils()
    assert bu.flux.shape == b.flux.shape and bu.meta["normalised"]
