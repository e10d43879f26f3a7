"""Astronet views: cleaning, BLS, folding, bad input (skyvar.lightcurves.views)."""

import dataclasses

import numpy as np
import pytest
import scipy.ndimage

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.views import (
    FLAG_NO_PERIOD,
    FLAG_TOO_FEW_POINTS,
    AuxScaler,
    ViewConfig,
    _interp_gaps,
    _median_filter_rows,
    binned_median,
    bls_search,
    box_statistics,
    compute_views,
    grid_light_curves,
    period_grid,
)

CADENCE = 300.0 / 86400.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")
T0_MJD = 60500.0


def make_box_batch(periods, depths, n_epochs=600, sigma=0.002, durations=0.06, seed=0, mag=20.0):
    """Light curves with box-shaped dips (relative depth ``depths``) of known period and mid-times."""
    rng = np.random.default_rng(seed)
    n = len(periods)
    t = T0_MJD + (np.arange(n_epochs) + 0.5) * CADENCE
    P = np.asarray(periods, float)[:, None]
    tmid = T0_MJD + 0.3 * P
    x = np.mod(t[None, :] - tmid + 0.5 * P, P) - 0.5 * P
    dur = np.broadcast_to(np.asarray(durations, float), (n,))[:, None]
    f = 1.0 - np.asarray(depths, float)[:, None] * (np.abs(x) < 0.5 * dur)
    f = f * (1.0 + rng.normal(0, sigma, f.shape))
    m = mag - 2.5 * np.log10(f)
    return LightCurveBatch(source_id=np.arange(n), band=np.full(n, "i"), time=np.tile(t, (n, 1)), mag=m,
                           mag_err=np.full(m.shape, 1.0857 * sigma), mask=np.ones(m.shape, bool)), tmid[:, 0]


FAST = ViewConfig(period_min=0.2, period_max=1.0, min_points=30)


def test_bls_recovers_known_period_and_fold_centres_transit():
    periods = [0.31, 0.47, 0.73]
    b, tmid = make_box_batch(periods, [0.01, 0.01, 0.01])
    v = compute_views(b, FAST)
    assert (v.flag == 0).all()
    np.testing.assert_allclose(v.bls.period, periods, rtol=0.01)
    np.testing.assert_allclose(v.bls.depth, 0.01, rtol=0.15)
    # mid-transit time matches the truth modulo the period
    dt = np.mod(v.bls.t0 - tmid + 0.5 * v.bls.period, v.bls.period) - 0.5 * v.bls.period
    assert np.all(np.abs(dt) < 0.01)
    # folded: the dip sits at the centre of both views, normalised to -1 at its bottom
    for view, centre in ((v.local_view, 30), (v.global_view, 100)):
        in_dip = view < -0.5
        mid = (in_dip * np.arange(view.shape[1])).sum(1) / in_dip.sum(1)
        assert np.all(np.abs(mid - centre) <= 2), mid
    np.testing.assert_allclose(v.local_view.min(1), -1.0, atol=1e-6)
    centre = v.local_view[:, 27:34].mean(1)
    wings = np.r_[v.local_view[:, :10].ravel(), v.local_view[:, -10:].ravel()]
    assert np.all(centre < -0.7) and abs(np.mean(wings)) < 0.2
    assert v.global_view.shape == (3, 201) and v.local_view.shape == (3, 61)
    assert v.global_view.dtype == np.float32


def test_torch_bls_matches_astropy():
    b, _ = make_box_batch([0.29, 0.61], [0.008, 0.012], sigma=0.003, seed=3)
    g = grid_light_curves(b, FAST)
    r1 = bls_search(g.time, g.flux, g.ivar, FAST)
    r2 = bls_search(g.time, g.flux, g.ivar, dataclasses.replace(FAST, method="astropy"))
    np.testing.assert_allclose(r1.period, r2.period, rtol=0.005)
    np.testing.assert_allclose(r1.depth, r2.depth, rtol=0.2)
    # after refinement the binned search reaches astropy's best likelihood to within 10 %
    assert np.all(r1.power <= r2.power * 1.05) and np.all(r1.power >= 0.9 * r2.power), (r1.power, r2.power)
    assert np.all(np.abs(r1.duration - r2.duration) < 0.03)


def test_box_statistics_hand_values():
    t = np.arange(10.0)
    y = np.array([0, 0, -1, -1, 0, 0, 0, 0, 0, 0], float)
    iv = np.ones(10)
    st = box_statistics(t, y[None], iv[None], np.array([100.0]), np.array([2.0]), np.array([2.5]))
    assert st["n_in"][0] == 2
    assert st["depth"][0] == pytest.approx(1.0)
    assert st["depth_snr"][0] == pytest.approx(1.0 / np.sqrt(1 / 2 + 1 / 8))


def test_period_grid_spacing():
    cfg = ViewConfig()
    p = period_grid(3.47, cfg)
    assert p[0] == pytest.approx(0.1) and p[-1] <= 3.47
    step = np.diff(p) / p[:-1]
    assert np.all(step > 0) and step.max() < 0.05


