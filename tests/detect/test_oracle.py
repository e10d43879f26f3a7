"""The oracle detector (skyvar.detect.oracle): the truth-seeded fit on a small simulated frame, its
margin stars, its errors, and the harness running it beside a detector."""

import json

import numpy as np
import pytest
from astropy.table import Table

from skyvar.detect.oracle import OracleDetector, margin_stars
from skyvar.io.fits import read_frame
from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("oracle")
    simulate_field_to_disk(FieldSimConfig(out_dir=str(d), size=160, seed=77, region=5), progress=False)
    return d


def test_oracle_needs_truth():
    with pytest.raises(ValueError, match="truth"):
        OracleDetector()


def test_margin_stars_are_rebuilt_from_the_simulator_config(sim):
    frame = read_frame(sim / "frames" / "frame_0000.fits")
    x, y, f = margin_stars(sim / "truth.ecsv", frame)
    assert len(x) > 10 and np.all((x < -0.5) | (x > 159.5) | (y < -0.5) | (y > 159.5))
    assert np.all(f > 0) and np.all(np.abs(x - 80) < 80 + 13)


def test_oracle_measures_every_target(sim):
    frame = read_frame(sim / "frames" / "frame_0000.fits")
    truth = Table.read(sim / "truth.ecsv")
    cat = OracleDetector(truth=sim / "truth.ecsv", device="cpu").detect(frame)
    tgt = truth[truth["mag"] < 25]
    assert len(cat) == len(tgt) and set(cat["source_id"]) == set(tgt["source_id"])
    d = np.hypot(cat["x"] - cat["x_true"], cat["y"] - cat["y_true"])
    assert np.mean(d < 1.0) > 0.99
    dm = np.asarray(cat["mag"] - cat["mag_true"])
    bright = np.asarray(cat["mag_true"]) < 22
    assert np.median(np.abs(dm[bright])) < 0.02 and abs(np.median(dm)) < 0.01
    pull = dm / np.asarray(cat["mag_err"])
    pull = pull[np.isfinite(pull)]  # the faintest targets can fit to flux <= 0 (mag NaN)
    assert len(pull) > 0.97 * len(cat)
    assert 0.8 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.3


def test_harness_runs_the_oracle_beside_a_detector(sim, tmp_path):
    from skyvar.evaluate.report import evaluate_detections

    frame = read_frame(sim / "frames" / "frame_0000.fits")
    truth = Table.read(sim / "truth.ecsv")
    # a "detector" that found the bright half of the targets at positions 0.05 px off
    t = truth[truth["mag"] < 23.5]
    cat = Table({"x": t["x"] + 0.05, "y": np.asarray(t["y"]), "mag": t["mag"] + 0.02, "mag_err": np.full(len(t), 0.05)})
    cat.meta.update(frame_id=frame.frame_id, source_file=str(frame.path), detector="half")
    m = evaluate_detections([cat], sim / "truth.ecsv", tmp_path / "rep", plots_enabled=False)
    o = m["oracle"]
    assert o["recall"]["1"] > 0.99 and m["recall"]["1"] < 0.5
    assert m["vs_oracle"]["1"]["f1_minus_oracle"] == pytest.approx(m["f1"]["1"] - o["f1"]["1"])
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert "oracle" in saved and "vs_oracle" in saved
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| oracle | 0.1 |" in md and "versus the oracle" in md
    assert (tmp_path / "rep" / "oracle" / "frame_0000.ecsv").exists()  # cached for reruns
    m0 = evaluate_detections([cat], sim / "truth.ecsv", None, oracle=False)
    assert "oracle" not in m0


def test_header_psf_only_when_the_header_determines_it(tmp_path):
    """The simulator writes no aberrations or Moffat shape: such headers give no PSF (detectors build an
    ePSF), while the oracle reads the full configuration written beside the truth."""
    from astropy.io import fits
    from omegaconf import OmegaConf

    from skyvar.detect.psf_models import psf_from_header, psf_from_sim_config
    from skyvar.sim.psf import PSFConfig

    hdr = fits.Header({"PSFMODEL": "optical", "PSFJITTR": 0.06, "PSFDIL": 1.0, "PIXSCALE": 0.074})
    assert psf_from_header(hdr) is None
    hdr["PSFMODEL"] = "airy"
    airy = psf_from_header(hdr)
    assert airy is not None and airy.source == "simulator"
    cfg = FieldSimConfig(psf=PSFConfig(model="optical", defocus=0.3, astig1=0.2))
    p = tmp_path / "sim_config.yaml"
    p.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    opt = psf_from_sim_config(p)
    assert opt is not None and opt.fwhm > 1.1 * airy.fwhm  # the aberrations broaden it
    assert psf_from_sim_config(tmp_path / "missing.yaml") is None


def test_detector_configs_instantiate(sim):
    from conftest import ROOT
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "src" / "skyvar" / "conf"), version_base="1.3"):
        cfg = compose("infer", overrides=["detector=oracle", f"truth={sim / 'truth.ecsv'}", "paths.root_dir=.",
                                          "device=cpu"])
        pcfg = compose("infer", overrides=["detector=pnet", f"paths.root_dir={ROOT}", "device=cpu",
                                           "detector.operating_radius=0.1"])
    det = instantiate(cfg.detector)
    assert det.name == "oracle" and det.n_iter == 4
    p = instantiate(pcfg.detector)
    assert p.refine and not p.tta and p.report_mag_max < 25.0  # the 0.1 px operating point's target limit
    assert p.refine_err_scale > 1.0
