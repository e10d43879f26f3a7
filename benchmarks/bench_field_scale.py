"""Scale-out of the whole field pipeline: serial versus a Dask LocalCluster, in one run.

    nice -n 10 python benchmarks/bench_field_scale.py [--size 2048] [--epochs 100] [--workers 2]
        [--detector pnet] [--tile-px 1024] [--out datasets/bench_field_scale] [--json results.json]

Simulates a CSST-like series (seed 2024) and runs ``pipeline=field`` (the shipped config: PNet on the
reference stack, forced PSF photometry on every frame, tiled association, the light-curve stages of
``pipeline.lightcurves.stages``, candidates; no truth, no plots) twice: serially in this process (one
thread), then with ``pipeline.dask.enabled=true`` on a LocalCluster of ``--workers`` single-threaded
workers (the simulation too). Per stage it reports wall time, CPU seconds (the client's plus every
worker's, so CPU time is comparable when the machine is shared), peak RSS of the serial process and
of each worker (sampled every 0.1 s), throughput in pixel-epochs per core-second and the parallel
efficiency ``T_serial / (n_workers x T_dask)``; it then checks that both runs wrote the same frames,
catalogues, sources, features and candidates, and that the tiled association equals the untiled one.
Machine load (1-min load average, sampled every 5 s) is printed with the results: on a shared machine
the wall-clock efficiency says how much of two cores this run got, the CPU seconds what the work cost,
and ``eff_cpu = CPU_serial / (workers x (client CPU + busiest worker's CPU))`` the efficiency the same
run would have on dedicated cores (it counts the parallel overhead and the load imbalance, not the
other tenants of the machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"  # one core for the serial run; Dask workers get one thread each too

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FRAME_STAGES = ("simulate", "reference", "photometry")


class Meter:
    """Per-stage wall, CPU (client + workers) and peak RSS (client, each worker)."""

    def __init__(self, client=None):
        from skyvar.pipeline.distributed import start_rss_sampler

        self.client = client
        self.rows: dict[str, dict] = {}
        start_rss_sampler()
        if client is not None:
            client.run(start_rss_sampler)

    def _workers(self, fn, **kw) -> dict:
        return self.client.run(fn, **kw) if self.client is not None else {}

    @contextlib.contextmanager
    def stage(self, name: str):
        from skyvar.pipeline.distributed import process_cpu_s, rss_peak

        # workers restarted mid-stage (none here) would restart their CPU count: read them per stage
        w0 = self._workers(process_cpu_s)
        self._workers(rss_peak, reset=True)
        rss_peak(reset=True)
        c0, t0 = process_cpu_s(), time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - t0
            client_cpu = process_cpu_s() - c0
            w1 = self._workers(process_cpu_s)
            per = sorted(w1[a] - w0.get(a, 0.0) for a in w1)
            wcpu = sum(per)
            wrss = self._workers(rss_peak)
            self.rows[name] = {"wall_s": wall, "client_cpu_s": client_cpu, "worker_cpu_s": wcpu,
                               "worker_cpu_each_s": per,
                               # the run's CPU critical path: the client plus the busiest worker
                               "critical_cpu_s": client_cpu + (per[-1] if per else 0.0),
                               "cpu_s": client_cpu + wcpu, "client_peak_rss_mb": rss_peak(),
                               "worker_peak_rss_mb": max(wrss.values()) if wrss else None,
                               "worker_peak_rss_all_mb": sorted(wrss.values()) if wrss else None}


def _warm() -> bool:
    """Import what the stages use, in the serial process and on every worker before the clock starts,
    so that no stage pays a process's one-time imports (torch, GalSim, astropy ...)."""
    import importlib

    for m in ("torch", "galsim", "skyvar.sim.field", "skyvar.detect.forced_psf", "skyvar.detect.pnet",
              "skyvar.detect.sep_baseline", "skyvar.lightcurves.associate", "skyvar.lightcurves.indices",
              "skyvar.lightcurves.excess", "skyvar.lightcurves.flares", "skyvar.lightcurves.periodogram",
              "skyvar.lightcurves.classify", "skyvar.pipeline.lightcurves", "skyvar.pipeline.field"):
        try:
            importlib.import_module(m)
        except ImportError:
            pass
    import torch

    torch.set_num_threads(1)
    return True


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module("skyvar.conf", version_base="1.3"):
        return compose("infer", overrides=overrides)


