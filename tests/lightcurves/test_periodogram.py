import numpy as np
import pandas as pd
import pytest
from astropy.timeseries import LombScargle

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.fap import fap_independent
from skyvar.lightcurves.grids import FrequencyGrid, classify_sampling, frequency_grid
from skyvar.lightcurves.lombscargle import lomb_scargle
from skyvar.lightcurves.period_search import PeriodSearch
from skyvar.lightcurves.runs import FLAG_TOO_SHORT


def _astropy(t, y, mask, freq, dy=None, fit_mean=True):
    out = []
    for b in range(len(y)):
        m = mask[b]
        tb = t[b, m] - t[b, m][0]  # astropy's slow method loses ~1e-7 to large absolute times; shift them
        out.append(LombScargle(tb, y[b, m], None if dy is None else dy[b, m], fit_mean=fit_mean)
                   .power(freq, method="slow"))
    return np.array(out)


def _rel(p, ref):
    return np.max(np.abs(p - ref) / np.maximum(np.abs(ref), 1e-3 * np.abs(ref).max()))


@pytest.fixture(scope="module")
def shared_data():
    rng = np.random.default_rng(0)
    B, L = 12, 150
    tg = 60300 + np.sort(rng.uniform(0, 0.15, L))
    t = np.tile(tg, (B, 1))
    y = 15 + 0.01 * rng.normal(size=(B, L)) + 0.02 * np.sin(2 * np.pi * 40 * t + rng.uniform(0, 6, (B, 1)))
    dy = 0.01 * (1 + rng.uniform(size=(B, L)))
    mask = rng.uniform(size=(B, L)) > rng.uniform(0, 0.3, (B, 1))
    mask[0] = True
    return t, y, dy, mask, frequency_grid("run", 0.15, L)


@pytest.mark.parametrize("backend", ["shared", "nifty"])
@pytest.mark.parametrize("fit_mean,use_errors", [(True, False), (False, False), (True, True)])
def test_backends_match_astropy_on_a_shared_grid(shared_data, backend, fit_mean, use_errors):
    t, y, dy, mask, grid = shared_data
    ref = _astropy(t, y, mask, grid.freq, dy if use_errors else None, fit_mean)
    p = lomb_scargle(t, y, grid, mask=mask, dy=dy, use_errors=use_errors, fit_mean=fit_mean, backend=backend)
    assert p.shape == ref.shape
    assert _rel(p, ref) < 1e-6


@pytest.mark.parametrize("backend", ["shared", "nifty"])
def test_backends_match_astropy_on_differing_grids(backend):
    rng = np.random.default_rng(1)
    B, L = 4, 120
    t = 59000 + np.sort(rng.uniform(0, 800, (B, L)), axis=1)  # ZTF-like: every row its own epochs
    y = rng.normal(size=(B, L)) + np.sin(2 * np.pi * 2.7 * t)
    mask = np.ones((B, L), bool)
    mask[1, 100:] = False
    grid = FrequencyGrid(0.05, 1 / (5 * 800), 3000)
    p = lomb_scargle(t, y, grid, mask=mask, backend=backend)
    assert _rel(p, _astropy(t, y, mask, grid.freq)) < 1e-6


def test_float32_and_reduce_max(shared_data):
    t, y, _, mask, grid = shared_data
    ref = _astropy(t, y, mask, grid.freq)
    for backend in ("shared",):
        p32 = lomb_scargle(t, y, grid, mask=mask, backend=backend, dtype="float32")
        assert _rel(p32, ref) < 5e-5
        pm, im = lomb_scargle(t, y, grid, mask=mask, backend=backend, reduce="max", b_chunk=5, f_chunk=300)
        np.testing.assert_array_equal(im, ref.argmax(axis=1))
        np.testing.assert_allclose(pm, ref.max(axis=1), rtol=1e-9)
    pm, im = lomb_scargle(t, y, grid, mask=mask, backend="nifty", reduce="max")
    np.testing.assert_array_equal(im, ref.argmax(axis=1))


def test_auto_backend_and_1d_input(shared_data):
    t, y, _, mask, grid = shared_data
    one = lomb_scargle(t[0], y[0], grid)
    assert one.ndim == 1 and _rel(one, _astropy(t[:1], y[:1], mask[:1], grid.freq)[0]) < 1e-6
    with pytest.raises(ValueError):
        lomb_scargle(t, y, grid, normalization="psd")
    with pytest.raises(ValueError):
        lomb_scargle(t, y, np.array([1.0, 2.0, 4.0]), backend="nifty")
    for gone in ("torch", "astropy"):  # removed: they won nowhere measured (benchmarks/bench_periodogram.py)
        with pytest.raises(ValueError, match="unknown backend"):
            lomb_scargle(t, y, grid, backend=gone)


