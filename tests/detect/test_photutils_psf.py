"""photutils PSF photometry baseline and the frame PSF models it fits."""

import numpy as np
import pytest
from _baseline_frames import flat_frame, sim_frame
from scipy.spatial import cKDTree

from skyvar.detect.background import box_median_background
from skyvar.detect.photutils_psf import PhotutilsPSFDetector
from skyvar.detect.psf_models import empirical_psf, psf_for_frame, psf_from_header
from skyvar.detect.sep_baseline import SepDetector
from skyvar.io.fits import Frame


@pytest.fixture(scope="module")
def sparse_frame():
    return sim_frame(size=256, seed=7, density=4e-4, mag_min=18.0, mag_max=20.0, systematic_floor=0.0)


@pytest.fixture(scope="module")
def dense_frame():
    return sim_frame(size=320, seed=101)


# ------------------------------------------------------------------------------------------ PSF models
def test_header_psf_is_the_simulators_psf(sparse_frame):
    """The rebuilt ImagePSF equals the simulator's 1/64-px stamp bank at any sub-pixel phase."""
    from skyvar.sim.psf import PSFConfig, bank_for

    frame, _ = sparse_frame
    psf = psf_from_header(frame.header)
    assert psf.source == "simulator"
    stamps = bank_for(PSFConfig(), 0.074, 20, 64).stamps(10).numpy()
    u = np.arange(-10, 11)
    xx, yy = np.meshgrid(u, u)
    norm = stamps[0, 0].sum()
    for py, px in ((0, 0), (32, 32), (13, 40), (5, 60)):
        model = psf.evaluate(xx - px / 64, yy - py / 64)
        ref = stamps[py, px] / norm
        assert np.abs(model - ref).max() < 1e-3 * ref.max()  # cubic-spline interpolation of the 1/8-px grid
    # unit flux inside the 21 x 21 px square the simulator draws faint stars on
    assert psf.evaluate(xx, yy).sum() == pytest.approx(1.0, abs=1e-9)
    assert 2.2 < psf.fwhm < 2.45  # 0.17" FWHM at 0.074"/px: Airy(770 nm, 2 m) * 0.06" jitter


def test_header_psf_variation_and_missing_keys(sparse_frame):
    frame, _ = sparse_frame
    hdr = frame.header.copy()
    hdr["PSFVAR"] = 0.4
    psf = psf_from_header(hdr)
    corner0, corner1 = psf.at(0, 0), psf.at(255, 255)
    assert corner0.data.max() > corner1.data.max()  # the PSF broadens along the diagonal
    for k in ("PSFMODEL", "PSFJITTR", "PIXSCALE"):
        del hdr[k]
    assert psf_from_header(hdr) is None
    with pytest.raises(ValueError, match="PSF keys"):
        psf_for_frame(Frame(**{**frame.__dict__, "header": hdr}), mode="simulator")


def test_empirical_psf_recovers_the_simulated_psf(sparse_frame):
    frame, truth = sparse_frame
    back, rms, grms = box_median_background(frame.data)
    data_sub = frame.data - back
    epsf = empirical_psf(data_sub, frame.mask > 0, grms, truth["x", "y", "flux"])
    true = psf_from_header(frame.header)
    assert epsf.source == "epsf"
    assert epsf.fwhm == pytest.approx(true.fwhm, rel=0.1)
    u = np.arange(-3, 4)
    xx, yy = np.meshgrid(u, u)
    a, b = true.evaluate(xx, yy), epsf.evaluate(xx, yy)
    assert np.abs(a / a.sum() - b / b.sum()).max() < 0.1 * (a / a.sum()).max()
    # too few stars: a Gaussian of the measured width
    few = empirical_psf(data_sub, frame.mask > 0, grms, truth["x", "y", "flux"][:3])
    assert few.source == "gaussian" and few.fwhm == pytest.approx(true.fwhm, rel=0.3)


# ------------------------------------------------------------------------------------------ photometry
def test_isolated_stars_flux_and_position(sparse_frame):
    frame, truth = sparse_frame
    det = PhotutilsPSFDetector()
    cat = det.detect(frame)
    assert cat.meta["psf_source"] == "simulator" and cat.meta["fit_shape"] == 3
    inner = truth[(truth["x"] > 5) & (truth["x"] < 250) & (truth["y"] > 5) & (truth["y"] < 250)]
    d, i = cKDTree(np.c_[cat["x"], cat["y"]]).query(np.c_[inner["x"], inner["y"]])
    assert np.all(d < 0.05), d.max()
    ratio = np.asarray(cat["flux"][i]) / np.asarray(inner["flux"])
    pull = (np.asarray(cat["flux"][i]) - np.asarray(inner["flux"])) / np.asarray(cat["flux_err"][i])
    # the paper's 100-px box median sky is right in a sparse field: the fit is unbiased to < 1 %
    assert abs(np.median(ratio) - 1) < 0.01
    assert 0.5 < np.std(pull) < 2.0


def test_dense_field_beats_sep_recall(dense_frame):
    frame, truth = dense_frame
    tgt = truth[truth["mag"] < 25]
    cats = {"sep": SepDetector().detect(frame), "psf": PhotutilsPSFDetector().detect(frame)}
    recall = {}
    for k, cat in cats.items():
        dt, _ = cKDTree(np.c_[cat["x"], cat["y"]]).query(np.c_[tgt["x"], tgt["y"]])
        recall[k] = np.mean(dt < 1.0)
        d, j = cKDTree(np.c_[tgt["x"], tgt["y"]]).query(np.c_[cat["x"], cat["y"]])
        assert np.mean(d < 1.0) > 0.75  # precision at 1 px
    # the residual pass finds stars sep lost next to brighter ones
    assert recall["psf"] > recall["sep"] + 0.1
    cat = cats["psf"]
    d, j = cKDTree(np.c_[cat["x"], cat["y"]]).query(np.c_[tgt["x"], tgt["y"]])
    bright = (np.asarray(tgt["mag"]) < 21) & (d < 1.0)
    dm = np.asarray(cat["mag"][j[bright]]) - np.asarray(tgt["mag"][bright])
    assert np.isfinite(dm).all()  # saturated stars too (sep's wing flux where the fit box is all saturated)
    assert np.median(np.abs(dm)) < 0.03


def test_dao_finder_single_pass(sparse_frame):
    frame, truth = sparse_frame
    cat = PhotutilsPSFDetector(finder="dao", iterative=False).detect(frame)
    d, _ = cKDTree(np.c_[cat["x"], cat["y"]]).query(np.c_[truth["x"], truth["y"]])
    assert np.mean(d < 0.1) > 0.9


def test_flat_frame_gives_empty_catalogue():
    cat = PhotutilsPSFDetector().detect(flat_frame())
    assert len(cat) == 0 and "flux" in cat.colnames


def test_tiled_fit_matches_single_tile(dense_frame):
    full, _ = dense_frame
    frame = Frame(**{**full.__dict__, "data": full.data[:200, :200].copy(), "mask": full.mask[:200, :200].copy()})
    whole = PhotutilsPSFDetector(tile=4096).detect(frame)
    tiled = PhotutilsPSFDetector(tile=128, overlap=48).detect(frame)
    assert abs(len(tiled) - len(whole)) <= 0.02 * len(whole)
    d, j = cKDTree(np.c_[whole["x"], whole["y"]]).query(np.c_[tiled["x"], tiled["y"]])
    same = d < 1e-3
    assert same.mean() > 0.95  # only stars near the seams see different neighbours in their residual pass
    np.testing.assert_allclose(tiled["flux"][same], whole["flux"][j[same]], rtol=1e-3)
