"""The ZTF-like labelled light-curve simulator: its stated choices hold (skyvar.sim.ztf docstring)."""


import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from scipy import stats

from skyvar.lightcurves.store import read_store
from skyvar.sim.ztf import (
    SIGMA_5,
    T_SPAN,
    T_START,
    ZTFSimConfig,
    draw_counts_law,
    error_model,
    main,
    simulate,
)


@pytest.fixture(scope="module")
def small():
    return simulate(ZTFSimConfig(n_variables=300, n_constant=300, seed=3))


def test_error_model_matches_ztf_figures():
    cfg = ZTFSimConfig()
    assert error_model(15.0, cfg) == pytest.approx(0.012, abs=0.002)  # ~0.01 mag for bright stars
    assert error_model(19.0, cfg) == pytest.approx(0.065, abs=0.01)
    # at a visit's 5-sigma depth the error is that of a 5-sigma detection (plus the floor)
    assert error_model(20.1, cfg, m5=20.1) == pytest.approx(np.hypot(SIGMA_5, cfg.err_floor), rel=1e-12)
    m = np.linspace(13, 21, 50)
    assert np.all(np.diff(error_model(m, cfg)) > 0)


def test_counts_law_is_the_stated_distribution():
    rng = np.random.default_rng(0)
    lo, hi, s = 14.0, 21.0, 0.25
    m = draw_counts_law(rng, lo, hi, s, 20000)
    a = np.log(10) * s
    cdf = lambda x: np.expm1(a * (np.clip(x, lo, hi) - lo)) / np.expm1(a * (hi - lo))  # noqa: E731
    assert stats.kstest(m, cdf).pvalue > 0.01
    assert stats.kstest(draw_counts_law(rng, 13, 17, 0.0, 5000), stats.uniform(13, 4).cdf).pvalue > 0.01


def test_cadence_follows_the_sky_model(small):
    lc, lab = small
    cfg = ZTFSimConfig()
    assert set(lc.band) == {"g", "r"}
    assert lc.time.min() >= T_START and lc.time.max() <= T_START + T_SPAN + 1
    # Visits per band: observable clear nights x 1/3 x (1 or 2 fields); the Kepler field is observable
    # +-130 d around 2018 Jul 8 (both DR2 seasons), Stripe 82 +-95 d around Aug-Nov (one season).
    days = np.arange(int(T_SPAN) + 1)
    for lab_val, opp, half in ((1, cfg.opposition_variable, cfg.season_halfwidth_variable),
                               (0, cfg.opposition_constant, cfg.season_halfwidth_constant)):
        phase = ((T_START + days - opp + 182.625) % 365.25) - 182.625
        nights = np.sum(np.abs(phase) < half)
        expect = nights * cfg.clear_frac * cfg.visit_prob * (1 + cfg.two_field_frac)
        got = lab.loc[lab.label == lab_val, "n_visits_r"].mean()
        assert got == pytest.approx(expect, rel=0.15), (lab_val, got, expect)
    # observing times lie inside each source's season (variables: the Kepler field's)
    var_ids = lab.source_id[lab.label == 1]
    t = lc[lc.source_id.isin(var_ids)].time.to_numpy()
    phase = ((t - cfg.opposition_variable + 182.625) % 365.25) - 182.625
    assert np.all(np.abs(phase) < cfg.season_halfwidth_variable + cfg.opposition_spread_variable + 1)


def test_detections_only_and_faint_stars_lose_visits(small):
    lc, lab = small
    # a point exists only when brighter than its visit's 5-sigma depth: its error is below a 5-sigma one
    assert lc.mag_err.max() <= np.hypot(SIGMA_5, ZTFSimConfig().err_floor) + 1e-9
    det = lab.n_det_r / lab.n_visits_r
    assert det[lab.mag_r < 19].min() > 0.97  # bright stars are detected on (almost) every visit
    assert det[lab.mag_r > 20.7].median() < 0.6
    # a band with fewer than min_detections has no light curve
    n = lc.groupby(["source_id", "band"]).size()
    assert n.min() >= ZTFSimConfig().min_detections


def test_labels_balance_and_mix(small):
    _, lab = small
    assert (lab.label == 1).sum() == (lab.label == 0).sum() == 300
    frac = lab[lab.label == 1].var_type.value_counts(normalize=True)
    assert frac["rotation"] == pytest.approx(12151 / 16060, abs=0.07)
    assert set(frac.index) <= {"rotation", "pulsator", "eb_detached", "eb_contact"}
    assert (lab[lab.label == 0].var_type == "constant").all() and lab[lab.label == 0].amplitude.eq(0).all()
    # ids do not reveal the class
    assert abs(lab.source_id[lab.label == 1].mean() - lab.source_id.mean()) < 0.1 * len(lab)