def test_non_uniform_frequencies_with_differing_epochs():
    """auto on a frequency list (no NUFFT possible) and rows with their own epochs: direct sums per row."""
    rng = np.random.default_rng(7)
    t = 59000 + np.sort(rng.uniform(0, 300, (3, 90)), axis=1)
    y = rng.normal(size=t.shape) + np.sin(2 * np.pi * 1.3 * t)
    mask = np.ones(t.shape, bool)
    mask[2] = False  # a row without points: NaN, argmax -1
    f = np.sort(rng.uniform(0.1, 3.0, 400))
    p = lomb_scargle(t, y, f, mask=mask)
    ref = _astropy(t[:2], y[:2], mask[:2], f)
    assert _rel(p[:2], ref) < 1e-6 and np.isnan(p[2]).all()
    pm, im = lomb_scargle(t, y, f, mask=mask, reduce="max")
    assert im[2] == -1 and np.isnan(pm[2]) and list(im[:2]) == list(ref.argmax(axis=1))


def test_variance_normalisation_is_exponential_for_noise():
    rng = np.random.default_rng(2)
    B, L = 200, 180
    t = np.tile(np.sort(rng.uniform(0, 0.15, L)), (B, 1))
    y = rng.normal(size=(B, L))
    grid = FrequencyGrid(2 / 0.15, 1 / 0.15, 250)  # ~independent frequencies (spacing 1/T)
    pv = lomb_scargle(t, y, grid, normalization="variance", fit_mean=False)
    ps = lomb_scargle(t, y, grid, normalization="standard", fit_mean=False)
    np.testing.assert_allclose(pv, ps * (L - 1) / 2, rtol=1e-12)
    # Exp(1): mean 1, P(> 3) = e^-3
    assert pv.mean() == pytest.approx(1.0, abs=0.03)
    assert np.mean(pv > 3) == pytest.approx(np.exp(-3), abs=0.01)


def test_fap_eq5_and_large_power():
    P = np.array([1.0, 5.0, 12.0])
    M = np.array([50.0, 50.0, 3000.0])
    fap, lf = fap_independent(P, M)
    np.testing.assert_allclose(fap, -np.expm1(M * np.log1p(-np.exp(-P))), rtol=1e-13)
    np.testing.assert_allclose(fap[:2], 1 - (1 - np.exp(-P[:2])) ** M[:2], rtol=1e-9)
    fap, lf = fap_independent(np.array([800.0, 1e5]), 1000.0)
    np.testing.assert_allclose(lf, (np.log(1000.0) - np.array([800.0, 1e5])) / np.log(10), rtol=1e-14)
    assert fap[1] == 0.0
    assert np.isnan(fap_independent(np.array([np.nan, 2.0]), np.array([5.0, 0.0]))[1]).all()


def test_frequency_grids():
    g = frequency_grid("run", 0.15, n_points=217)
    assert g.fmin == pytest.approx(2 / 0.15) and g.df == pytest.approx(1 / (5 * 0.15))
    assert g.fmax <= 0.5 * 216 / 0.15 < g.fmax + g.df
    s = frequency_grid("spliced", 59.1)
    assert s.fmin == 3.0 and s.fmax == pytest.approx(12.0, abs=s.df)
    z = frequency_grid("survey", 1500.0)
    assert z.fmin == pytest.approx(0.02) and z.fmax == pytest.approx(50.0, abs=z.df) and z.nf > 300_000
    # RR Lyrae (0.5 d), contact binaries (0.3 d) lie on the survey grid with a fine enough spacing
    assert z.fmin < 1 / 0.8 and z.fmax > 2 / 0.22 and z.df <= 1 / (5 * 1500.0)
    with pytest.raises(ValueError):
        frequency_grid("run", 0.1, n_points=1)
    with pytest.raises(ValueError):
        frequency_grid("weekly", 1.0)
    with pytest.raises(ValueError):
        frequency_grid("survey", 10.0, oversample=1e5, max_nf=1000)


def test_classify_sampling():
    mode = classify_sampling(np.array([1, 2, 1, 5]), np.array([50 / 86400, 60 / 86400, 2.0, 1.0]))
    assert list(mode) == ["run", "spliced", "survey", "survey"]


def _lc(t, m, sid=None, band="g"):
    t, m = np.atleast_2d(t), np.atleast_2d(m)
    n = len(m)
    return LightCurveBatch(np.arange(n) if sid is None else np.asarray(sid), np.full(n, band), t, m,
                           np.full(m.shape, 0.01), np.isfinite(m))


