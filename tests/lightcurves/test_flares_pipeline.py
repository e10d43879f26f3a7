"""End to end: the WFST simulator -> store -> ``python infer.py pipeline=lightcurves`` with the flare and
periodogram stages (columns, calibrated candidates, figures, resume)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skyvar.lightcurves.store import write_store
from skyvar.pipeline.lightcurves import read_features
from skyvar.sim.wfst import WfstSimConfig, davenport_flare, simulate_wfst

CONF = Path(__file__).resolve().parents[2] / "src" / "skyvar" / "conf"

FLARE_COLS = ["phi_vv_max", "fdr", "fdr_cal", "flare_candidate", "flare_long_candidate", "flare_flag"]
PERIOD_COLS = ["f_max", "period", "pwr_max", "fap", "fap_cal", "period_candidate", "period_flag", "ls_mode"]


def run_infer(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("infer", overrides=overrides)
    return instantiate(cfg.pipeline, _convert_="partial").run()


@pytest.fixture(scope="module")
def wfst_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("wfst")
    cfg = WfstSimConfig(n_sources=300, seed=3, run_hours=[3.0, 3.0], run_offsets_days=[0.0, 3.0],
                        frac_flare=0.0, frac_dsct=0.0, frac_ucb=0.0, frac_zzceti=0.0, frac_ew=0.0, frac_rrlyr=0.0,
                        bleed_frac=0.0, outlier_rate=0.0, region_shift_frac=0.0, mag_min=14.0, mag_max=19.0)
    store, truth = simulate_wfst(cfg)
    # two unmistakable signals: a 6-minute flare on source 5 and a 20.5-minute binary on source 9
    s5 = store.source_id == 5
    t = store.time[s5].to_numpy()
    store.loc[s5, "mag"] -= 2.5 * np.log10(1 + 0.8 * davenport_flare((t - t[100]) / (6 / 1440)))
    s9 = store.source_id == 9
    store.loc[s9, "mag"] += 0.1 * np.sin(2 * np.pi * store.time[s9] / (20.5 / 1440))
    write_store(store, d / "store", n_partitions=3)
    return d / "store", truth


def test_pipeline_lightcurves_runs_the_minute_cadence_searches(wfst_store, tmp_path):
    store, _ = wfst_store
    out = tmp_path / "out"
    s = run_infer(["pipeline=lightcurves", f"input={store}", f"out_dir={out}", "pipeline.progress=false"])
    assert s["n_failed"] == 0 and s["n_lightcurves"] == 300 and "flares" in s["stages"]
    f = read_features(out)
    for c in FLARE_COLS + PERIOD_COLS:
        assert c in f.columns, c
    row5 = f[f.source_id == 5].iloc[0]
    assert row5.flare_candidate and row5.fdr_cal <= 1e-6
    row9 = f[f.source_id == 9].iloc[0]
    assert row9.period_candidate and row9.f_max_run == pytest.approx(1440 / 20.5, rel=0.01)
    assert (f.ls_mode == "spliced").all()
    # clean constant stars: no flare candidates, at most a stray periodic one
    others = f[~f.source_id.isin([5, 9])]
    assert others.flare_candidate.sum() == 0 and others.period_candidate.sum() <= 2
    for png in ("flares/fdr_cdf.png", "periodogram/pwr_fmax.png", "periodogram/fap_cdf.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    assert list((out / "plots" / "flares" / "candidates").glob("5_*.png"))
    # resume: nothing recomputed, and finalize still calibrates from the stages' side tables
    s2 = run_infer(["pipeline=lightcurves", f"input={store}", f"out_dir={out}", "pipeline.progress=false"])
    assert s2["n_partitions_resumed"] == 3 and s2["n_partitions_computed"] == 0
    f2 = read_features(out)
    pd.testing.assert_series_equal(f2.log10_fdr_cal, f.log10_fdr_cal)
    pd.testing.assert_series_equal(f2.period_candidate, f.period_candidate)
