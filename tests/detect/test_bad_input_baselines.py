"""Bad input through ``infer.py pipeline=detect`` for the classical detectors.

One directory holds a good simulated frame, the same frame with a NaN block, the same frame with its
instrument header keys and WCS stripped (no EXPTIME), the same frame with a −1e30 fill-value border, a
frame without sources, a real CCD frame (SExtractor's test image, no simulator keys, no zero point,
given by ``frame.zp=``) and four unusable files (corrupt, truncated, all-NaN, constant). The unusable
ones — and the frame without an exposure time — are reported in failures.json with a message naming the
file and skipped; every other frame gets a catalogue; NaN and fill-value pixels are masked and do not
reach the neighbours' fluxes. With ``frame.exptime=`` the stripped frame is measured.
"""

import json
import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import SHARED, run_cli
from scipy.spatial import cKDTree

from skyvar.detect.base import FLAG_BAD_PIXELS
from skyvar.io.fits import write_frame

NAN_BLOCK = (slice(60, 66), slice(70, 76))  # y, x


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    from skyvar.sim.field import FieldSimConfig, FieldSimulation

    d = tmp_path_factory.mktemp("bad_input")
    sim = FieldSimulation(FieldSimConfig(size=160, seed=31))
    img, mask, hdr = sim.render_epoch(0)
    write_frame(d / "good.fits", img, hdr, mask)

    nan = img.copy()
    nan[NAN_BLOCK] = np.nan
    write_frame(d / "nan_pixels.fits", nan, hdr, mask)

    stripped = fits.Header({k: hdr[k] for k in ("PSFMODEL", "PSFJITTR", "PSFDIL", "PIXSCALE")})
    write_frame(d / "missing_keys.fits", img, stripped)

    rng = np.random.default_rng(5)
    sky = (70.0 + rng.normal(0.0, np.sqrt(120.0), (128, 128))).astype(np.float32)
    write_frame(d / "no_sources.fits", sky, fits.Header({"EXPTIME": 300.0, "GAIN": 1.0, "ZP": 25.85}))

    filled = img.copy()
    filled[:, :6] = -1e30
    write_frame(d / "fill_values.fits", filled, hdr, mask)

    write_frame(d / "all_nan.fits", np.full((64, 64), np.nan, np.float32), hdr)
    write_frame(d / "constant.fits", np.zeros((64, 64), np.float32), hdr)
    (d / "corrupt.fits").write_bytes(b"SIMPLE  =                    T" + bytes(rng.integers(0, 256, 5000, dtype=np.uint8)))
    raw = (d / "good.fits").read_bytes()
    (d / "truncated.fits").write_bytes(raw[: len(raw) // 2])
    real = SHARED / "data" / "sep" / "image.fits"
    if real.exists():
        shutil.copy(real, d / "real_ccd.fits")
    return d


@pytest.mark.parametrize("detector", ["sep", "photutils_psf"])
def test_directory_with_bad_frames(bad_dir, tmp_path, detector):
    out = tmp_path / "out"
    r = run_cli(["infer.py", "pipeline=detect", f"detector={detector}", f"input={bad_dir}", f"out_dir={out}",
                 "frame.zp=25.0", "pipeline.evaluate.oracle=false"])
    assert r.returncode == 0, r.stderr[-3000:]

    failures = json.loads((out / "failures.json").read_text())
    failed = {f["file"].rsplit("/", 1)[-1]: f for f in failures}
    assert set(failed) == {"corrupt.fits", "truncated.fits", "all_nan.fits", "constant.fits", "missing_keys.fits"}
    for name, f in failed.items():
        assert f["stage"] == "read" and name in f["error"]  # a clear message naming the file
    assert "NaN" in failed["all_nan.fits"]["error"] and "same value" in failed["constant.fits"]["error"]
    assert "EXPTIME" in failed["missing_keys.fits"]["error"] and "frame.exptime" in failed["missing_keys.fits"]["error"]

    cats = {p.stem: Table.read(p) for p in (out / "catalogs").glob("*.ecsv")}
    expected = {"good", "nan_pixels", "fill_values", "no_sources"} | ({"real_ccd"} if (bad_dir / "real_ccd.fits").exists() else set())
    assert set(cats) == expected
    good, nan = cats["good"], cats["nan_pixels"]
    assert len(good) > 100 and np.isfinite(good["flux"]).all()

    # NaN pixels: masked (not read as data), flagged where they touch a source, never propagated
    assert np.isfinite(nan["x"]).all() and np.isfinite(nan["y"]).all()
    sl_y, sl_x = NAN_BLOCK
    cy, cx = (sl_y.start + sl_y.stop - 1) / 2, (sl_x.start + sl_x.stop - 1) / 2
    inside = (nan["x"] > sl_x.start - 0.5) & (nan["x"] < sl_x.stop - 0.5) & (nan["y"] > sl_y.start - 0.5) & (nan["y"] < sl_y.stop - 0.5)
    assert not inside.any()  # nothing is detected on the zero-filled hole
    near = np.hypot(nan["x"] - cx, nan["y"] - cy) < 5
    assert np.all(nan["flags"][near] & FLAG_BAD_PIXELS)
    assert np.isfinite(nan["flux"][~near]).all()
    far = np.hypot(good["x"] - cx, good["y"] - cy) > 12
    dist, j = cKDTree(np.c_[nan["x"], nan["y"]]).query(np.c_[good["x"][far], good["y"][far]])
    same = dist < 0.01
    assert same.mean() > 0.97
    rel = np.abs(np.asarray(nan["flux"][j[same]]) / np.asarray(good["flux"][far][same]) - 1)
    assert np.median(rel) < 1e-3 and np.mean(rel < 0.01) > 0.97

    # fill values: masked with a message naming the file, nothing detected on them
    fv = cats["fill_values"]
    assert any("fill_values.fits" in w and "absurd" in w for w in fv.meta["input_warnings"])
    assert np.isfinite(fv["flux"]).all() and not (fv["x"] < 3.0).any() and len(fv) > 0.9 * len(good)

    # no sources: a catalogue of at most a few noise peaks, none bright
    ns = cats["no_sources"]
    assert len(ns) < 40 and np.all(np.nan_to_num(ns["mag"], nan=99) > 23)

    # a real CCD frame without the simulator's keys runs with an empirical PSF
    if "real_ccd" in cats:
        real = cats["real_ccd"]
        assert real.meta.get("psf_source") in ("epsf", "gaussian")
        ref = np.loadtxt(SHARED / "data" / "sep" / "image.cat")
        dist, _ = cKDTree(np.c_[real["x"], real["y"]]).query(np.c_[ref[:, 3] - 1, ref[:, 4] - 1])
        assert np.mean(dist < 1.0) > 0.8  # SExtractor's objects are found
        assert any("frame.zp" in w for w in real.meta["input_warnings"])


def test_missing_exposure_time_supplied_by_the_config(bad_dir, tmp_path):
    """``frame.exptime=`` (and ``frame.zp=``) let a frame without those keys through, with the values
    recorded; the same sources as the full header."""
    out = tmp_path / "out"
    r = run_cli(["infer.py", "pipeline=detect", "detector=sep", f"input={bad_dir / 'missing_keys.fits'}",
                 f"out_dir={out}", "frame.exptime=300", "frame.zp=25.85"])
    assert r.returncode == 0, r.stderr[-3000:]
    mk = Table.read(out / "catalogs" / "missing_keys.ecsv")
    warn = " ".join(mk.meta["input_warnings"])
    assert "from frame.exptime" in warn and "from frame.zp" in warn and "WCS" in warn
    assert mk.meta["exptime"] == 300.0 and mk.meta["zp"] == 25.85 and np.isnan(mk["ra"]).all()
    assert len(mk) > 100 and np.isfinite(mk["mag"]).all()
