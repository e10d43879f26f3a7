import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from skyvar.evaluate.matching import match_catalogs


def _greedy_reference(d, t, r):
    pairs = sorted((np.hypot(*(d[i] - t[j])), i, j) for i, j in itertools.product(range(len(d)), range(len(t))))
    used_i, used_j, out = set(), set(), []
    for dist, i, j in pairs:
        if dist <= r and i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            out.append((i, j))
    return sorted(out)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_global_greedy_assignment(seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 20, (60, 2))
    d = np.r_[t[:45] + rng.normal(0, 0.3, (45, 2)), rng.uniform(0, 20, (10, 2))]
    di, ti, dist = match_catalogs(d, t, 1.0)
    assert sorted(zip(di.tolist(), ti.tolist())) == _greedy_reference(d, t, 1.0)
    assert np.all(dist <= 1.0)
    assert len(set(di)) == len(di) and len(set(ti)) == len(ti)


def test_one_to_one_when_two_detections_compete():
    t = np.array([[0.0, 0.0]])
    d = np.array([[0.05, 0.0], [0.02, 0.0]])
    di, ti, dist = match_catalogs(d, t, 0.1)
    assert di.tolist() == [1] and ti.tolist() == [0] and dist[0] == pytest.approx(0.02)


def test_half_pixel_slip_fails_a_tenth_pixel_radius():
    t = np.array([[10.0, 10.0]])
    assert len(match_catalogs(t + 0.5, t, 0.1)[0]) == 0
    assert len(match_catalogs(t + 0.05, t, 0.1)[0]) == 1


def test_greedy_is_close_to_maximum_cardinality():
    # Greedy-by-distance (the usual catalogue convention) is not a maximum matching; in a crowded
    # 1 px match it stays within a few per cent of one.
    rng = np.random.default_rng(9)
    t = rng.uniform(0, 30, (300, 2))
    d = t + rng.normal(0, 0.4, t.shape)
    di, _, _ = match_catalogs(d, t, 1.0)
    cost = np.hypot(*(d[:, None, :] - t[None, :, :]).transpose(2, 0, 1))
    r, c = linear_sum_assignment(np.where(cost <= 1.0, cost, 1e6))
    optimal = int((cost[r, c] <= 1.0).sum())
    assert 0.9 * optimal <= len(di) <= optimal


def test_empty_and_nan_inputs():
    assert len(match_catalogs(np.zeros((0, 2)), np.ones((3, 2)), 1)[0]) == 0
    d = np.array([[np.nan, 1.0], [1.0, 1.0]])
    di, ti, _ = match_catalogs(d, np.array([[1.0, 1.0]]), 0.5)
    assert di.tolist() == [1]
