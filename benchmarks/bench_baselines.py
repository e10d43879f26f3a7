"""Speed of the classical baselines on one simulated CSST-like frame: Mpix/s and stars/s.

Rows (same frame, same run):
- ``sep.extract`` alone (the library call on the whole frame: background + extraction, Table 2
  settings, sep's limits raised; in a child process stopped after ``--timeout``), the peer for the
  sep baseline; on frames >= 4096 px also with sep's default buffer limits;
- ``SepDetector`` (skyvar: + tiling, windowed positions, aperture and PSF-weighted fluxes, catalogue);
- ``photutils PSFPhotometry`` alone (one pass at sep's positions, the simulator's PSF, no tiling),
  the peer for the PSF baseline;
- ``PhotutilsPSFDetector`` (skyvar: + the paper's background, sep positions, residual pass, tiling).

``stars/s`` counts catalogue rows per CPU second, ``Mpix/s`` frame pixels per CPU second (process CPU
time: the benchmark machine is shared, and the baselines use one core); wall seconds are shown too.
The frame is simulated in memory first (not timed).

    python benchmarks/bench_baselines.py [--size 1024] [--seed 7] [--sep-size 5000] [--no-photutils]
    python benchmarks/bench_baselines.py --variants --size 512 --seed 11

``--sep-size 5000`` adds the sep rows on a full 5000 x 5000 frame (~630,000 stars; sep only: the PSF
baseline would take ~10 minutes there) and shows what sep's default buffer limits do on it.
``--variants`` measures the PSF baseline's settings instead (speed vs quality: CPU seconds, recall,
precision, F1 at 0.1 and 1 px, mean |dm| with skyvar.evaluate): the table behind the defaults of
conf/detector/photutils_psf.yaml (tuned on seed 11, evaluated on other seeds).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import device_info, print_table  # noqa: E402

from skyvar.detect.photutils_psf import PhotutilsPSFDetector  # noqa: E402
from skyvar.detect.sep_baseline import SepDetector  # noqa: E402
from skyvar.io.fits import Frame  # noqa: E402


def make_frame(size: int, seed: int) -> Frame:
    from skyvar.sim.field import FieldSimConfig, FieldSimulation

    cfg = FieldSimConfig(size=size, seed=seed)
    sim = FieldSimulation(cfg)
    img, mask, hdr = sim.render_epoch(0)
    return Frame(data=img * np.float32(cfg.gain), mask=mask, header=hdr, exptime=cfg.exptime, gain=cfg.gain,
                 rdnoise=float(np.sqrt(cfg.read_var)), zp=cfg.zp, mjd=float(sim.mjd[0]), filter="i", wcs=sim.wcs,
                 saturate=cfg.saturation_e)


def sep_library(frame: Frame, pixstack: int, sub_objects: int) -> tuple[int, str]:
    """Background + one whole-frame sep.extract with Table 2 settings; (n objects, status)."""
    import sep

    from skyvar.detect.background import sextractor_background

    back, _, rms = sextractor_background(frame.data)
    sep.set_extract_pixstack(pixstack)
    sep.set_sub_object_limit(sub_objects)
    try:
        objs = sep.extract(np.ascontiguousarray(frame.data - back), 1.6, err=rms, minarea=3, deblend_nthresh=60,
                           deblend_cont=0.001)
        return len(objs), "ok"
    except Exception as e:  # sep raises a bare Exception with its C error message
        return 0, f"fails: {e}"


def sep_library_bounded(frame: Frame, pixstack: int, sub_objects: int, timeout_s: float):
    """:func:`sep_library` in a forked child killed after ``timeout_s``: (n, status, wall s, CPU s)."""
    import multiprocessing as mp
    import resource
    import time

    ctx = mp.get_context("fork")
    q = ctx.Queue()

    def child():
        q.put(sep_library(frame, pixstack, sub_objects))

    p = ctx.Process(target=child)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p.start()
    p.join(timeout_s)
    dt = time.perf_counter() - t0
    if p.is_alive():
        p.terminate()
        p.join()
        status, n = f"unfinished after {timeout_s:.0f} s (killed)", 0
    else:
        n, status = q.get() if not q.empty() else (0, f"child exited with code {p.exitcode}")
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    return n, status, dt, cpu


def photutils_library(frame: Frame, init) -> int:
    """One PSFPhotometry pass at the given positions with the simulator's PSF (no background model)."""
    from astropy.modeling.fitting import LevMarLSQFitter
    from astropy.table import Table
    from photutils.psf import PSFPhotometry

    from skyvar.detect.background import box_median_background
    from skyvar.detect.psf_models import psf_for_frame

    back, rms, _ = box_median_background(frame.data)
    data = frame.data - back
    psf = psf_for_frame(frame)
    tbl = Table({"x": np.asarray(init["x"], float), "y": np.asarray(init["y"], float),
                 "flux": np.clip(np.asarray(init["flux"], float), 1.0, None)})
    phot = PSFPhotometry(psf.model, 3, fitter=LevMarLSQFitter(), xy_bounds=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = phot(data, error=np.sqrt(rms**2 + np.clip(data, 0, None)), init_params=tbl)
    return len(res)


def row(name: str, size: int, n: int, t: tuple[float, float], status: str = "ok", ref: float | None = None) -> dict:
    """A table row from (wall, CPU) seconds; rates and the peer ratio use CPU time (the machine is shared)."""
    wall, cpu = t
    return {"method": name, "frame": f"{size}^2", "stars": n, "wall_s": wall, "cpu_s": cpu,
            "Mpix/s": size * size / 1e6 / cpu, "stars/s": n / cpu, "x peer cpu": (cpu / ref) if ref else 1.0,
            "status": status}


class Clock:
    """Wall and process-CPU seconds of a block: ``with Clock() as c: ...; c.t == (wall, cpu)``."""

    def __enter__(self):
        import time

        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *a):
        import time

        self.t = (time.perf_counter() - self._w, time.process_time() - self._c)


