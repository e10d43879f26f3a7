import warnings

import numpy as np
import pytest
from astropy.io import fits

from skyvar.io.fits import MASK_BAD, FrameError, read_frame, write_frame


def _header(**drop):
    h = fits.Header()
    h["EXPTIME"], h["GAIN"], h["RDNOISE"], h["ZP"], h["MJD-OBS"], h["FILTER"] = 300.0, 1.0, 5.0, 25.85, 60000.5, "i"
    for k in drop:
        del h[k]
    return h


def _sky(shape=(16, 20), seed=0):
    return (70.0 + np.random.default_rng(seed).normal(0, 10, shape)).astype(np.float32)


def test_roundtrip_and_nan_masking(tmp_path):
    img = _sky()
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


def test_missing_exptime_is_an_error_naming_the_file_unless_configured(tmp_path):
    p = write_frame(tmp_path / "no_exptime.fits", _sky(), _header(EXPTIME=None))
    with pytest.raises(FrameError, match=r"no_exptime\.fits.*EXPTIME.*frame\.exptime"):
        read_frame(p)
    with pytest.warns(UserWarning, match="from frame.exptime"):
        fr = read_frame(p, exptime=150.0)
    assert fr.exptime == 150.0
    # the header wins where it has the key
    q = write_frame(tmp_path / "with.fits", _sky(), _header())
    assert read_frame(q, exptime=1.0).exptime == 300.0


def test_missing_zero_point_fails_where_magnitudes_are_asked_for(tmp_path):
    p = write_frame(tmp_path / "no_zp.fits", _sky(), _header(ZP=None))
    fr = read_frame(p)  # fluxes and positions need no zero point
    assert np.isnan(fr.zp) and any("frame.zp" in w for w in fr.warnings)
    with pytest.raises(FrameError, match=r"no_zp\.fits.*zero point.*frame\.zp"):
        fr.flux_to_mag(np.array([300.0]))
    with pytest.raises(FrameError, match="no_zp.fits"):
        fr.mag_to_flux(np.array([20.0]))
    fr2 = read_frame(p, zp=25.0)
    assert fr2.flux_to_mag(np.array([300.0]))[0] == pytest.approx(25.0)


def test_missing_read_noise_warns_with_the_value_assumed(tmp_path):
    p = write_frame(tmp_path / "no_rn.fits", _sky(), _header(RDNOISE=None))
    with pytest.warns(UserWarning, match=r"no_rn\.fits.*read noise.*assuming 0\.0 e-"):
        fr = read_frame(p)
    assert fr.rdnoise == 0.0
    with pytest.warns(UserWarning, match=r"assuming 7\.0 e- \(from frame\.rdnoise\)"):
        assert read_frame(p, rdnoise=7.0).rdnoise == 7.0


@pytest.mark.parametrize("value", [0.0, 123.0])
def test_constant_frames_are_rejected(tmp_path, value):
    p = write_frame(tmp_path / "flat.fits", np.full((32, 32), value, np.float32), _header())
    with pytest.raises(FrameError, match=r"flat\.fits.*same value"):
        read_frame(p)


def test_absurd_fill_values_are_masked_with_a_message(tmp_path):
    img = _sky((32, 32))
    img[:, :4] = -1e30  # a fill value at one edge
    img[10, 10] = 3e38
    p = write_frame(tmp_path / "filled.fits", img, _header())
    with pytest.warns(UserWarning, match=r"filled\.fits.*absurd"):
        fr = read_frame(p)
    assert (fr.mask[:, :4] & MASK_BAD).all() and fr.mask[10, 10] & MASK_BAD
    assert np.all(fr.data[:, :4] == 0) and np.isfinite(fr.data).all() and np.abs(fr.data).max() < 1e3
    allfill = write_frame(tmp_path / "allfill.fits", np.full((16, 16), -1e30, np.float32), _header())
    with pytest.raises(FrameError, match=r"allfill\.fits.*absurd"):
        read_frame(allfill)


def test_other_missing_keys_fall_back_with_warning(tmp_path):
    p = write_frame(tmp_path / "bare.fits", _sky(), fits.Header({"EXPTIME": 10.0}))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        fr = read_frame(p)
    assert fr.gain == 1.0 and fr.wcs is None and np.isnan(fr.zp) and np.isnan(fr.mjd)


def test_corrupt_and_truncated_files_raise_naming_the_file(tmp_path):
    bad = tmp_path / "garbage.fits"
    bad.write_bytes(b"not a fits file at all" * 10)
    with pytest.raises(FrameError, match="garbage.fits"):
        read_frame(bad)
    good = write_frame(tmp_path / "t.fits", _sky((64, 64)), _header())
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
