"""Variability indices against hand values, the papers' check values and peer libraries."""

import math

import numpy as np
import pytest
import torch

from skyvar.lightcurves.indices import (
    FLAG_BAD_POINTS,
    FLAG_NO_ERRORS,
    FLAG_TOO_FEW,
    FLAG_ZERO_SCATTER,
    INDEX_NAMES,
    MIN_POINTS,
    decode_flag,
    variability_indices,
)

MAG = np.array([15.0, 15.2, 14.9, 15.1, 16.0, 14.5, 15.05, 15.3])
ERR = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08])


def _ref(m, e):
    """Straight transcription of Xu et al. eqs. 1-6 and Lin et al. eq. 1 for one light curve."""
    m, e = np.asarray(m, float), np.asarray(e, float)
    n = len(m)
    o = np.argsort(m, kind="stable")
    q = [abs(m[o[-1 - k]] - m[o[k]]) / math.sqrt(e[o[-1 - k]] ** 2 + e[o[k]] ** 2) for k in range(3)]
    mean = sum(m) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in m) / (n - 1))
    med = float(np.median(m))
    kurt = (n * (n + 1) / ((n - 1) * (n - 2) * (n - 3)) * sum(((x - med) / std) ** 4 for x in m)
            - 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))
    skew = n / ((n - 1) * (n - 2)) * sum(((x - med) / std) ** 3 for x in m)
    mad = float(np.median([abs(x - med) for x in m]))
    k5 = max(1, n // 20)
    srt = sorted(m)
    amp = (np.median(srt[-k5:]) - np.median(srt[:k5])) / 2
    inv_eta = sum((x - mean) ** 2 for x in m) / sum((m[i + 1] - m[i]) ** 2 for i in range(n - 1))
    return dict(Q=q[0], Q1=q[1], Q2=q[2], std=std, cv=std / mean, kurtosis=kurt, skewness=skew, mad=mad,
                amp=amp, inv_eta=inv_eta, mean=mean, median=med)


def test_hand_values_small_curve():
    r = variability_indices(MAG, ERR)
    # Q by hand: extremes 16.0 (err .05) and 14.5 (err .06); Q1: 15.3 (.08) and 14.9 (.03);
    # Q2: 15.2 (.02) and 15.0 (.01).
    assert r["Q"] == pytest.approx(1.5 / math.sqrt(0.05**2 + 0.06**2), rel=1e-12)
    assert r["Q1"] == pytest.approx(0.4 / math.sqrt(0.08**2 + 0.03**2), rel=1e-12)
    assert r["Q2"] == pytest.approx(0.2 / math.sqrt(0.02**2 + 0.01**2), rel=1e-12)
    ref = _ref(MAG, ERR)
    for k, v in ref.items():
        assert float(r[k]) == pytest.approx(v, rel=1e-10, abs=1e-12), k
    assert int(r["n_points"]) == 8 and int(r["flag"]) == 0


def test_random_batch_matches_reference_per_row():
    rng = np.random.default_rng(3)
    n, L = 40, 60
    lengths = rng.integers(6, L + 1, n)
    mag = np.full((n, L), np.nan)
    err = np.full((n, L), np.nan)
    mask = np.zeros((n, L), bool)
    for i, k in enumerate(lengths):
        mag[i, :k] = rng.normal(17, 0.2, k) + (rng.random(k) < 0.1) * rng.normal(0, 1.0, k)
        err[i, :k] = rng.uniform(0.01, 0.1, k)
        mask[i, :k] = True
    r = variability_indices(mag, err, mask)
    for i, k in enumerate(lengths):
        ref = _ref(mag[i, :k], err[i, :k])
        for name, v in ref.items():
            assert r[name][i] == pytest.approx(v, rel=1e-9, abs=1e-12), (i, name)


def test_paper_check_values():
    x = np.arange(1001.0)  # Xu et al.: "the amplitude of a set of numbers from 0 to 1000 should be 475.5"
    r = variability_indices(x, np.ones_like(x))
    assert r["amp"] == 475.5
    rng = np.random.default_rng(0)
    g = rng.standard_normal(200_001)
    r = variability_indices(g, np.ones_like(g))
    assert r["mad"] == pytest.approx(0.6745, abs=0.005)  # "a normal distribution should have about 0.675"
    assert r["kurtosis"] == pytest.approx(0.0, abs=0.03)  # "should be zero" for a normal distribution
    assert r["skewness"] == pytest.approx(0.0, abs=0.02)
    assert r["robust_std"] == pytest.approx(1.0, abs=0.01)
    assert r["inv_eta"] == pytest.approx(0.5, abs=0.01)  # Lin et al.: ~0.5 for white noise


def test_fats_ceil_convention_differs_by_half():
    # FATS takes ceil(5 %): 51 points -> 475; the paper's floor gives 475.5 (documented difference).
    x = np.arange(1001.0)
    k = math.ceil(0.05 * 1001)
    fats = (np.median(x[-k:]) - np.median(x[:k])) / 2
    assert fats == 475.0 and variability_indices(x, np.ones_like(x))["amp"] == 475.5


def test_against_scipy_and_astropy():
    from astropy.stats import SigmaClip, median_absolute_deviation
    from scipy import stats

    rng = np.random.default_rng(7)
    mag = rng.normal(18, 0.05, (30, 80))
    mag[:, :5] += rng.normal(0, 0.5, (30, 5))  # outliers, so clipping actually iterates
    err = np.full_like(mag, 0.05)
    r = variability_indices(mag, err)
    np.testing.assert_allclose(r["std"], np.std(mag, axis=1, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(r["mad"], median_absolute_deviation(mag, axis=1), rtol=1e-12)
    np.testing.assert_allclose(r["mad"], stats.median_abs_deviation(mag, axis=1, scale=1.0), rtol=1e-12)
    np.testing.assert_allclose(r["robust_std"], stats.iqr(mag, axis=1, scale="normal"), rtol=1e-12)
    std1 = lambda x, axis=None: np.nanstd(x, axis=axis, ddof=1)  # noqa: E731
    for key, iters in (("iter_std", None), ("iter_std_3", 3)):
        clipped = SigmaClip(sigma=2, maxiters=iters, cenfunc="median", stdfunc=std1)(mag, axis=1, masked=False)
        np.testing.assert_allclose(r[key], np.nanstd(clipped, axis=1, ddof=1), rtol=1e-10, err_msg=key)
    assert np.all(r["iter_std"] <= r["iter_std_3"] + 1e-15) and np.all(r["iter_std_3"] < r["std"])

    # With median == mean (symmetric samples) eqs. 4-5 are scipy's unbiased estimators.
    half = rng.normal(0, 1, (20, 25))
    sym = 15 + np.concatenate([half, -half, np.zeros((20, 1))], axis=1)
    r = variability_indices(sym, np.ones_like(sym))
    np.testing.assert_allclose(r["kurtosis"], stats.kurtosis(sym, axis=1, bias=False), rtol=1e-9)
    np.testing.assert_allclose(r["skewness"], stats.skew(sym, axis=1, bias=False), atol=1e-9)


def test_against_light_curve_package():
    lc = pytest.importorskip("light_curve")
    rng = np.random.default_rng(11)
    L = 50
    t = np.arange(L, dtype=float)
    mag = rng.normal(16, 0.1, (10, L))
    err = np.full_like(mag, 0.1)
    r = variability_indices(mag, err)
    half = rng.normal(0, 1, 24)
    sym = 15 + np.concatenate([half, -half, [0.0, 0.0]])
    rs = variability_indices(sym, np.ones(L))
    for i in range(10):
        m = mag[i].copy()
        assert r["std"][i] == pytest.approx(lc.StandardDeviation()(t, m, err[i])[0], rel=1e-10)
        assert r["mean"][i] == pytest.approx(lc.Mean()(t, m, err[i])[0], rel=1e-12)
        assert r["median"][i] == pytest.approx(lc.Median()(t, m, err[i])[0], rel=1e-12)
        assert r["mad"][i] == pytest.approx(lc.MedianAbsoluteDeviation()(t, m, err[i])[0], rel=1e-10)
        assert r["inv_eta"][i] == pytest.approx(1 / lc.Eta()(t, m, err[i])[0], rel=1e-10)
    assert rs["kurtosis"] == pytest.approx(lc.Kurtosis()(t, sym, np.ones(L))[0], rel=1e-9)
    assert rs["skewness"] == pytest.approx(lc.Skew()(t, sym, np.ones(L))[0], abs=1e-9)
    # Documented differences: light-curve's Amplitude is (max - min)/2, which ours equals below 40 points.
    assert variability_indices(mag[0, :30], err[0, :30])["amp"] == pytest.approx(
        lc.Amplitude()(t[:30], mag[0, :30].copy(), err[0, :30])[0], rel=1e-12)
    assert r["amp"][0] < lc.Amplitude()(t, mag[0].copy(), err[0])[0]


def test_padded_batch_equals_single_curves_and_mask_holes():
    rng = np.random.default_rng(5)
    curves = [rng.normal(15, 0.1, k) for k in (7, 25, 3, 12)]
    errs = [np.full(len(c), 0.02) for c in curves]
    L = max(len(c) for c in curves)
    mag = np.full((4, L), np.nan)
    err = np.full((4, L), np.nan)
    mask = np.zeros((4, L), bool)
    for i, c in enumerate(curves):
        mag[i, : len(c)] = c
        err[i, : len(c)] = errs[i]
        mask[i, : len(c)] = True
    r = variability_indices(mag, err, mask)
    # The same curves with holes: valid points spread out with garbage in between.
    mag2 = np.full((4, 2 * L), 99.0)
    err2 = np.full((4, 2 * L), -1.0)
    mask2 = np.zeros((4, 2 * L), bool)
    mag2[:, 1::2], err2[:, 1::2], mask2[:, 1::2] = mag, err, mask
    r2 = variability_indices(mag2, err2, mask2)
    for i, c in enumerate(curves):
        one = variability_indices(c, errs[i])
        for k in INDEX_NAMES:
            np.testing.assert_allclose(r[k][i], one[k], rtol=1e-12, equal_nan=True, err_msg=k)
            np.testing.assert_allclose(r2[k][i], one[k], rtol=1e-12, equal_nan=True, err_msg=k)
    assert np.array_equal(r["flag"], r2["flag"])


def test_torch_matches_numpy_and_keeps_type():
    rng = np.random.default_rng(9)
    mag = rng.normal(19, 0.3, (16, 40))
    err = rng.uniform(0.02, 0.2, (16, 40))
    mask = rng.random((16, 40)) > 0.2
    rn = variability_indices(mag, err, mask)
    rt = variability_indices(torch.from_numpy(mag), torch.from_numpy(err), torch.from_numpy(mask))
    for k in rn:
        assert isinstance(rt[k], torch.Tensor)
        np.testing.assert_allclose(rt[k].numpy(), rn[k], rtol=1e-12, equal_nan=True, err_msg=k)
    r32 = variability_indices(torch.from_numpy(mag).float(), torch.from_numpy(err).float(), torch.from_numpy(mask))
    assert r32["std"].dtype == torch.float32
    for k in ("std", "Q2", "mad", "amp", "robust_std", "iter_std", "inv_eta"):
        np.testing.assert_allclose(r32[k].numpy(), rn[k], rtol=2e-4, err_msg=k)


def test_pure_torch_paths_match(monkeypatch):
    """The code GPUs run (torch sorts, torch.isfinite) gives the numpy-accelerated CPU results."""
    import skyvar.lightcurves.indices as mod

    rng = np.random.default_rng(4)
    mag = rng.normal(19, 0.3, (64, 50))
    err = rng.uniform(0.02, 0.2, (64, 50))
    mask = rng.random((64, 50)) > 0.2  # holes: exercises the stable packing for inv_eta too
    mag[3, 5] = np.nan
    ref = variability_indices(torch.from_numpy(mag), torch.from_numpy(err), torch.from_numpy(mask))
    monkeypatch.setattr(mod, "_NUMPY_ON_CPU", False)
    got = variability_indices(torch.from_numpy(mag), torch.from_numpy(err), torch.from_numpy(mask))
    for k in ref:
        np.testing.assert_allclose(got[k].numpy(), ref[k].numpy(), rtol=1e-12, equal_nan=True, err_msg=k)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    rng = np.random.default_rng(2)
    mag = torch.from_numpy(rng.normal(19, 0.3, (500, 64)))
    err = torch.full_like(mag, 0.05)
    rc = variability_indices(mag, err)
    rg = variability_indices(mag.cuda(), err.cuda())
    for k in rc:
        assert rg[k].device.type == "cuda"
        np.testing.assert_allclose(rg[k].cpu().numpy(), rc[k].numpy(), rtol=1e-9, equal_nan=True, err_msg=k)


def test_too_few_points_give_nan_and_flags_never_raise():
    mag = np.array([[15.0, 15.1, 15.2, 15.3, 15.4], [15.0, np.nan, np.nan, np.nan, np.nan],
                    [np.nan] * 5])
    err = np.full_like(mag, 0.1)
    mask = np.isfinite(mag)
    r = variability_indices(mag, err, mask)
    # Row 0 has 5 points: Q2 (needs 6) is undefined, everything else is there.
    assert np.isnan(r["Q2"][0]) and r["flag"][0] & FLAG_TOO_FEW["Q2"]
    assert np.isfinite(r["Q1"][0]) and not r["flag"][0] & FLAG_TOO_FEW["Q1"]
    # One point: only the MAD (0) and the centre are defined.
    assert r["mad"][1] == 0 and r["median"][1] == 15.0
    for k in INDEX_NAMES:
        if MIN_POINTS[k] > 1:
            assert np.isnan(r[k][1]) and r["flag"][1] & FLAG_TOO_FEW[k], k
        assert np.isnan(r[k][2]), k
    assert r["n_points"].tolist() == [5, 1, 0]
    assert "too_few_points:Q2" in decode_flag(r["flag"][0])
    empty = variability_indices(np.zeros((3, 0)), np.zeros((3, 0)))
    assert empty["std"].shape == (3,) and np.all(np.isnan(empty["std"]))


def test_bad_points_are_dropped_and_flagged():
    mag = np.array([15.0, 15.2, np.inf, 14.9, 15.1, 16.0, np.nan, 14.5, 15.05, 15.3, 15.1])
    err = np.array([0.01, 0.02, 0.1, 0.03, 0.04, 0.05, 0.1, 0.06, 0.07, 0.08, 0.0])  # last: zero error
    r = variability_indices(mag, err)
    clean = variability_indices(MAG, ERR)
    for k in INDEX_NAMES:
        assert r[k] == pytest.approx(clean[k], rel=1e-12), k
    assert r["flag"] & FLAG_BAD_POINTS and int(r["n_points"]) == 8
    assert not clean["flag"] & FLAG_BAD_POINTS


def test_constant_curve_and_missing_errors():
    r = variability_indices(np.full(20, 17.0), np.full(20, 0.05))
    assert r["std"] == 0 and r["mad"] == 0 and r["Q"] == 0 and r["iter_std"] == 0
    assert np.isnan(r["kurtosis"]) and np.isnan(r["inv_eta"]) and r["flag"] & FLAG_ZERO_SCATTER
    r = variability_indices(MAG, None)
    assert np.isnan(r["Q"]) and r["flag"] & FLAG_NO_ERRORS and r["std"] == pytest.approx(_ref(MAG, ERR)["std"])


def test_subset_and_bad_arguments():
    r = variability_indices(MAG, ERR, which=["std", "mad"])
    assert set(r) == {"std", "mad", "n_points", "mean", "median", "flag"}
    assert r["std"] == variability_indices(MAG, ERR)["std"]
    with pytest.raises(ValueError, match="unknown indices"):
        variability_indices(MAG, ERR, which=["nope"])
    with pytest.raises(ValueError, match="shape"):
        variability_indices(MAG, ERR[:3])
    with pytest.raises(ValueError, match="1-D or 2-D"):
        variability_indices(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(1)
    mag = rng.normal(15, 0.1, (37, 30))
    err = np.full_like(mag, 0.01)
    a = variability_indices(mag, err)
    b = variability_indices(mag, err, chunk_elements=100)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_coarse_rounding_is_flagged_not_hidden():
    """Issue 15 §3: a constant star rounded to 0.1 mag with 0.01-mag errors has Q2 ~ 7 from one grid step."""
    from skyvar.lightcurves.indices import FLAG_QUANTISED, decode_flag

    rng = np.random.default_rng(4)
    n = 200
    m = np.stack([np.round(15.04 + 0.01 * rng.normal(size=n), 1),  # 0.1-mag grid, noise 0.01
                  np.round(15.0 + 0.01 * rng.normal(size=n), 2),  # 0.01-mag grid: one step < the errors
                  15.0 + 0.01 * rng.normal(size=n)])  # continuous
    err = np.full_like(m, 0.01)
    res = variability_indices(m, err)
    flags = res["flag"].astype(int)
    assert flags[0] & FLAG_QUANTISED and "quantised" in decode_flag(flags[0])
    assert res["Q2"][0] == pytest.approx(0.1 / np.hypot(0.01, 0.01))  # the value is kept
    assert not flags[1] & FLAG_QUANTISED and not flags[2] & FLAG_QUANTISED
    t = variability_indices(torch.as_tensor(m), torch.as_tensor(err))
    np.testing.assert_array_equal(t["flag"].numpy(), flags)
    # a few widely spread points with small errors have wide gaps but no ties: not a grid
    sparse = variability_indices(15 + rng.normal(0, 1.0, 8), np.full(8, 0.002))
    assert not int(sparse["flag"]) & FLAG_QUANTISED


def test_index_flags_match_the_registry():
    from skyvar import flags
    from skyvar.lightcurves import indices

    for name in ("BAD_POINTS", "ZERO_SCATTER", "ITER_NOT_CONVERGED", "NO_ERRORS", "QUANTISED"):
        assert getattr(indices, f"FLAG_{name}") == int(getattr(flags.IndexFlag, name))
