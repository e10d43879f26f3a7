"""The one resampling function: values against np.interp, variance propagation, masks, every layout."""

import numpy as np
import pytest

from skyvar.spectra.resample import resample_linear


def test_shared_grid_values_variance_and_masks():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    f = np.array([1.0, 3.0, 5.0, 7.0])
    iv = np.ones(4)
    m = np.array([False, False, False, True])
    fn, ivn, mn = resample_linear(np.array([0.5, 1.0, 2.5, 4.0]), x, f, iv, m)
    assert fn[0] == pytest.approx(2.0) and ivn[0] == pytest.approx(2.0)  # var = 0.25 + 0.25
    assert fn[1] == pytest.approx(3.0) and ivn[1] == pytest.approx(1.0)  # on a sample: its own variance
    assert mn.tolist() == [False, False, True, True]  # 2.5 touches the bad pixel; 4.0 is outside
    assert ivn[2] == 0 and ivn[3] == 0
    # outside the range: the edge value, flagged
    assert fn[3] == pytest.approx(7.0)


def test_matches_np_interp_in_every_layout():
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 100, 200))
    f = rng.normal(size=(3, 200))
    xn = np.linspace(x[0], x[-1], 57)
    # values only, shared grid (template basis vectors)
    out = resample_linear(xn, x, f)
    np.testing.assert_allclose(out, [np.interp(xn, x, r) for r in f], atol=1e-12)
    # one row per spectrum with its own grid, ragged lengths (MRS exposures)
    xs = [np.sort(rng.uniform(0, 100, n)) for n in (120, 200, 77)]
    fs = [rng.normal(size=len(a)) for a in xs]
    ivs = [np.ones(len(a)) for a in xs]
    fl, ivl, ml = resample_linear(xn, xs, fs, ivs)
    for k in range(3):
        ok = (xn >= xs[k][0]) & (xn <= xs[k][-1])
        np.testing.assert_array_equal(~ml[k], ok)
        np.testing.assert_allclose(fl[k, ok], np.interp(xn[ok], xs[k], fs[k]), atol=1e-12)
    # per-row new positions on a shared uniform grid (Doppler shifts in the simulator)
    g = np.arange(300.0)
    spec = rng.normal(size=(2, 300)).astype(np.float32)
    shift = np.array([2.3, -7.75])
    sh = resample_linear(g[None, :] - shift[:, None], g, spec)
    assert sh.dtype == np.float32
    for k in range(2):
        np.testing.assert_allclose(sh[k, 20:-20], np.interp(g[20:-20] - shift[k], g, spec[k]), atol=1e-5)


def test_propagated_variance_matches_monte_carlo():
    rng = np.random.default_rng(0)
    x = np.arange(50.0)
    sig = rng.uniform(0.5, 2.0, 50)
    xn = np.array([10.25, 20.5, 30.9])
    draws = np.stack([resample_linear(xn, x, rng.normal(0, sig)) for _ in range(20000)])
    _, iv, m = resample_linear(xn, x, np.zeros(50), 1 / sig**2)
    assert not m.any()
    np.testing.assert_allclose(draws.var(axis=0), 1 / iv, rtol=0.05)


def test_single_spectrum_shapes_and_errors():
    x = np.linspace(1, 2, 10)
    assert resample_linear(x, x, np.ones(10)).shape == (10,)
    f, iv, m = resample_linear(x, x, np.ones(10), mask=np.zeros(10, bool))
    assert iv is None and not m.any()
    with pytest.raises(ValueError, match="abscissa"):
        resample_linear(x, [x, x], np.ones((3, 10)))
