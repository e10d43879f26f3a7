"""Simulator speed: a full CSST-like 5000 x 5000 frame (~630,000 stars) and a 1024 x 1024 time series.

Targets (foundation issue): full frame <= 60 s on 2 CPU cores; 1000 epochs of 1024^2 <= 10 min.
Peer: GalSim drawing the same stars one by one (timed on a subset and extrapolated).

    python benchmarks/bench_sim.py [--size 5000] [--epochs 1000] [--ts-size 1024] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import Timer, device_info, print_table  # noqa: E402

from skyvar.sim.field import FieldSimConfig, FieldSimulation, simulate_field_to_disk  # noqa: E402


def galsim_per_star(sim: FieldSimulation, n: int = 2000) -> float:
    """Seconds per star for GalSim drawImage of each star into the frame (the naive peer)."""
    import galsim

    from skyvar.sim.psf import make_psf

    cfg = sim.cfg
    prof = galsim.Convolve(make_psf(cfg.psf), galsim.Pixel(cfg.pixel_scale))
    ny, nx = cfg.shape
    img = galsim.ImageD(nx, ny, scale=cfg.pixel_scale)
    x, y = np.asarray(sim.catalogue["x"])[:n], np.asarray(sim.catalogue["y"])[:n]
    with Timer() as t:
        for i in range(n):
            stamp = prof.withFlux(1000.0).drawImage(nx=21, ny=21, scale=cfg.pixel_scale, method="no_pixel",
                                                    center=galsim.PositionD(x[i] + 1, y[i] + 1))
            b = stamp.bounds & img.bounds
            if b.isDefined():
                img[b] += stamp[b]
    return t.s / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--ts-size", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="1000^2 frame and 50 epochs")
    a = ap.parse_args()
    if a.quick:
        a.size, a.epochs = 1000, 50
    print(device_info())
    rows = []
    cfg = FieldSimConfig(size=a.size, seed=1)
    with Timer() as t_init:
        sim = FieldSimulation(cfg)
    with Timer() as t_r:
        img, mask, hdr = sim.render_epoch(0)
    n = len(sim.catalogue)
    per_star = galsim_per_star(sim)
    total = t_init.s + t_r.s
    rows.append({"task": f"frame {a.size}^2", "stars": n, "skyvar_s": total, "galsim_loop_s(extrap)": per_star * n,
                 "speedup": per_star * n / total, "target_s": 60 * (a.size / 5000) ** 2})
    with tempfile.TemporaryDirectory() as d:
        tcfg = FieldSimConfig(size=a.ts_size, seed=2, n_epochs=a.epochs, out_dir=d)
        with Timer() as t_ts:
            simulate_field_to_disk(tcfg, progress=False)
        nst = len(FieldSimulation(FieldSimConfig(size=a.ts_size, seed=2)).catalogue)
        rows.append({"task": f"{a.epochs} epochs {a.ts_size}^2 (to disk)", "stars": nst, "skyvar_s": t_ts.s,
                     "galsim_loop_s(extrap)": per_star * nst * a.epochs, "speedup": per_star * nst * a.epochs / t_ts.s,
                     "target_s": 600 * a.epochs / 1000})
    print_table(rows, "Simulator speed")
    print(f"\n(frame: init {t_init.s:.1f} s incl. PSF banks, render+noise {t_r.s:.1f} s)")


if __name__ == "__main__":
    main()
