import numpy as np
import pytest
import torch
from scipy.interpolate import make_smoothing_spline

from skyvar.spectra.continuum import (
    _segment_edges,
    normalize,
    pseudo_continuum,
    smoothing_spline,
    solve_pentadiagonal,
)
from skyvar.spectra.rv import log_grid


def test_pentadiagonal_solver_matches_dense():
    rng = np.random.default_rng(0)
    G, N = 12, 3
    A = np.zeros((N, G, G))
    d0 = rng.uniform(5, 6, (N, G))
    e1 = rng.uniform(-1, 1, (N, G - 1))
    e2 = rng.uniform(-1, 1, (N, G - 2))
    for i in range(N):
        A[i] = np.diag(d0[i]) + np.diag(e1[i], 1) + np.diag(e1[i], -1) + np.diag(e2[i], 2) + np.diag(e2[i], -2)
    b = rng.normal(size=(N, G))
    x = solve_pentadiagonal(d0, e1, e2, b)
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], rtol=1e-10)
    xt = solve_pentadiagonal(*(torch.tensor(a) for a in (d0, e1, e2, b)))
    np.testing.assert_allclose(xt.numpy(), x, rtol=1e-12)


@pytest.mark.parametrize("lam", [1e2, 1e6])
def test_smoothing_spline_matches_scipy(lam):
    rng = np.random.default_rng(1)
    x = log_grid(6300, 6500)  # non-uniform in Å
    y = 1 + 0.3 * np.sin(x / 25) + rng.normal(0, 0.02, (2, x.size))
    w = np.ones_like(y)
    w[1, 300:340] = 0  # masked pixels: the same as leaving them out
    g = smoothing_spline(x, y, w, lam)
    for i in range(2):
        m = w[i] > 0
        ref = make_smoothing_spline(x[m], y[i][m], lam=lam)(x)
        assert np.max(np.abs(g[i] - ref)) < 1e-4
    gt = smoothing_spline(torch.tensor(x), torch.tensor(y), torch.tensor(w), lam)
    np.testing.assert_allclose(gt.numpy(), g, atol=1e-10)


def test_smoothing_spline_errors():
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="increasing"):
        smoothing_spline(x[::-1], np.ones((1, 10)), np.ones((1, 10)))
    w = np.zeros((1, 10))
    w[0, 3] = 1
    with pytest.raises(ValueError, match="two pixels"):
        smoothing_spline(x, np.ones((1, 10)), w)


def _spectrum(rng, n_spec=4, spikes=True, hi=6840.0):
    wave = log_grid(6300, hi)
    cont = 1000 * (1 - 0.4 * ((wave - 6570) / 270) ** 2)
    lines = np.ones_like(wave)
    for c in rng.uniform(6300, 6840, 60):
        lines -= rng.uniform(0.05, 0.4) * np.exp(-0.5 * ((wave - c) / 0.35) ** 2)
    flux = cont * lines * (1 + rng.normal(0, 0.005, (n_spec, wave.size)))
    spike_idx = rng.choice(wave.size, 20, replace=False)
    if spikes:
        flux[:, spike_idx] += 3000  # cosmic rays
    return wave, flux, cont, lines, spike_idx


def test_pseudo_continuum_rejects_upward_outliers_and_follows_the_continuum():
    rng = np.random.default_rng(2)
    wave, flux, cont, lines, spikes = _spectrum(rng)
    good = np.ones(flux.shape, dtype=bool)
    c, used = pseudo_continuum(wave, flux, good)
    assert not used[:, spikes].any()  # every cosmic ray rejected
    clean = lines > 0.995
    # a pseudo-continuum: absorption lines pull it slightly below the true continuum, by < 3 %
    ratio = c[:, clean] / cont[clean]
    assert np.all(ratio > 0.96) and np.all(ratio < 1.01)
    # without rejection the spikes drag the spline up
    c0, _ = pseudo_continuum(wave, flux, good, n_iter=0)
    assert np.max(c0[:, clean] / cont[clean]) > np.max(ratio) + 0.005
    # lower rejection (laspec's lu) brings it closer to the true continuum
    cl, _ = pseudo_continuum(wave, flux, good, lower=1.0)
    assert np.median(np.abs(cl[:, clean] / cont[clean] - 1)) < np.median(np.abs(ratio - 1))


def test_pseudo_continuum_torch_matches_numpy_and_handles_bad_rows():
    rng = np.random.default_rng(3)
    wave, flux, *_ = _spectrum(rng, n_spec=3, hi=6500.0)  # the torch pixel loop is slow on CPU: keep it short
    good = np.ones(flux.shape, dtype=bool)
    good[2] = False
    good[2, :10] = True  # too few pixels
    c, _ = pseudo_continuum(wave, flux, good)
    ct, _ = pseudo_continuum(torch.tensor(wave), torch.tensor(flux), torch.tensor(good))
    assert np.all(np.isnan(c[2])) and np.isfinite(c[:2]).all()
    np.testing.assert_allclose(ct.numpy()[:2], c[:2], rtol=1e-6)  # LDL^T loop vs LAPACK Cholesky
    fn, iv, cont, ok = normalize(wave, flux, np.full(flux.shape, 1e-4), good)
    assert not ok[2].any() and np.all(iv[2] == 0)
    np.testing.assert_allclose(fn[0] * cont[0], flux[0])
    np.testing.assert_allclose(iv[0], 1e-4 * cont[0] ** 2)


def test_segments():
    w = np.linspace(6300, 6840, 1000)
    segs = _segment_edges(w, 100.0)
    assert segs[0][0] == 0 and segs[-1][1] == 1000 and len(segs) == 5  # the 40 Å tail joins the last
    assert all(a < b for a, b in segs)
