import numpy as np
import pytest

from skyvar.lightcurves.calibration import MAD_TO_SIGMA, binned_excess_threshold, fit_cdf_calibration


@pytest.mark.parametrize("k_true", [0.6, 1.0, 1.4])
def test_cdf_fit_recovers_power_law_slope(k_true):
    # If CDF(p) = p^k exactly, log CDF = k log p: p = U^(1/k) for uniform U.
    rng = np.random.default_rng(1)
    p = rng.uniform(size=20000) ** (1 / k_true)
    cal = fit_cdf_calibration(np.log10(p), bin_size=0.2)
    assert cal.fitted
    assert cal.k == pytest.approx(k_true, rel=0.03)
    # only bins at log CDF >= -1 entered the fit, and the bin touching p = 1 is excluded
    assert np.all(cal.log10_cdf[cal.used] >= -1) and np.all(cal.edges[cal.used] < 0)
    # calibrated p_cal = p^k is uniform again (the null distribution)
    pc = 10 ** cal.apply(np.log10(p))
    assert np.mean(pc <= 0.1) == pytest.approx(0.1, abs=0.01)


def test_cdf_fit_is_insensitive_to_a_small_signal_tail():
    rng = np.random.default_rng(2)
    null = rng.uniform(size=19900)
    signal = 10 ** rng.uniform(-300, -10, size=100)  # 0.5 % strong detections (the paper: ~0.1 %)
    cal = fit_cdf_calibration(np.log10(np.r_[null, signal]), bin_size=0.2)
    # the null's slope is 1; the signal adds ~0.005 to the CDF: a small bias only
    assert cal.k == pytest.approx(1.0, abs=0.03)
    # ... whereas a 5 % contamination biases k low by ~15 % (the method assumes few variables)
    heavy = np.r_[null[:9500], 10 ** rng.uniform(-300, -10, size=500)]
    assert fit_cdf_calibration(np.log10(heavy), bin_size=0.2).k < 0.9


def test_cdf_fit_hand_computed():
    # 10 values, bin 1 dex: edges -3,-2,-1,0; fraction <= each edge: 0, 2/10, 4/10, 1
    x = np.array([-2.5, -1.5, -1.2, -0.5, -0.4, -0.3, -0.2, -0.1, -0.05, -2.9])
    cal = fit_cdf_calibration(x, bin_size=1.0, min_samples=1, min_bins=1)
    np.testing.assert_allclose(cal.edges, [-3, -2, -1, 0])
    np.testing.assert_allclose(10 ** cal.log10_cdf, [0.0, 0.2, 0.4, 1.0])
    # bins used: log CDF >= -1 and edge < 0 -> edges -2 and -1
    np.testing.assert_array_equal(cal.used, [False, True, True, False])
    xe = np.array([-2.0, -1.0])
    ye = np.log10([0.2, 0.4])
    assert cal.k == pytest.approx(np.sum(xe * ye) / np.sum(xe * xe))


def test_cdf_fit_degenerate_inputs_fall_back_to_k1():
    cal = fit_cdf_calibration(np.array([np.nan, -1.0, -2.0]))
    assert not cal.fitted and cal.k == 1.0 and "finite" in cal.reason
    # everything at p ~ 1 (conservative FAPs): no bin below 0 reaches log CDF >= -1
    cal = fit_cdf_calibration(np.full(500, -1e-4), bin_size=1.0)
    assert not cal.fitted and cal.k == 1.0
    with pytest.raises(ValueError):
        fit_cdf_calibration(np.zeros(100), bin_size=0)


def test_binned_threshold_matches_hand_computation():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 20000)
    y = rng.normal(loc=x, scale=0.5 + 0.1 * x)  # median and sigma both vary with x
    thr = binned_excess_threshold(x, y, n_bins=10, n_sigma=10, range=(0, 10))
    b = 3
    sel = (x >= 3) & (x < 4)
    med = np.median(y[sel])
    sig = MAD_TO_SIGMA * np.median(np.abs(y[sel] - med))
    assert thr.threshold[b] == pytest.approx(med + 10 * sig)
    assert thr(np.array([3.5]))[0] == pytest.approx(med + 10 * sig)
    # the robust sigma of a Gaussian bin is close to its true sigma
    assert thr.sigma[b] == pytest.approx(0.5 + 0.1 * 3.5, rel=0.08)


def test_binned_threshold_interpolates_sparse_bins_and_fits_polynomials():
    rng = np.random.default_rng(4)
    x = np.r_[rng.uniform(0, 1, 500), rng.uniform(2, 3, 500)]  # nothing in [1, 2)
    y = rng.normal(size=x.size) + 2 * x
    thr = binned_excess_threshold(x, y, n_bins=3, n_sigma=3, min_per_bin=20, range=(0, 3))
    assert not thr.populated[1] and thr.populated[0] and thr.populated[2]
    assert thr.threshold[1] == pytest.approx(0.5 * (thr.threshold[0] + thr.threshold[2]))
    poly = binned_excess_threshold(x, y, n_bins=6, n_sigma=3, min_per_bin=20, poly_order=1, range=(0, 3))
    assert poly.poly_coef is not None and poly.poly_coef[0] == pytest.approx(2.0, rel=0.15)
    with pytest.raises(ValueError):
        binned_excess_threshold(np.array([np.nan]), np.array([1.0]))
