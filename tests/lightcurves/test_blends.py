import numpy as np
import pandas as pd
import pytest

from skyvar.flags import CandidateFlag
from skyvar.lightcurves.blends import attribute_blends
from skyvar.pipeline.candidates import build_candidates


def test_owner_is_largest_flux_amplitude_not_largest_relative_depth():
    # 0: the variable (i=20, 10 % deep); 1: a fainter neighbour with a deeper *relative* dip (leakage)
    # 2: a neighbour with another period; 3: the same period far away; 4: the second harmonic at 3 px
    x = np.array([10.0, 12.0, 11.0, 200.0, 13.0])
    y = np.array([10.0, 10.0, 12.0, 200.0, 10.0])
    mag = np.array([20.0, 22.0, 21.0, 20.0, 23.0])
    period = np.array([1.50, 1.503, 0.77, 1.50, 0.75])
    depth = np.array([0.10, 0.20, 0.3, 0.1, 0.4])
    g = attribute_blends(x, y, mag, period, depth, radius_px=4.0, period_rtol=0.01)
    assert list(g["blend_group"] >= 0) == [True, True, False, False, True]
    assert (g.loc[[0, 1, 4], "blend_owner"] == 0).all()
    assert list(g["blend_alias"]) == [False, True, False, False, True]
    assert g.loc[0, "blend_n"] == 3 and g.loc[3, "blend_n"] == 1
    # without harmonics the half-period source stays alone
    g2 = attribute_blends(x, y, mag, period, depth, radius_px=4.0, harmonics=False)
    assert not g2.loc[4, "blend_alias"] and g2.loc[1, "blend_alias"]


def test_ineligible_and_nan_never_group():
    g = attribute_blends([0, 1, 2], [0, 0, 0], [20, 21, np.nan], [1.0, 1.0, 1.0], [0.1, 0.1, 0.1],
                         eligible=[True, False, True])
    assert (g["blend_group"] == -1).all() and not g["blend_alias"].any()
    assert len(attribute_blends([], [], [], [], [])) == 0


def _features(p, padj):
    n = len(p)
    return pd.DataFrame({"source_id": np.arange(1, n + 1), "band": "i", "n_good": 900, "median_mag": [20.0, 22.0, 21.0][:n],
                         "p_periodic": p, "p_periodic_adjusted": padj, "astronet_period": [1.5, 1.5, 0.9][:n],
                         "astronet_depth": [0.1, 0.2, 0.1][:n], "astronet_depth_snr": [30.0, 8.0, 9.0][:n],
                         "astronet_class": "eb"})


def test_candidates_use_adjusted_score_and_attribute_blends():
    src = pd.DataFrame({"source_id": [1, 2, 3], "x": [10.0, 12.5, 50.0], "y": [10.0, 10.0, 50.0]})
    f = _features([0.6, 0.95, 0.7], [0.2, 0.9, 0.3])
    c = build_candidates(f, src, None, threshold=0.5)
    cnn, alias = int(CandidateFlag.PERIODIC_CNN), int(CandidateFlag.BLEND_ALIAS)
    # the leaked copy (source 2) gives its probability to the owner (source 1) and is flagged
    assert c["p_periodic_final"].tolist() == pytest.approx([0.9, 0.0, 0.3])
    assert [bool(v & cnn) for v in c["flags"]] == [True, False, False]
    assert [bool(v & alias) for v in c["flags"]] == [False, True, False]
    assert c["blend_owner"].tolist() == [1, 1, 3]
    # raw score, no attribution: every source keeps its own network probability
    r = build_candidates(f, src, None, threshold=0.5, score="raw", blends={"enabled": False})
    assert r["p_periodic_final"].tolist() == pytest.approx([0.6, 0.95, 0.7])
    assert not any(v & alias for v in r["flags"])
    with pytest.raises(ValueError, match="radius"):
        build_candidates(f, src, None, threshold=0.5, blends={"radius": 3})
    with pytest.raises(ValueError, match="score"):
        build_candidates(f, src, None, threshold=0.5, score="calibrated")