def test_period_stage_recovers_short_and_spliced_periods(tmp_path):
    rng = np.random.default_rng(3)
    n = 200
    cad = 50 / 86400
    t = np.concatenate([60000 + np.arange(217) * cad, 60003 + np.arange(217) * cad])  # SO2-like: 3 days apart
    T = np.tile(t, (n, 1))
    m = 17 + 0.01 * rng.normal(size=T.shape)
    m[5] += 0.02 * np.sin(2 * np.pi * T[5] / (20.5 / 1440))  # 20.5-min UCB-like signal
    m[6] += 0.15 * np.cos(4 * np.pi * T[6] / 0.2)  # EW: photometric period 0.1 d (1.5 cycles per run)
    stage = PeriodSearch(n_plots=2)
    out = stage(_lc(T, m), tmp_path)
    assert len(out) == n and (out.ls_mode == "spliced").all()
    assert out.f_max_run[5] == pytest.approx(1440 / 20.5, rel=0.01)
    assert out.f_max[6] == pytest.approx(1 / 0.1, rel=0.01)
    assert out.period[6] == pytest.approx(0.1, rel=0.01)
    feats = stage.finalize(pd.concat([pd.DataFrame({"source_id": np.arange(n), "band": "g"}), out], axis=1), tmp_path)
    assert feats.period_candidate_binned[5] and feats.period_candidate[6]
    assert feats.period_candidate.sum() <= 4
    assert (tmp_path / "plots" / "periodogram" / "pwr_fmax.png").exists()
    assert (tmp_path / "plots" / "periodogram" / "fap_cdf.png").exists()
    assert list((tmp_path / "plots" / "periodogram" / "candidates").glob("*.png"))
    assert (tmp_path / "period_runs.parquet").exists()


def test_period_stage_single_run_and_too_short():
    rng = np.random.default_rng(4)
    t = 60000 + np.arange(200) * 60 / 86400
    T = np.tile(t, (3, 1))
    m = 15 + 0.005 * rng.normal(size=T.shape)
    m[0] += 0.03 * np.sin(2 * np.pi * T[0] / (6.7 / 1440))  # 6.7-min ZZ Ceti-like
    m[2, 40:] = np.nan
    out = PeriodSearch(plots=False)(_lc(T, m))
    assert list(out.ls_mode) == ["run"] * 3
    assert out.period[0] * 1440 == pytest.approx(6.7, rel=0.01)
    assert np.isnan(out.pwr_max[2]) and out.period_flag[2] & FLAG_TOO_SHORT


def test_period_stage_survey_mode():
    rng = np.random.default_rng(5)
    P = 0.5731
    ts = [59000 + np.sort(rng.uniform(0, 900, 120)) for _ in range(2)]  # g and r epochs differ
    t = np.stack(ts)
    amp = np.array([[0.4], [0.25]])
    m = np.array([[17.2], [16.9]]) + amp * np.sin(2 * np.pi * t / P) + 0.02 * rng.normal(size=t.shape)
    b = LightCurveBatch(np.array([1, 1]), np.array(["g", "r"]), t, m, np.full(t.shape, 0.02), np.ones(t.shape, bool))
    stage = PeriodSearch(plots=False, survey_fmax=10.0)
    out = stage(b)
    assert (out.ls_mode == "survey").all()
    assert out.period[0] == pytest.approx(P, rel=0.001) and out.period[1] == pytest.approx(P, rel=0.001)
    # one period from all bands together is the multi-band stage's job (tests/lightcurves/test_multiband.py)
    assert not hasattr(stage, "combine_bands")


@pytest.mark.gpu
def test_torch_backend_on_gpu(shared_data):
    t, y, _, mask, grid = shared_data
    ref = _astropy(t, y, mask, grid.freq)
    for backend in ("shared", "nifty"):
        p = lomb_scargle(t, y, grid, mask=mask, backend=backend, device="cuda")
        assert _rel(p, ref) < 1e-6


def test_periodogram_module_still_exports_the_moved_names():
    from skyvar.lightcurves import periodogram

    assert periodogram.PeriodSearch is PeriodSearch and periodogram.lomb_scargle is lomb_scargle


def test_stages_accept_empty_batches_and_all_nan_rows():
    from skyvar.lightcurves.flares import FlareSearch

    for L in (0, 5):
        z = np.zeros((0, L))
        b = LightCurveBatch(np.zeros(0, int), np.zeros(0, str), z, z, z, z.astype(bool))
        assert len(PeriodSearch()(b)) == 0 and len(FlareSearch()(b)) == 0
    nan = np.full((1, 4), np.nan)
    b = LightCurveBatch(np.array([1]), np.array(["g"]), nan, nan, nan, np.ones((1, 4), bool))
    p, f = PeriodSearch()(b), FlareSearch()(b)
    assert np.isnan(p.pwr_max[0]) and p.period_flag[0] & FLAG_TOO_SHORT
    assert np.isnan(f.fdr[0]) and f.flare_flag[0] & FLAG_TOO_SHORT
