"""LAMOST LRS reader: real files (gzip and plain), both archive layouts, and every bad-input path."""

import gzip

import numpy as np
import pytest
from astropy.io import fits

from skyvar.spectra.io import (
    SpectrumReadError,
    header_value,
    open_fits,
    read_lamost_lrs,
    read_spectra,
    spectrum_id,
    write_lamost_lrs,
)
from tests.conftest import shared_data
from tests.spectra.lrs_helpers import lamost_like, write_lamost_file


def test_real_gz_and_plain_files():
    d = shared_data("spectra", "lamost_lrs")
    s = read_lamost_lrs(d / "spec-55859-F5902_sp03-232.fits.gz")
    assert s.meta["obsid"] == 103232 and s.meta["subclass"] == "F4" and s.meta["snr_g"] == pytest.approx(94.11)
    assert s.meta["ra"] == pytest.approx(330.909453) and s.vacuum is True
    # LAMOST grid: log10 λ = COEFF0 + COEFF1 * k
    k = np.arange(len(s.wavelength))
    np.testing.assert_allclose(s.wavelength, 10 ** (3.5682 + 1e-4 * k), rtol=2e-6)
    assert len(s.flux) == 3906 and s.masked_fraction == 0.0
    p = read_lamost_lrs(d / "spec-58397-EG014118N254444M01_sp03-031.fits")
    assert len(p.flux) == 3909 and p.meta["obsid"] == 677503031
    # 48 of its pixels have ivar = 0 in the file: exactly those are masked
    raw = fits.getdata(d / "spec-58397-EG014118N254444M01_sp03-031.fits")
    np.testing.assert_array_equal(p.mask, raw[1] <= 0)
    assert p.mask.sum() == 48


def test_table_layout_matches_image_layout(tmp_path):
    s = lamost_like()
    cols = [fits.Column(name=n, format=f"{len(s.flux)}E", array=a[None, :]) for n, a in
            (("WAVELENGTH", s.wavelength), ("FLUX", s.flux), ("IVAR", s.ivar),
             ("ANDMASK", np.zeros(len(s.flux))), ("ORMASK", np.zeros(len(s.flux))))]
    prim = fits.PrimaryHDU()
    prim.header.update({"OBSID": 7, "VACUUM": True, "SNRG": 50.0})
    fits.HDUList([prim, fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(tmp_path / "t.fits")
    t = read_lamost_lrs(tmp_path / "t.fits")
    np.testing.assert_allclose(t.flux, s.flux, rtol=1e-6)
    assert t.meta["obsid"] == 7 and t.meta["snr_g"] == 50.0


def test_air_flag_and_missing_vacuum_key(tmp_path):
    f = write_lamost_file(tmp_path / "a.fits", VACUUM=False)
    assert read_lamost_lrs(f).vacuum is False
    f2 = write_lamost_file(tmp_path / "b.fits")
    with fits.open(f2, mode="update") as h:
        del h[0].header["VACUUM"]
    s = read_lamost_lrs(f2)
    assert s.vacuum is True and any("VACUUM" in w for w in s.meta["warnings"])


@pytest.mark.parametrize("kind", ["truncated_gz", "truncated_plain", "empty", "garbage", "missing", "directory"])
def test_unreadable_files_raise_with_name(tmp_path, kind):
    good = write_lamost_file(tmp_path / "good.fits")
    raw = good.read_bytes()
    path = tmp_path / f"bad_{kind}.fits"
    if kind == "truncated_gz":
        path = tmp_path / "bad.fits.gz"
        path.write_bytes(gzip.compress(raw)[:4000])
    elif kind == "truncated_plain":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"not a fits file at all" * 100)
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(SpectrumReadError, match=path.name):
        read_lamost_lrs(path)


def test_structural_problems(tmp_path):
    s = lamost_like()
    s.ivar[:] = 0.0
    s.mask[:] = True
    with pytest.raises(SpectrumReadError, match="every pixel is masked"):
        read_lamost_lrs(write_lamost_file(tmp_path / "masked.fits", s))
    s = lamost_like()
    s.wavelength = s.wavelength[::-1].copy()
    with pytest.raises(SpectrumReadError, match="not strictly increasing"):
        read_lamost_lrs(write_lamost_file(tmp_path / "unsorted.fits", s))
    fits.PrimaryHDU(np.ones((3909,), dtype=np.float32)).writeto(tmp_path / "1d.fits")
    with pytest.raises(SpectrumReadError, match="expected \\(5, npix\\)"):
        read_lamost_lrs(tmp_path / "1d.fits")


def test_nan_pixels_are_masked_not_fatal(tmp_path):
    s = lamost_like()
    s.flux[100:110] = np.nan
    s.ivar[200] = np.inf
    r = read_lamost_lrs(write_lamost_file(tmp_path / "nan.fits", s))
    assert r.mask[100:110].all() and r.mask[200] and np.isfinite(r.flux).all()
    assert any("NaN/inf" in w for w in r.meta["warnings"])


def test_andmask_masks_pixels(tmp_path):
    s = lamost_like()
    s.meta["andmask"] = np.zeros(len(s.flux))
    s.meta["andmask"][500:520] = 4
    r = read_lamost_lrs(write_lamost_lrs(tmp_path / "and.fits.gz", s))
    assert r.mask[500:520].all() and r.mask.sum() == 20


def test_read_spectra_skips_bad_files(tmp_path):
    a = write_lamost_file(tmp_path / "a.fits", OBSID=1)
    (tmp_path / "b.fits").write_bytes(b"")
    c = write_lamost_file(tmp_path / "c.fits.gz", OBSID=3)
    spectra, failures = read_spectra([a, tmp_path / "b.fits", c])
    assert [s.meta["obsid"] for s in spectra] == [1, 3]
    assert len(failures) == 1 and "b.fits" in failures[0]["error"] and failures[0]["stage"] == "read"


def test_helpers(tmp_path):
    hdr = fits.Header({"A": " 3.5 ", "B": "", "C": "x"})
    assert header_value(hdr, ["B", "C", "A"]) == 3.5
    assert header_value(hdr, "Z", default=-1) == -1
    with pytest.raises(SpectrumReadError, match="f.fits"):
        header_value(hdr, ["Z"], required=True, path="f.fits")
    with open_fits(write_lamost_file(tmp_path / "x.fits")) as h:
        assert h[0].data.shape == (5, 3909)
    assert spectrum_id("/a/spec-1_sp03-232.fits.gz") == "spec-1_sp03-232"
