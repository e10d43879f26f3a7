import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy import special as sp

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.flares import FlareSearch, detrend_runs, flare_fdr, flare_statistics, ki1, log_ki1
from skyvar.lightcurves.runs import FLAG_DEGENERATE, FLAG_NONFINITE, FLAG_TOO_SHORT, FLAG_UNSORTED
from skyvar.sim.wfst import davenport_flare


def _ki1_quad(x):
    """Reference Ki1 by adaptive quadrature: of K0 directly for small x, of the scaled tail for large x."""
    if x < 20:
        return np.log(integrate.quad(sp.k0, x, np.inf, limit=200, epsabs=0, epsrel=1e-13)[0])
    s = integrate.quad(lambda u: sp.k0e(x + u) * np.exp(-u), 0, np.inf, epsabs=0, epsrel=1e-13)[0]
    return -x + np.log(s)


@pytest.mark.parametrize("x", [0.0, 1e-6, 0.3, 1.0, 1.999, 2.0, 2.5, 7.0, 19.0, 55.0, 300.0, 2000.0, 1e5])
def test_log_ki1_matches_quadrature(x):
    assert log_ki1(np.array([x]))[0] == pytest.approx(_ki1_quad(x), rel=1e-12, abs=1e-13)


def test_ki1_closed_form_with_struve_functions():
    # int_0^x K0 = (pi x / 2) [K0(x) L_-1(x) + K1(x) L_0(x)], L = modified Struve functions
    x = np.array([0.05, 0.5, 1.0, 1.9])
    closed = np.pi / 2 - np.pi * x / 2 * (sp.k0(x) * sp.modstruve(-1, x) + sp.k1(x) * sp.modstruve(0, x))
    np.testing.assert_allclose(ki1(x), closed, rtol=1e-12)
    assert ki1(np.array([0.0]))[0] == pytest.approx(np.pi / 2)
    with pytest.raises(ValueError):
        log_ki1(np.array([-1.0]))


def test_fdr_formula_and_large_phi_stability():
    phi = np.array([0.5, 3.0, 10.0])
    M = 199
    p = ki1(phi) / (2 * np.pi)
    fdr, lf = flare_fdr(phi, M)
    np.testing.assert_allclose(fdr, 1 - (1 - p) ** M, rtol=1e-10)  # the naive form loses digits
    np.testing.assert_allclose(fdr, -np.expm1(M * np.log1p(-p)), rtol=1e-13)
    # phi = 0 (no positive pair): single-pair tail = 1/4
    assert flare_fdr(np.array([0.0]), 10)[0][0] == pytest.approx(1 - 0.75**10)
    # large phi: FDR underflows but log10 FDR stays exact, ~ log10(M Ki1(phi)/2pi)
    big = np.array([50.0, 800.0, 1e4, 1e6])
    fdr, lf = flare_fdr(big, M)
    expect = (np.log(M) + log_ki1(big) - np.log(2 * np.pi)) / np.log(10)
    np.testing.assert_allclose(lf, expect, rtol=1e-13)
    assert np.all(np.isfinite(lf)) and np.all(np.diff(lf) < 0) and fdr[-1] == 0.0
    # NaN and empty pair counts propagate as NaN
    f, lf = flare_fdr(np.array([np.nan, 3.0]), np.array([10, 0]))
    assert np.isnan(lf).all()


def _batch(t, m, err=0.01, sid=None, band="g"):
    t = np.atleast_2d(t)
    m = np.atleast_2d(m)
    n = m.shape[0]
    return LightCurveBatch(np.arange(n) if sid is None else np.asarray(sid), np.full(n, band), t.astype(float),
                           m.astype(float), np.full(m.shape, err), np.isfinite(m))


def test_detrend_reproduces_the_model_space_exactly():
    t = np.linspace(0, 0.15, 200)
    u = (t - t[0]) / (t[-1] - t[0])
    m = 15 + 0.03 * np.cos(2 * np.pi * 3 * u) - 0.02 * np.sin(2 * np.pi * u) + 0.05 * (2 * u - 1) ** 2
    model, ok = detrend_runs(t[None], m[None], np.ones((1, 200), bool))
    assert ok[0]
    np.testing.assert_allclose(model[0], m, atol=1e-9)
    # a base period of 2 T cannot represent the 3rd harmonic of T
    model2, _ = detrend_runs(t[None], m[None], np.ones((1, 200), bool), base_period_factor=2.0, n_fourier=1)
    assert np.max(np.abs(model2[0] - m)) > 1e-3


def test_white_noise_fdr_is_close_to_uniform():
    rng = np.random.default_rng(5)
    S, L = 3000, 200
    t = np.tile(np.arange(L) * 50 / 86400, (S, 1))
    st = flare_statistics(_batch(t, 15 + 0.01 * rng.normal(size=(S, L))))
    for q in (0.05, 0.2, 0.5):
        assert np.mean(st.fdr <= q) == pytest.approx(q, abs=0.35 * q + 0.01)