def test_views_are_deterministic():
    b, _ = make_box_batch([0.33, 0.5], [0.01, 0.005], seed=5)
    v1 = compute_views(b, FAST)
    v2 = compute_views(b, FAST)
    np.testing.assert_array_equal(v1.global_view, v2.global_view)
    np.testing.assert_array_equal(v1.local_view, v2.local_view)
    np.testing.assert_array_equal(v1.aux, v2.aux)


def test_bad_input_gets_flags_and_nan_views_never_raises():
    b, _ = make_box_batch([0.33, 0.4, 0.5, 0.6, 0.45], [0.01] * 5, seed=1)
    b.mask[0, 20:] = False  # too few points
    b.mag[1, :] = np.nan  # no usable point at all
    b.mag[2] = 20.0  # perfectly flat: no dip exists
    b.mag_err[2] = 0.01
    b.mag[3, ::2] = np.inf  # half the points non-finite, still enough
    b.mag_err[4] = np.nan  # errors missing: estimated from the scatter
    v = compute_views(b, FAST)
    assert v.flag[0] & FLAG_TOO_FEW_POINTS and v.flag[1] & FLAG_TOO_FEW_POINTS
    assert v.flag[2] & FLAG_NO_PERIOD
    assert v.flag[3] == 0 and v.flag[4] == 0
    for i in (0, 1, 2):
        assert np.isnan(v.global_view[i]).all() and np.isnan(v.local_view[i]).all()
    assert np.isfinite(v.global_view[3:]).all()
    assert v.n_points[3] == 300
    np.testing.assert_allclose(v.bls.period[4], 0.45, rtol=0.01)


def test_empty_batch_and_no_points_at_all():
    b, _ = make_box_batch([0.3], [0.01])
    b.mask[:] = False
    v = compute_views(b, FAST)
    assert v.flag[0] == FLAG_TOO_FEW_POINTS and np.isnan(v.global_view).all()
    empty = LightCurveBatch(np.zeros(0, int), np.zeros(0, str), np.zeros((0, 5)), np.zeros((0, 5)), np.zeros((0, 5)),
                            np.zeros((0, 5), bool))
    assert len(compute_views(empty, FAST)) == 0


def test_irregular_sparse_sampling_is_refused_clearly():
    t = np.array([[0.0, 0.001, 0.002, 500.0]])
    b = LightCurveBatch(np.array([1]), np.array(["i"]), t, np.full((1, 4), 20.0), np.full((1, 4), 0.01),
                        np.ones((1, 4), bool))
    with pytest.raises(ValueError, match="regular cadence"):
        compute_views(b, FAST)


def test_upper_outliers_clipped_dips_kept_and_duplicates_averaged():
    b, _ = make_box_batch([0.4], [0.02], sigma=0.001)
    b.mag[0, 100] -= 0.5  # a brightening spike (cosmic ray / flare point)
    g = grid_light_curves(b, FAST)
    assert g.n_clipped[0] == 1 and np.isnan(g.flux[0, 100])
    assert np.isfinite(g.filled[0, 100])  # filled by interpolation
    assert np.nanmin(g.flux[0]) < 0.985  # the 2 % dips survive
    # two measurements in the same slot are averaged with their weights
    t = np.array([[0.0, 0.0, CADENCE, 2 * CADENCE]])
    m = np.array([[20.0, 20.2, 20.1, 20.1]])
    bb = LightCurveBatch(np.array([0]), np.array(["i"]), t, m, np.full((1, 4), 0.01), np.ones((1, 4), bool))
    gg = grid_light_curves(bb, dataclasses.replace(FAST, cadence=CADENCE, median_window=1))
    f = 10 ** (-0.4 * (m[0] - 20.1))
    assert gg.flux.shape == (1, 3)
    assert gg.flux[0, 0] == pytest.approx(np.average(f[:2], weights=1 / f[:2] ** 2), rel=1e-9)


def test_interp_gaps_hand_values():
    y = np.array([[0.0, np.nan, np.nan, 3.0, np.nan, np.nan, np.nan, np.nan, 8.0, np.nan]])
    ok = np.isfinite(y)
    out = _interp_gaps(np.nan_to_num(y), ok, max_slots=3)
    np.testing.assert_allclose(out[0, :4], [0, 1, 2, 3])
    assert np.isnan(out[0, 4:8]).all()  # 4-slot gap is too long
    assert out[0, 8] == 8 and np.isnan(out[0, 9])  # no extrapolation


def test_median_filter_matches_scipy_inside():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 50))
    ours = _median_filter_rows(y, 5, "cpu")
    ref = scipy.ndimage.median_filter(y, size=(1, 5), mode="nearest")
    np.testing.assert_allclose(ours[:, 2:-2], ref[:, 2:-2])
    y[0, 10] = np.nan
    out = _median_filter_rows(y, 3, "cpu")
    assert np.isnan(out[0, 10]) and out[0, 11] == pytest.approx(np.median(y[0, 11:13]))


