"""Light-curve quality of ``pipeline=field`` with PNet: per-frame (detection + refinement on every frame)
versus forced photometry at a reference (PNet on a median stack), on one simulated series.

    python benchmarks/bench_field_photometry.py [--size 512] [--epochs 200] [--out results/field_photometry]

Simulates (if missing) a CSST-like series (seed 2024) into ``datasets/field<size>x<epochs>`` and runs

    python infer.py pipeline=field detector=pnet input=<frames> truth=<truth> out_dir=<out>/<mode>
        pipeline.photometry=<per_frame|forced>

with the light-curve stages reduced to the variability indices (the searches and Astronet do not enter
the light-curve scatter), then prints the robust light-curve scatter of constant and variable stars
against their true light curves at i = 20, 22 and 24 (``eval_lightcurves``), the fraction of targets
with a light curve, and each run's photometry wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_info, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "results" / "field_photometry"))
    ap.add_argument("--modes", nargs="+", default=["per_frame", "forced"])
    a = ap.parse_args()
    data = ROOT / "datasets" / f"field{a.size}x{a.epochs}"
    if not (data / "truth.ecsv").exists() or len(list((data / "frames").glob("*.fits"))) < a.epochs:
        subprocess.run([sys.executable, "-m", "skyvar.sim", "field", f"out_dir={data}", f"size={a.size}",
                        f"n_epochs={a.epochs}", "seed=2024"], check=True, cwd=ROOT)
    print(f"# pipeline=field, PNet per frame vs forced — {device_info()}; {a.size}² px x {a.epochs} epochs")
    rows = []
    for mode in a.modes:
        out = Path(a.out) / mode
        cmd = [sys.executable, "infer.py", "pipeline=field", "detector=pnet", f"input={data / 'frames'}",
               f"truth={data / 'truth.ecsv'}", f"out_dir={out}", f"pipeline.photometry={mode}",
               "pipeline.progress=false", "pipeline.plots=false", "pipeline.evaluate.detection_frames=3",
               "pipeline.lightcurves.stages.excess=null", "pipeline.lightcurves.stages.flares=null",
               "pipeline.lightcurves.stages.periodogram=null", "pipeline.lightcurves.stages.astronet=null"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            print(r.stderr[-3000:])
            raise SystemExit(f"{mode} failed")
        s = json.loads((out / "summary.json").read_text())
        lc = json.loads((out / "eval_lightcurves" / "metrics.json").read_text())
        st = s["stages"]
        rows.append({"photometry": mode, "scatter i=20": lc["scatter_at_20"], "scatter i=22": lc["scatter_at_22"],
                     "scatter i=24": lc["scatter_at_24"],
                     "targets with a light curve": lc["target_lightcurve_completeness"],
                     "photometry wall [s]": st["photometry"].get("wall_s"),
                     "reference wall [s]": st.get("reference", {}).get("wall_s"), "total wall [s]": wall})
    print_table(rows, "Light-curve scatter (robust σ of m − m_true per star, median per 0.5-mag bin)")


if __name__ == "__main__":
    main()
