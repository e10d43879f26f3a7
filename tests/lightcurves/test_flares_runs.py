"""Run splitting and cleaning (skyvar.lightcurves.runs), shared by the flare and periodogram stages."""

import numpy as np

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.runs import (
    FLAG_DUPLICATE_TIME,
    FLAG_NONFINITE,
    FLAG_UNSORTED,
    clean_batch,
    describe_flags,
    group_runs,
    row_quantiles,
    split_runs,
)


def _b(t, m, mask=None):
    t = np.asarray(t, float)
    m = np.asarray(m, float)
    mask = np.ones_like(m, bool) if mask is None else mask
    return LightCurveBatch(np.arange(len(m)), np.full(len(m), "r"), t, m, np.full(m.shape, 0.1), mask)


def test_clean_sorts_compacts_and_flags():
    t = [[3.0, 1.0, 2.0, np.nan], [1.0, 2.0, 2.0, 4.0]]
    m = [[13.0, 11.0, np.inf, 0.0], [1.0, 2.0, 3.0, 4.0]]
    mask = np.array([[True, True, True, False], [True, False, True, True]])
    c, f = clean_batch(_b(t, m, mask))
    np.testing.assert_array_equal(c.mask, [[True, True, False, False], [True, True, True, False]])
    np.testing.assert_array_equal(c.time[0, :2], [1.0, 3.0])
    np.testing.assert_array_equal(c.mag[0, :2], [11.0, 13.0])
    np.testing.assert_array_equal(c.time[1, :3], [1.0, 2.0, 4.0])  # the masked duplicate is gone
    assert f[0] & FLAG_UNSORTED and f[0] & FLAG_NONFINITE and not f[1] & FLAG_UNSORTED
    assert set(describe_flags(f[0])) == {"unsorted_times", "nonfinite_dropped"}
    _, f2 = clean_batch(_b([[1.0, 1.0, 2.0]], [[1.0, 2.0, 3.0]]))
    assert f2[0] & FLAG_DUPLICATE_TIME


def test_split_runs_cuts_at_gaps_and_keeps_parents():
    t = np.array([[0.0, 0.01, 0.02, 5.0, 5.01, 9.0, np.nan], [0.0, 0.01, 0.02, 0.03, np.nan, np.nan, np.nan]])
    m = np.where(np.isfinite(t), 1.0, np.nan)
    seg = split_runs(_b(t, m, np.isfinite(t)), gap=0.25, min_points=2)
    np.testing.assert_array_equal(seg.parent, [0, 0, 1])
    np.testing.assert_array_equal(seg.index, [0, 1, 0])
    np.testing.assert_array_equal(seg.n_points, [3, 2, 4])
    np.testing.assert_array_equal(seg.n_segments, [3, 1])  # the 1-point run at t=9 is counted, not kept
    np.testing.assert_allclose(seg.t_start, [0.0, 5.0, 0.0])
    np.testing.assert_allclose(seg.span, [0.02, 0.01, 0.03])
    assert seg.batch.mag.shape == (3, 4) and seg.batch.mask.sum() == 9


def test_split_runs_empty_batch():
    seg = split_runs(_b(np.zeros((2, 0)), np.zeros((2, 0))))
    assert len(seg) == 0 and list(seg.n_segments) == [0, 0]


def test_group_runs_clusters_overlapping_runs():
    s = np.array([0.0, 0.05, 59.0, 0.02, 59.1])
    e = np.array([0.15, 0.14, 59.2, 0.16, 59.3])
    np.testing.assert_array_equal(group_runs(s, e), [0, 0, 1, 0, 1])


def test_row_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 9))
    n = np.array([9, 5, 1, 2, 0])
    xs = np.sort(np.where(np.arange(9) < n[:, None], x, np.nan), axis=1)
    got = row_quantiles(xs, n, (0.25, 0.5, 0.98))
    for i in range(4):
        np.testing.assert_allclose([g[i] for g in got], np.quantile(x[i, : n[i]], [0.25, 0.5, 0.98]))
    assert all(np.isnan(g[4]) for g in got)
