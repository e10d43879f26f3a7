import json
import shutil

import numpy as np
import pytest
from astropy.table import Table
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from skyvar.pipeline.rv import RVPipeline
from skyvar.sim.rv_mock import MRSFilesConfig, simulate_mrs_files, write_mrs_fits
from tests.conftest import ROOT, shared_data

MRS = ("spectra", "lamost_mrs", "med-58408-TD230151N343645T01_sp01-015.fits")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mrs_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mrs")
    truth = simulate_mrs_files(MRSFilesConfig(out_dir=str(d), n_stars=10, n_nights=2, exposures_per_night=3,
                                              zp_scatter=3.0, snr_min=40, snr_max=80))
    return d, truth


def test_paper_mock_end_to_end(tmp_path):
    s = RVPipeline(out_dir=str(tmp_path), simulate={"seed": 5}).run()
    m = s["metrics"]
    assert s["calibrated"] and s["n_velocities"] == 7500
    z = m["zeropoint"]
    assert z["rms_true_shift"] > 2.0 and z["rms_error"] < 2.0 * z["rms_floor"] < 0.3
    c = m["candidates"]
    assert c["truly_constant"] >= 0.95 * c["n"] and c["completeness_constant"] > 0.8
    assert m["frac_stars_mean_residual_within_0.5_after"]["constant"] > 0.9
    assert m["var_rv"]["candidates_after_mean"] < 0.5 * m["var_rv"]["candidates_before_mean"]
    for f in ("rv.ecsv", "zeropoints.ecsv", "constant_stars.ecsv", "report/fig1_residuals.png",
              "report/fig2_binaries.png", "report/metrics.json"):
        assert (tmp_path / f).exists()


def test_infer_config_on_mrs_files_recovers_zero_points(mrs_files, tmp_path):
    d, truth = mrs_files
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "src" / "skyvar" / "conf"), version_base="1.3"):
        cfg = compose("infer", overrides=["pipeline=rv", f"input={d}", f"out_dir={tmp_path}", "device=cpu",
                                          "pipeline.figures=false", "pipeline.calibration.min_stars=3"])
    summary = instantiate(cfg.pipeline, _convert_="partial").run()
    assert summary["n_spectra"] == 10 * 6 * 2 and summary["calibrated"]
    t = Table.read(tmp_path / "rv.ecsv")
    assert {"source", "ra", "dec", "time", "spectrograph", "arm", "snr", "rv", "rv_err", "rv_corr"} <= set(t.colnames)
    zp = Table.read(tmp_path / "zeropoints.ecsv")
    for arm in ("R", "B"):
        z = zp[zp["arm"] == arm]
        tz = {r["exposure"]: r["true_zp"] for r in truth[truth["arm"] == arm]}
        err = np.array([zz - tz[str(e)] for e, zz in zip(z["exposure"], z["zp"])])
        # zero points are relative: compare after removing the common offset
        assert np.std(err) < 0.3, (arm, err)
    # corrected velocities of each constant star scatter far less than the raw ones (Var_rv, eq. 4)
    const = sorted({r["source"] for r in truth if r["star_type"] == "constant"})
    for arm in ("R", "B"):
        raw = [np.std(t["rv"][(t["source"] == c) & (t["arm"] == arm)]) for c in const]
        cor = [np.std(t["rv_corr"][(t["source"] == c) & (t["arm"] == arm)]) for c in const]
        assert np.mean(cor) < 0.25 * np.mean(raw)
    assert len(Table.read(tmp_path / "constant_stars.ecsv")) >= 3


def test_real_file_single_star_relative_only(tmp_path, caplog):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(shared_data(*MRS), d)
    s = RVPipeline(out_dir=str(tmp_path / "out"), input=str(d), device="cpu").run()
    assert not s["calibrated"] and "relative velocities only" in s["note"]
    assert "cannot be self-calibrated" in caplog.text
    t = Table.read(tmp_path / "out" / "rv.ecsv")
    assert len(t) == 14 and np.all(np.isnan(t["rv_corr"]))
    assert np.all(np.abs(t["rv"]) < 1.5) and np.all(t["time"] > 2458408)
    assert "relative velocities only" in t.meta["note"]


