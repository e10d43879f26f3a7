"""PNetDetector with the released checkpoint: catalogue contract, tiling without seam duplicates,
masking of NaN/saturated pixels, input warnings, and ``infer.py detector=pnet``."""

import json
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import run_cli
from pnet_helpers import single_thread  # noqa: F401 (fixture)

from skyvar.detect.base import CATALOG_COLUMNS, FLAG_BAD_PIXELS
from skyvar.detect.pnet import DEFAULT_CHECKPOINT, PNetDetector, load_pnet
from skyvar.evaluate.matching import match_catalogs
from skyvar.io.fits import read_frame, write_frame
from skyvar.models.registry import checkpoint_path
from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

pytestmark = pytest.mark.usefixtures("single_thread")

CKPT = checkpoint_path(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def sim_frame(tmp_path_factory):
    d = tmp_path_factory.mktemp("pnet-frame")
    simulate_field_to_disk(FieldSimConfig(out_dir=str(d), size=192, seed=4242, region=777), progress=False)
    return d / "frames" / "frame_0000.fits", d / "truth.ecsv"


@pytest.fixture(scope="module")
def detector():
    return PNetDetector(checkpoint=str(CKPT), device="cpu", tile=512, overlap=64)


def test_released_checkpoint_is_small_and_loads_without_hydra():
    assert CKPT.exists(), "the released PNet checkpoint is missing"
    assert CKPT.stat().st_size < 20e6
    net, meta = load_pnet(CKPT)
    assert meta["upsample"] == net.upsample and 0 < meta["threshold"] < 1
    assert meta["pixel_scale_arcsec"] == pytest.approx(0.074)


def test_operating_radius_selects_the_validation_threshold():
    _, meta = load_pnet(CKPT)
    by_radius = meta["threshold_by_radius"]
    assert PNetDetector(checkpoint=str(CKPT), device="cpu").threshold == pytest.approx(by_radius["1"])
    assert PNetDetector(checkpoint=str(CKPT), device="cpu", operating_radius=0.1).threshold == pytest.approx(by_radius["0.1"])
    assert PNetDetector(checkpoint=str(CKPT), device="cpu", threshold=0.5, operating_radius=0.1).threshold == 0.5


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="PNet checkpoint"):
        PNetDetector(checkpoint=str(tmp_path / "nope.pt"))


def test_catalogue_contract_and_bright_star_recovery(sim_frame, detector):
    frame_path, truth_path = sim_frame
    frame = read_frame(frame_path)
    cat = detector.detect(frame)
    assert list(cat.colnames[: len(CATALOG_COLUMNS)]) == list(CATALOG_COLUMNS)
    assert "score" in cat.colnames and np.all(np.isfinite(cat["mag"])) and np.all(cat["mag_err"] > 0)
    truth = Table.read(truth_path)
    bright = truth[(truth["mag"] < 22.5) & (truth["x"] > 3) & (truth["x"] < 188) & (truth["y"] > 3) & (truth["y"] < 188)]
    di, ti, _ = match_catalogs(np.c_[cat["x"], cat["y"]], np.c_[bright["x"], bright["y"]], 1.0)
    assert len(ti) / len(bright) > 0.9
    dm = np.asarray(cat["mag"])[di] - np.asarray(bright["mag"])[ti]
    assert np.median(np.abs(dm)) < 0.1


def test_tiles_agree_with_the_whole_frame_and_leave_no_seam_duplicates(sim_frame, detector):
    frame = read_frame(sim_frame[0])
    whole = detector.detect(frame)
    tiled = PNetDetector(checkpoint=str(CKPT), device="cpu", tile=96, overlap=48, batch_size=3).detect(frame)
    xy = np.c_[tiled["x"], tiled["y"]]
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1)) + np.eye(len(xy)) * 99
    assert d.min() > 0.25  # each star is kept by one tile only
    di, ti, dist = match_catalogs(xy, np.c_[whole["x"], whole["y"]], 0.05)
    assert len(di) > 0.9 * len(whole) and abs(len(tiled) - len(whole)) < 0.08 * len(whole)
    assert np.median(np.abs(np.asarray(tiled["mag"])[di] - np.asarray(whole["mag"])[ti])) < 0.02