def run_one(mode: str, a, base: Path) -> dict:
    from hydra.utils import instantiate

    from skyvar.pipeline.distributed import DaskConfig, dask_client
    from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

    out = base / mode
    dask = mode == "dask"
    dcfg = {"enabled": True, "n_workers": a.workers, "threads_per_worker": 1, "memory_limit": a.memory_limit} \
        if dask else {"enabled": False}
    cfg = _compose([
        "pipeline=field", f"detector={a.detector}", f"out_dir={out / 'run'}", f"input={out / 'sim' / 'frames'}",
        "device=cpu", "pipeline.plots=false", "pipeline.progress=false",
        f"pipeline.associate.tile_px={a.tile_px}",
        *[f"pipeline.dask.{k}={v}" for k, v in dcfg.items()],
        *[f"pipeline.lightcurves.stages.{st}=null" for st in a.drop_stages],
    ])
    ctx = dask_client(DaskConfig.from_any(dcfg)) if dask else contextlib.nullcontext(None)
    t_all = time.perf_counter()
    with ctx as client:
        _warm()
        if client is not None:
            client.run(_warm)
        t_start = time.perf_counter() - t_all
        meter = Meter(client)
        sim = FieldSimConfig(out_dir=str(out / "sim"), size=a.size, n_epochs=a.epochs, seed=2024,
                             truth_lightcurves="none")
        with meter.stage("simulate"):
            simulate_field_to_disk(sim, progress=False, client=client)
        pipe = instantiate(cfg.pipeline, _convert_="partial")
        run = pipe.runner.run

        def timed(name, *args, **kw):
            with meter.stage(name):
                return run(name, *args, **kw)

        pipe.runner.run = timed
        with meter.stage("total_pipeline"):
            summary = pipe.run()
    wall = time.perf_counter() - t_all
    # the stage windows reset the RSS peaks inside the total's window: its peaks are the stages' maxima
    tot = meter.rows["total_pipeline"]
    for k in ("client_peak_rss_mb", "worker_peak_rss_mb"):
        vals = [r[k] for n, r in meter.rows.items() if n not in ("total_pipeline", "simulate") and r[k] is not None]
        tot[k] = max(vals) if vals else None
    for st, rec in summary["stages"].items():
        if st in meter.rows:
            meter.rows[st]["metrics"] = rec.get("metrics", {})
    return {"mode": mode, "wall_s": wall, "cluster_start_s": t_start, "stages": meter.rows,
            "n_failures": summary["failures"]}