def test_injected_flare_is_detected_at_its_time():
    rng = np.random.default_rng(6)
    L = 220
    t = 60000 + np.arange(L) * 50 / 86400
    t_peak = t[120] + 10 / 86400
    flux = 0.3 * davenport_flare((t - t_peak) / (4 / 1440))
    m = 17 + 0.01 * rng.normal(size=L) - 2.5 * np.log10(1 + flux)
    st = flare_statistics(_batch(t, m))
    assert st.log10_fdr[0] < -20
    assert abs(st.t_flare[0] - t_peak) < 2 * 50 / 86400
    # the same light curve without the flare is unremarkable
    st0 = flare_statistics(_batch(t, 17 + 0.01 * rng.normal(size=L)))
    assert st0.log10_fdr[0] > -3


def test_clipping_protects_large_long_flares_from_the_detrending():
    rng = np.random.default_rng(7)
    L = 220
    t = 60000 + np.arange(L) * 50 / 86400
    flux = 1.5 * davenport_flare((t - t[100]) / (6 / 1440))
    m = 20 + 0.05 * rng.normal(size=L) - 2.5 * np.log10(1 + flux)
    one = flare_statistics(_batch(t, m))
    clipped = flare_statistics(_batch(t, m), clip_iterations=2)
    assert clipped.phi_vv_max[0] > one.phi_vv_max[0]


def _runs(rng, n_src, L=200, n_runs=2, gap=30.0):
    t = np.concatenate([60000 + r * gap + np.arange(L) * 50 / 86400 for r in range(n_runs)])
    m = 16 + 0.01 * rng.normal(size=(n_src, t.size))
    return np.tile(t, (n_src, 1)), m


def test_flare_stage_contract_calibration_and_plots(tmp_path):
    rng = np.random.default_rng(8)
    t, m = _runs(rng, 400)
    flux = 0.5 * davenport_flare((t[0] - t[0, 250]) / (5 / 1440))
    m[7] -= 2.5 * np.log10(1 + flux)
    m[399, :] = np.nan  # no valid point at all
    m[398, 30:] = np.nan  # only 30 points: too short
    b = _batch(t, m)
    stage = FlareSearch(n_plots=3)
    out = stage(b, tmp_path)
    assert len(out) == 400 and list(out.index) == list(range(400))
    for col in ("phi_vv_max", "fdr", "fdr_cal", "flare_candidate", "flare_flag"):
        assert col in out
    assert np.isnan(out.fdr[399]) and out.flare_flag[399] & FLAG_TOO_SHORT
    assert np.isnan(out.fdr[398]) and out.flare_flag[398] & FLAG_TOO_SHORT
    assert out.flare_n_runs[7] == 2 and out.log10_fdr[7] < -20
    assert np.isnan(out.fdr_cal).all()  # calibration happens in finalize
    feats = pd.concat([pd.DataFrame({"source_id": b.source_id, "band": b.band}), out], axis=1)
    feats = stage.finalize(feats, tmp_path)
    assert stage.calibrations[0].fitted and stage.calibrations[1].fitted
    k = stage.calibrations[1].k  # the flare is in the second run (observation 1)
    assert 0.7 < k < 1.3
    np.testing.assert_allclose(feats.log10_fdr_cal[7], k * out.log10_fdr[7], rtol=1e-12)
    assert feats.flare_candidate[7] and feats.flare_candidate.sum() <= 2
    assert (tmp_path / "plots" / "flares" / "fdr_cdf.png").stat().st_size > 1000
    assert list((tmp_path / "plots" / "flares" / "candidates").glob("7_g_run*.png"))
    runs = pd.read_parquet(tmp_path / "flare_runs.parquet")
    assert set(runs.obs_group) == {0, 1} and len(runs) == 2 * 398


def test_flare_stage_cleans_bad_input():
    rng = np.random.default_rng(9)
    t, m = _runs(rng, 3, n_runs=1)
    m[0, 5] = np.inf
    t[1] = t[1][::-1].copy()
    m[1] = m[1][::-1].copy()
    b = _batch(t, m)
    b.mask[:] = True  # as from the store: the point exists, its value is bad
    out = FlareSearch()(b)
    assert out.flare_flag[0] & FLAG_NONFINITE and np.isfinite(out.fdr[0])
    assert out.flare_flag[1] & FLAG_UNSORTED
    # reversing a light curve in time and sorting it back gives the same statistic as the original
    ref = FlareSearch()(_batch(t[2:3], m[2:3]))
    back = FlareSearch()(_batch(t[1:2][:, ::-1], m[1:2][:, ::-1]))
    assert out.phi_vv_max[1] == pytest.approx(back.phi_vv_max[0])
    assert np.isfinite(ref.phi_vv_max[0])