def test_nan_pixels_are_masked_not_propagated(sim_frame, detector, tmp_path):
    frame_path, truth_path = sim_frame
    clean = detector.detect(read_frame(frame_path))
    truth = Table.read(truth_path)
    # a bright isolated-ish star; NaN a 2x2 block 3 px from it
    t = truth[(truth["mag"] < 21) & (truth["x"] > 20) & (truth["x"] < 170) & (truth["y"] > 20) & (truth["y"] < 170)][0]
    with fits.open(frame_path) as h:
        data, hdr = h[0].data.copy(), h[0].header
        mask = h["MASK"].data.copy() if "MASK" in h else None
    ix, iy = int(round(t["x"])), int(round(t["y"]))
    data[iy + 3 : iy + 5, ix + 3 : ix + 5] = np.nan
    bad = tmp_path / "nan.fits"
    write_frame(bad, data, hdr, mask)
    frame = read_frame(bad)
    cat = detector.detect(frame)
    assert np.all(np.isfinite(cat["mag"])) and np.all(np.isfinite(cat["x"]))
    i_clean = np.argmin(np.hypot(clean["x"] - t["x"], clean["y"] - t["y"]))
    i_bad = np.argmin(np.hypot(cat["x"] - t["x"], cat["y"] - t["y"]))
    assert abs(cat["mag"][i_bad] - clean["mag"][i_clean]) < 0.1
    # detections whose core touches the NaN block carry the bad-pixel flag
    near = np.hypot(cat["x"] - (ix + 3.5), cat["y"] - (iy + 3.5)) < 1.0
    assert np.all((np.asarray(cat["flags"])[near] & FLAG_BAD_PIXELS) > 0)


def _gaussian_fits(path, sigma, pixscale=0.074, n=160, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.full((n, n), 70.0)
    for _ in range(40):
        x, y, f = rng.uniform(10, n - 10), rng.uniform(10, n - 10), 10 ** rng.uniform(4.5, 5.3)
        img += f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    img = rng.poisson(img).astype(np.float32)
    hdr = fits.Header({"EXPTIME": 300.0, "GAIN": 1.0, "RDNOISE": 7.07, "ZP": 25.85, "MJD-OBS": 60500.0,
                       "PIXSCALE": pixscale, "SATURATE": 180000.0})
    write_frame(path, img, hdr)
    return read_frame(path)


def test_warns_when_pixel_scale_or_psf_differ(tmp_path, detector):
    ok = _gaussian_fits(tmp_path / "ok.fits", sigma=1.2)
    assert detector.input_warnings(ok) == []
    broad = _gaussian_fits(tmp_path / "broad.fits", sigma=3.5)
    assert any("PSF width" in m for m in detector.input_warnings(broad))
    scale = _gaussian_fits(tmp_path / "scale.fits", sigma=1.2, pixscale=0.1)
    msgs = detector.input_warnings(scale)
    assert len(msgs) == 1 and "pixel scale" in msgs[0]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        detector.detect(broad)
    assert any("PSF width" in str(x.message) for x in w) and any("PSF width" in m for m in broad.warnings)


def test_infer_cli_detector_pnet(sim_frame, tmp_path):
    frame_path, truth_path = sim_frame
    out = tmp_path / "out"
    r = run_cli(["infer.py", "pipeline=detect", "detector=pnet", f"input={frame_path}", f"truth={truth_path}",
                 f"out_dir={out}", "detector.tile=128", "detector.overlap=32", "++pipeline.progress=false", "++pipeline.evaluate.plots_enabled=false",
                 f"hydra.run.dir={tmp_path / 'hydra'}"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cat = Table.read(out / "catalogs" / "frame_0000.ecsv")
    assert len(cat) > 50 and set(CATALOG_COLUMNS) <= set(cat.colnames) and cat.meta["detector"] == "pnet"
    m = json.loads((out / "report" / "metrics.json").read_text())
    assert m["f1"]["1"] > 0.5


def test_flip_averaged_inference_is_exactly_flip_equivariant(sim_frame):
    """With tta the maps are averaged over the flip group, so detecting on a mirrored frame gives the
    mirrored catalogue (the fine grid is mirror-symmetric about the frame centre)."""
    det = PNetDetector(checkpoint=str(CKPT), device="cpu", tta=True, check_inputs=False)
    frame = read_frame(sim_frame[0])
    x, _ = det.predict_maps(frame.data[:128, :128], frame.mask[:128, :128], frame.rdnoise)
    a = det.run_tiles(x)
    b = det.run_tiles(x.flip(-1))
    assert len(a["x"]) > 20 and len(a["x"]) == len(b["x"])
    di, ti, dist = match_catalogs(np.c_[127 - b["x"], b["y"]], np.c_[a["x"], a["y"]], 1e-3)
    assert len(di) == len(a["x"])
    np.testing.assert_allclose(b["magrel"][di], a["magrel"][ti], atol=1e-4)
