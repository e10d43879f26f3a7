"""Peak memory and throughput of the spectra pipelines at survey scale (issue 17 §3).

    python benchmarks/bench_memory_spectra.py --pipeline binary --n 100000
    python benchmarks/bench_memory_spectra.py --pipeline rv --n 100000

Synthetic inputs under ``datasets/bench_memory/`` (deleted afterwards unless ``--keep``):

- ``binary``: ``--unique`` simulated LAMOST LRS spectra written as FITS files (LAMOST image layout, 78 kB
  each) and hard-linked ``n`` times (no extra disk);
- ``rv``: LAMOST-MRS-layout files of ``--exposures`` single exposures per arm (14 spectra per file), each
  star at its own sky position (a hard link would make them one star), so ``n / 14`` real files
  (~1 MB each) are written; the spectra are the synthetic absorption-line stars of
  :mod:`skyvar.sim.rv_mock`.

Every run is a fresh process limited to ``--threads`` CPU threads; its peak resident memory
(``ru_maxrss``) and wall time are reported. "Streaming" is the pipeline as shipped (chunks, read-ahead,
parts written as they finish); "one chunk" runs the same code with a chunk that holds every input, which is
what the pipelines did before (every spectrum loaded before processing), on ``--baseline-n`` spectra
(its memory grows linearly with n; the table extrapolates it to ``n``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r"""
import json, os, resource, sys, time
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
if args["pipeline"] == "binary":
    from skyvar.pipeline.binary_spectra import BinarySpectraPipeline
    from skyvar.models.registry import checkpoint_path
    s = BinarySpectraPipeline(model=str(checkpoint_path(args["model"])), input=args["input"], out_dir=args["out"], device="cpu",
                              chunk_size=args["chunk"], read_workers=args["workers"], resume=False).run()
    n = s["n_spectra"]
else:
    from skyvar.pipeline.rv import RVPipeline
    s = RVPipeline(out_dir=args["out"], input=args["input"], device="cpu", batch_size=args["chunk"],
                   read_workers=args["workers"], resume=False, figures=False, progress=False).run()
    n = s["n_velocities"]