def test_long_flare_flag_uses_inverse_von_neumann_excess(tmp_path):
    rng = np.random.default_rng(10)
    t, m = _runs(rng, 300, n_runs=1, L=200)
    m += rng.uniform(-3, 3, size=(300, 1))  # spread of magnitudes
    # a slow, energetic flare lasting ~1.5 h: absorbed by the detrending, but 1/eta is huge
    flux = 1.0 * davenport_flare((t[0] - t[0, 60]) / (40 / 1440))
    m[3] -= 2.5 * np.log10(1 + flux)
    stage = FlareSearch(plots=False)
    out = stage(_batch(t, m))
    feats = stage.finalize(pd.concat([pd.DataFrame({"source_id": np.arange(300), "band": "g"}), out], axis=1), tmp_path)
    assert feats.inv_eta_max[3] > 10 * np.nanmedian(feats.inv_eta_max)
    assert feats.flare_long_candidate[3] or feats.flare_candidate[3]
    assert feats.flare_long_candidate.sum() <= 2


def _rows(b, sl):
    return LightCurveBatch(b.source_id[sl], b.band[sl], b.time[sl], b.mag[sl], b.mag_err[sl], b.mask[sl])


def test_finalize_reads_side_tables_after_resume_or_in_another_process(tmp_path):
    rng = np.random.default_rng(11)
    t, m = _runs(rng, 300)
    m[7] -= 2.5 * np.log10(1 + 0.5 * davenport_flare((t[0] - t[0, 250]) / (5 / 1440)))
    b = _batch(t, m)
    worker = FlareSearch(n_plots=1)
    parts = [worker(_rows(b, slice(0, 120)), tmp_path), worker(_rows(b, slice(120, 300)), tmp_path)]
    feats = pd.concat([pd.DataFrame({"source_id": b.source_id, "band": b.band}), pd.concat(parts, ignore_index=True)],
                      axis=1)
    fresh = FlareSearch(n_plots=1)  # nothing in memory, as after a resumed run or with Dask workers
    got = fresh.finalize(feats, tmp_path)
    ref_stage = FlareSearch(plots=False)
    ref = ref_stage.finalize(pd.concat([feats[["source_id", "band"]], ref_stage(b)], axis=1), tmp_path / "ref")
    np.testing.assert_allclose(got.log10_fdr_cal, ref.log10_fdr_cal, rtol=1e-12)
    assert got.flare_candidate[7]
    # a feature table without some light curves ignores their (stale) side tables
    sub = fresh.finalize(feats.iloc[:100].reset_index(drop=True), tmp_path)
    assert len(sub) == 100 and pd.read_parquet(tmp_path / "flare_runs.parquet").source_id.max() < 100


def test_constant_saturated_and_rounded_curves_are_never_flares(tmp_path):
    """Issue 15 §3: a zero-scatter run once gave log10 FDR = -10.9 from round-off in the detrended IQR."""
    rng = np.random.default_rng(11)
    t, m = _runs(rng, 300, n_runs=1)  # honest 0.01-mag noise, errors 0.01
    m[0] = 15.0  # exactly constant
    m[1] = 11.234  # saturated: pinned at the saturation level ...
    m[1, ::7] = 11.236  # ... with a few points one step off
    m[2] = np.round(15.04 + 0.01 * rng.normal(size=m.shape[1]), 1)  # rounded to 0.1 mag: ~16 % jump a step
    m[3] = np.round(16 + 0.01 * rng.normal(size=m.shape[1]), 2)  # 0.01-mag grid, comparable to the noise
    flux = 3.0 * davenport_flare((t[4] - t[4, 120]) / (10 / 1440))
    m[4] = np.round(16 + 0.01 * rng.normal(size=m.shape[1]) - 2.5 * np.log10(1 + flux), 1)  # a flare, rounded
    b = _batch(t, m)
    b.mag_err[1] = 0.002
    st = flare_statistics(b)
    for i in (0, 1, 2):
        assert st.ok[i] and st.log10_fdr[i] > -1, (i, st.log10_fdr[i], st.sigma_dtr[i])
    assert st.sigma_dtr[0] == pytest.approx(0.005) and st.sigma_dtr[2] == pytest.approx(0.1)
    assert st.log10_fdr[3] > -3  # fine rounding: an ordinary noisy curve
    assert st.log10_fdr[4] < -6  # a real flare of many quanta still stands out
    # without errors and without any non-zero difference the scatter is undefined: NaN and flagged
    b0 = _batch(t[:1], m[:1], err=np.nan)
    st0 = flare_statistics(b0)
    assert not st0.ok[0] and np.isnan(st0.log10_fdr[0])
    out = FlareSearch()(b0)
    assert out.flare_flag[0] & FLAG_DEGENERATE and not out.flare_candidate[0]
    # through the stage with the population calibration: none of them is a candidate
    stage = FlareSearch(plots=False)
    out = stage(b, tmp_path)
    feats = stage.finalize(pd.concat([pd.DataFrame({"source_id": b.source_id, "band": b.band}), out], axis=1),
                           tmp_path)
    assert not feats.flare_candidate[:3].any() and feats.flare_candidate[4]
    # the floor does not touch honest light curves: same statistic as the bare IQR normalisation
    free = flare_statistics(b, sigma_floor_err=0.0, sigma_floor_quantum=0.0, min_sigma=0.0)
    np.testing.assert_allclose(st.log10_fdr[5:], free.log10_fdr[5:], rtol=1e-12)
    assert free.log10_fdr[0] < -6  # what the floor prevents: round-off read as a flare