def test_binned_median_matches_numpy():
    import torch

    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (3, 400))
    v = rng.normal(size=(3, 400))
    v[0, :50] = np.nan
    nb, width = 21, 0.15
    med, cnt = binned_median(torch.as_tensor(x), torch.as_tensor(v), torch.full((3,), -1.0, dtype=torch.float64),
                             torch.full((3,), 2.0 / nb, dtype=torch.float64), torch.full((3,), width, dtype=torch.float64),
                             nb)
    centres = -1 + (np.arange(nb) + 0.5) * 2 / nb
    for r in range(3):
        for j in range(nb):
            sel = (np.abs(x[r] - centres[j]) <= width / 2) & np.isfinite(v[r])
            assert cnt[r, j] == sel.sum()
            assert med[r, j].item() == pytest.approx(np.median(v[r, sel]))


def test_aux_scaler_standardises_log_features():
    aux = np.array([[1.0, 0.1, 0.01, 20.0, 10.0, 5.0], [10.0, 0.2, 0.001, 22.0, np.nan, 7.0]])
    s = AuxScaler().fit(aux)
    z = s.transform(aux)
    np.testing.assert_allclose(z[:, 0], [-1, 1])  # log10 period standardised
    np.testing.assert_allclose(z[:, 3], [-1, 1])  # magnitude, linear
    assert z[1, 4] == 0.0  # NaN -> the training mean
    s2 = AuxScaler.from_state(s.state())
    np.testing.assert_array_equal(s2.transform(aux), z)


def test_period_grid_refuses_absurd_searches():
    with pytest.raises(ValueError, match="period_max"):
        period_grid(2000.0, ViewConfig())
    assert len(period_grid(60.0, ViewConfig(period_max=5.0))) < 50_000


def test_vetting_views_separate_binaries_from_transits():
    """Vetting channels: an eclipsing binary found at half its period (alternating 2 % / 0.5 % eclipses)
    has a large odd-even difference; a binary with a secondary eclipse at phase 0.5 has a secondary
    depth S/N; a clean transit has neither. Channels share the primary's scale."""
    from skyvar.lightcurves.views import AUX_VETTING, LOCAL_CHANNELS, aux_names, vetting_statistics

    rng = np.random.default_rng(5)
    n_ep, sigma, P, dur = 900, 0.001, 0.5, 0.05
    t = T0_MJD + (np.arange(n_ep) + 0.5) * CADENCE
    ph = np.mod(t - T0_MJD - 0.1 + 0.5 * P, P) - 0.5 * P
    k = np.floor((t - T0_MJD - 0.1 + 0.5 * P) / P)
    ecl = np.abs(ph) < 0.5 * dur
    ph2 = np.mod(t - T0_MJD - 0.1, P) - 0.5 * P
    transit = 1 - 0.01 * ecl
    odd_even = 1 - np.where(np.mod(k, 2) == 1, 0.02, 0.005) * ecl
    secondary = 1 - 0.01 * ecl - 0.006 * (np.abs(ph2) < 0.5 * dur)
    f = np.stack([transit, odd_even, secondary]) * (1 + rng.normal(0, sigma, (3, n_ep)))
    m = 20 - 2.5 * np.log10(f)
    b = LightCurveBatch(source_id=np.arange(3), band=np.full(3, "i"), time=np.tile(t, (3, 1)), mag=m,
                        mag_err=np.full(m.shape, 1.0857 * sigma), mask=np.ones(m.shape, bool))
    cfg = dataclasses.replace(FAST, vetting=True, period_max=1.2)
    v = compute_views(b, cfg)
    assert (v.flag == 0).all()
    assert v.local_view.shape == (3, len(LOCAL_CHANNELS), cfg.local_bins)
    assert v.aux.shape == (3, len(aux_names(cfg))) and aux_names(cfg)[-3:] == AUX_VETTING
    sec, oe, nev = v.aux[:, 6], v.aux[:, 7], v.aux[:, 8]
    # the BLS may lock on the binary's true period (then the other eclipse is a secondary) or on half of
    # it (then odd and even events differ): one of the two statistics must fire, neither for the transit
    assert abs(sec[0]) < 4 and oe[0] < 4, (sec, oe)
    assert np.all(np.maximum(sec[1:], oe[1:]) > 20), (v.bls.period, sec, oe)
    assert np.all(nev >= 3)
    # the primary channel is the plain local view; the secondary channel of the binary dips, the transit's does not
    np.testing.assert_allclose(v.local_view[:, 0], compute_views(b, dataclasses.replace(cfg, vetting=False)).local_view,
                               atol=1e-6)
    c = cfg.local_bins // 2
    ch = 1 if sec[2] > oe[2] else 2  # the channel that differs from the primary
    assert v.local_view[2, ch, c - 2 : c + 3].mean() < -0.2 and abs(v.local_view[0, 1, c - 2 : c + 3].mean()) < 0.15
    # hand values: a box of known depth on odd events only
    st = vetting_statistics(t, f[1:2], np.full((1, n_ep), 1 / sigma**2), np.array([P]), np.array([dur]),
                            np.array([T0_MJD + 0.1]))
    assert st["odd_even_sigma"][0] > 20 and st["n_events"][0] == len(np.unique(k[ecl]))
