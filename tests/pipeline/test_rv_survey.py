"""The relative-RV pipeline on real multi-epoch data: one star across plans, no velocity without signal,
honest uncertainties, unreadable files accounted for, bounded memory with resume."""

import json

import numpy as np
import pytest
from astropy.table import Table

from skyvar.pipeline.rv import RVPipeline
from skyvar.sim.rv_mock import CROSS_PLANS, cross_plan_binary_files, shift_and_degrade, write_mrs_fits
from skyvar.spectra.mrs import read_mrs
from skyvar.spectra.rv import FLAG_LOW_SNR, FLAG_WEAK_PEAK, NO_VELOCITY, WINDOWS, RelativeRV, prepare_arm
from tests.conftest import shared_data

MRS = ("spectra", "lamost_mrs", "med-58408-TD230151N343645T01_sp01-015.fits")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cross_plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("xplan")
    truth = cross_plan_binary_files(shared_data(*MRS), d)
    return d, truth


def test_cross_plan_binary_is_one_star(cross_plan, tmp_path):
    """Three plans, three catalogue ids, three spectrographs, one star: one reference per arm and
    velocities on one scale (the injected orbit, 25 km/s, recovered to the night's own ±0.7 km/s)."""
    d, truth = cross_plan
    s = RVPipeline(out_dir=str(tmp_path), input=str(d), device="cpu", figures=False).run()
    assert s["n_stars"] == 1 and s["n_stars_multi_id"] == 1 and s["n_velocities"] == 14
    t = Table.read(tmp_path / "rv.ecsv")
    assert set(t["catalogue_id"]) == {p[2] for p in CROSS_PLANS}
    ids = t["catalogue_ids"][0].split(",")
    assert all(p[2] in ids for p in CROSS_PLANS) and len(set(t["source"])) == 1
    for arm in ("R", "B"):
        a = t[t["arm"] == arm]
        assert len(set(a["ref_exposure"])) == 1
        inj = {e: v for e, v, ar in zip(truth["exposure"], truth["v_injected"], truth["arm"]) if ar == arm}
        ref = str(a["ref_exposure"][0])
        d_rv = np.array([rv - (inj[str(e)] - inj[ref]) for e, rv in zip(a["exposure"], a["rv"])])
        assert np.ptp([inj[str(e)] for e in a["exposure"]]) > 20  # the orbit really moves the star
        assert np.all(np.abs(d_rv) < 1.5), d_rv


def test_identity_by_catalogue_id_would_split_the_star(cross_plan):
    """The failure the position match fixes: by OBJNAME the three plans are three 'stars'."""
    d, _ = cross_plan
    p = RVPipeline(out_dir="unused", input=str(d))
    spectra, _, _ = p.read_inputs(sorted(d.glob("*.fits")))
    assert len({s.meta["source"] for s in spectra}) == 3
    scans, _ = p.scan(sorted(d.glob("*.fits")))
    star, names, _ = p.identify_stars(scans)
    assert len(set(star)) == 1 and names == ["1886955093649969280"]


def test_low_snr_exposures_get_no_velocity(tmp_path):
    """S/N 3.5 and S/N 0.15 exposures of the real star (shifted by 8 km/s) are flagged without a velocity;
    the good ones are measured against a good reference."""
    rng = np.random.default_rng(2)
    singles = read_mrs(shared_data(*MRS), kind="single", arms=("R",), times=False)
    exps = []
    for s, snr in zip(singles, (None, None, None, 3.5, 0.15)):
        x = shift_and_degrade(s, 8.0, snr, rng)
        exps.append({"arm": "R", "lmjm": s.meta["lmjm"], "wave": x.wavelength, "flux": x.flux,
                     "ivar": np.where(x.mask, 0.0, x.ivar), "snr": x.meta["snr"], "pixmask": x.mask.astype(np.int16)})
    m = singles[0].meta
    write_mrs_fits(tmp_path / "in" / "med-low.fits", {"OBJNAME": "low", "RA": m["ra"], "DEC": m["dec"], "SPID": 1,
                                                      "FIBERID": 15, "LMJD": 58408}, exps)
    RVPipeline(out_dir=str(tmp_path / "out"), input=str(tmp_path / "in"), arms=["R"], device="cpu",
               figures=False).run()
    t = Table.read(tmp_path / "out" / "rv.ecsv")
    low = t["snr"] < 5
    assert low.sum() == 2 and np.all(np.isnan(t["rv"][low])) and np.all(t["flag"][low] & FLAG_LOW_SNR)
    assert np.all(np.isfinite(t["rv"][~low])) and np.all(np.abs(t["rv"][~low]) < 1.5)
    assert not np.isin(t["ref_exposure"][~low], t["exposure"][low]).any()