def compare(base: Path, a) -> dict:
    """Same outputs from both runs (paths differ, so file bytes of frames and catalogue metadata do)."""
    import numpy as np
    import pandas as pd
    from astropy.io import fits
    from astropy.table import Table

    from skyvar.lightcurves.associate import associate_catalogs

    s, d = base / "serial", base / "dask"
    out = {}
    frames = sorted((s / "sim/frames").glob("*.fits"))
    out["frames_equal"] = all(
        np.array_equal(fits.getdata(f), fits.getdata(d / "sim/frames" / f.name)) and
        np.array_equal(fits.getdata(f, "MASK"), fits.getdata(d / "sim/frames" / f.name, "MASK")) for f in frames)
    cols = ["x", "y", "ra", "dec", "flux", "flux_err", "mag", "mag_err", "flags"]
    cats = sorted((s / "run/photometry/catalogs").glob("*.parquet"))
    out["catalogs_equal"] = len(cats) == a.epochs and all(
        pd.read_parquet(c, columns=cols).equals(pd.read_parquet(d / "run/photometry/catalogs" / c.name, columns=cols))
        for c in cats)
    src_s = pd.read_parquet(s / "run/associate/sources.parquet")
    out["sources_equal"] = src_s.equals(pd.read_parquet(d / "run/associate/sources.parquet"))
    f_s = pd.read_parquet(s / "run/features/lightcurve_features.parquet")
    f_d = pd.read_parquet(d / "run/features/lightcurve_features.parquet")
    out["features_equal"] = f_s.equals(f_d)
    c_s, c_d = Table.read(s / "run/candidates.ecsv").to_pandas(), Table.read(d / "run/candidates.ecsv").to_pandas()
    out["candidates_equal"] = c_s.equals(c_d)
    out["n_candidates_rows"] = len(c_s)
    # the tiled association (both runs) against one untiled pass over the same catalogues
    from skyvar.pipeline.field import _pixel_scale

    scale = _pixel_scale(frames[0])
    t0 = time.perf_counter()
    res = associate_catalogs(cats, base / "untiled_store", radius_arcsec=scale, radius_pix=1.0, pixel_scale=scale,
                             n_partitions=8)
    out["untiled_assoc_wall_s"] = time.perf_counter() - t0
    out["tiled_equals_untiled"] = res.sources.equals(src_s.drop(columns=["n_measurements"]))
    out["n_sources"] = len(src_s)
    return out


