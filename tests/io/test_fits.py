import numpy as np
import pytest
from astropy.io import fits

from skyvar.io.fits import MASK_BAD, FrameError, read_frame, write_frame


def _header():
    h = fits.Header()
    h["EXPTIME"], h["GAIN"], h["RDNOISE"], h["ZP"], h["MJD-OBS"], h["FILTER"] = 300.0, 1.0, 5.0, 25.85, 60000.5, "i"
    return h


def test_roundtrip_and_nan_masking(tmp_path):
    img = np.ones((16, 20), np.float32)
    img[3, 4] = np.nan
    img[5, 6] = np.inf
    p = write_frame(tmp_path / "f.fits", img, _header())
    fr = read_frame(p)
    assert fr.shape == (16, 20) and fr.zp == 25.85 and fr.exptime == 300.0
    assert fr.mask[3, 4] & MASK_BAD and fr.mask[5, 6] & MASK_BAD
    assert fr.data[3, 4] == 0 and np.isfinite(fr.data).all()
    assert fr.frame_id == "f"
    # 1 e-/s for EXPTIME s is the zero point by definition
    assert fr.flux_to_mag(np.array([300.0]))[0] == pytest.approx(25.85)


def test_missing_keys_fall_back_with_warning(tmp_path):
    p = tmp_path / "bare.fits"
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(p)
    with pytest.warns(UserWarning, match="EXPTIME"):
        fr = read_frame(p)
    assert fr.exptime == 1.0 and fr.wcs is None and any("ZP" in w for w in fr.warnings)


def test_corrupt_and_truncated_files_raise_naming_the_file(tmp_path):
    bad = tmp_path / "garbage.fits"
    bad.write_bytes(b"not a fits file at all" * 10)
    with pytest.raises(FrameError, match="garbage.fits"):
        read_frame(bad)
    good = write_frame(tmp_path / "t.fits", np.ones((64, 64), np.float32), _header())
    trunc = tmp_path / "trunc.fits"
    trunc.write_bytes(good.read_bytes()[:4000])
    with pytest.raises(FrameError, match="trunc.fits"):
        read_frame(trunc)
    with pytest.raises(FrameError, match="no such file"):
        read_frame(tmp_path / "missing.fits")


def test_all_nan_frame_raises(tmp_path):
    p = write_frame(tmp_path / "nan.fits", np.full((8, 8), np.nan, np.float32), _header())
    with pytest.raises(FrameError, match="NaN"):
        read_frame(p)
