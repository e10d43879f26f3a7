"""PNet accuracy on held-out simulated frames through the evaluation harness, beside the paper.

Simulates (if missing) the two held-out 1024 x 1024 frames of ``docs/results/pnet.md`` — seeds and
regions never used in training (training frames use seeds/regions >= 1000):

- ``default``: the CSST-like default (Airy 770 nm / 2 m + 0.06" jitter), seed 2718: the frame of the
  baselines' README table (``python -m skyvar.sim field out_dir=datasets/heldout_2718 seed=2718 size=1024``);
- ``optical``: GalSim OpticalPSF with mild aberrations (defocus 0.05, astig1 0.04, coma2 0.03 waves),
  dilated 1.1x: its 50 % encircled-energy radius is ~20 % larger than the default's;

runs ``infer.py pipeline=detect detector=pnet`` equivalents (``DetectPipeline`` + ``PNetDetector``),
and prints the numbers quoted in the results: recall / precision / F1 at 0.1 and 1 px (i < 25),
mean |Δm|, photometric bias and scatter, astrometric RMS in the i = 24 bins, the mag_err pull spread.

    python benchmarks/eval_pnet_heldout.py [--out results/pnet] [--tta] [--frames default optical]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import Timer, device_info, print_table  # noqa: E402

from skyvar.detect.pnet import DEFAULT_CHECKPOINT, PNetDetector  # noqa: E402
from skyvar.evaluate.paper import PNET  # noqa: E402
from skyvar.pipeline.detect import DetectPipeline  # noqa: E402
from skyvar.sim.field import simulate_field_to_disk  # noqa: E402
from skyvar.utils.config import config_from_dotlist  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAMES = {
    "default": ["size=1024", "seed=2718"],
    "optical": ["size=1024", "seed=778", "region=901", "psf.model=optical", "psf.defocus=0.05", "psf.astig1=0.04",
                "psf.coma2=0.03", "psf.dilate=1.1"],
}


def ensure_frame(name: str, base: Path) -> Path:
    from skyvar.sim.field import FieldSimConfig

    out = base / name
    cfg = config_from_dotlist(FieldSimConfig, [*FRAMES[name], f"out_dir={out}"])
    if not (out / "truth.ecsv").exists() or not (out / "frames" / "frame_0000.fits").exists():
        simulate_field_to_disk(cfg, progress=False)
    return out


def summary_row(name: str, m: dict) -> dict:
    r = {"frame": name}
    for k in ("0.1", "1"):
        s = m["by_radius"][k]
        r[f"R@{k}"], r[f"P@{k}"], r[f"F1@{k}"] = s["recall"], s["precision"], s["f1"]
    s = m["by_radius"]["1"]
    e = np.asarray(m["mag_bins"])
    b24 = int(np.flatnonzero(np.isclose(e, 24.0))[0])  # the 24.0-24.5 bin
    pb = s["per_bin"]
    r["mean|dm|"] = s["photometry"]["mean_abs_dm"]
    r["bias"] = s["photometry"]["median_dm"]
    r["astro RMS i24 [px]"] = pb["astro_rms_px"][b24]
    r["astro RMS i23.5 [px]"] = pb["astro_rms_px"][b24 - 1]
    r["phot scatter i24 [mag]"] = pb["phot_scatter"][b24]
    r["pull σ"] = s["mag_err_calibration"]["pull_robust_std"]
    return r


def save_figures(fig_dir: Path, tag: str, out: Path, data: Path, det: PNetDetector) -> None:
    """The harness figures of this run, and a 96 x 96 crop: image, heatmap, detections over truth."""
    import shutil

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.table import Table

    from skyvar.io.fits import read_frame
    from skyvar.utils.atomic import savefig_atomic

    fig_dir.mkdir(parents=True, exist_ok=True)
    for f in ("fig7_f1.png", "fig7_f1_r1.png", "fig8_photometric_error.png", "fig9_photometric_scatter.png",
              "astrometry.png"):
        if (out / "report" / f).exists():
            shutil.copyfile(out / "report" / f, fig_dir / f"{tag}_{f}")
    frame = read_frame(data / "frames" / "frame_0000.fits")
    y0, x0, S = 300, 300, 96
    x, bkg = det.predict_maps(frame.data, frame.mask, frame.rdnoise)
    crop = x[..., y0 : y0 + S, x0 : x0 + S]
    import torch

    with torch.no_grad():
        heat = torch.sigmoid(det.forward(crop.to(det.device))["heat"])[0, 0].cpu().numpy()
    cat = Table.read(out / "catalogs" / "frame_0000.ecsv")
    truth = Table.read(data / "truth.ecsv")
    sel = lambda t: (t["x"] >= x0 - 0.5) & (t["x"] < x0 + S - 0.5) & (t["y"] >= y0 - 0.5) & (t["y"] < y0 + S - 0.5)  # noqa: E731
    c, tr = cat[sel(cat)], truth[sel(truth) & (truth["mag"] < 25)]
    img = np.arcsinh((frame.data - bkg)[y0 : y0 + S, x0 : x0 + S] / 10.0)
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.5))
    ext = (x0 - 0.5, x0 + S - 0.5, y0 - 0.5, y0 + S - 0.5)
    ax[0].imshow(img, origin="lower", cmap="gray", extent=ext)
    ax[0].set_title(f"{tag}: frame crop (asinh)")
    ax[1].imshow(heat, origin="lower", cmap="magma", extent=ext, vmin=0, vmax=1)
    ax[1].set_title("PNet heatmap (0.5 px cells)")
    ax[2].imshow(img, origin="lower", cmap="gray", extent=ext)
    ax[2].plot(tr["x"], tr["y"], "o", mfc="none", mec="c", ms=6, label="truth i < 25")
    ax[2].plot(c["x"], c["y"], "r+", ms=6, label="PNet")
    ax[2].legend(loc="upper right", fontsize=8)
    ax[2].set_title("detections over truth")
    fig.tight_layout()
    savefig_atomic(fig, fig_dir / f"{tag}_example.png", dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "results" / "pnet"))
    ap.add_argument("--data", default=str(ROOT / "datasets" / "heldout"))
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--frames", nargs="+", default=list(FRAMES))
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--threshold", type=float, default=None,
                    help="heatmap cut (default: the checkpoint's, tuned on validation for F1 at 1 px)")
    ap.add_argument("--figures", default=None, help="copy the harness figures and an example crop here")
    a = ap.parse_args()
    print(f"# PNet on held-out frames — {device_info()}")
    rows = []
    for name in a.frames:
        d = ensure_frame(name, Path(a.data))
        det = PNetDetector(checkpoint=a.checkpoint, device="auto", tta=a.tta, threshold=a.threshold)
        tag = name + ("_tta" if a.tta else "") + (f"_t{a.threshold:g}" if a.threshold is not None else "")
        out = Path(a.out) / tag
        p = DetectPipeline(det, out_dir=str(out), input=str(d / "frames"), truth=str(d / "truth.ecsv"),
                           evaluate={"match_radii": [0.1, 1.0], "target_mag_max": 25.0},
                           detector_config={"checkpoint": a.checkpoint, "tta": a.tta, "threshold": det.threshold},
                           progress=False, resume=False)
        with Timer() as t:
            p.run()
        m = json.loads((out / "report" / "metrics.json").read_text())
        row = summary_row(name, m)
        row["seconds"] = t.s
        row["tta"] = a.tta
        row["threshold"] = det.threshold
        rows.append(row)
        if a.figures:
            save_figures(Path(a.figures), tag, out, d, det)
    rows.append({"frame": "paper PNet", "R@0.1": PNET["recall"], "P@0.1": PNET["precision"], "F1@0.1": PNET["f1"],
                 "mean|dm|": PNET["mean_abs_dm"], "astro RMS i24 [px]": PNET["astro_px_at_24"],
                 "phot scatter i24 [mag]": 2.5 / np.log(10) * PNET["phot_frac_at_24"]})
    print_table(rows, "PNet, held-out frames (targets i < 25; harness metrics)")


if __name__ == "__main__":
    main()