def unit_costs(what: str, run_dir: Path, n: int = 3, region_px: int = 1024) -> dict:
    """CPU seconds and peak RSS of the per-worker units at a run's frame size, in this process:
    ``forced`` (the whole-frame forced-photometry engine built from the series frame, then ``n`` frames),
    ``forced_region`` (one region task of ``pipeline.forced.region_px``: the largest region's engine built
    from the series frame's section, then ``n`` frames' sections measured and their parts written) or
    ``sim`` (the field built, then ``n`` epochs rendered; the star operator is cached when it fits)."""
    import numpy as np

    from skyvar.pipeline.distributed import process_cpu_s, rss_peak, start_rss_sampler

    _warm()
    start_rss_sampler()
    base_rss = rss_peak(reset=True)
    out = {"what": what, "base_rss_mb": base_rss}
    if what == "forced":
        from skyvar.detect.forced_psf import ForcedPSFDetector
        from skyvar.io.fits import read_frame

        frames = sorted((run_dir / "sim" / "frames").glob("*.fits"))
        c = process_cpu_s()
        det = ForcedPSFDetector(reference=run_dir / "run" / "reference" / "reference.ecsv", series_frame=str(frames[0]))
        fr = read_frame(frames[0])
        out["read_s"] = process_cpu_s() - c
        c = process_cpu_s()
        det._start_series(fr, det._geometry(fr))
        out["setup_cpu_s"] = process_cpu_s() - c
        per = []
        for i in range(n):
            fr = read_frame(frames[(i + 1) % len(frames)])
            c = process_cpu_s()
            cat = det.detect(fr)
            per.append(process_cpu_s() - c)
        out.update(frame_cpu_s=per, n_stars=len(det.reference), n_rows=len(cat), shape=list(fr.shape),
                   n_tiles_engine=len(det._engine.tiles))
    elif what == "forced_region":
        import tempfile

        from skyvar.detect.forced_psf import ForcedPSFDetector, _RegionSeries, forced_regions, frame_geometry
        from skyvar.io.fits import read_frame

        frames = sorted((run_dir / "sim" / "frames").glob("*.fits"))
        c = process_cpu_s()
        det = ForcedPSFDetector(reference=run_dir / "run" / "reference" / "reference.ecsv", series_frame=str(frames[0]))
        shape = frame_geometry(frames[0])[0]
        regions = forced_regions(shape, det.kw["tile"], det.kw["overlap"], region_px)
        r = max(regions, key=lambda q: (q.active[1] - q.active[0]) * (q.active[3] - q.active[2]))  # the largest task
        out["read_s"] = process_cpu_s() - c
        # the series' sky level: measured once by the client in a run (a whole-frame median), not by the task
        sf = read_frame(frames[0])
        sky = float(np.sqrt(sf.rdnoise**2 + max(float(np.nanmedian(sf.data)), 0.0)))
        del sf
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # that frame is the client's in a run, not the task's
        out["base_rss_mb"] = rss_peak(reset=True)
        c = process_cpu_s()
        series = _RegionSeries(det, r, sky, {})
        out["setup_cpu_s"] = process_cpu_s() - c
        per = []
        with tempfile.TemporaryDirectory() as tmp:
            import pickle

            for i in range(n):
                c = process_cpu_s()
                part = series.measure(frames[(i + 1) % len(frames)])
                (Path(tmp) / f"{i}.pkl").write_bytes(pickle.dumps(part))
                per.append(process_cpu_s() - c)
        (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = r.section, r.pixel_core
        out.update(frame_cpu_s=per, n_stars=len(det.reference), n_rows=len(part["table"]), shape=list(shape),
                   region_px=region_px, n_regions=len(regions), region_core_px=[cy1 - cy0, cx1 - cx0],
                   region_section_px=[y1 - y0, x1 - x0], n_engine_stars=len(series.engine.x),
                   own_tiles=int(sum(series.engine._own)), active_tiles=len(series.engine.tiles))
    else:
        import yaml

        from skyvar.sim.field import FieldSimConfig, FieldSimulation
        from skyvar.utils.config import config_from_dotlist

        cfg = config_from_dotlist(FieldSimConfig, base=yaml.safe_load((run_dir / "sim" / "sim_config.yaml").read_text()))
        c = process_cpu_s()
        sim = FieldSimulation(cfg)
        out["setup_cpu_s"] = process_cpu_s() - c
        per = []
        for e in range(n):
            c = process_cpu_s()
            sim.render_epoch(e)
            per.append(process_cpu_s() - c)
        out.update(frame_cpu_s=per, n_stars=len(sim.catalogue), shape=list(cfg.shape),
                   operator_cached=sim.renderer._operator is not None)
    out["peak_rss_mb"] = rss_peak()
    out["median_frame_cpu_s"] = float(np.median(out["frame_cpu_s"][1:] if n > 1 else out["frame_cpu_s"]))
    # what the first frame costs beyond the others belongs to the setup (forced photometry: the weighted
    # factorisation happens at the first fit; simulator: the star operator at the first render)
    out["setup_total_cpu_s"] = out["setup_cpu_s"] + out["frame_cpu_s"][0] - out["median_frame_cpu_s"]
    return out


def plan(out: Path, size: int = 5000, epochs: int = 1000, cores=(1, 8, 64, 512), tile_px: int = 1024) -> dict:
    """The paper's field from the measured runs under ``out``: core-hours per stage, wall time on
    ``cores`` single-threaded workers, memory per worker, storage, the bottleneck at each size.

    Inputs (each made by one command, see docs/results/scale.md): ``512px_1000ep`` (serial: per light
    curve feature cost at 1000 epochs, association and candidates per source, bytes per catalogue row,
    store measurement and feature row), ``2048px_100ep`` (serial and Dask: tiled association per
    measurement, reference per Mpix, the client's share of the features stage; ``unit_costs_forced.json``:
    forced-photometry setup, per-frame CPU and RSS), ``5000px_3ep_frames`` (``unit_costs_sim.json``, the
    reference catalogue of a 5000² stack, frame and catalogue sizes). Linear in area for the per-frame
    costs (checked between 512², 1024² and 2048²) and in sources for the per-source ones."""
    import math

    def load(p):
        return json.loads((out / p).read_text())

    C = load("512px_1000ep/results.json")["runs"]["serial"]["stages"]
    B = load("2048px_100ep/results.json")
    Bs, Bd = B["runs"]["serial"]["stages"], B["runs"]["dask"]["stages"]
    Uf = load("2048px_100ep/unit_costs_forced.json")
    Us = load("5000px_3ep_frames/unit_costs_sim.json")
    D = out / "5000px_3ep_frames" / "serial"
    n_src = json.loads((D / "run/reference/_stage.json").read_text())["metrics"]["n_reference"]
    mpix = size * size / 1e6
    ar = mpix / (2048 * 2048 / 1e6)
    n_meas = n_src * epochs
    st = {}
    # simulate: the field built once on the client (and loaded by each worker), epochs in parallel
    st["simulate"] = dict(fixed=Us["setup_cpu_s"], per_worker=Us["setup_total_cpu_s"] - Us["setup_cpu_s"] + 1.0,
                          work=epochs * Us["median_frame_cpu_s"],
                          units=epochs, rss=Us["peak_rss_mb"])
    # reference: PNet on the median stack, on the client (one stack)
    st["reference"] = dict(fixed=Bs["reference"]["cpu_s"] * ar, per_worker=0.0, work=0.0, units=1,
                           rss=None)
    # photometry: every worker builds the series engine once (setup), then one frame per task
    f_setup, f_frame = Uf["setup_total_cpu_s"] * ar, Uf["median_frame_cpu_s"] * ar
    st["photometry"] = dict(fixed=0.0, per_worker=f_setup, work=epochs * f_frame, units=epochs,
                            rss=Uf["base_rss_mb"] + (Uf["peak_rss_mb"] - Uf["base_rss_mb"]) * ar)
    # association: per measurement (tiled), tiles of tile_px (+ margins): the largest tile bounds the wall
    m_b = Bs["associate"]["metrics"]["n_measurements"]
    n_tiles = (2 * math.ceil((size / 2 - tile_px / 2) / tile_px) + 1) ** 2
    st["associate"] = dict(fixed=0.0, per_worker=0.0, work=Bs["associate"]["cpu_s"] / m_b * n_meas, units=n_tiles,
                           largest=((tile_px + 32) / size) ** 2, rss=Bd["associate"]["worker_peak_rss_mb"])
    # features: per light curve at 1000 epochs; partitions of <= 2M measurements; finalize on the client
    c_lc = C["features"]["cpu_s"] / C["features"]["metrics"]["n_lightcurves"] * (epochs / 1000.0)
    feat = c_lc * n_src
    # the client's part (gathering the partition tables, the population-level finalize) is per source,
    # not per measurement: from the Dask run, per source
    client = Bd["features"]["client_cpu_s"] / Bs["features"]["metrics"]["n_lightcurves"] * n_src
    st["features"] = dict(fixed=client, per_worker=0.0, work=max(feat - client, 0.0),
                          units=max(8, math.ceil(n_meas / 2e6)), rss=Bd["features"]["worker_peak_rss_mb"])
    st["candidates"] = dict(fixed=C["candidates"]["cpu_s"] / C["candidates"]["metrics"]["n_sources"] * n_src,
                            per_worker=0.0, work=0.0, units=1, rss=None)
    rows = []
    for name, v in st.items():
        r = {"stage": name, "core_h_1": (v["fixed"] + v["per_worker"] + v["work"]) / 3600}
        for w in cores:
            par = min(w, v["units"])
            wall = v["fixed"] + v["per_worker"] + v["work"] / par
            if "largest" in v:
                wall = max(wall, v["work"] * v["largest"])
            r[f"wall_h_{w}"] = wall / 3600
            r[f"core_h_{w}"] = (v["fixed"] + min(w, v["units"]) * v["per_worker"] + v["work"]) / 3600
        r["parallel_tasks"] = v["units"]
        r["rss_gb"] = v["rss"] / 1024 if v["rss"] else None
        rows.append(r)
    proc = [r for r in rows if r["stage"] != "simulate"]  # what real frames go through
    bottleneck = {w: max(rows, key=lambda r: r[f"wall_h_{w}"])["stage"] for w in cores}
    bottleneck_real = {w: max(proc, key=lambda r: r[f"wall_h_{w}"])["stage"] for w in cores}
    for name, part in (("total (without simulate)", proc), ("total", list(rows))):
        tot = {"stage": name}
        for k in rows[0]:
            if k.startswith(("wall_h", "core_h")):
                tot[k] = sum(r[k] for r in part)
        rows.append(tot)
    frame_b = (D / "sim" / "frames" / "frame_0000.fits").stat().st_size
    cat_b = (D / "run" / "photometry" / "catalogs" / "frame_0000.parquet").stat().st_size
    Cdir = out / "512px_1000ep" / "serial" / "run"
    store_b = sum(f.stat().st_size for f in (Cdir / "associate" / "store").rglob("*.parquet"))
    feat_b = (Cdir / "features" / "lightcurve_features.parquet").stat().st_size
    storage = {"frames_gb": frame_b * epochs * (size * size) / (5000 * 5000) / 1e9,
               "catalogues_gb": cat_b * epochs / 1e9,
               "store_gb": store_b / C["associate"]["metrics"]["n_measurements"] * n_meas / 1e9,
               "features_gb": feat_b / C["features"]["metrics"]["n_lightcurves"] * n_src / 1e9}
    return {"size": size, "epochs": epochs, "n_sources": n_src, "n_measurements": n_meas, "tile_px": tile_px,
            "rows": rows, "bottleneck": bottleneck, "bottleneck_without_simulate": bottleneck_real, "storage": storage,
            "photometry_setup_s": f_setup, "photometry_frame_s": f_frame}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detector", default="pnet")
    ap.add_argument("--tile-px", type=int, default=1024)
    ap.add_argument("--memory-limit", default="6GiB")
    ap.add_argument("--out", default=str(ROOT / "datasets" / "bench_field_scale"))
    ap.add_argument("--modes", default="serial,dask")
    ap.add_argument("--drop-stages", nargs="*", default=[],
                    help="light-curve stages to leave out (indices excess flares periodogram astronet), e.g. to "
                         "measure the frame stages of a 5000² frame without the searches")
    ap.add_argument("--json", default=None, help="write the measurements here (default: <out>/results.json)")
    ap.add_argument("--region-px", type=int, default=1024, help="--unit-costs forced_region: the regions' size")
    ap.add_argument("--unit-costs", choices=["forced", "forced_region", "sim"], default=None,
                    help="instead of the pipelines: per-worker unit costs (setup, per frame, peak RSS) on the frames of "
                         "an earlier serial run of this --size/--epochs")
    ap.add_argument("--plan", action="store_true",
                    help="instead of the pipelines: the paper's 5000² x 1000 field from the measured runs under --out")
    a = ap.parse_args(argv)
    if a.plan:
        from _common import print_table

        res = plan(Path(a.out))
        print(f"{res['size']}² px x {res['epochs']} epochs, {res['n_sources']:,} sources, "
              f"{res['n_measurements']:,} measurements, association tiles {res['tile_px']} px")
        print_table(res["rows"], "core-hours and wall hours per stage on N single-threaded workers")
        print("\nbottleneck:", res["bottleneck"], "; without the simulation:", res["bottleneck_without_simulate"],
              "\nstorage [GB]:", {k: round(v, 1) for k, v in res["storage"].items()})
        (Path(a.out) / "plan_5000x1000.json").write_text(json.dumps(res, indent=1) + "\n")
        return 0
    if a.unit_costs:
        import torch

        torch.set_num_threads(1)
        run_dir = Path(a.out) / (f"{a.size}px_{a.epochs}ep" + ("_frames" if a.drop_stages else "")) / "serial"
        res = unit_costs(a.unit_costs, run_dir, region_px=a.region_px)
        print(json.dumps(res, indent=1))
        (run_dir.parent / f"unit_costs_{a.unit_costs}.json").write_text(json.dumps(res, indent=1) + "\n")
        return 0

    import torch

    torch.set_num_threads(1)
    from _common import device_info, print_table

    base = Path(a.out) / (f"{a.size}px_{a.epochs}ep" + ("_frames" if a.drop_stages else ""))
    base.mkdir(parents=True, exist_ok=True)
    loads: list[float] = []
    stop = threading.Event()

    def sample_load():
        while not stop.is_set():
            loads.append(os.getloadavg()[0])
            stop.wait(5.0)

    threading.Thread(target=sample_load, daemon=True).start()
    results = {"size": a.size, "epochs": a.epochs, "workers": a.workers, "detector": a.detector,
               "tile_px": a.tile_px, "drop_stages": a.drop_stages, "device": device_info(), "runs": {}}
    for mode in a.modes.split(","):
        import shutil

        shutil.rmtree(base / mode, ignore_errors=True)
        l0 = len(loads)
        results["runs"][mode] = run_one(mode, a, base)
        seg = loads[l0:] or [os.getloadavg()[0]]
        results["runs"][mode]["load_avg"] = {"mean": sum(seg) / len(seg), "min": min(seg), "max": max(seg)}
    stop.set()
    if {"serial", "dask"} <= set(results["runs"]):
        results["equal"] = compare(base, a)

    pix = a.size * a.size * a.epochs
    rows = []
    ser = results["runs"].get("serial", {}).get("stages", {})
    dk = results["runs"].get("dask", {}).get("stages", {})
    for st in ["simulate", "reference", "photometry", "associate", "features", "candidates", "total_pipeline"]:
        s, d = ser.get(st), dk.get(st)
        if not (s or d):
            continue
        r = {"stage": st}
        if s:
            r.update(serial_wall_s=s["wall_s"], serial_cpu_s=s["cpu_s"], serial_rss_mb=s["client_peak_rss_mb"])
        if d:
            r.update(dask_wall_s=d["wall_s"], dask_cpu_s=d["cpu_s"], worker_rss_mb=d["worker_peak_rss_mb"] or 0.0,
                     client_rss_mb=d["client_peak_rss_mb"])
        if s and d:
            r["eff_wall"] = s["wall_s"] / (a.workers * d["wall_s"])
            # what dedicated cores would give: serial CPU over workers x the CPU critical path
            r["eff_cpu"] = s["cpu_s"] / (a.workers * max(d["critical_cpu_s"], 1e-9))
            r["cpu_ratio"] = d["cpu_s"] / max(s["cpu_s"], 1e-9)
        ref = s or d
        r["Mpix_ep_per_core_s"] = pix / 1e6 / max(ref["cpu_s"], 1e-9)
        rows.append(r)
    results["table"] = rows
    print(f"\n{results['device']}; {a.size}² px x {a.epochs} epochs, detector {a.detector}, "
          f"{a.workers} workers, tiles {a.tile_px} px")
    for m, run in results["runs"].items():
        print(f"{m}: {run['wall_s']:.0f} s wall (cluster start and imports {run['cluster_start_s']:.1f} s), load average "
              f"{run['load_avg']['mean']:.1f} (min {run['load_avg']['min']:.1f}, max {run['load_avg']['max']:.1f}) "
              f"on {os.cpu_count()} cores")
    print_table(rows, "per stage (eff_wall = T_serial / (workers x T_dask); eff_cpu = CPU_serial / (workers x "
                      "(client CPU + busiest worker CPU)); CPU = client + workers)")
    if "equal" in results:
        print("\nsame outputs:", json.dumps(results["equal"]))
    path = Path(a.json) if a.json else base / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
