import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from skyvar.sim.rv_mock import write_mrs_fits
from skyvar.spectra.mrs import MRSReadError, exposure_times, lmjm_to_mjd_mid, read_mrs, usable
from tests.conftest import shared_data

MRS = ("spectra", "lamost_mrs", "med-58408-TD230151N343645T01_sp01-015.fits")


def test_real_file_every_exposure_and_coadd():
    path = shared_data(*MRS)
    ss = read_mrs(path)
    assert len(ss) == 16  # 2 co-adds + 7 exposures x 2 arms
    kinds = [(s.meta["kind"], s.meta["arm"]) for s in ss]
    assert kinds.count(("coadd", "B")) == 1 and kinds.count(("single", "R")) == 7
    for s in ss:
        m = s.meta
        assert np.all(np.diff(s.wavelength) > 0)  # red single exposures are stored descending
        lo, hi = (4890, 5380) if m["arm"] == "B" else (6290, 6855)
        assert lo < s.wavelength[0] < s.wavelength[-1] < hi
        assert m["spid"] == 1 and m["fiberid"] == 15 and m["source"] == "1886955093649969280"
        assert m["flag"] == "" and s.vacuum
        assert s.mask.mean() < 0.02 and np.all(s.ivar[s.mask] == 0)
    r = [s for s in ss if s.meta["extname"] == "R-84107335"][0]
    assert r.meta["snr"] == pytest.approx(102.01) and r.meta["exptime"] == 1200
    # pixels flagged by PIXMASK (the -8.5e6 junk at the blue edge) are masked
    b = [s for s in ss if s.meta["extname"] == "B-84107311"][0]
    with fits.open(path) as h:
        pm = h["B-84107311"].data["PIXMASK"]
    assert b.mask.sum() >= (pm != 0).sum()
    # the blue co-add has exact-zero fill values with ivar > 0 and ANDMASK 0 near 5210 Å: masked
    cb = [s for s in ss if s.meta["extname"] == "COADD_B"][0]
    z = (cb.wavelength > 5209.7) & (cb.wavelength < 5210.6)
    assert np.all(cb.flux[z & cb.mask] == 0) and cb.mask[z].sum() >= 3 and not np.any(cb.flux[~cb.mask] == 0)


def test_real_file_times():
    ss = read_mrs(shared_data(*MRS), kind="single", arms=["R"])
    first = ss[0].meta
    # LMJM 84107311 = 20:31 Beijing = 12:31 UTC start; mid-exposure 12:41 UTC = DATE-OBS of the header
    assert first["mjd"] == pytest.approx(Time("2018-10-16T12:41:00", scale="utc").mjd, abs=1e-6)
    # BJD_TDB - HJD_UTC = TT - UTC (69.184 s) + |barycentre - heliocentre| light time (< 5 s)
    dt = (first["bjd_tdb"] - first["hjd"]) * 86400
    assert 64 < dt < 75
    assert first["bjd_tdb"] - (first["mjd"] + 2400000.5) == pytest.approx(0.0052, abs=0.006)
    mids = [s.meta["mjd"] for s in ss]
    assert np.all(np.diff(mids) > 0.01)
    co = read_mrs(shared_data(*MRS), kind="coadd", arms=["R"])[0]
    assert co.meta["mjd"] == pytest.approx(np.mean(mids), abs=1e-6)


def test_exposure_times_vectorised_and_nan():
    b, h = exposure_times([58407.5, np.nan], [345.8, 345.8], [32.2, 32.2])
    assert np.isfinite(b[0]) and np.isnan(b[1]) and np.isnan(h[1])
    b2, _ = exposure_times([58407.5], None, None)
    assert np.isnan(b2[0])
    assert lmjm_to_mjd_mid(1440 * 58000 + 8 * 60, 0.0) == pytest.approx(58000.0)


def test_kind_and_arm_filters():
    path = shared_data(*MRS)
    assert {s.meta["kind"] for s in read_mrs(path, kind="coadd")} == {"coadd"}
    assert {s.meta["arm"] for s in read_mrs(path, arms=["b"])} == {"B"}
    with pytest.raises(ValueError, match="kind"):
        read_mrs(path, kind="best")


