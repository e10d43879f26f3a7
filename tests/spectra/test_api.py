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


def test_auroc_on_unbounded_scores_matches_sklearn():
    """χ² values and logit differences are not probabilities: the AUC must not saturate (torchmetrics
    would apply a sigmoid to them)."""
    from sklearn.metrics import roc_auc_score

    from skyvar.spectra.binary_eval import auroc

    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.3
    s = rng.normal(0, 1, 500) + 1.0 * y
    for scale in (1.0, 100.0, 1e4):
        assert auroc(s * scale + 50, y) == pytest.approx(roc_auc_score(y, s), abs=1e-6)


def test_group_stars_positions_and_repeats():
    """Friends of friends within 3 arcsec; NaN positions are their own stars; 100 000 spectra of 200
    positions (repeated catalogue coordinates) group in a fraction of a second (no m^2 pairs)."""
    from skyvar.spectra.stars import group_stars

    ra = np.array([10, 10, 50, 10 + 1 / 3600, np.nan, 50, 70.0, 70.0 + 2.5 / 3600, 70.0 + 5 / 3600])
    dec = np.array([0, 0, 0, 0, np.nan, 0, 0.0, 0.0, 0.0])
    assert group_stars(ra, dec, 3.0).tolist() == [0, 0, 1, 0, 2, 1, 3, 3, 3]  # chained within 3"
    rng = np.random.default_rng(0)
    r = np.repeat(rng.uniform(0, 360, 200), 500)
    d = np.repeat(rng.uniform(-10, 60, 200), 500)
    g = group_stars(r, d)
    assert len(np.unique(g)) == 200 and np.all(g[::500] == np.arange(200))