def test_noise_only_spectrum_has_no_velocity():
    """With the S/N cut off, a pure-noise exposure must still get no velocity (peak not significant)
    instead of -497 km/s with a 0.1 km/s error."""
    rng = np.random.default_rng(4)
    singles = read_mrs(shared_data(*MRS), kind="single", arms=("R",), times=False)
    ref = max(singles, key=lambda s: s.meta["snr"])
    noise = []
    for _ in range(6):
        x = shift_and_degrade(ref, 0.0, 1.0, rng)
        x.flux = np.median(x.flux[~x.mask]) + rng.normal(0, 1, len(x.flux)) * np.median(x.flux[~x.mask]) / 0.15
        x.ivar = np.full(len(x.flux), (0.15 / np.median(x.flux[~x.mask])) ** 2)
        noise.append(x)
    w, fl, iv = prepare_arm([ref] + noise, "R")
    res = RelativeRV(window=WINDOWS["R"], lowpass=0.2).measure(w, fl, iv, np.zeros(7, int))
    assert np.all(res.flag[1:] & NO_VELOCITY) and np.all(np.isnan(res.rv[1:]))
    assert np.any(res.flag[1:] & FLAG_WEAK_PEAK)


def test_errors_widen_with_noise_and_pulls_are_unit(tmp_path):
    """Known velocities injected into the real exposures degraded to S/N 5-20: the quoted errors grow as
    the S/N falls and (rv - truth) / error has a standard deviation near 1 in every S/N bin."""
    rng = np.random.default_rng(11)
    p = RVPipeline(out_dir=str(tmp_path))
    singles = [s for s in read_mrs(shared_data(*MRS), kind="single", times=False) if s.meta["arm"] == "R"]
    ref = max(singles, key=lambda s: s.meta["snr"])
    others = [s for s in singles if s is not ref]
    est = RelativeRV(window=WINDOWS["R"], **p.rv_kwargs)
    w, fl, iv = prepare_arm([ref] + others, "R")
    base = est.measure(w, fl, iv, np.zeros(len(others) + 1, int))  # each exposure's own offset
    specs, truth, terr, snrs = [ref], [0.0], [0.0], [np.inf]
    for j, e in enumerate(others):
        for snr in (5.0, 10.0, 20.0):
            for _ in range(7):
                v = rng.uniform(-120, 120)
                specs.append(shift_and_degrade(e, v, snr, rng))
                truth.append(v + base.rv[j + 1])
                terr.append(base.rv_err[j + 1])
                snrs.append(snr)
    w, fl, iv = prepare_arm(specs, "R")
    res = est.measure(w, fl, iv, np.zeros(len(specs), int))
    truth, terr, snrs = np.array(truth), np.array(terr), np.array(snrs)
    med_err = []
    for snr in (5.0, 10.0, 20.0):
        s = (snrs == snr) & np.isfinite(res.rv)
        assert s.sum() >= 40
        pull = (res.rv[s] - truth[s]) / np.hypot(res.rv_err[s], terr[s])
        assert 0.7 < np.std(pull) < 1.4, (snr, np.std(pull))
        med_err.append(np.median(res.rv_err[s]))
    assert med_err[0] > 1.6 * med_err[1] > 1.6 * 1.6 * med_err[2]


