"""The sep baseline: SExtractor reproduction, dense-field tiling, PSF-weighted fluxes, masked pixels."""

import numpy as np
import pytest
from _baseline_frames import flat_frame, sim_frame
from astropy.io import fits
from conftest import shared_data
from scipy.spatial import cKDTree

from skyvar.detect.base import FLAG_BAD_PIXELS
from skyvar.detect.sep_baseline import SepDetector
from skyvar.io.fits import Frame, read_frame

# image.cat columns (SExtractor 2.8.6, 1-indexed pixels)
X_IMAGE, Y_IMAGE, XWIN, YWIN, FLUX_APER, FLUX_AUTO = 1, 2, 3, 4, 12, 15


def sextractor_like_detector():
    """sep configured as ../shared/data/sep/default.sex."""
    return SepDetector(
        detect_thresh=1.5, detect_minarea=5, filter_kernel="default", deblend_nthresh=32, deblend_mincont=1.0,
        back_size=64, back_filtersize=3, rms="global", position="bary", winpos_sigma="sextractor",
        winpos_max_shift=None, psf="none", flux_type="aper", aper_radius=5.0, auto_flux=True,
    )


@pytest.fixture(scope="module")
def sep_image():
    with pytest.warns(UserWarning):  # the file lacks GAIN/RDNOISE/ZP: defaults with warnings
        return read_frame(shared_data("sep", "image.fits"))


def test_background_matches_sextractor_check_image(sep_image):
    back, _, _ = sextractor_like_detector().background(sep_image)
    ref = fits.getdata(shared_data("sep", "back.fits"))
    np.testing.assert_allclose(back, ref, rtol=1e-5)


def test_reproduces_sextractor_catalogue(sep_image):
    ref = np.loadtxt(shared_data("sep", "image.cat"))
    cat = sextractor_like_detector().detect(sep_image)
    assert len(cat) == len(ref) == 65
    # one-to-one: every SExtractor object has its own sep object within 1e-3 px
    d, i = cKDTree(np.c_[cat["x_bary"], cat["y_bary"]]).query(np.c_[ref[:, X_IMAGE] - 1, ref[:, Y_IMAGE] - 1])
    assert len(set(i)) == len(ref)
    assert d.max() < 1e-3
    np.testing.assert_allclose(cat["x_bary"][i], ref[:, X_IMAGE] - 1, atol=1e-3, rtol=0)
    np.testing.assert_allclose(cat["y_bary"][i], ref[:, Y_IMAGE] - 1, atol=1e-3, rtol=0)
    np.testing.assert_allclose(cat["x_win"][i], ref[:, XWIN] - 1, atol=1e-3, rtol=0)
    np.testing.assert_allclose(cat["y_win"][i], ref[:, YWIN] - 1, atol=1e-3, rtol=0)
    # and the photometry follows: FLUX_APER (10 px diameter at X_IMAGE) and FLUX_AUTO (Kron 2.5)
    np.testing.assert_allclose(cat["flux_aper"][i], ref[:, FLUX_APER], rtol=1e-4)
    auto_ok = ref[:, FLUX_AUTO] > 0
    np.testing.assert_allclose(cat["flux_auto"][i][auto_ok], ref[auto_ok, FLUX_AUTO], rtol=1e-4)
    # the catalogue contract: 0-indexed x/y are the chosen (barycentre) positions
    np.testing.assert_array_equal(cat["x"], cat["x_bary"])


@pytest.fixture(scope="module")
def dense_frame():
    return sim_frame(size=320, seed=101)


@pytest.fixture(scope="module")
def sparse_frame():
    # isolated stars, i = 18-20 (S/N ~ 100-600): photometry and centring without crowding
    return sim_frame(size=256, seed=7, density=4e-4, mag_min=18.0, mag_max=20.0, systematic_floor=0.0)


def test_tiling_matches_single_pass(dense_frame):
    frame, _ = dense_frame
    whole = SepDetector(tile=4096).detect(frame)
    tiled = SepDetector(tile=128, overlap=48).detect(frame)
    assert abs(len(tiled) - len(whole)) <= 0.01 * len(whole)
    d, _ = cKDTree(np.c_[whole["x"], whole["y"]]).query(np.c_[tiled["x"], tiled["y"]])
    assert np.mean(d < 1e-4) > 0.97  # the same objects, bit for bit, apart from a few seam blends
    assert len(set(zip(np.round(tiled["x"], 5), np.round(tiled["y"], 5)))) == len(tiled)  # no seam duplicates


def test_dense_field_detection_quality(dense_frame):
    """Table 2 settings at CSST density: what the paper's SExtractor reaches (recall 51 %, precision 83 %)."""
    frame, truth = dense_frame
    cat = SepDetector().detect(frame)
    tgt = truth[truth["mag"] < 25]
    d, _ = cKDTree(np.c_[tgt["x"], tgt["y"]]).query(np.c_[cat["x"], cat["y"]])
    precision = np.mean(d < 1.0)
    dt, _ = cKDTree(np.c_[cat["x"], cat["y"]]).query(np.c_[tgt["x"], tgt["y"]])
    recall = np.mean(dt < 1.0)
    bright = np.asarray(tgt["mag"]) < 21
    assert 0.45 < recall < 0.8 and precision > 0.75
    assert np.mean(dt[bright] < 1.0) > 0.9


