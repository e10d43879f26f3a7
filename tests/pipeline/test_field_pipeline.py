"""pipeline=field end to end on a tiny simulated time series (64 x 64 px, 20 epochs): candidates,
per-stage evaluation, resume, bad frames, missing components, logging, and the infer.py command."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
from astropy.table import Table

from skyvar.detect.base import Detector
from skyvar.pipeline.field import CANDIDATE_FLAGS, FieldPipeline
from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

HAS_BASELINES = all(importlib.util.find_spec(m) is not None
                    for m in ("skyvar.detect.sep_baseline", "skyvar.detect.psf_models"))
STAGES_MIN = {
    "indices": {"_target_": "skyvar.lightcurves.indices.IndicesStage", "plots": False},
    "excess": {"_target_": "skyvar.lightcurves.excess.ExcessStage", "min_points": 10, "min_per_bin": 3,
               "plots": False},
}


class ApertureDetector(Detector):
    """A small real detector (sep background, 3σ extraction, 2.5 px aperture fluxes) standing in for
    the paper's classical detector, so these tests do not depend on the baselines' settings."""

    name = "aperture"

    def _detect(self, frame):
        import sep

        d = np.ascontiguousarray(frame.data, dtype=np.float32)
        bkg = sep.Background(d, bw=32, bh=32)
        sub = d - bkg.back()
        obj = sep.extract(sub, 3.0, err=bkg.globalrms, minarea=3)
        flux, ferr, _ = sep.sum_circle(sub, obj["x"], obj["y"], 2.5, err=np.sqrt(bkg.globalrms**2 + np.clip(sub, 0, None)))
        return Table({"x": obj["x"], "y": obj["y"], "flux": flux / 0.93, "flux_err": ferr / 0.93})


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("fieldsim")
    simulate_field_to_disk(FieldSimConfig(out_dir=str(d), size=64, seed=11, n_epochs=20), progress=False)
    return d


def _pipeline(out, sim, frames=None, **kw):
    args = dict(out_dir=str(out), input=str(frames or sim / "frames"), truth=str(sim / "truth.ecsv"),
                detector=ApertureDetector(), photometry="per_frame", associate={"radius_px": 1.0, "n_partitions": 2},
                lightcurves={"stages": STAGES_MIN, "batch_curves": 1000}, candidates={"min_points": 10, "n_plot": 3},
                evaluate={"detection_frames": 3}, progress=False)
    args.update(kw)
    return FieldPipeline(**args)


@pytest.fixture(scope="module")
def first_run(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("field_run")
    summary = _pipeline(out, sim).run()
    return out, summary


def test_end_to_end_candidates_and_evaluation(first_run, sim):
    out, s = first_run
    cand = Table.read(out / "candidates.ecsv")
    truth = Table.read(sim / "truth.ecsv")
    # one row per source, positions, magnitudes, indices, search columns (NaN when a search is absent)
    assert len(cand) == s["stages"]["associate"]["metrics"]["n_sources"] > 0.5 * (truth["mag"] < 23).sum()
    assert len(np.unique(cand["source_id"])) == len(cand)
    for c in ("ra", "dec", "x", "y", "mag_mean", "mag_median", "Q2", "robust_std", "inv_eta", "period", "fap",
              "fdr_cal", "p_periodic", "class", "flags"):
        assert c in cand.colnames, c
    assert np.all(np.isfinite(cand["ra"])) and np.all(np.isfinite(cand["mag_median"]))
    assert cand.meta["flags"] == CANDIDATE_FLAGS
    # the evaluation of every stage
    det = json.loads((out / "eval_detection" / "metrics.json").read_text())
    assert det["n_frames"] == 3 and det["recall"]["1"] > 0.3
    lc = json.loads((out / "eval_lightcurves" / "metrics.json").read_text())
    assert lc["n_matched"] > 0.8 * lc["n_sources"]
    # measured scatter is photometric noise: within a factor of 3 of the expected curve at i ~ 22
    exp = lc["per_bin"]["expected_scatter"]
    i22 = lc["mag_bins"].index(22.0)
    if lc["per_bin"]["scatter_median"][i22] is not None:
        assert exp[i22] / 3 < lc["per_bin"]["scatter_median"][i22] < 3 * exp[i22]
    assert (out / "eval_classification" / "metrics.json").exists()
    for p in ("plots/scatter_vs_mag.png", "eval_lightcurves/scatter_vs_mag.png", "eval_detection/fig7_f1.png"):
        assert (out / p).stat().st_size > 1000, p
    # nothing failed; light curves with no usable point (every epoch flagged, e.g. saturated) are named
    # per source and band by the light-curve pipeline's cleaning verdicts (issue 15), not failures of a step
    fails = json.loads((out / "failures.json").read_text())
    assert [f for f in fails if f.get("step") != "clean"] == []
    assert all("source_id" in f and "masked by flags" in f["reason"] for f in fails)


def test_rerun_reuses_every_stage(first_run, sim):
    out, _ = first_run
    s2 = _pipeline(out, sim).run()
    ran = {k: v for k, v in s2["stages"].items() if v.get("status") != "skipped"}
    assert ran and all(v.get("reused") for v in ran.values()), ran
    # a run killed during photometry: no manifest, some catalogues missing -> only those frames are redone
    (out / "photometry" / "_stage.json").unlink()
    for c in sorted((out / "photometry" / "catalogs").glob("*.parquet"))[:2]:
        c.unlink()
    s_int = _pipeline(out, sim).run()
    m = s_int["stages"]["photometry"]["metrics"]
    assert m["n_resumed"] == 18 and m["n_frames"] == 20
    assert s_int["stages"]["associate"]["reused"]
    # a changed stage configuration reruns that stage and those after it, not the ones before
    s3 = _pipeline(out, sim, candidates={"min_points": 12, "n_plot": 0}).run()
    assert s3["stages"]["photometry"]["reused"] and s3["stages"]["features"]["reused"]
    assert not s3["stages"]["candidates"]["reused"] and not s3["stages"]["eval_classification"]["reused"]


def test_bad_frame_is_reported_with_stage_and_file(sim, tmp_path):
    frames = tmp_path / "frames"
    shutil.copytree(sim / "frames", frames)
    bad = frames / "frame_0007.fits"
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated by an interrupted copy
    (frames / "frame_0013.fits").write_bytes(b"not a FITS file at all" * 10)
    out = tmp_path / "run"
    s = _pipeline(out, sim, frames=frames, plots=False).run()
    # (light curves rejected by cleaning are listed too, by source and band: step "clean")
    fails = [f for f in json.loads((out / "failures.json").read_text()) if f.get("step") != "clean"]
    files = {f["file"] for f in fails}
    assert str(bad) in files and str(frames / "frame_0013.fits") in files
    assert all(f["stage"] == "photometry" and f["error"] for f in fails)
    assert s["stages"]["photometry"]["metrics"]["n_frames"] == 18
    cand = Table.read(out / "candidates.ecsv")
    assert len(cand) > 0 and np.nanmax(cand["n_obs"]) == 18


def test_missing_components_are_skipped_with_a_message(sim, tmp_path):
    stages = {**STAGES_MIN,
              "nosuch": {"_target_": "skyvar.lightcurves.no_such_module.Stage"},
              "astronet": {"_target_": "skyvar.lightcurves.classify.AstronetStage",
                           "checkpoint": str(tmp_path / "missing.pt")}}
    s = _pipeline(tmp_path / "run", sim, lightcurves={"stages": stages}, truth=None, plots=False).run()
    skipped = {k["stage"]: k["reason"] for k in s["skipped_components"]}
    assert "no_such_module" in skipped["features.nosuch"]
    assert "missing.pt" in skipped["features.astronet"] and "not found" in skipped["features.astronet"]
    assert (tmp_path / "run" / "candidates.ecsv").exists()


def test_logger_receives_config_metrics_table_and_images(sim, tmp_path):
    class Recorder:
        def __init__(self):
            self.calls = {}

        def _rec(self, name, *a, **k):
            self.calls.setdefault(name, []).append((a, k))

        def log_hyperparams(self, *a, **k):
            self._rec("hyperparams", *a, **k)

        def log_metrics(self, *a, **k):
            self._rec("metrics", *a, **k)

        def log_table(self, *a, **k):
            self._rec("table", *a, **k)

        def log_image(self, *a, **k):
            self._rec("image", *a, **k)

    rec = Recorder()
    _pipeline(tmp_path / "run", sim, logger=rec).run()
    assert {"hyperparams", "metrics", "table", "image"} <= set(rec.calls)
    keys = set().union(*(a[0].keys() for a, _ in rec.calls["metrics"]))
    assert any(k.startswith("eval_lightcurves/") for k in keys)
    assert len(rec.calls["table"][0][1]["dataframe"]) > 0


@pytest.mark.skipif(not HAS_BASELINES, reason="classical baselines (skyvar.detect.sep_baseline, psf_models) not installed")
def test_classical_forced_photometry_path(sim, tmp_path):
    s = _pipeline(tmp_path / "run", sim, photometry="auto",
                  detector={"_target_": "skyvar.detect.sep_baseline.SepDetector", "name": "sep"}).run()
    assert s["photometry"] == "forced" and s["name"] == "sep+forced_psf"
    ref = Table.read(tmp_path / "run" / "reference" / "reference.ecsv")
    cat = Table.read(sorted((tmp_path / "run" / "photometry" / "catalogs").glob("*.parquet"))[3])
    assert len(cat) == len(ref) and np.allclose(cat["x"], ref["x"])  # the reference positions, every frame
    lc = json.loads((tmp_path / "run" / "eval_lightcurves" / "metrics.json").read_text())
    assert lc["scatter_at_22"] is None or lc["scatter_at_22"] < 0.05


@pytest.mark.skipif(not HAS_BASELINES, reason="detector=sep needs skyvar.detect.sep_baseline")
def test_infer_cli_simulates_and_runs(tmp_path):
    from tests.conftest import run_cli

    out = tmp_path / "cli"
    r = run_cli(["infer.py", "pipeline=field", "detector=sep", f"out_dir={out}", "pipeline.simulate.size=64",
                 "pipeline.simulate.n_epochs=12", "pipeline.progress=false", "pipeline.plots=false",
                 "pipeline.lightcurves.stages.flares=null", "pipeline.lightcurves.stages.periodogram=null",
                 "pipeline.candidates.min_points=5"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "candidates.ecsv").exists() and (out / "eval_lightcurves" / "metrics.json").exists()


HAS_PNET = importlib.util.find_spec("skyvar.detect.pnet") is not None


@pytest.mark.skipif(not (HAS_PNET and HAS_BASELINES), reason="PNet or the PSF models are not installed")
def test_pnet_reference_with_forced_photometry_is_the_default(sim, tmp_path):
    """auto = forced for PNet too: PNet on the median stack gives the reference, forced PSF photometry
    measures it on every frame (the best pipeline of docs/results/end_to_end.md)."""
    s = _pipeline(tmp_path / "run", sim, photometry="auto",
                  detector={"_target_": "skyvar.detect.pnet.PNetDetector", "name": "pnet", "device": "cpu"}).run()
    assert s["photometry"] == "forced" and s["name"] == "pnet+forced_psf"
    ref = Table.read(tmp_path / "run" / "reference" / "reference.ecsv")
    cat = Table.read(sorted((tmp_path / "run" / "photometry" / "catalogs").glob("*.parquet"))[5])
    assert len(ref) > 10 and len(cat) == len(ref) and np.allclose(cat["x"], ref["x"])
