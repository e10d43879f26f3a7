import json

import numpy as np
import pandas as pd
import pytest

from skyvar.sim.wfst import (
    WfstSimConfig,
    davenport_flare,
    main,
    noise_coefficients,
    run_times,
    sigma_of_mag,
    simulate_wfst,
)


def test_noise_model_passes_through_table2():
    c = noise_coefficients(0.009, 0.015, 0.05)
    np.testing.assert_allclose(sigma_of_mag(np.array([15.0, 18.0, 20.0]), c), [0.009, 0.015, 0.05], rtol=1e-12)
    assert np.all(c >= 0) and np.all(np.diff(sigma_of_mag(np.linspace(12, 22, 50), c)) > 0)
    # GP-20240509 (r band, poor conditions) also gives a physical model
    c2 = noise_coefficients(0.0084, 0.0214, 0.0909)
    assert np.all(c2 >= 0)


def test_davenport_template():
    assert davenport_flare(np.array([0.0]))[0] == pytest.approx(1.0, abs=1e-3)  # peak
    assert davenport_flare(np.array([-1.0]))[0] == pytest.approx(0.0, abs=0.01)  # start of the rise
    # Davenport et al. (2014) eqs. 1 and 4, hand-evaluated at x = -0.5 (rise) and x = 0.5 (decay)
    assert davenport_flare(np.array([-0.5]))[0] == pytest.approx(1 - 0.9705 - 0.04375 + 0.28075 - 0.0703125)
    assert davenport_flare(np.array([0.5]))[0] == pytest.approx(0.6890 * np.exp(-0.8) + 0.3030 * np.exp(-0.13915))
    assert davenport_flare(np.array([-5.0, 1e4]))[0] == 0.0


def test_cadence_and_epochs_as_table1():
    rng = np.random.default_rng(0)
    t, rid = run_times(WfstSimConfig(run_hours=[3.0, 3.5], run_offsets_days=[0.0, 59.0]), rng)
    n = np.bincount(rid)
    assert 130 <= n[0] <= 260 and 130 <= n[1] <= 260
    assert np.median(np.diff(t[rid == 0])) * 86400 == pytest.approx(50.0)
    t30, _ = run_times(WfstSimConfig(exposure_s=30.0, run_hours=[2.8], run_offsets_days=[0.0]), rng)
    assert np.median(np.diff(t30)) * 86400 == pytest.approx(60.0) and len(t30) == 169
    assert t[rid == 1][0] - t[0] == pytest.approx(59.0)


def test_simulation_is_reproducible_and_consistent():
    cfg = WfstSimConfig(n_sources=400, seed=11, frac_flare=0.1, frac_dsct=0.05, frac_ew=0.05, chunk=150)
    s1, t1 = simulate_wfst(cfg)
    s2, t2 = simulate_wfst(cfg)
    pd.testing.assert_frame_equal(s1, s2)
    pd.testing.assert_frame_equal(t1, t2)
    assert list(s1.columns) == ["source_id", "band", "time", "mag", "mag_err", "flag"]
    assert set(t1.var_type) >= {"constant", "flare", "dsct", "ew"}
    assert (t1.groupby("var_type").size()["flare"] > 20)
    # every source's light curve has its truth row; the epoch count matches
    n = s1.groupby("source_id").size()
    np.testing.assert_array_equal(n.reindex(t1.source_id).fillna(0).to_numpy(), t1.n_epochs.to_numpy())
    # the scatter of bright constants follows the error model
    const = t1[(t1.var_type == "constant") & (t1.mag0 < 17) & ~t1.bleed & ~t1.region_shift & (t1.n_outliers == 0)]
    merged = s1.merge(const[["source_id", "mag0", "sigma"]], on="source_id")
    resid = merged.groupby("source_id").apply(lambda d: np.std(d.mag), include_groups=False)
    assert np.median(resid / const.set_index("source_id").sigma.reindex(resid.index)) == pytest.approx(1.0, abs=0.3)
    # flares brighten: the brightest point of a flaring star is near its peak time
    f = t1[(t1.var_type == "flare") & (t1.flare_peak_flux > 1.0)].iloc[0]
    lc = s1[s1.source_id == f.source_id]
    assert abs(lc.time.iloc[lc.mag.argmin()] - f.t_peak) < 3 * max(f.fwhm, 60 / 86400)
    other = simulate_wfst(WfstSimConfig(n_sources=400, seed=12, chunk=150))[0]
    assert not np.allclose(other.mag.to_numpy()[:100], s1.mag.to_numpy()[:100])


def test_cli_writes_store_truth_and_config(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main([f"out_dir={out}", "n_sources=50", "band=r", "exposure_s=30"]) == 0
    store = pd.read_parquet(out / "store.parquet")
    truth = pd.read_parquet(out / "truth.parquet")
    assert set(store.band) == {"r"} and len(truth) == 50
    assert json.loads((out / "config.json").read_text())["exposure_s"] == 30.0
    assert main([f"out_dir={out}", "n_sources=0"]) == 2
    assert main([f"out_dir={out}", "not_a_key=1"]) == 2
    assert "n_sources" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_dispatcher_reaches_wfst(tmp_path):
    from skyvar.sim.__main__ import main as sim_main

    assert sim_main(["lightcurves", "survey=wfst", f"out_dir={tmp_path}", "n_sources=20"]) == 0
    assert (tmp_path / "store.parquet").exists()
