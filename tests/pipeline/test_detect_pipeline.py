"""The detect pipeline with a stand-in detector (peaks of the noise-free truth), so the pipeline
mechanics are tested independently of any real detector: bad frames, resume, report."""

import json

import numpy as np
from astropy.io import fits
from astropy.table import Table

from skyvar.detect.base import Detector
from skyvar.pipeline.detect import DetectPipeline
from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk


class TruthDetector(Detector):
    """Returns the truth catalogue of the frame's own simulation (an oracle), for pipeline tests."""

    name = "oracle"

    def __init__(self, truth_path):
        self.truth = Table.read(truth_path)
        self.calls = 0

    def _detect(self, frame):
        self.calls += 1
        t = self.truth[self.truth["mag"] < 24]
        return Table({"x": t["x"], "y": t["y"], "flux": t["flux"], "flux_err": np.sqrt(t["flux"])})


def test_pipeline_reports_bad_frames_resumes_and_evaluates(tmp_path):
    sim = tmp_path / "sim"
    simulate_field_to_disk(FieldSimConfig(out_dir=str(sim), size=64, seed=4, n_epochs=2), progress=False)
    frames = sim / "frames"
    (frames / "corrupt.fits").write_bytes(b"SIMPLE  = garbage" * 30)
    good = (frames / "frame_0000.fits").read_bytes()
    (frames / "truncated.fits").write_bytes(good[: len(good) // 3])
    nan = fits.open(frames / "frame_0000.fits")
    nan[0].data[:] = np.nan
    nan.writeto(frames / "allnan.fits")
    det = TruthDetector(sim / "truth.ecsv")
    out = tmp_path / "out"
    p = DetectPipeline(det, out_dir=str(out), input=str(frames), truth=str(sim / "truth.ecsv"), progress=False)
    summary = p.run()
    assert summary["n_inputs"] == 5 and summary["n_catalogs"] == 2 and summary["n_failed"] == 3
    failures = json.loads((out / "failures.json").read_text())
    assert {f["file"].split("/")[-1] for f in failures} == {"corrupt.fits", "truncated.fits", "allnan.fits"}
    cat = Table.read(out / "catalogs" / "frame_0001.ecsv")
    for c in ("x", "y", "ra", "dec", "flux", "flux_err", "mag", "mag_err", "flags", "frame_id", "detector"):
        assert c in cat.colnames
    m = json.loads((out / "report" / "metrics.json").read_text())
    assert m["precision"]["0.1"] == 1.0 and 0 < m["recall"]["0.1"] < 1
    # rerun: nothing is detected again (same detector config), report rebuilt
    calls = det.calls
    p.run()
    assert det.calls == calls
