"""Constant, saturated or coarsely rounded light curves get no period (NaN, FLAG_DEGENERATE), while a
real signal measured on a fine magnitude grid is still found (issue 15 §3, the periodogram's share)."""

import numpy as np
import pandas as pd

from skyvar.flags import SearchFlag
from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.period_search import PeriodSearch, magnitude_levels


def _batch():
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(60000.0, 60000.25, 300))  # one 6-h run at minute cadence
    curves = {
        1: np.full(t.size, 17.0),  # exactly constant (saturated stars look like this)
        2: np.round(17.0 + rng.normal(0, 0.01, t.size), 1),  # 0.01-mag scatter rounded to 0.1 mag
        3: np.round(17.0 + 0.05 * np.sin(2 * np.pi * t / (1.5 / 24)) + rng.normal(0, 0.01, t.size), 3),
    }
    df = pd.concat([pd.DataFrame({"source_id": k, "band": "g", "time": t, "mag": m, "mag_err": 0.01})
                    for k, m in curves.items()])
    return LightCurveBatch.from_long(df)


def test_magnitude_levels_counts_distinct_valid_values():
    mag = np.array([[1.0, 1.0, 2.0, np.nan], [3.0, 3.0, 3.0, 3.0]])
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    assert magnitude_levels(mag, mask).tolist() == [2, 1]


def test_degenerate_curves_get_no_period_but_a_real_signal_does():
    out, _, _ = PeriodSearch(min_epochs=50, plots=False, device="cpu").search(_batch())
    flags = out["period_flag"].to_numpy()
    for i in (0, 1):  # constant and coarsely rounded
        assert not np.isfinite(out["pwr_max"].iloc[i]) and flags[i] & int(SearchFlag.DEGENERATE)
        assert not out["period_candidate"].iloc[i]
    assert abs(out["period"].iloc[2] * 24 - 1.5) < 0.05 and not flags[2] & int(SearchFlag.DEGENERATE)