def _exposure(arm, lmjm, snr=30.0, flux_level=1000.0, n=500, seed=0):
    rng = np.random.default_rng(seed)
    lo = 4950.0 if arm == "B" else 6300.0
    wave = 10 ** (np.log10(lo) + 1e-5 * np.arange(n))
    flux = flux_level + rng.normal(0, 10, n)
    return {"arm": arm, "lmjm": lmjm, "wave": wave, "flux": flux, "ivar": np.full(n, 0.01), "snr": snr}


def _header(**kw):
    h = {"OBSID": 1, "RA": 10.0, "DEC": 20.0, "OBJNAME": "obj1", "SPID": 3, "FIBERID": 7, "LMJD": 58000,
         "VACUUM": True}
    h.update(kw)
    return h


def test_bad_exposures_are_flagged_not_dropped(tmp_path):
    exps = [_exposure("R", 84107311), _exposure("R", 84107335, snr=0.0), _exposure("R", 84107359, snr=-1.0),
            _exposure("R", 84107383, flux_level=-50.0), _exposure("B", 84107311)]
    p = write_mrs_fits(tmp_path / "med-bad.fits", _header(), exps)
    ss = read_mrs(p)
    flags = {s.meta["extname"]: s.meta["flag"] for s in ss}
    assert flags["R-84107311"] == "" and flags["B-84107311"] == ""
    assert "snr<=0" in flags["R-84107335"] and "snr<=0" in flags["R-84107359"]
    assert "median_flux<=0" in flags["R-84107383"]
    ok, bad = usable(ss)
    assert len(ok) == 2 and len(bad) == 3


def test_nan_pixels_masked_and_missing_keys(tmp_path):
    e = _exposure("R", 84107311)
    e["flux"][10:20] = np.nan
    e["ivar"][30:35] = 0
    p = write_mrs_fits(tmp_path / "m.fits", {"OBJNAME": "x"}, [e])  # no RA/DEC/VACUUM/SPID
    s = read_mrs(p)[0]
    assert s.mask[10:20].all() and s.mask[30:35].all() and np.isfinite(s.flux).all()
    assert s.vacuum and any("VACUUM" in w for w in s.meta["warnings"])
    assert np.isnan(s.meta["bjd_tdb"]) and np.isfinite(s.meta["mjd"])


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_corrupt_truncated_and_foreign_files_raise_naming_the_file(tmp_path):
    bad = tmp_path / "garbage.fits"
    bad.write_bytes(b"SIMPLE = junk" * 100)
    with pytest.raises(MRSReadError, match="garbage.fits"):
        read_mrs(bad)
    good = write_mrs_fits(tmp_path / "good.fits", _header(), [_exposure("R", 84107311, n=3000)])
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(good.read_bytes()[:9000])
    with pytest.raises(MRSReadError, match="trunc.fits"):
        read_mrs(trunc)
    with pytest.raises(MRSReadError, match="no such file"):
        read_mrs(tmp_path / "missing.fits")
    empty = tmp_path / "empty.fits"
    empty.write_bytes(b"")
    with pytest.raises(MRSReadError, match="empty"):
        read_mrs(empty)
    img = tmp_path / "image.fits"
    fits.PrimaryHDU(np.ones((4, 4))).writeto(img)
    with pytest.raises(MRSReadError, match="no LAMOST MRS extensions"):
        read_mrs(img)


def test_damaged_extension_skipped_with_note(tmp_path):
    p = write_mrs_fits(tmp_path / "m.fits", _header(), [_exposure("R", 84107311), _exposure("B", 84107311)])
    with fits.open(p) as h:
        h["B-84107311"].columns.change_name("LOGLAM", "WAVE")
        h.writeto(tmp_path / "m2.fits")
    ss = read_mrs(tmp_path / "m2.fits")
    assert [s.meta["extname"] for s in ss] == ["R-84107311"]
    assert any("LOGLAM" in w for w in ss[0].meta["warnings"])