def bench(size: int, seed: int, photutils: bool, timeout_s: float = 600.0) -> list[dict]:
    from threadpoolctl import threadpool_limits

    frame = make_frame(size, seed)
    SepDetector().detect(make_frame(64, 1))  # warm up imports and the PSF cache outside the timings
    rows = []
    with threadpool_limits(limits=1):
        # one whole-frame sep.extract: fine up to ~2k px, but on a full 5000^2 CSST frame it crawls
        n, status, wall, cpu = sep_library_bounded(frame, size * size, 16384, timeout_s)
        rows.append(row("sep.extract (library, whole frame)", size, n, (wall, cpu), status))
        t_sep = cpu
        if size >= 4096:
            n, status, wall, cpu = sep_library_bounded(frame, 300_000, 1024, timeout_s)
            rows.append(row("sep.extract, sep's default limits", size, n, (wall, cpu), status, t_sep))
        with Clock() as c:
            cat = SepDetector().detect(frame)
        rows.append(row("SepDetector (skyvar, tiled)", size, len(cat), c.t, "ok", t_sep))
        if photutils:
            with Clock() as c:
                n = photutils_library(frame, cat[["x", "y", "flux"]])
            rows.append(row("photutils PSFPhotometry (library, 1 pass)", size, n, c.t))
            t_phot = c.t[1]
            with Clock() as c:
                pcat = PhotutilsPSFDetector().detect(frame)
            rows.append(row("PhotutilsPSFDetector (skyvar)", size, len(pcat), c.t, "ok", t_phot))
    return rows


VARIANTS = {
    "default (iterative, 2 passes, fit 3x3, lm)": {},
    "single pass at sep positions": {"iterative": False},
    "3 passes": {"maxiters": 3},
    "grouping < 8 px": {"group_separation": 8.0},
    "fit_shape 5": {"fit_shape": 5},
    "fit_shape 7": {"fit_shape": 7},
    "TRF fitter": {"fitter": "trf"},
    "DAOStarFinder start (3 sigma)": {"finder": "dao"},
    "mode background (not the paper's median)": {"back_estimator": "sextractor"},
}


def variants(size: int, seed: int) -> list[dict]:
    import time

    from threadpoolctl import threadpool_limits

    from skyvar.evaluate.report import evaluate_detections
    from skyvar.sim.field import FieldSimConfig, FieldSimulation

    frame = make_frame(size, seed)
    truth = FieldSimulation(FieldSimConfig(size=size, seed=seed)).truth_table()
    SepDetector().detect(make_frame(64, 1))
    rows = []
    for name, kw in VARIANTS.items():
        with threadpool_limits(limits=1):
            c0 = time.process_time()
            cat = PhotutilsPSFDetector(**kw).detect(frame)
            cpu = time.process_time() - c0
        m = evaluate_detections(cat, truth, out_dir=None, plots_enabled=False)
        br = m["by_radius"]
        r = {"setting": name, "cpu_s": cpu, "stars": len(cat)}
        for k in ("0.1", "1"):
            r[f"R@{k}"], r[f"P@{k}"], r[f"F1@{k}"] = br[k]["recall"], br[k]["precision"], br[k]["f1"]
        r["mean|dm|@1"] = br["1"]["photometry"]["mean_abs_dm"]
        r["bias@1"] = br["1"]["photometry"]["median_dm"]
        rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sep-size", type=int, default=None, help="also time sep on a frame this large (e.g. 5000)")
    ap.add_argument("--no-photutils", action="store_true")
    ap.add_argument("--timeout", type=float, default=600.0, help="limit for each whole-frame sep.extract [s]")
    ap.add_argument("--variants", action="store_true", help="PSF-baseline settings: speed vs quality")
    a = ap.parse_args()
    print(device_info() + "; baselines run on one core (BLAS threads limited to 1)")
    if a.variants:
        print_table(variants(a.size, a.seed), f"photutils_psf settings on a {a.size}^2 frame, seed {a.seed} "
                    "(cpu_s: process CPU seconds; metrics from skyvar.evaluate, targets i < 25)")
        return
    rows = bench(a.size, a.seed, not a.no_photutils, a.timeout)
    if a.sep_size:
        rows += bench(a.sep_size, a.seed, False, a.timeout)
    print_table(rows, "Classical baselines: speed (x peer cpu: skyvar CPU time / the library call's on the same frame)")


if __name__ == "__main__":
    main()
