"""Speed of the binary-spectra chain: reading LAMOST files, preprocessing (Ho et al. normalisation) and
SpecNet inference, in spectra per second, on CPU (and CUDA when present).

Peer for the normalisation: the direct per-spectrum implementation of Ho et al. (2017) as written in
The Cannon's LAMOST code (a Python loop over spectra, each a weighted sum over all pixels with numpy);
skyvar does the same sums for all spectra as one matrix product. Both are checked to agree.

    python benchmarks/bench_spectra.py [--n 2000] [--copies 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("SKYVAR_ROOT", str(ROOT))

from skyvar.models.specnet_module import SpecNetModule  # noqa: E402
from skyvar.pipeline.binary_spectra import predict_logits  # noqa: E402
from skyvar.spectra.io import read_lamost_lrs  # noqa: E402
from skyvar.spectra.preprocess import Preprocessor  # noqa: E402


def ho_reference(wave, flux, ivar, L=50.0):
    """Per-spectrum direct sums (The Cannon style): f_s = Σ f ivar w / Σ ivar w, w = exp(-Δλ²/L²)."""
    out = np.empty_like(flux)
    w = np.exp(-((wave[:, None] - wave[None, :]) ** 2) / L**2)
    for k in range(len(flux)):
        out[k] = (w @ (flux[k] * ivar[k])) / (w @ ivar[k])
    return out


def timeit(fn, repeat=3):
    best = np.inf
    res = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="spectra for the preprocessing/inference timings")
    ap.add_argument("--copies", type=int, default=10, help="copies of the 11 real files for the end-to-end timing")
    ap.add_argument("--checkpoint", default=str(ROOT / "src/skyvar/models/released/specnet-lamost/specnet.ckpt"))
    ap.add_argument("--real-dir", default=str(ROOT.parent / "shared/data/spectra/lamost_lrs"),
                    help="real LAMOST files (default ../shared; without it the packaged example file is used)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    files = sorted(Path(args.real_dir).glob("*.fits*"))
    if not files:
        from skyvar.spectra.resources import example_lrs_file

        print(f"no LAMOST files in {args.real_dir}: using the packaged example file")
        files = [example_lrs_file()]
    if Path(args.checkpoint).exists():
        from skyvar.models.specnet_module import load_specnet

        model = load_specnet(args.checkpoint)
    else:
        model = SpecNetModule(net={"channels": [16, 32, 64, 128], "blocks_per_stage": 1}, preprocess={}).eval()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []

    # 1) reading
    t_read, spectra = timeit(lambda: [read_lamost_lrs(f) for f in files * args.copies], repeat=1)
    n_files = len(files) * args.copies
    rows.append(("read LAMOST FITS (astropy)", "cpu", n_files / t_read, None))

    # 2) normalisation: skyvar batched vs per-spectrum reference, on n spectra
    rng = np.random.default_rng(0)
    pre = Preprocessor(model.hparams.preprocess or {})
    base = pre(spectra[: len(files)])
    reps = int(np.ceil(args.n / len(base)))
    flux = np.tile(base.flux, (reps, 1))[: args.n].astype(np.float64) * rng.normal(1, 0.01, (args.n, pre.npix))
    ivar = np.tile(base.ivar, (reps, 1))[: args.n].astype(np.float64)
    from skyvar.spectra.preprocess import smooth_continuum

    n_ref = min(args.n, 200)
    t_ref, ref = timeit(lambda: ho_reference(pre.wavelength, flux[:n_ref], ivar[:n_ref], pre.cfg.smooth_L), repeat=1)
    rows.append(("normalisation, per-spectrum reference (numpy)", "cpu", n_ref / t_ref, 1.0))
    ref_rate = n_ref / t_ref
    for dev in devices:
        W = Preprocessor(pre.cfg, device=dev).W
        t, (cont, _) = timeit(lambda W=W: smooth_continuum(flux, ivar, W))
        # kernel truncated at 4 L in skyvar: agreement to 1e-4 relative
        err = np.nanmax(np.abs(cont[:n_ref] - ref) / np.abs(ref))
        rows.append((f"normalisation, skyvar batched (max rel. diff {err:.1e})", dev, args.n / t, args.n / t / ref_rate))

    # 3) full preprocessing of Spectrum objects (resample + masks + normalisation)
    batch_spectra = (spectra * int(np.ceil(args.n / len(spectra))))[: args.n]
    for dev in devices:
        p = Preprocessor(pre.cfg, device=dev)
        _ = p.W
        t, _ = timeit(lambda p=p: p(batch_spectra), repeat=1)
        rows.append(("preprocess Spectrum objects (resample+mask+normalise)", dev, args.n / t, None))

    # 4) inference
    xin = base.model_input() if pre.cfg.continuum_channel else base.flux
    x = np.tile(xin, (reps,) + (1,) * (xin.ndim - 1))[: args.n]
    for dev in devices:
        t, _ = timeit(lambda dev=dev: predict_logits(model, x, batch_size=512, device=dev))
        rows.append(("SpecNet inference", dev, args.n / t, None))

    # 5) end to end: read + preprocess + inference
    for dev in devices:
        def e2e(dev=dev):
            sp = [read_lamost_lrs(f) for f in files * args.copies]
            b = Preprocessor(pre.cfg, device=dev)(sp)
            return predict_logits(model, b.model_input() if pre.cfg.continuum_channel else b.flux, device=dev)

        t, _ = timeit(e2e, repeat=1)
        rows.append(("end to end: read + preprocess + infer", dev, n_files / t, None))

    cpu = platform.processor() or platform.machine()
    print(f"\nbinary-spectra chain, {args.n} spectra ({pre.npix} pixels), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads ({cpu}), CUDA: "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(f"{'stage':62s} {'device':6s} {'spectra/s':>11s} {'vs reference':>13s}")
    for name, dev, rate, ratio in rows:
        print(f"{name:62s} {dev:6s} {rate:11.1f} {'' if ratio is None else f'{ratio:12.1f}x':>13s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