def test_file_whose_every_extension_fails_is_in_failures(tmp_path, recwarn):
    from astropy.io import fits

    inp = tmp_path / "in"
    inp.mkdir()
    good = cross_plan_binary_files(shared_data(*MRS), inp, plans=CROSS_PLANS[:1])
    assert len(good)
    # every arm extension lacks LOGLAM: readable FITS, no spectrum
    hdus = [fits.PrimaryHDU()]
    for name in ("B-84000000", "R-84000000"):
        cols = [fits.Column(name="FLUX", format="E", array=np.ones(50)),
                fits.Column(name="IVAR", format="E", array=np.ones(50))]
        hdus.append(fits.BinTableHDU.from_columns(cols, name=name))
    fits.HDUList(hdus).writeto(inp / "med-nolam.fits")
    # an extension with an unknown mask column: read, with a warning
    wave = 10 ** (np.log10(6300) + 1e-5 * np.arange(3000))
    write_mrs_fits(inp / "med-xmask.fits", {"OBJNAME": "x", "RA": 10.0, "DEC": 10.0, "SPID": 2, "FIBERID": 3},
                   [{"arm": "R", "lmjm": 84000100, "wave": wave, "flux": 1000 + np.random.default_rng(0).normal(0, 5, 3000),
                     "ivar": np.full(3000, 0.04), "snr": 40.0}])
    with fits.open(inp / "med-xmask.fits", mode="update") as h:
        h[1].columns.change_name("PIXMASK", "BADMASK")
    s = RVPipeline(out_dir=str(tmp_path / "out"), input=str(inp), device="cpu", figures=False).run()
    fails = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert [f["file"].split("/")[-1] for f in fails] == ["med-nolam.fits"]
    assert "every requested extension failed" in fails[0]["error"] and "LOGLAM" in fails[0]["error"]
    assert s["n_failed_files"] == 1
    assert any("BADMASK" in str(w.message) and "not understood" in str(w.message) for w in recwarn.list)


def test_streaming_chunks_and_resume(cross_plan, tmp_path):
    """Chunks of whole stars: a batch smaller than one star still keeps the star together; a rerun
    reuses every finished chunk."""
    d, _ = cross_plan
    out = tmp_path / "out"
    s1 = RVPipeline(out_dir=str(out), input=str(d), device="cpu", figures=False, batch_size=4).run()
    parts = sorted((out / ".parts").glob("part-*.json"))
    assert len(parts) == 1  # one star: one chunk, whatever the batch size
    mtime = parts[0].stat().st_mtime_ns
    s2 = RVPipeline(out_dir=str(out), input=str(d), device="cpu", figures=False, batch_size=4).run()
    assert parts[0].stat().st_mtime_ns == mtime and s1["n_velocities"] == s2["n_velocities"]
    t = Table.read(out / "rv.ecsv")
    assert len(set(t["ref_exposure"][t["arm"] == "R"])) == 1


def test_injection_study_command(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from tests.conftest import ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "src" / "skyvar" / "conf"), version_base="1.3"):
        cfg = compose("infer", overrides=["pipeline=rv_injection", f"input={shared_data(*MRS)}", f"out_dir={tmp_path}",
                                          "device=cpu", "pipeline.snr=[5,20]", "pipeline.n_per=2", "pipeline.arms=[B]"])
    instantiate(cfg.pipeline, _convert_="partial").run()
    t = Table.read(tmp_path / "injections.ecsv")
    assert len(t) == 4 and set(t["setting"]) == {"paper (no low-pass, fit sigma)", "pipeline (lowpass 0.2, err_scale 1.4)"}
    for s in set(t["setting"]):
        e = t[t["setting"] == s]
        assert e["median_err"][0] > e["median_err"][1]  # S/N 5 quotes a larger error than S/N 20