def test_psf_weighted_flux_and_windowed_positions(sparse_frame):
    frame, truth = sparse_frame
    det = SepDetector()
    cat = det.detect(frame)
    assert det.last_psf.source == "simulator"
    inner = truth[(truth["x"] > 5) & (truth["x"] < 250) & (truth["y"] > 5) & (truth["y"] < 250)]
    d, i = cKDTree(np.c_[cat["x"], cat["y"]]).query(np.c_[inner["x"], inner["y"]])
    assert np.all(d < 0.05), d.max()  # windowed positions of S/N > 100 stars: a few 0.01 px
    ratio = np.asarray(cat["flux_psf"][i]) / np.asarray(inner["flux"])
    pull = (np.asarray(cat["flux_psf"][i]) - np.asarray(inner["flux"])) / np.asarray(cat["flux_psf_err"][i])
    assert abs(np.median(ratio) - 1) < 0.01  # unbiased: the model is the simulator's PSF
    assert 0.5 < np.std(pull) < 1.6  # errors describe the scatter
    # the aperture flux misses the PSF wings outside 2.5 px, the PSF-weighted one does not
    assert np.median(np.asarray(cat["flux_aper"][i]) / np.asarray(inner["flux"])) < 0.95


def test_masked_pixels_do_not_contaminate(sparse_frame):
    frame, truth = sparse_frame
    det = SepDetector()
    ref = det.detect(frame)
    # a NaN block over one star's flank (as read_frame delivers it: value 0, MASK_BAD)
    star = truth[np.argmin(np.abs(truth["x"] - 128) + np.abs(truth["y"] - 128))]
    xi, yi = int(round(star["x"])), int(round(star["y"]))
    data, mask = frame.data.copy(), frame.mask.copy()
    data[yi - 2 : yi + 3, xi + 1 : xi + 3] = 0.0
    mask[yi - 2 : yi + 3, xi + 1 : xi + 3] |= 2
    hit = Frame(**{**frame.__dict__, "data": data, "mask": mask})
    cat = det.detect(hit)
    assert np.isfinite(cat["flux"]).all() and np.isfinite(cat["flux_aper"]).all()
    k = np.argmin(np.hypot(cat["x"] - star["x"], cat["y"] - star["y"]))
    assert cat["flags"][k] & FLAG_BAD_PIXELS
    # the PSF-weighted flux of the hit star comes from its unmasked pixels (the zeros are not read)
    assert abs(cat["flux_psf"][k] / star["flux"] - 1) < 0.05
    ref_k = np.argmin(np.hypot(ref["x"] - star["x"], ref["y"] - star["y"]))
    # sep leaves masked pixels out of the aperture sum and scales it to the full area; summing the zeros
    # instead would lose the ~20 % of the light they carry
    assert cat["flux_aper"][k] > 0.97 * ref["flux_aper"][ref_k]
    # every other star's measurement is untouched
    others = np.hypot(ref["x"] - star["x"], ref["y"] - star["y"]) > 15
    d, j = cKDTree(np.c_[cat["x"], cat["y"]]).query(np.c_[ref["x"][others], ref["y"][others]])
    assert np.all(d < 1e-6)
    np.testing.assert_allclose(cat["flux"][j], ref["flux"][others], rtol=1e-6)


def test_constant_frame_gives_empty_catalogue():
    cat = SepDetector().detect(flat_frame())
    assert len(cat) == 0 and "flux" in cat.colnames


def test_no_source_frame_yields_few_noise_detections():
    det = SepDetector()
    cat = det.detect(flat_frame((128, 128), noise=10.0, seed=3))
    assert det.last_psf.source == "gaussian"  # no stars for an ePSF: the fallback
    # 1.6 sigma with 3 px after filtering: pure noise gives a few spurious peaks, no crash, no bright ones
    assert len(cat) < 40
    assert np.all(cat["flux"] < 30 * 10.0 * 2.5)


@pytest.mark.parametrize("name", ["sep", "photutils_psf"])
def test_detector_configs_instantiate(name):
    from conftest import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "src" / "skyvar" / "conf"), version_base="1.3"):
        cfg = compose("infer", overrides=[f"detector={name}", "paths.root_dir=."])
    det = instantiate(cfg.detector)
    assert det.name == name
    if name == "sep":  # the paper's Table 2
        assert (det.detect_minarea, det.detect_thresh, det.deblend_nthresh, det.deblend_mincont) == (3, 1.6, 60, 0.001)
    else:  # the paper's background boxes
        assert det.back_size == 100 and det.back_estimator == "median"
