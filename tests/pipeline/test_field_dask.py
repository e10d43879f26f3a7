"""pipeline=field, pipeline=detect and the simulator on Dask distributed (a 2-worker LocalCluster, one per
module): the same outputs as the serial run, byte for byte where the serial run is deterministic;
resume across runs; a worker killed mid-frame is retried and a frame that kills it twice is reported."""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

pytest.importorskip("dask.distributed")

from skyvar.detect.base import Detector  # noqa: E402
from skyvar.io.catalog import read_catalog_table  # noqa: E402
from skyvar.lightcurves.store import read_store  # noqa: E402
from skyvar.pipeline.distributed import DaskConfig, dask_client  # noqa: E402
from skyvar.pipeline.field import FieldPipeline  # noqa: E402
from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk  # noqa: E402

DASK = {"enabled": True, "n_workers": 2, "threads_per_worker": 1, "memory_limit": "2GiB", "retries": 1}
STAGES_MIN = {
    "indices": {"_target_": "skyvar.lightcurves.indices.IndicesStage", "plots": False},
    "excess": {"_target_": "skyvar.lightcurves.excess.ExcessStage", "min_points": 8, "min_per_bin": 3,
               "plots": False},
}
SEP = {"_target_": "skyvar.detect.sep_baseline.SepDetector", "name": "sep"}


class ApertureDetector(Detector):
    """sep extraction with 2.5 px aperture fluxes (the field tests' stand-in detector)."""

    name = "aperture"

    def _detect(self, frame):
        import sep

        d = np.ascontiguousarray(frame.data, dtype=np.float32)
        bkg = sep.Background(d, bw=32, bh=32)
        sub = d - bkg.back()
        obj = sep.extract(sub, 3.0, err=bkg.globalrms, minarea=3)
        flux, ferr, _ = sep.sum_circle(sub, obj["x"], obj["y"], 2.5,
                                       err=np.sqrt(bkg.globalrms**2 + np.clip(sub, 0, None)))
        return Table({"x": obj["x"], "y": obj["y"], "flux": flux / 0.93, "flux_err": ferr / 0.93})


class KillerDetector(ApertureDetector):
    """Kills its worker process (SIGKILL, as the OOM killer would) on ``once`` the first time it sees it
    and on ``always`` every time; otherwise the aperture detector."""

    def __init__(self, marker_dir, once="frame_0003", always="frame_0005"):
        self.marker_dir, self.once, self.always = str(marker_dir), once, always

    def _detect(self, frame):
        marker = Path(self.marker_dir) / f"{frame.frame_id}.seen"
        if frame.frame_id == self.always or (frame.frame_id == self.once and not marker.exists()):
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._detect(frame)


@pytest.fixture(scope="module")
def client():
    # the detectors above travel to the workers by value (the workers need not import this test module)
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with dask_client(DASK) as c:
        yield c
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("daskfield")
    simulate_field_to_disk(FieldSimConfig(out_dir=str(d), size=64, seed=5, n_epochs=16), progress=False)
    return d


def _pipeline(out, sim, **kw):
    args = dict(out_dir=str(out), input=str(sim / "frames"), truth=None, detector=SEP, photometry="auto",
                associate={"radius_px": 1.0, "n_partitions": 2, "tile_px": 40, "margin_px": 8},
                lightcurves={"stages": STAGES_MIN, "batch_curves": 1000}, candidates={"min_points": 8, "n_plot": 0},
                progress=False, plots=False)
    args.update(kw)
    return FieldPipeline(**args)


def _catalogs(d: Path) -> dict:
    out = {}
    for p in sorted(d.glob("*.parquet")):
        t = read_catalog_table(p)
        t.meta.pop("runtime_s", None)  # the wall time of the detection, not an output
        out[p.name] = t
    return out


def _assert_tables_equal(a: Table, b: Table):
    assert a.colnames == b.colnames and len(a) == len(b)
    for c in a.colnames:
        x, y = np.asarray(a[c]), np.asarray(b[c])
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), c
    assert dict(a.meta) == dict(b.meta)


