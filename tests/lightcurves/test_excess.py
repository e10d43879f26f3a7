"""Magnitude-dependent excess selection (Lin et al. §3.1)."""

import numpy as np
import pandas as pd
import pytest

from skyvar.lightcurves.excess import ExcessStage, fit_excess, select_excess


def _population(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    mag = rng.uniform(13, 21, n)
    trend = 0.008 + 0.05 * 10 ** (0.4 * (mag - 20))
    value = trend * np.exp(rng.normal(0, 0.15, n))  # ~15 % scatter around the trend
    var = rng.random(n) < 0.01
    value[var] *= 5.0
    return mag, value, trend, var


def test_fit_follows_the_trend_and_selects_the_injected_excess():
    mag, value, trend, var = _population()
    fit = fit_excess(mag, value, order=5, bin_size=0.2, n_sigma=5, index="robust_std")
    inner = (mag > 13.5) & (mag < 20.5)
    # The fitted median tracks the true trend (median of a lognormal = the trend) to a few per cent.
    np.testing.assert_allclose(fit.median_at(mag[inner]), trend[inner], rtol=0.05)
    z, cand = select_excess(mag, value, fit)
    assert cand[var].mean() > 0.95 and cand[~var].mean() < 0.002
    assert np.all(z[cand] > 5 - 1e-9)
    # Evaluated outside its bins the polynomial is clamped to the end values, not extrapolated.
    assert fit.threshold_at(30.0) == pytest.approx(fit.threshold_at(fit.mag_range[1]))


def test_configurable_order_bins_sigma_and_clear_errors():
    mag, value, _, _ = _population(n=3000, seed=1)
    f3 = fit_excess(mag, value, order=3, bin_size=0.5, n_sigma=10)
    assert f3.order == 3 and len(f3.bin_center) == 16 and np.allclose(np.diff(f3.bin_center), 0.5)
    f10 = fit_excess(mag, value, order=3, bin_size=0.5, n_sigma=3)
    assert np.all(f10.threshold_at(f10.bin_center) < f3.threshold_at(f3.bin_center))
    sd = fit_excess(mag, value, order=3, bin_size=0.5, scatter="std")
    assert np.all(sd.bin_sigma > f3.bin_sigma * 0.5)
    with pytest.raises(ValueError, match="order 5 needs 6"):
        fit_excess(mag[:40], value[:40], order=5, bin_size=0.2, min_per_bin=10)
    with pytest.raises(ValueError, match="scatter"):
        fit_excess(mag, value, scatter="iqr")


def test_stage_finalize_per_band(tmp_path):
    mag, value, _, var = _population(n=3000, seed=2)
    feats = pd.DataFrame({"source_id": np.arange(3000), "band": np.where(np.arange(3000) % 2, "g", "r"),
                          "median_mag": mag, "robust_std": value, "inv_eta": 0.5 + 0.05 * np.random.default_rng(3).
                          standard_normal(3000), "n_used": 50})
    feats.loc[:5, "n_used"] = 5  # too short: neither fitted nor selected
    st = ExcessStage(n_sigma=5, plots=True)
    out = st.finalize(feats, tmp_path)
    assert {"excess_robust_std", "cand_robust_std", "excess_inv_eta", "cand_inv_eta", "excess_candidate"} <= set(out)
    assert out.loc[:5, "excess_robust_std"].isna().all() and not out.loc[:5, "cand_robust_std"].any()
    assert out.cand_robust_std[var].mean() > 0.9
    assert (tmp_path / "plots" / "excess" / "excess_g.png").exists()
    with pytest.raises(ValueError, match="indices stage before"):
        st.finalize(feats.drop(columns=["inv_eta"]), tmp_path)


def test_log_space_fit_does_not_ring_where_the_index_rises_steeply():
    """Near a detection limit the scatter rises by decades within 1-2 mag: a 5th-order polynomial in
    linear units overshoots and dips below the median there and selects constant stars; in log10 it
    follows (the ZTF-like field of docs/results/variability.md, Figure 2)."""
    rng = np.random.default_rng(5)
    n = 30000
    mag = rng.uniform(13, 21, n)
    trend = 0.005 + 0.3 * 10 ** (1.2 * (mag - 21))  # 0.005 mag when bright, 0.3 at the limit
    value = trend * np.exp(rng.normal(0, 0.2, n))
    lin = fit_excess(mag, value, order=5, n_sigma=10, space="linear")
    lg = fit_excess(mag, value, order=5, n_sigma=10)
    assert lg.space == "log" and lin.space == "linear"
    assert select_excess(mag, value, lg)[1].sum() <= 3
    assert select_excess(mag, value, lin)[1].sum() > 100
    # non-positive values (an index that can be negative) fall back to linear units
    assert fit_excess(mag, value - 0.01, order=3).space == "linear"
    with pytest.raises(ValueError, match="space"):
        fit_excess(mag, value, space="sqrt")