dt = time.perf_counter() - t0
print(json.dumps({"n": n, "seconds": dt, "rate": n / dt, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(args: dict, threads: int) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "BENCH_THREADS": str(threads),
                "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]),
                "SKYVAR_ROOT": str(ROOT)})
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_lrs(d: Path, n: int, unique: int, seed: int = 0) -> Path:
    from skyvar.sim.spectra import SpectraSimConfig, simulate_to_disk
    from skyvar.spectra.io import write_lamost_lrs
    from skyvar.spectra.spectrum import Spectrum

    sim = d / "sim"
    simulate_to_disk(SpectraSimConfig(out_dir=str(sim), n_single=unique, n_binary=0, n_eval_binary=0, seed=seed,
                                      chunk=500))
    wave = np.load(sim / "wavelength.npy")
    flux, ivar = np.load(sim / "flux.npy"), np.load(sim / "ivar.npy")
    src = d / "unique"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(unique):
        s = Spectrum(wavelength=wave, flux=flux[k], ivar=ivar[k], mask=~(ivar[k] > 0), vacuum=True)
        write_lamost_lrs(src / f"u{k:05d}.fits", s, header={"OBSID": k, "RA": float(rng.uniform(0, 360)),
                                                             "DEC": float(rng.uniform(-10, 60)), "SNRG": 50.0,
                                                             "CLASS": "STAR", "SUBCLASS": "G5"})
    files = sorted(src.glob("*.fits"))
    out = d / "links"
    out.mkdir(exist_ok=True)
    for i in range(n):
        sub = out / f"{i // 10000:03d}"
        sub.mkdir(exist_ok=True)
        os.link(files[i % unique], sub / f"spec-{i:07d}.fits")
    return out


def make_mrs(d: Path, n_spectra: int, exposures: int = 7, seed: int = 0) -> Path:
    """n_spectra / (2 exposures) MRS files; one template file written, copies with the header patched."""
    from astropy.io import fits

    from skyvar.sim.rv_mock import MRSFilesConfig, simulate_mrs_files

    tpl = d / "tpl"
    simulate_mrs_files(MRSFilesConfig(out_dir=str(tpl), n_stars=1, n_nights=1, exposures_per_night=exposures, seed=seed))
    src = sorted(tpl.glob("med-*.fits"))[0]
    raw = bytearray(src.read_bytes())
    hdr = fits.getheader(src)
    n_files = int(np.ceil(n_spectra / (2 * exposures)))
    out = d / "files"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    ra_pos = raw.find(b"RA      =")
    dec_pos = raw.find(b"DEC     =")
    obj_pos = raw.find(b"OBJNAME =")
    for i in range(n_files):
        b = bytearray(raw)
        b[ra_pos:ra_pos + 80] = f"{'RA':8s}= {rng.uniform(0, 360):20.10f}".ljust(80).encode()
        b[dec_pos:dec_pos + 80] = f"{'DEC':8s}= {rng.uniform(-10, 60):20.10f}".ljust(80).encode()
        b[obj_pos:obj_pos + 80] = f"{'OBJNAME':8s}= '{f'bench{i:07d}':18s}'".ljust(80).encode()
        sub = out / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"med-{hdr.get('LMJD', 58400)}-bench_sp01-{i:07d}.fits").write_bytes(b)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", choices=["binary", "rv"], default="binary")
    ap.add_argument("--n", type=int, default=100_000, help="spectra")
    ap.add_argument("--baseline-n", type=int, default=3000, help="spectra for the one-chunk (load-everything) run")
    ap.add_argument("--unique", type=int, default=200, help="distinct LRS files behind the hard links")
    ap.add_argument("--chunk", type=int, default=None, help="chunk size (default: the pipeline's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="specnet-lamost", help="a release name or a checkpoint file")
    ap.add_argument("--workdir", default=str(ROOT / "datasets" / "bench_memory"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir) / args.pipeline
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    chunk = args.chunk or 1024
    rows = []
    try:
        t0 = time.perf_counter()
        if args.pipeline == "binary":
            inp = make_lrs(work, args.n, args.unique)
            base = make_lrs(work / "base", args.baseline_n, args.unique)
        else:
            inp = make_mrs(work, args.n)
            base = make_mrs(work / "base", args.baseline_n)
        t_make = time.perf_counter() - t0
        common = {"pipeline": args.pipeline, "model": args.model, "workers": args.workers}
        with tempfile.TemporaryDirectory(dir=work) as o1, tempfile.TemporaryDirectory(dir=work) as o2, \
                tempfile.TemporaryDirectory(dir=work) as o3:
            one = run_child({**common, "input": str(base), "out": o1, "chunk": 10**9}, args.threads)
            rows.append(("one chunk (every spectrum in memory, as before)", one))
            small = run_child({**common, "input": str(base), "out": o2, "chunk": chunk}, args.threads)
            rows.append((f"streaming, chunk {chunk}", small))
            big = run_child({**common, "input": str(inp), "out": o3, "chunk": chunk}, args.threads)
            rows.append((f"streaming, chunk {chunk}", big))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    per = (one["maxrss_mb"] - small["maxrss_mb"]) / max(one["n"], 1)
    print(f"\n{args.pipeline} pipeline, {args.threads} CPU threads, {args.workers} reader threads, "
          f"{platform.processor() or platform.machine()}; inputs made in {t_make:.0f} s")
    print(f"{'run':52s} {'spectra':>9s} {'peak RSS MB':>12s} {'spectra/s':>10s}")
    for name, r in rows:
        print(f"{name:52s} {r['n']:9d} {r['maxrss_mb']:12.0f} {r['rate']:10.1f}")
    print(f"one chunk: ≈ {per * 1024:.0f} kB more per spectrum -> ≈ {(small['maxrss_mb'] + per * args.n) / 1024:.1f} GB "
          f"for {args.n} spectra (extrapolated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