def test_dask_config_block():
    assert DaskConfig.from_any(None).enabled is False
    assert DaskConfig.from_any({"enabled": True, "n_workers": 3}).n_workers == 3
    with pytest.raises(ValueError, match="unknown key"):
        DaskConfig.from_any({"n_worker": 2})
    # the block is the same in every pipeline config that has one
    import yaml

    conf = Path(__file__).resolve().parents[2] / "src" / "skyvar" / "conf" / "pipeline"
    for name in ("field", "detect", "associate", "lightcurves"):
        block = yaml.safe_load((conf / f"{name}.yaml").read_text())["dask"]
        assert block["enabled"] is False, name
        DaskConfig.from_any(block)


def test_field_on_dask_matches_serial_and_resumes(sim, tmp_path, client):
    """Forced photometry (sep reference), tiled association (9 tiles), features: the Dask run writes
    the serial run's catalogues, sources, store, features and candidates."""
    pytest.importorskip("skyvar.detect.sep_baseline")
    s_ser = _pipeline(tmp_path / "serial", sim).run()
    s_dk = _pipeline(tmp_path / "dask", sim, dask=DASK).run()
    assert s_ser["photometry"] == s_dk["photometry"] == "forced"
    a = s_dk["stages"]["associate"]["metrics"]
    assert a["n_tiles"] > 1 and a["tile_conflicts"] == 0
    assert s_dk["stages"]["photometry"]["metrics"]["n_tasks"] == 16
    ser, dk = _catalogs(tmp_path / "serial/photometry/catalogs"), _catalogs(tmp_path / "dask/photometry/catalogs")
    assert list(ser) == list(dk) and len(ser) == 16
    for k in ser:
        _assert_tables_equal(ser[k], dk[k])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "serial/associate/sources.parquet"),
                                  pd.read_parquet(tmp_path / "dask/associate/sources.parquet"))
    key = ["source_id", "band", "time"]
    st_s = read_store(tmp_path / "serial/associate/store").sort_values(key).reset_index(drop=True)
    st_d = read_store(tmp_path / "dask/associate/store").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(st_s, st_d)
    f_s = pd.read_parquet(tmp_path / "serial/features/lightcurve_features.parquet")
    f_d = pd.read_parquet(tmp_path / "dask/features/lightcurve_features.parquet")
    pd.testing.assert_frame_equal(f_s, f_d)
    c_s, c_d = Table.read(tmp_path / "serial/candidates.ecsv"), Table.read(tmp_path / "dask/candidates.ecsv")
    assert len(c_s) >= 15
    _assert_tables_equal(c_s, c_d)
    # resume across runs and engines: the serial output rerun on Dask reuses every stage
    again = _pipeline(tmp_path / "serial", sim, dask=DASK).run()
    assert all(v.get("reused") for v in again["stages"].values() if v.get("status") != "skipped")


