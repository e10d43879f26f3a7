"""Speed of the field pipeline's photometry paths on one CSST-like time series, beside their peers.

    python benchmarks/bench_field.py [--size 512] [--epochs 4] [--no-photutils] [--run D ...]

On the same simulated frames (``skyvar.sim.field``, seed 2024) it times, per frame and in Mpix/s:

- forced PSF photometry (:mod:`skyvar.detect.forced_psf`) at the reference positions: the first
  frame (design + factorisation) and the following ones (reused factorisation);
- the peer for the same measurement: photutils ``PSFPhotometry`` with the positions fixed, the same
  PSF model, the sky subtracted (one frame; it also reports the flux agreement);
- sep detection + PSF-weighted photometry per frame (``skyvar.detect.sep_baseline``), PNet per frame
  (``skyvar.detect.pnet``, the released checkpoint) when installed.

``--run D`` adds the per-stage wall times of finished ``pipeline=field`` runs (their ``summary.json``).
Absolute numbers, ratios to forced photometry and the device are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _device() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, load {os.getloadavg()[0]:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench_field"))
    ap.add_argument("--no-photutils", action="store_true")
    ap.add_argument("--run", nargs="*", default=[], help="pipeline=field output folders to summarise")
    a = ap.parse_args(argv)

    from skyvar.io.fits import read_frame
    from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

    sim = Path(a.out) / f"sim_{a.size}px"
    simulate_field_to_disk(FieldSimConfig(out_dir=str(sim), size=a.size, n_epochs=a.epochs, seed=2024), progress=False)
    frames = [read_frame(f) for f in sorted((sim / "frames").glob("*.fits"))]
    mpix = frames[0].data.size / 1e6
    rows = []

    from skyvar.detect.forced_psf import ForcedPSFDetector, build_reference

    sep_det = None
    try:
        from skyvar.detect.sep_baseline import SepDetector

        sep_det = SepDetector()
    except ImportError:
        print("skyvar.detect.sep_baseline not installed: no sep rows, reference from the truth table")
    if sep_det is not None:
        t0 = time.perf_counter()
        ref = build_reference(frames[: min(5, len(frames))], sep_det)
        rows.append(("reference: sep on a median stack", time.perf_counter() - t0, len(ref)))
        t0 = time.perf_counter()
        cat = sep_det.detect(frames[0])
        rows.append(("sep detection + PSF-weighted flux, per frame", time.perf_counter() - t0, len(cat)))
    else:
        from astropy.table import Table

        t = Table.read(sim / "truth.ecsv")
        ref = t[t["mag"] < 24.5]
    forced = ForcedPSFDetector(reference=ref)
    t0 = time.perf_counter()
    c0 = forced.detect(frames[0])
    t_first = time.perf_counter() - t0
    rows.append(("forced PSF, first frame (design + factorisation)", t_first, len(c0)))
    ts = []
    for fr in frames[1:]:
        t0 = time.perf_counter()
        forced.detect(fr)
        ts.append(time.perf_counter() - t0)
    t_next = float(np.median(ts)) if ts else t_first
    rows.append(("forced PSF, each further frame", t_next, len(c0)))

    agree = None
    if not a.no_photutils:
        from astropy.table import Table
        from photutils.psf import PSFPhotometry

        from skyvar.detect.psf_models import psf_from_header

        fr = frames[0]
        psf = psf_from_header(fr.header).model.copy()
        psf.x_0.fixed = True
        psf.y_0.fixed = True
        sky = float(np.median(c0["local_bkg"]))
        init = Table({"x": c0["x"], "y": c0["y"], "flux": np.clip(np.nan_to_num(c0["flux"]), 1.0, None)})
        err = np.sqrt(np.clip(fr.data, 0, None) + fr.rdnoise**2)
        phot = PSFPhotometry(psf, fit_shape=(5, 5), aperture_radius=2.0)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = phot(fr.data - sky, error=err, init_params=init)
        rows.append(("photutils PSFPhotometry, fixed positions, 5x5 boxes, per frame", time.perf_counter() - t0, len(res)))
        d = (np.asarray(res["flux_fit"], float) - np.asarray(c0["flux"], float)) / np.asarray(c0["flux_err"], float)
        agree = float(np.nanmedian(np.abs(d)))

    try:
        from skyvar.detect.pnet import PNetDetector

        ck = ROOT / "src" / "skyvar" / "models" / "released" / "pnet-csst" / "pnet.pt"
        if ck.exists():
            pn = PNetDetector(checkpoint=str(ck))
            pn.detect(frames[0])  # warm-up (model load)
            t0 = time.perf_counter()
            cat = pn.detect(frames[1 % len(frames)])
            rows.append(("PNet detection + photometry, per frame", time.perf_counter() - t0, len(cat)))
    except ImportError:
        print("skyvar.detect.pnet not installed: no PNet row")

    print(f"\n### Field photometry, {a.size} x {a.size} px ({mpix:.2f} Mpix), {_device()}\n")
    print("| step | seconds | Mpix/s | sources | time / forced per-frame |")
    print("|---|---|---|---|---|")
    for name, s, n in rows:
        print(f"| {name} | {s:.2f} | {mpix / s:.3f} | {n} | {s / t_next:.1f} |")
    if agree is not None:
        print(f"\nforced vs photutils (same PSF, fixed positions): median |Δflux| / σ = {agree:.3f}")
    for d in a.run:
        s = json.loads((Path(d) / "summary.json").read_text())
        print(f"\n### pipeline=field run {d}: {s.get('name')}, {s.get('n_inputs')} frames, total {s['wall_s'] / 60:.1f} min\n")
        print("| stage | wall [min] | reused |")
        print("|---|---|---|")
        for k, v in s["stages"].items():
            if v.get("status") == "skipped":
                print(f"| {k} | skipped | {v.get('reason', '')[:60]} |")
            else:
                print(f"| {k} | {v.get('wall_s', 0) / 60:.1f} | {v.get('reused')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