def test_standard_stars_scatter_as_their_errors(small):
    """Paper Fig. 3: basically all standard stars lie within the 3-sigma level."""
    from skyvar.lightcurves.probability import sample_diagnostics

    lc, lab = small
    d = sample_diagnostics(lc, lab)
    std = d[d.label == 0]
    assert np.mean(std.N3 >= 0.95) > 0.9
    assert np.mean(std[std.mean_mag < 19.5].N3 >= 0.95) > 0.98  # the misses are near the detection limit
    assert std.N1.median() == pytest.approx(0.683, abs=0.05) and std.N2.median() == pytest.approx(0.954, abs=0.03)
    var = d[(d.label == 1) & d.var_type.isin(["eb_contact"])]
    assert var.groupby("band").iter_std_3.median().min() > 0.02


@pytest.mark.parametrize("like", ["mag", "epochs"])
def test_standards_like_gives_the_variables_distribution(like):
    lc, lab = simulate(ZTFSimConfig(n_variables=250, n_constant=250, seed=4, standards_like=like))
    v, s = lab[lab.label == 1], lab[lab.label == 0]
    if like == "mag":
        assert stats.ks_2samp(v.mag_r, s.mag_r).pvalue > 0.01
        assert not (s.mag_r > 17.0).any()
    else:
        assert stats.ks_2samp(v.n_visits_r, s.n_visits_r).pvalue > 0.01
        base = simulate(ZTFSimConfig(n_variables=250, n_constant=250, seed=4))[1]
        assert stats.ks_2samp(base[base.label == 0].mag_r, s.mag_r).pvalue > 0.01  # magnitudes untouched
    with pytest.raises(ValueError, match="standards_like"):
        simulate(ZTFSimConfig(n_variables=2, n_constant=2, standards_like="nonsense"))


def test_variables_iter_std_near_the_papers_figure5():
    """The one number set from the paper: the variables' Iter-std (3 iterations) peaks near 0.014 mag."""
    from skyvar.lightcurves.probability import histogram_peak, sample_diagnostics

    lc, lab = simulate(ZTFSimConfig(n_variables=800, n_constant=10, seed=6))
    d = sample_diagnostics(lc, lab)
    r = d[(d.label == 1) & (d.band == "r")].iter_std_3
    assert 0.011 < r.median() < 0.018 and 0.011 < histogram_peak(r, 0.05) < 0.018


def test_deterministic_and_seeded():
    a, la = simulate(ZTFSimConfig(n_variables=10, n_constant=10, seed=1))
    b, lb = simulate(ZTFSimConfig(n_variables=10, n_constant=10, seed=1))
    c, _ = simulate(ZTFSimConfig(n_variables=10, n_constant=10, seed=2))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(la, lb)
    assert len(a) != len(c) or not np.allclose(a.mag, c.mag)


def test_cadence_override_for_fields():
    lc, lab = simulate(ZTFSimConfig(n_variables=20, n_constant=20, seed=2, epochs_variable=(40, 60),
                                    epochs_constant=(40, 60), mag_constant=(13.0, 17.0), bands=("g",)))
    assert lab.n_visits_g.between(40, 61).all() and set(lc.band) == {"g"}


def test_cli_writes_store_and_labels(tmp_path, capsys):
    assert main([f"out_dir={tmp_path}", "n_variables=8", "n_constant=8", "n_partitions=2"]) == 0
    store = read_store(tmp_path / "store")
    lab = pd.read_parquet(tmp_path / "labels.parquet")
    assert set(store.source_id) == set(lab.source_id) and len(lab) == 16
    assert (tmp_path / "config.json").exists()
    assert main(["--help"]) == 0 and "n_variables" in capsys.readouterr().out
    assert main(["nonsense_key=1"]) == 2
    assert main(["standards_like=sometimes"]) == 2


def test_dispatcher_reaches_the_simulator(tmp_path, root):
    r = run_cli(["-m", "skyvar.sim", "lightcurves", "survey=ztf", f"out_dir={tmp_path}",
                 "n_variables=3", "n_constant=3"], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "labels.parquet").exists()
