"""Multi-band Lomb-Scargle (skyvar.lightcurves.multiband) against astropy's LombScargleMultiband, the
two-step survey search and its pipeline stage (skyvar.lightcurves.multiband_search)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.timeseries import LombScargleMultiband

from skyvar.flags import SearchFlag
from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.grids import FrequencyGrid, survey_grid
from skyvar.lightcurves.multiband import (
    fit_bands,
    multiband_power,
    prepare_bands,
    scan,
    top_peaks,
)
from skyvar.lightcurves.multiband_search import MultibandPeriodSearch, search_multiband

DATA = Path(__file__).resolve().parents[1] / "data" / "lightcurves"


def _survey_source(rng, P=0.5731, bands="ugr", n=60, span=2000.0, amp=(0.5, 0.4, 0.3), noise=0.03):
    """Nightly sampling over years (daily aliases), a sawtooth-like RR Lyrae shape, per-band amplitude."""
    t, y, b, dy = [], [], [], []
    for k, name in enumerate(bands):
        tk = 58000 + np.sort(rng.choice(int(span), n, replace=False)) + rng.uniform(0.2, 0.3, n)
        ph = np.mod(tk / P, 1.0)
        shape = np.where(ph < 0.15, 1 - ph / 0.15, (ph - 0.15) / 0.85) - 0.5  # fast rise, slow decline
        t.append(tk)
        y.append(17.0 + 0.3 * k + amp[k] * shape + noise * rng.normal(size=n))
        b.append(np.full(n, name))
        dy.append(np.full(n, noise))
    return np.concatenate(t), np.concatenate(y), np.concatenate(b), np.concatenate(dy)


# tolerance (direct sums, NUFFT at eps 1e-9): two harmonics make the normal equations worse
# conditioned near some frequencies, which amplifies the NUFFT's absolute error
@pytest.mark.parametrize("nb,nk,reg,tol", [(1, 0, None, (1e-9, 1e-6)), (0, 1, None, (1e-9, 1e-6)),
                                           (2, 0, None, (1e-9, 1e-4)), (1, 1, 1e-6, (1e-9, 1e-6))])
@pytest.mark.parametrize("method", ["direct", "nufft"])
def test_power_matches_astropy_multiband(nb, nk, reg, tol, method):
    rng = np.random.default_rng(0)
    t, y, b, dy = _survey_source(rng, n=25, span=400.0)
    dy = dy * rng.uniform(0.5, 2.0, dy.size)
    grid = FrequencyGrid(0.8, 1 / (5 * 400.0), 600)
    ref = LombScargleMultiband(t, y, b, dy, nterms_base=nb, nterms_band=nk, reg_base=None,
                               reg_band=reg).power(grid.freq, method="flexible")
    p = multiband_power(t, y, b, grid, dy, nb, nk, reg or 0.0, method=method)
    assert np.max(np.abs(p - ref)) / ref.max() < tol[method == "nufft"]
    assert np.argmax(p) == np.argmax(ref)


def test_scan_chunks_and_closed_forms_agree_with_the_general_solver():
    rng = np.random.default_rng(1)
    t, y, b, dy = _survey_source(rng, n=30, span=300.0)
    d = prepare_bands(t, y, b, dy)
    grid = FrequencyGrid(0.5, 1 / (5 * 300.0), 2500)
    for model, (nb, nk) in (("shared", (1, 0)), ("independent", (0, 1))):
        ref = multiband_power(t, y, b, grid, dy, nb, nk, 0.0, method="nufft")
        p = scan(d, grid, model, chunk=700)  # several chunks, one ragged
        np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError):
        scan(d, grid, "bogus")


def test_top_peaks_counts_a_peak_once():
    x = np.linspace(0, 1, 1000)
    p = np.exp(-((x - 0.3) / 0.01) ** 2) + 0.5 * np.exp(-((x - 0.7) / 0.01) ** 2) + 1e-3 * np.sin(400 * x)
    idx = top_peaks(p, 2, half_width=3)
    assert list(np.round(x[idx], 2)) == [0.3, 0.7]


def test_search_picks_the_true_period_over_daily_aliases():
    rng = np.random.default_rng(2)
    t, y, b, dy = _survey_source(rng)
    res = search_multiband(t, y, b, dy, fmin=0.5, fmax=5.0)
    assert res["period"] == pytest.approx(0.5731, rel=1e-4)
    assert res["n_bands"] == 3 and 0 < res["pwr_max"] <= 1 and res["log10_fap"] < -10
    # the amplitudes follow the injected ones (peak-to-peak of the shape = amplitude)
    amps = res["amplitude"]
    assert amps["u"] == pytest.approx(0.5, rel=0.15) and amps["r"] == pytest.approx(0.3, rel=0.15)
    assert amps["u"] > amps["g"] > amps["r"]
    # the one-harmonic scan alone is fooled by the daily alias on this sampling often; the
    # re-ranking must find the true period whichever candidate rank it had
    assert res["alias_rank"] >= 0 and len(res["candidates"]["f"]) == 10


def test_a_trend_longer_than_the_baseline_is_flagged_as_a_daily_alias():
    """Nightly sampling of a slow drift: its frequency lies below the grid (2/T), its 1 d^-1 alias wins."""
    from skyvar.lightcurves.multiband_search import is_daily_alias

    rng = np.random.default_rng(8)
    t, y, b, dy = _survey_source(rng, n=80, span=1500.0)
    y = 17.0 + 0.3 * ((t - t.min()) / 1500.0) ** 2 + 0.01 * rng.normal(size=t.size)
    res = search_multiband(t, y, b, dy)
    assert res["daily_alias"] and abs(res["f_max"] - round(res["f_max"])) < 2 / 1500.0
    ok = search_multiband(*_survey_source(np.random.default_rng(2)))
    assert not ok["daily_alias"]
    assert is_daily_alias(2 * 1.0027379093 + 1e-4, 1000.0) and not is_daily_alias(1.01, 1000.0)


def test_search_on_noise_is_not_significant_and_short_sources_are_flagged():
    rng = np.random.default_rng(3)
    t, _, b, dy = _survey_source(rng, n=40)
    y = 17 + 0.03 * rng.normal(size=t.size)
    res = search_multiband(t, y, b, dy, fmin=0.5, fmax=5.0)
    assert res["fap"] > 0.01
    short = search_multiband(t[:10], y[:10], b[:10], dy[:10])
    assert np.isnan(short["period"]) and short["period_flag"] & SearchFlag.TOO_SHORT
    flat = search_multiband(t, np.full(t.size, 17.0), b, dy)
    assert np.isnan(flat["period"]) and flat["period_flag"] & SearchFlag.DEGENERATE


def test_survey_grid_from_baseline_and_cadence():
    g = survey_grid(2000.0, cadence=1.0)
    assert g.fmin == pytest.approx(0.02) and g.df == pytest.approx(1 / (5 * 2000.0))
    assert g.fmax == pytest.approx(50.0, abs=g.df)
    dense = survey_grid(0.2, cadence=60 / 86400)  # minute cadence: up to its pseudo-Nyquist frequency
    assert dense.fmin == pytest.approx(10.0) and dense.fmax == pytest.approx(720.0, abs=dense.df)
    rr = survey_grid(2000.0, cadence=1.0, fmin=1 / 1.2, fmax=1 / 0.2)
    assert rr.fmin == pytest.approx(1 / 1.2) and rr.fmax <= 5.0
    with pytest.raises(ValueError):
        survey_grid(10.0, fmin=3.0, fmax=2.0)


def test_fit_bands_uses_fewer_harmonics_for_sparse_bands():
    rng = np.random.default_rng(4)
    t, y, b, dy = _survey_source(rng, n=40)
    keep = (b != "r") | (np.cumsum(b == "r") <= 9)  # 9 points in r: at most 2 harmonics
    d = prepare_bands(t[keep], y[keep], b[keep], dy[keep])
    res = fit_bands(d, 1 / 0.5731, 4)
    assert list(d.bands) == ["g", "r", "u"] and list(res["nterms"]) == [4, 2, 4]
    # phases bunched in a third of the cycle: a 4-harmonic fit would swing far beyond the data
    ph = rng.uniform(0, 0.3, 40)
    tb = 58000 + np.arange(40) * 0.5731 + ph * 0.5731
    yb = 17 + 0.4 * np.sin(2 * np.pi * ph) + 0.02 * rng.normal(size=40)
    db = prepare_bands(tb, yb, np.full(40, "g"), np.full(40, 0.02))
    one = fit_bands(db, 1 / 0.5731, 4)
    assert one["amplitude"][0] <= 1.5 * np.ptp(yb) and one["nterms"][0] >= 1


def _batch_of(frames):
    df = pd.concat(frames, ignore_index=True)
    return LightCurveBatch.from_long(df)


def test_stage_writes_one_all_band_row_per_multiband_source(tmp_path):
    from skyvar.pipeline.lightcurves import LightCurvePipeline, read_features

    rng = np.random.default_rng(5)
    rows = []
    for sid, P in ((1, 0.5731), (2, 0.3312)):
        t, y, b, dy = _survey_source(rng, P=P, n=50)
        rows.append(pd.DataFrame({"source_id": sid, "band": b, "time": t, "mag": y, "mag_err": dy}))
    t, y, b, dy = _survey_source(rng, bands="g", n=50)  # one band only: no combined row
    rows.append(pd.DataFrame({"source_id": 3, "band": b, "time": t, "mag": y, "mag_err": dy}))
    pd.concat(rows).to_csv(tmp_path / "lc.csv", index=False)
    stage = MultibandPeriodSearch(fmin=0.5, fmax=5.0, n_plots=1)
    s = LightCurvePipeline(input=str(tmp_path / "lc.csv"), out_dir=str(tmp_path / "out"), stages=[stage],
                           progress=False, batch_curves=2).run()
    f = read_features(tmp_path / "out")
    assert s["n_failed"] == 0
    allb = f[f.band == "all"].set_index("source_id")
    assert list(allb.index) == [1, 2] and len(f) == 2 * 3 + 1 + 2
    assert allb.period[1] == pytest.approx(0.5731, rel=1e-3) and allb.period[2] == pytest.approx(0.3312, rel=1e-3)
    assert (allb.n_bands == 3).all() and (allb.ls_mode == "multiband").all() and allb.period_candidate_multiband.all()
    assert (allb.n_obs == 150).all() and {"amp_u", "amp_g", "amp_r"} <= set(f.columns)
    assert f[f.band != "all"].period.isna().all()  # per-band rows: no multi-band columns
    assert list((tmp_path / "out" / "plots" / "multiband" / "candidates").glob("*.png"))


def test_stage_without_usable_errors_fits_unweighted():
    rng = np.random.default_rng(6)
    t, y, b, dy = _survey_source(rng, n=50)
    dy[::7] = np.nan
    stage = MultibandPeriodSearch(fmin=0.5, fmax=5.0, plots=False)
    batch = _batch_of([pd.DataFrame({"source_id": 9, "band": b, "time": t, "mag": y, "mag_err": dy})])
    out = stage.source_rows(batch)
    assert len(out) == 1 and out.period[0] == pytest.approx(0.5731, rel=1e-3)
    assert out.period_flag[0] & SearchFlag.BAD_ERRORS
    assert len(stage(batch)) == len(batch) and stage(batch).shape[1] == 0


def test_s82_fixture_through_the_pipeline(tmp_path):
    """Two real Stripe 82 RR Lyrae (the first RRab and RRc of the list): the combined period within 1 %."""
    from skyvar.lightcurves.readers import read_reference_periods
    from skyvar.pipeline.lightcurves import LightCurvePipeline, read_features

    stage = MultibandPeriodSearch(fmin=1 / 1.2, fmax=1 / 0.2, plots=False)
    s = LightCurvePipeline(input=str(DATA / "s82"), out_dir=str(tmp_path), stages=[stage], progress=False).run()
    assert s["n_failed"] == 0 and s["n_sources"] == 2
    f = read_features(tmp_path)
    got = f[f.band == "all"].set_index("source_id").period
    ref = read_reference_periods(DATA / "s82").set_index("source_id").period
    np.testing.assert_allclose(got[ref.index], ref, rtol=0.01)
    assert sorted(f.band.unique()) == ["all", "g", "i", "r", "u", "z"]


SHARED_S82 = Path(__file__).resolve().parents[3] / "shared" / "data" / "lightcurves" / "sdss_s82_rrlyrae"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_S82.exists(), reason="needs ../shared/data/lightcurves/sdss_s82_rrlyrae")
def test_s82_sample_periods_within_one_percent():
    """The issue's target on the real sample (default survey grid 2/T-50 d^-1): >= 92 % within 1 %."""
    import zlib

    from skyvar.lightcurves.readers import open_lightcurves, read_reference_periods

    ref = read_reference_periods(SHARED_S82).set_index("source_id")
    df = open_lightcurves(SHARED_S82).read_all()
    ok, half = [], []
    for sid, g in df.groupby("source_id"):
        res = search_multiband(g.time.to_numpy(), g.mag.to_numpy(), g.band.to_numpy(), g.mag_err.to_numpy())
        ok.append(abs(res["period"] / ref.period[str(sid)] - 1) < 0.01)
        half.append(zlib.crc32(str(sid).encode()) % 2)
    ok, half = np.array(ok), np.array(half)
    assert len(ok) == 333 and ok.mean() >= 0.92 and ok[half == 1].mean() >= 0.92
