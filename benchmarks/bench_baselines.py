"""Speed of the classical baselines on one simulated CSST-like frame: Mpix/s and stars/s.

Rows (same frame, same run):
- ``sep.extract`` alone (the library call: background + extraction, Table 2 settings, sep's limits
  raised), the peer for the sep baseline;
- ``SepDetector`` (skyvar: + tiling, windowed positions, aperture and PSF-weighted fluxes, catalogue);
- ``photutils PSFPhotometry`` alone (one pass at sep's positions, the simulator's PSF, no tiling),
  the peer for the PSF baseline;
- ``PhotutilsPSFDetector`` (skyvar: + the paper's background, sep positions, residual pass, tiling).

``stars/s`` counts catalogue rows per second; ``Mpix/s`` frame pixels per second. The frame is
simulated in memory first (not timed). One core is what the baselines use.

    python benchmarks/bench_baselines.py [--size 1024] [--seed 7] [--sep-size 5000] [--no-photutils]

``--sep-size 5000`` adds the sep rows on a full 5000 x 5000 frame (~630,000 stars; sep only: the PSF
baseline would take ~10 minutes there) and shows what sep's default buffer limits do on it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import Timer, device_info, print_table  # noqa: E402

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


def row(name: str, size: int, n: int, seconds: float, status: str = "ok", ref: float | None = None) -> dict:
    return {"method": name, "frame": f"{size}^2", "stars": n, "time_s": seconds, "Mpix/s": size * size / 1e6 / seconds,
            "stars/s": n / seconds, "x peer time": (seconds / ref) if ref else 1.0, "status": status}


def bench(size: int, seed: int, photutils: bool) -> list[dict]:
    from threadpoolctl import threadpool_limits

    frame = make_frame(size, seed)
    SepDetector().detect(make_frame(64, 1))  # warm up imports and the PSF cache outside the timings
    rows = []
    with threadpool_limits(limits=1):
        with Timer() as t:
            n, status = sep_library(frame, pixstack=size * size, sub_objects=16384)
        rows.append(row("sep.extract (library)", size, n, t.s, status))
        t_sep = t.s
        if size >= 4096:
            with Timer() as t:
                n, status = sep_library(frame, pixstack=300_000, sub_objects=1024)
            rows.append(row("sep.extract, default limits", size, n, t.s, status, t_sep))
        with Timer() as t:
            cat = SepDetector().detect(frame)
        rows.append(row("SepDetector (skyvar)", size, len(cat), t.s, "ok", t_sep))
        if photutils:
            with Timer() as t:
                n = photutils_library(frame, cat[["x", "y", "flux"]])
            rows.append(row("photutils PSFPhotometry (library, 1 pass)", size, n, t.s))
            t_phot = t.s
            with Timer() as t:
                pcat = PhotutilsPSFDetector().detect(frame)
            rows.append(row("PhotutilsPSFDetector (skyvar)", size, len(pcat), t.s, "ok", t_phot))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sep-size", type=int, default=None, help="also time sep on a frame this large (e.g. 5000)")
    ap.add_argument("--no-photutils", action="store_true")
    a = ap.parse_args()
    print(device_info() + "; baselines run on one core (BLAS threads limited to 1)")
    rows = bench(a.size, a.seed, not a.no_photutils)
    if a.sep_size:
        rows += bench(a.sep_size, a.seed, False)
    print_table(rows, "Classical baselines: speed (x peer time: skyvar time / library call time on the same frame)")


if __name__ == "__main__":
    main()