def test_field_on_dask_by_sky_region_matches_whole_frame_serial_and_resumes(sim, tmp_path, client):
    """Forced photometry cut by sky region (forced.region_px: 2 x 2 regions of the 64² frames, runs of 6
    frames): (region x run) tasks + one assembly per frame write the whole-frame serial run's catalogues,
    sources and store; the serial run by region too; a run killed midway redoes only the missing frames."""
    pytest.importorskip("skyvar.detect.sep_baseline")
    small = {"tile": 32, "overlap": 12}
    by_region = {**small, "region_px": 32, "frames_per_task": 6}
    lc = {"stages": {"indices": STAGES_MIN["indices"]}, "batch_curves": 1000}
    s_ser = _pipeline(tmp_path / "serial", sim, forced={**small, "region_px": None}, lightcurves=lc).run()
    s_dk = _pipeline(tmp_path / "dask", sim, forced=by_region, lightcurves=lc, dask=DASK).run()
    _pipeline(tmp_path / "serial_regions", sim, forced=by_region, lightcurves=lc).run()
    m = s_dk["stages"]["photometry"]["metrics"]
    assert m["n_frames"] == 16 and m["n_failed"] == 0
    assert m["n_tasks"] == 4 * 3 + 16  # 4 regions x 3 runs of <= 6 frames, then 16 assemblies
    assert s_ser["stages"]["photometry"]["metrics"].get("n_tasks") is None
    ser = _catalogs(tmp_path / "serial/photometry/catalogs")
    assert len(ser) == 16 and min(len(t) for t in ser.values()) >= 15
    for run in ("dask", "serial_regions"):
        got = _catalogs(tmp_path / run / "photometry/catalogs")
        assert list(got) == list(ser), run
        for k in ser:
            _assert_tables_equal(ser[k], got[k])
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "serial/associate/sources.parquet"),
                                      pd.read_parquet(tmp_path / run / "associate/sources.parquet"))
    assert not (tmp_path / "dask/photometry/.region_parts").exists()  # the parts are gone once assembled
    # the photometry stage hash does not depend on how the work is cut: the whole-frame run is reused
    again = _pipeline(tmp_path / "serial", sim, forced=by_region, lightcurves=lc, dask=DASK).run()
    assert again["stages"]["photometry"]["reused"]
    # killed midway: no manifest, two catalogues missing -> only those two frames are measured (by region)
    out = tmp_path / "dask"
    (out / "photometry/_stage.json").unlink()
    cats = sorted((out / "photometry/catalogs").glob("*.parquet"))
    for c in (cats[2], cats[9]):
        c.unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "photometry/catalogs").glob("*.parquet")}
    s2 = _pipeline(out, sim, forced=by_region, lightcurves=lc, dask=DASK).run()
    m2 = s2["stages"]["photometry"]["metrics"]
    assert m2["n_resumed"] == 14 and m2["n_frames"] == 16 and m2["n_tasks"] == 4 + 2
    now = {p.name: p.stat().st_mtime_ns for p in (out / "photometry/catalogs").glob("*.parquet")}
    assert {k: now[k] for k in mtimes} == mtimes and len(now) == 16
    for k in ser:
        _assert_tables_equal(ser[k], _catalogs(out / "photometry/catalogs")[k])


def test_killed_worker_is_retried_and_twice_killed_frame_reported(sim, tmp_path, client):
    out = tmp_path / "run"
    kw = dict(photometry="per_frame", truth=None)
    killer = KillerDetector(tmp_path)
    s = _pipeline(out, sim, detector=killer, dask=DASK, **kw).run()
    m = s["stages"]["photometry"]["metrics"]
    assert m["n_frames"] == 15 and m["n_failed"] == 1
    fails = [f for f in json.loads((out / "failures.json").read_text()) if f.get("stage") == "photometry"]
    assert [Path(f["file"]).name for f in fails] == ["frame_0005.fits"]
    assert "died" in fails[0]["error"]
    # frame 3 killed its first worker and was rerun: its catalogue is the serial one
    ref = tmp_path / "ref"
    from skyvar.detect.batch import detect_files

    detect_files(ApertureDetector(), [sim / "frames/frame_0003.fits"], ref, "x", fmt="parquet")
    a = read_catalog_table(ref / "frame_0003.parquet")
    b = read_catalog_table(out / "photometry/catalogs/frame_0003.parquet")
    assert len(a) > 10 and np.array_equal(a["x"], b["x"]) and np.array_equal(a["mag"], b["mag"])
    assert (out / "candidates.ecsv").exists()
    # the finished stage is reused as it stands (its failure with it)
    s1 = _pipeline(out, sim, detector=killer, dask=DASK, **kw).run()
    assert s1["stages"]["photometry"]["reused"]
    assert sum(f.get("stage") == "photometry" for f in json.loads((out / "failures.json").read_text())) == 1
    # a run killed during photometry (no manifest, two catalogues missing): only the missing frames are
    # measured; the 13 catalogues written are kept untouched; frame 5 is tried (and fails) again
    (out / "photometry/_stage.json").unlink()
    cats = sorted((out / "photometry/catalogs").glob("*.parquet"))
    for c in (cats[1], cats[3]):
        c.unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "photometry/catalogs").glob("*.parquet")}
    s2 = _pipeline(out, sim, detector=killer, dask=DASK, **kw).run()
    m2 = s2["stages"]["photometry"]["metrics"]
    assert m2["n_resumed"] == 13 and m2["n_frames"] == 15 and m2["n_failed"] == 1
    now = {p.name: p.stat().st_mtime_ns for p in (out / "photometry/catalogs").glob("*.parquet")}
    assert {k: now[k] for k in mtimes} == mtimes and len(now) == 15


