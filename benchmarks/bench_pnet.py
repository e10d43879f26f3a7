"""PNet speed beside its peers, training throughput, and the decoder ceiling.

1. Inference on one simulated CSST-like frame (Mpix/s): PNet (released checkpoint; CPU, and the GPU
   when there is one) beside sep (SExtractor settings of the paper's Table 2) and, when the skyvar
   baselines are installed, ``skyvar.detect.sep_baseline`` / ``photutils_psf`` through the same
   ``Detector.detect`` call. The issue's goal on one GPU: a 5000 x 5000 frame in <= 1 s.
2. Training throughput (128 x 128 stamps/s, forward + backward + Adam step) of the released
   architecture and of the default (GPU) one.
3. The decoder ceiling: perfect, truth-rendered targets decoded and matched within 0.1 px, for a
   stride-1 grid and the 2x super-resolved grid (fraction of i < 25 stars recovered).

    python benchmarks/bench_pnet.py [--size 1024] [--checkpoint models/pnet-csst/pnet.pt] [--skip-peers]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import Timer, device_info, print_table  # noqa: E402

from skyvar.detect.pnet import DEFAULT_CHECKPOINT, PNetDetector, decode, encode_targets, flux_to_magrel  # noqa: E402
from skyvar.evaluate.matching import match_catalogs  # noqa: E402
from skyvar.io.fits import read_frame  # noqa: E402
from skyvar.sim.field import FieldSimConfig, draw_catalogue, simulate_field_to_disk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sep_table2(frame) -> int:
    """sep with the paper's SExtractor settings (Table 2): the raw peer library."""
    import sep

    d = np.ascontiguousarray(frame.data, dtype=np.float32)
    m = frame.mask != 0
    bkg = sep.Background(d, mask=m, bw=64, bh=64, fw=3, fh=3)
    sub = d - bkg.back()
    sep.set_extract_pixstack(10_000_000)
    sep.set_sub_object_limit(4096)
    obj = sep.extract(sub, 1.6, err=bkg.globalrms, mask=m, minarea=3, deblend_nthresh=60, deblend_cont=0.001,
                      filter_kernel=np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float))
    sep.sum_circle(sub, obj["x"], obj["y"], 2.0, err=bkg.globalrms, mask=m)
    return len(obj)


def inference_rows(frame_path: Path, ckpt: Path, skip_peers: bool) -> list[dict]:
    frame = read_frame(frame_path)
    mpix = frame.data.size / 1e6
    rows = []

    def add(name, device, fn, repeat=1):
        fn()  # warm-up (model to device, caches)
        with Timer() as t:
            for _ in range(repeat):
                n = fn()
        s = t.s / repeat
        rows.append({"method": name, "device": device, "frame": f"{frame.shape[1]}x{frame.shape[0]}",
                     "seconds": s, "Mpix/s": mpix / s, "n_sources": n})

    det = PNetDetector(checkpoint=str(ckpt), device="cpu", check_inputs=False)
    add("PNet", "cpu", lambda: len(det.detect(frame)))
    if torch.cuda.is_available():
        gdet = PNetDetector(checkpoint=str(ckpt), device="cuda", tile=2048, batch_size=4, check_inputs=False)

        def run_gpu():
            n = len(gdet.detect(frame))
            torch.cuda.synchronize()
            return n

        add("PNet", torch.cuda.get_device_name(0), run_gpu, repeat=3)
    if not skip_peers:
        add("sep (Table 2)", "cpu", lambda: sep_table2(frame))
        for mod, cls in (("skyvar.detect.sep_baseline", "SepDetector"), ("skyvar.detect.photutils_psf", "PhotutilsPSFDetector")):
            try:
                m = __import__(mod, fromlist=[cls])
                d = getattr(m, cls)()
            except Exception as e:  # the baselines live on another branch until merged
                print(f"(peer {mod}.{cls} not available: {type(e).__name__}: {e})")
                continue
            add(d.name, "cpu", lambda d=d: len(d.detect(frame)))
    base = rows[0]["seconds"]
    for r in rows:
        r["time / PNet cpu"] = r["seconds"] / base
    return rows


