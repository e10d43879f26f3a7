"""Lomb-Scargle throughput: skyvar's batched periodograms beside astropy (fast) and nifty-ls, same run.

Problem (issue 5): 100,000 light curves x 200 epochs x 10,000 frequencies, standard normalisation,
floating mean, peak (power and frequency) per light curve kept. Two sampling cases:

* ``shared`` - all light curves sample one set of 200 epochs (a staring WFST run, 50 s cadence),
  each missing ~3 % of them at random (masked). skyvar: the GEMM backend (``backend="shared"``,
  torch, fused power/argmax kernel compiled with torch.compile); nifty-ls: one batched call per
  chunk of rows (nifty-ls batches only a shared time grid; missing epochs get infinite errors).
* ``differing`` - every light curve has its own 200 epochs (ZTF-like, over 800 days). skyvar's
  ``auto`` backend is nifty-ls here (one call per light curve: its 1.1 API has no heterogeneous
  batch); a direct-sum torch backend was measured 80x slower than nifty-ls on the CPU, never on a
  GPU, and removed.

astropy (``method="fast"``, one ``LombScargle`` per light curve) is timed on a subset and
extrapolated; any method whose estimated full time exceeds ``--budget`` seconds is timed on a subset
and extrapolated too (marked in the table). Accuracy columns compare each method's peak power with
astropy's exact (``method="slow"``) on the first ``--check`` light curves.

    python benchmarks/bench_periodogram.py                      # the issue's problem (tens of minutes on 2 cores)
    python benchmarks/bench_periodogram.py --n 5000             # smaller N
    python benchmarks/bench_periodogram.py --grid shared --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import device_info, print_table  # noqa: E402

from skyvar.lightcurves.grids import FrequencyGrid  # noqa: E402
from skyvar.lightcurves.lombscargle import lomb_scargle  # noqa: E402


def make_data(n: int, L: int, grid: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    if grid == "shared":
        t0 = 60205.764 + np.arange(L) * 50 / 86400
        t = np.broadcast_to(t0, (n, L)).copy()
        mask = rng.uniform(size=(n, L)) > 0.03
        span = t0[-1] - t0[0]
        fgrid = FrequencyGrid(2 / span, (0.5 * (L - 1) / span - 2 / span) / 9999, 10000)
    else:
        t = 59000 + np.sort(rng.uniform(0, 800, (n, L)), axis=1)
        mask = np.ones((n, L), bool)
        fgrid = FrequencyGrid(0.02, (20.0 - 0.02) / 9999, 10000)
    f_sig = fgrid.fmin + rng.uniform(0.1, 0.9, (n, 1)) * (fgrid.fmax - fgrid.fmin)
    y = 15 + 0.01 * rng.normal(size=(n, L)) + 0.01 * rng.uniform(0, 2, (n, 1)) * np.sin(2 * np.pi * f_sig * t)
    return t, y, mask, fgrid


def astropy_peaks(t, y, mask, fgrid, method="fast"):
    from astropy.timeseries import LombScargle

    f = fgrid.freq
    P = np.empty(len(y))
    idx = np.empty(len(y), dtype=np.int64)
    for i in range(len(y)):
        m = mask[i]
        p = LombScargle(t[i, m] - t[i, m][0], y[i, m]).power(f, method=method, assume_regular_frequency=True)
        idx[i] = np.argmax(p)
        P[i] = p[idx[i]]
    return P, idx


def nifty_peaks(t, y, mask, fgrid, shared: bool, chunk: int = 1000, nthreads=None):
    import nifty_ls

    kw = dict(fmin=fgrid.fmin, fmax=fgrid.fmax, Nf=fgrid.nf, backend="finufft")
    if nthreads is not None:
        kw["nthreads"] = nthreads
    n = len(y)
    P = np.empty(n)
    idx = np.empty(n, dtype=np.int64)
    if shared:
        t0 = t[0]
        dy = np.where(mask, 1.0, np.inf)
        yy = np.where(mask, y, 0.0)
        for a in range(0, n, chunk):
            b = min(n, a + chunk)
            p = nifty_ls.lombscargle(t0, yy[a:b], dy=dy[a:b], **kw).power
            idx[a:b] = np.argmax(p, axis=1)
            P[a:b] = p[np.arange(b - a), idx[a:b]]
    else:
        for i in range(n):
            p = nifty_ls.lombscargle(t[i, mask[i]], y[i, mask[i]], **kw).power
            idx[i] = np.argmax(p)
            P[i] = p[idx[i]]
    return P, idx


def skyvar_peaks(t, y, mask, fgrid, backend, dtype, device, compile_, threads=None):
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return lomb_scargle(t, y, fgrid, mask=mask, backend=backend, dtype=dtype, device=device, reduce="max",
                            compile=compile_)
    finally:
        torch.set_num_threads(before)


def timed(fn, n_total: int, n_first: int, budget: float, data, label: str, force_subset: bool = False):
    """Time ``fn`` on ``n_first`` rows; if the extrapolated full time fits ``budget``, time all rows."""
    t, y, mask, fgrid = data
    t0, c0 = time.perf_counter(), time.process_time()
    fn(t[:n_first], y[:n_first], mask[:n_first], fgrid)
    s_first, c_first = time.perf_counter() - t0, time.process_time() - c0
    est = s_first * n_total / n_first
    if n_first >= n_total or est > budget or force_subset:
        return est, c_first * n_total / n_first, (n_first < n_total), n_first
    t0, c0 = time.perf_counter(), time.process_time()
    fn(t, y, mask, fgrid)
    return time.perf_counter() - t0, time.process_time() - c0, False, n_total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="light curves")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--grid", choices=["shared", "differing", "both"], default="both")
    ap.add_argument("--astropy-n", type=int, default=200, help="subset timed for astropy (extrapolated)")
    ap.add_argument("--first", type=int, default=2000, help="subset timed first for the other methods")
    ap.add_argument("--budget", type=float, default=900.0, help="max seconds per method at full N")
    ap.add_argument("--check", type=int, default=100, help="light curves checked against astropy slow")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nifty-threads", type=int, default=None, help="nifty-ls nthreads (default: its heuristic)")
    ap.add_argument("--skip-astropy", action="store_true")
    a = ap.parse_args()
    print(device_info())
    print(f"problem: {a.n} light curves x {a.epochs} epochs x 10000 frequencies")
    grids = ["shared", "differing"] if a.grid == "both" else [a.grid]
    for g in grids:
        data = make_data(a.n, a.epochs, g)
        t, y, mask, fgrid = data
        nc = min(a.check, a.n)
        ref_p, ref_i = astropy_peaks(t[:nc], y[:nc], mask[:nc], fgrid, method="slow")
        methods = [] if a.skip_astropy else [
            ("astropy fast (loop, 1 thread)", lambda *d: astropy_peaks(*d), min(a.astropy_n, a.n), True)]
        what = "batched" if g == "shared" else "per light curve"
        methods.append((f"nifty-ls {what} (default threads)",
                        lambda *d, g=g: nifty_peaks(*d, shared=(g == "shared"), nthreads=a.nifty_threads),
                        min(a.first, a.n), False))
        methods.append((f"nifty-ls {what} (nthreads=1)",
                        lambda *d, g=g: nifty_peaks(*d, shared=(g == "shared"), nthreads=1),
                        min(a.first, a.n), False))
        if g == "shared":
            # compile once, outside the timing (reported separately)
            tc = time.perf_counter()
            skyvar_peaks(t[:512], y[:512], mask[:512], fgrid, "shared", "float32", a.device, True)
            print(f"torch.compile warm-up of the fused power kernel: {time.perf_counter() - tc:.1f} s (not timed below)")
            methods += [
                ("skyvar shared GEMM float32 (default threads)",
                 lambda *d: skyvar_peaks(*d, "shared", "float32", a.device, True), min(a.first, a.n), False),
                ("skyvar shared GEMM float32 (1 thread)",
                 lambda *d: skyvar_peaks(*d, "shared", "float32", a.device, True, 1), min(a.first, a.n), False),
                ("skyvar shared GEMM float64 (1 thread)",
                 lambda *d: skyvar_peaks(*d, "shared", "float64", a.device, True, 1), min(a.first, a.n), False),
            ]
        else:
            methods.append(("skyvar nifty backend (what auto picks)",
                            lambda *d: skyvar_peaks(*d, "nifty", "float64", a.device, False),
                            min(a.first, a.n), False))
        rows = []
        results = {}
        for name, fn, n_first, force in methods:
            secs, cpu, extrap, n_timed = timed(fn, a.n, n_first, a.budget, data, name, force)
            p, i = fn(t[:nc], y[:nc], mask[:nc], fgrid)
            results[name] = (secs, cpu)
            rows.append({
                "method": name, "wall s": secs, "CPU s": cpu, "lc/s (wall)": a.n / secs,
                "timed on": f"{n_timed}" + (" (extrapolated)" if extrap else ""),
                "max rel err P_max": float(np.max(np.abs(p - ref_p) / ref_p)),
                "argmax = exact": float(np.mean(i == ref_i)),
            })
            print(f"  {name}: {secs:.1f} s wall, {cpu:.1f} s CPU{' (extrapolated)' if extrap else ''}", flush=True)
        nifty_default = [v for k, v in results.items() if k.startswith("nifty") and "default" in k][0]
        nifty_one = [v for k, v in results.items() if k.startswith("nifty") and "nthreads=1" in k][0]
        for r in rows:
            # equal thread counts: "1 thread" rows against nifty-ls nthreads=1, the others against its default;
            # CPU time is the fairer per-core measure on a shared machine
            one = "1 thread" in r["method"] or "nthreads=1" in r["method"]
            ref = nifty_one if one else nifty_default
            r["x nifty-ls wall (same threads)"] = ref[0] / r["wall s"]
            r["x nifty-ls 1-thread CPU"] = nifty_one[1] / r["CPU s"]
        print_table(rows, f"{g} time grid, {a.n} x {a.epochs} x 10000, device {a.device}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