def test_detect_pipeline_on_dask_matches_serial(sim, tmp_path, client):
    from skyvar.pipeline.detect import DetectPipeline

    det = ApertureDetector()
    kw = dict(detector=det, input=str(sim / "frames"), progress=False, catalog_format="parquet")
    DetectPipeline(out_dir=str(tmp_path / "s"), **kw).run()
    s = DetectPipeline(out_dir=str(tmp_path / "d"), dask=DASK, **kw).run()
    assert s["n_catalogs"] == 16
    a, b = _catalogs(tmp_path / "s/catalogs"), _catalogs(tmp_path / "d/catalogs")
    assert list(a) == list(b)
    for k in a:
        _assert_tables_equal(a[k], b[k])


def test_simulator_epochs_on_dask_are_byte_identical(tmp_path, client):
    import shutil

    # the same out_dir for both runs: it is part of the config hash written into every header
    cfg = FieldSimConfig(out_dir=str(tmp_path / "sim"), size=48, seed=9, n_epochs=6, pointing_jitter_px=0.2)
    simulate_field_to_disk(cfg, progress=False)
    shutil.move(tmp_path / "sim", tmp_path / "serial")
    simulate_field_to_disk(cfg, progress=False, client=client)
    for e in range(6):
        name = f"frames/frame_{e:04d}.fits"
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "sim" / name).read_bytes(), name
    assert (tmp_path / "serial/truth.ecsv").read_bytes() == (tmp_path / "sim/truth.ecsv").read_bytes()


@pytest.mark.gpu
def test_gpu_workers_hold_the_model_on_their_gpu(sim, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from skyvar.detect.batch import detect_files
    from skyvar.pipeline import distributed

    cfg = {"enabled": True, "gpu": True, "memory_limit": "8GiB"}
    pnet = {"_target_": "skyvar.detect.pnet.PNetDetector", "name": "pnet", "device": "auto"}
    files = sorted((sim / "frames").glob("*.fits"))[:4]
    serial = detect_files(pnet, files, tmp_path / "s", "h", fmt="parquet")
    outer = list(distributed._ACTIVE)
    distributed._ACTIVE.clear()  # a cluster of its own (GPU workers), not the module's CPU cluster
    try:
        with dask_client(cfg) as c:
            res = detect_files(pnet, files, tmp_path / "d", "h", fmt="parquet", client=c)
            devices = c.run(lambda: [str(next(o.net.parameters()).device) for o in distributed._CACHE.values()])
    finally:
        distributed._ACTIVE[:] = outer
    assert len(res.catalogs) == len(serial.catalogs) == 4
    assert all(d.startswith("cuda") for ds in devices.values() for d in ds) and devices
    for a, b in zip(serial.catalogs, res.catalogs):
        ta, tb = read_catalog_table(a), read_catalog_table(b)
        assert len(ta) == len(tb) and np.allclose(ta["x"], tb["x"], atol=1e-3)


@pytest.mark.slow
def test_infer_cli_field_on_dask(tmp_path):
    """The README's scale-out command on a tiny simulated series (a LocalCluster of its own)."""
    pytest.importorskip("skyvar.detect.sep_baseline")
    from tests.conftest import run_cli

    out = tmp_path / "cli"
    r = run_cli(["infer.py", "pipeline=field", "detector=sep", f"out_dir={out}", "pipeline.simulate.size=96",
                 "pipeline.simulate.n_epochs=12", "pipeline.progress=false", "pipeline.plots=false",
                 "pipeline.lightcurves.stages.flares=null", "pipeline.lightcurves.stages.periodogram=null",
                 "pipeline.candidates.min_points=5", "pipeline.dask.enabled=true", "pipeline.dask.n_workers=2",
                 "pipeline.associate.tile_px=48"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["stages"]["photometry"]["metrics"]["n_tasks"] == 12 and s["stages"]["associate"]["metrics"]["n_tiles"] > 1
    assert (out / "candidates.ecsv").exists()