def training_rows(batch: int = 8, steps: int = 3) -> list[dict]:
    from skyvar.models.pnet_module import PNetModule

    rows = []
    archs = {"released (12-24-48-96)": dict(channels=[12, 24, 48, 96], blocks=[1, 1, 1, 2], head_channels=16),
             "default (16-32-64-128)": dict(channels=[16, 32, 64, 128], blocks=[1, 1, 1, 2], head_channels=32)}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    g = torch.Generator().manual_seed(0)
    for dev in devices:
        for name, kw in archs.items():
            b = batch if dev == "cpu" else 64
            m = PNetModule(net=kw).to(dev)
            opt = torch.optim.Adam(m.parameters(), 1e-3)
            S = 128
            bt = {"image": (70 + 1000 * torch.rand(b, 1, S, S, generator=g)).to(dev),
                  "background": torch.full((b, 1, S, S), 70.0).to(dev), "mask": torch.zeros(b, 1, S, S, dtype=torch.uint8).to(dev),
                  "rdnoise": torch.full((b,), 7.07).to(dev), "truth_xy": (torch.rand(b, 256, 2, generator=g) * S).to(dev),
                  "truth_flux": torch.full((b, 256), 2000.0).to(dev), "truth_target": torch.ones(b, 256, dtype=torch.bool).to(dev),
                  "truth_valid": torch.ones(b, 256, dtype=torch.bool).to(dev)}

            _train_step(m, opt, bt, dev)
            with Timer() as t:
                for _ in range(steps):
                    _train_step(m, opt, bt, dev)
            rows.append({"network": name, "device": dev, "params": sum(p.numel() for p in m.parameters()),
                         "batch": b, "stamps/s": b * steps / t.s})
    return rows


def _train_step(m, opt, bt, dev) -> None:
    ls = m.losses(m(bt), m.targets(bt))
    opt.zero_grad()
    ls["loss"].backward()
    opt.step()
    if dev == "cuda":
        torch.cuda.synchronize()


def ceiling_rows(size: int = 1024, seed: int = 3) -> list[dict]:
    cfg = FieldSimConfig(size=size, seed=seed)
    cat = draw_catalogue(cfg, np.random.default_rng([cfg.seed, 0]))
    x, y, m = np.asarray(cat["x"]), np.asarray(cat["y"]), np.asarray(cat["mag_input"])
    ins = (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)
    x, y, m = x[ins], y[ins], m[ins]
    tgt = m < 25.0
    flux = 300 * 10 ** (-0.4 * (m - 25.85))
    rows = []
    for u in (1, 2):
        t = encode_targets(torch.tensor(np.c_[x, y][None], dtype=torch.float32), flux_to_magrel(torch.tensor(flux[None])),
                           torch.tensor(tgt[None]), (size, size), u, 0.5)
        h = t["heat"].clamp(1e-6, 1 - 1e-6)
        out = {"heat": torch.log(h / (1 - h)), "offset": t["offset"], "mag": t["mag"], "log_var": torch.zeros_like(t["mag"])}
        c = decode(out, u, 0.5)[0]
        di, ti, _ = match_catalogs(np.c_[c["x"], c["y"]], np.c_[x, y], 0.1)
        rows.append({"output grid": f"{u}x ({1 / u:g} px cells)", "targets (i<25)": int(tgt.sum()),
                     "recall@0.1px": float(np.isin(np.flatnonzero(tgt), ti).mean()), "false positives": len(c["x"]) - len(di)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--frame", default=None, help="an existing FITS frame instead of simulating one")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    a = ap.parse_args()
    print(f"# PNet benchmark — {device_info()}")
    with tempfile.TemporaryDirectory() as tmp:
        if a.frame:
            frame = Path(a.frame)
        else:
            simulate_field_to_disk(FieldSimConfig(out_dir=tmp, size=a.size, seed=777, region=900), progress=False)
            frame = Path(tmp) / "frames" / "frame_0000.fits"
        print_table(inference_rows(frame, Path(a.checkpoint), a.skip_peers), "Inference (same frame, same process)")
    if not a.skip_training:
        print_table(training_rows(), "Training throughput (128x128 stamps, fwd+bwd+Adam)")
    print_table(ceiling_rows(), "Decoder ceiling (perfect targets, 1024x1024 catalogue at the paper's density)")


if __name__ == "__main__":
    main()
