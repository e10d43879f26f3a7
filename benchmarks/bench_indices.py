"""Variability indices at scale: skyvar vs the light-curve package (Rust) vs plain numpy.

    python benchmarks/bench_indices.py                 # 1,000,000 light curves x 100 epochs (issue target)
    python benchmarks/bench_indices.py --n 100000      # quick

Per core: torch, numpy and light-curve all run on one thread (``--threads``); light-curve's
``Extractor.many(n_jobs=1)`` gets contiguous copies of the input rows (on row views of one big array
it slows down quadratically). Shared indices — the same statistic in all three: mean, median,
standard deviation (N-1), median absolute deviation, interquartile range (light-curve interpolates
quantiles Hazen-style, numpy/skyvar linearly: same cost) and the von Neumann ratio (skyvar's
``inv_eta`` is 1/``Eta``). skyvar is also timed on all its indices (Q/Q1/Q2, iterative clipped std,
moments around the median, amplitude ...), and on CUDA when a GPU is present. Values are checked
against light-curve on the first rows before timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from skyvar.lightcurves.indices import INDEX_NAMES, variability_indices

SHARED = ("std", "mad", "robust_std", "inv_eta")  # plus mean and median, which skyvar always returns


def make_data(n: int, L: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(L, dtype=np.float64) * 1.7
    mag = 17.0 + rng.normal(0, 0.05, (n, L))
    # A tenth are variables and outliers exist: iterative clipping has work to do.
    var = rng.random(n) < 0.1
    mag[var] += 0.3 * np.sin(2 * np.pi * t / rng.uniform(2, 30, var.sum())[:, None])
    out = rng.random((n, L)) < 0.01
    mag[out] += rng.uniform(0.3, 1.5, out.sum())
    err = np.full((n, L), 0.05)
    return t, mag, err


def numpy_shared(mag: np.ndarray, chunk: int = 100_000) -> dict:
    """The shared indices in plain vectorised numpy (dense rows, no masks)."""
    out = {k: [] for k in ("mean", "median", "std", "mad", "iqr", "inv_eta")}
    for a in range(0, len(mag), chunk):
        m = mag[a:a + chunk]
        mean = m.mean(1)
        med = np.median(m, axis=1)
        d = m - mean[:, None]
        ss = np.einsum("ij,ij->i", d, d)
        q25, q75 = np.percentile(m, [25, 75], axis=1)
        dd = np.diff(m, axis=1)
        out["mean"].append(mean)
        out["median"].append(med)
        out["std"].append(np.sqrt(ss / (m.shape[1] - 1)))
        out["mad"].append(np.median(np.abs(m - med[:, None]), axis=1))
        out["iqr"].append(q75 - q25)
        out["inv_eta"].append(ss / np.einsum("ij,ij->i", dd, dd))
    return {k: np.concatenate(v) for k, v in out.items()}


def lc_extractor():
    import light_curve as lc

    return lc.Extractor(lc.Mean(), lc.Median(), lc.StandardDeviation(), lc.MedianAbsoluteDeviation(),
                        lc.InterPercentileRange(0.25), lc.Eta())


def timed(fn, repeat: int = 1):
    """(best wall seconds, CPU seconds of that run, result). On a shared machine the CPU time is the
    fair per-core measure: wall time also counts the time the process waited for a core."""
    best, best_cpu = np.inf, np.inf
    res = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        res = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, best_cpu = wall, cpu
    return (best, best_cpu), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="number of light curves")
    ap.add_argument("--length", type=int, default=100, help="epochs per light curve")
    ap.add_argument("--threads", type=int, default=1, help="threads for every contender (per-core comparison)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-lc", action="store_true", help="skip light-curve (no Rust wheel)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    n, L = a.n, a.length
    print(f"building {n:,} light curves x {L} epochs ...", flush=True)
    t, mag, err = make_data(n, L)

    rows = []  # (name, device, indices, (wall, cpu) seconds)

    # Correctness on the first rows before timing anything.
    k = min(n, 2000)
    ours = variability_indices(mag[:k], err[:k])
    npy = numpy_shared(mag[:k])
    for key, ref in (("std", npy["std"]), ("mad", npy["mad"]), ("inv_eta", npy["inv_eta"]),
                     ("median", npy["median"]), ("mean", npy["mean"])):
        np.testing.assert_allclose(ours[key], ref, rtol=1e-9)
    have_lc = not a.skip_lc
    if have_lc:
        try:
            ext = lc_extractor()
        except ImportError:
            have_lc = False
    if have_lc:
        ref = np.asarray(ext.many([(t, mag[i].copy(), err[i].copy()) for i in range(k)], n_jobs=1, sorted=True,
                                  check=False))
        np.testing.assert_allclose(ours["mean"], ref[:, 0], rtol=1e-12)
        np.testing.assert_allclose(ours["median"], ref[:, 1], rtol=1e-12)
        np.testing.assert_allclose(ours["std"], ref[:, 2], rtol=1e-9)
        np.testing.assert_allclose(ours["mad"], ref[:, 3], rtol=1e-9)
        np.testing.assert_allclose(ours["inv_eta"], 1 / ref[:, 5], rtol=1e-9)

    sec, _ = timed(lambda: variability_indices(mag, err, which=SHARED, num_threads=a.threads), a.repeat)
    rows.append(("skyvar (torch+numpy)", "cpu", "shared 6", sec))
    sec, _ = timed(lambda: variability_indices(mag, err, num_threads=a.threads), a.repeat)
    rows.append(("skyvar (torch+numpy)", "cpu", f"all {len(INDEX_NAMES) + 2}", sec))
    sec, _ = timed(lambda: numpy_shared(mag), a.repeat)
    rows.append(("plain numpy", "cpu", "shared 6", sec))
    if have_lc:
        print("copying rows for light-curve ...", flush=True)
        lcs = [(t, mag[i].copy(), err[i].copy()) for i in range(n)]
        sec, _ = timed(lambda: ext.many(lcs, n_jobs=a.threads, sorted=True, check=False), a.repeat)
        rows.append(("light-curve 0.x (Rust)", "cpu", "shared 6", sec))
        del lcs
    if torch.cuda.is_available():
        dev = "cuda"
        mg, eg = torch.from_numpy(mag).to(dev), torch.from_numpy(err).to(dev)
        variability_indices(mg[:1000], eg[:1000])  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        for which, label in ((SHARED, "shared 6"), (None, f"all {len(INDEX_NAMES) + 2}")):
            def run(which=which):
                r = variability_indices(mg, eg, which=which, chunk_elements=1 << 24)
                torch.cuda.synchronize()
                return r

            sec, _ = timed(run, a.repeat)
            rows.append(("skyvar (torch)", torch.cuda.get_device_name(0), label, sec))

    try:
        import light_curve

        lc_version = light_curve.__version__
    except Exception:
        lc_version = "?"
    ref_lc = next((r[3] for r in rows if r[0].startswith("light-curve")), None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{n:,} light curves x {L} epochs; {a.threads} thread(s) each; CPU: {platform.processor() or platform.machine()}"
          f" ({os.cpu_count()} cores, load average {load:.1f}); torch {torch.__version__}, numpy {np.__version__}, "
          f"light-curve {lc_version}")
    print(f"{'method':25s} {'device':18s} {'indices':10s} {'wall s':>8s} {'cpu s':>8s} {'us/curve':>9s} "
          f"{'x light-curve':>14s}")
    for name, dev, which, (wall, cpu) in rows:
        # CPU time for CPU contenders (fair on a shared machine), wall time on a GPU.
        sec = cpu if dev == "cpu" else wall
        ref = (ref_lc[1] if dev == "cpu" else ref_lc[0]) if ref_lc else None
        ratio = f"{ref / sec:13.2f}x" if ref else "            -"
        name = name.replace("0.x", lc_version)
        print(f"{name:25s} {dev[:18]:18s} {which:10s} {wall:8.2f} {cpu:8.2f} {sec / n * 1e6:9.2f} {ratio}")
    print("(us/curve and ratios from CPU time on CPU, wall time on GPU)")
    print("(x light-curve > 1: faster than light-curve; shared 6 = mean, median, std, MAD, IQR, von Neumann)")


if __name__ == "__main__":
    main()