def test_bad_inputs_reported_and_skipped(mrs_files, tmp_path):
    d, _ = mrs_files
    inp = tmp_path / "in"
    inp.mkdir()
    for f in sorted(d.glob("med-*.fits"))[:4]:
        shutil.copy(f, inp)
    (inp / "med-corrupt.fits").write_bytes(b"SIMPLE  =  T" * 50)
    rng = np.random.default_rng(0)
    wave = 10 ** (np.log10(6292.4) + 1e-5 * np.arange(3600))
    good = {"arm": "R", "lmjm": 84000000, "wave": wave, "flux": 1000 + rng.normal(0, 5, 3600),
            "ivar": np.full(3600, 0.04), "snr": 40.0}
    neg = dict(good, lmjm=84000030, flux=-100 + rng.normal(0, 5, 3600))
    zero = dict(good, lmjm=84000060, snr=0.0)
    write_mrs_fits(inp / "med-bad.fits", {"OBJNAME": "bad", "RA": 1.0, "DEC": 2.0, "SPID": 1, "FIBERID": 9},
                   [good, neg, zero])
    s = RVPipeline(out_dir=str(tmp_path / "out"), input=str(inp), device="cpu", figures=False).run()
    fails = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert len(fails) == 1 and "med-corrupt.fits" in fails[0]["file"]
    fl = Table.read(tmp_path / "out" / "flagged.ecsv")
    assert set(fl["reason"]) == {"median_flux<=0", "snr<=0"} and set(fl["source"]) == {"bad"}
    t = Table.read(tmp_path / "out" / "rv.ecsv")
    assert np.sum(t["source"] == "bad") == 1 and s["n_flagged"] == 2
    assert np.all(np.isfinite(t["rv"]))


def test_table_input_with_truth_file(tmp_path):
    from skyvar.sim.rv_mock import RVMockConfig, simulate_rv_mock

    rows, stars = simulate_rv_mock(RVMockConfig(seed=9, n_constant=60, n_binary=10, n_nonconstant=3))
    truth = rows["source", "exposure", "arm", "true_rv", "true_zp", "star_type"]
    rows.remove_columns(["true_rv", "true_zp", "star_type"])
    rows.write(tmp_path / "v.ecsv")
    truth.write(tmp_path / "truth.ecsv")
    s = RVPipeline(out_dir=str(tmp_path / "out"), input=str(tmp_path / "v.ecsv"), truth=str(tmp_path / "truth.ecsv"),
                   figures=False).run()
    assert s["calibrated"] and s["metrics"]["zeropoint"]["rms_error"] < 0.5
    with pytest.raises(ValueError, match="lacks column"):
        rows.remove_column("exposure")
        rows.write(tmp_path / "w.ecsv")
        RVPipeline(out_dir=str(tmp_path / "o2"), input=str(tmp_path / "w.ecsv")).run()


def test_precision_study_small(tmp_path):
    from skyvar.pipeline.rv import RVPrecisionStudy

    data = shared_data()
    s = RVPrecisionStudy(out_dir=str(tmp_path), data_dir=str(data), snr=[30], n_mc=6, types=["G"], arms=["R"],
                         teff_test=True, device="cpu").run()
    t = Table.read(tmp_path / "precision.ecsv")
    assert s["n_rows"] == len(t) == 2 + 3  # real MRS + redrock G, then BOSZ 0/500/1000 K
    assert set(t["template"][t["test"] == "type"]) == {"MRS-real", "redrock-G"}
    mrs = t[t["template"] == "MRS-real"][0]
    assert 0.05 < mrs["sigma_rv"] < 5.0 and mrs["frac_failed"] == 0
    assert (tmp_path / "fig8_precision_vs_snr.png").exists() and (tmp_path / "fig9_teff_change.png").exists()
