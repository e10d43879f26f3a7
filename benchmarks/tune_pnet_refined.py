"""Tune the refined PNet catalogue on a tuning frame (never a held-out one): its ``mag_err`` calibration
and its operating points (heatmap threshold and target magnitude limit per match radius).

Operating points: with the refinement the heatmap threshold and the ``target`` limit (detections
measured brighter than it count as targets) are chosen again for the best F1 at each match radius (the
checkpoint's own thresholds were chosen on validation stamps without refinement): thresholds
{0.15, 0.25, 0.35, 0.5} x limits {24.8 ... 25.4}.

The refinement's flux error is the star's own 4 x 4 fit covariance with its neighbours fixed: it
ignores the covariance with neighbours, the starting-catalogue errors (missed or spurious neighbours)
and the per-star systematics of the frame (the simulator's 0.15 % "jitter noise"). The catalogue
therefore quotes sqrt((a σ_fit)² + b²); this script fits the scale a and the floor b [mag] so that the
robust spread of (m − m_true)/mag_err is 1 in every 0.5-mag bin from i = 18 to 25 (least squares in
log pull σ over the bins), and with ``--write`` stores them in the checkpoint's metadata
(``refine_err_scale``, ``refine_err_floor``, ``refined_operating_points``), where ``PNetDetector``
reads them (for a release, the model card's SHA-256 line is updated with it).

    python benchmarks/tune_pnet_refined.py [--checkpoint pnet-csst] [--write]

The tuning frame: 1024², seed 12, region 12 (``python -m skyvar.sim field out_dir=datasets/tune/default
seed=12 region=12 size=1024``), simulated when missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from skyvar.detect.pnet import DEFAULT_CHECKPOINT, MAG_PER_LN, PNetDetector  # noqa: E402
from skyvar.evaluate.detection import robust_std  # noqa: E402
from skyvar.evaluate.matching import match_catalogs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EDGES = np.arange(18.0, 25.01, 0.5)


def tuning_frame(base: Path) -> Path:
    from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

    if not (base / "truth.ecsv").exists() or not (base / "frames" / "frame_0000.fits").exists():
        simulate_field_to_disk(FieldSimConfig(out_dir=str(base), seed=12, region=12, size=1024), progress=False)
    return base


def pull_table(dm: np.ndarray, s_fit: np.ndarray, mt: np.ndarray, a: float, b: float) -> np.ndarray:
    s = np.sqrt((a * s_fit) ** 2 + b**2)
    idx = np.digitize(mt, EDGES) - 1
    return np.array([robust_std((dm / s)[idx == k]) for k in range(len(EDGES) - 1)])


def fit_scale_floor(dm: np.ndarray, s_fit: np.ndarray, mt: np.ndarray) -> tuple[float, float]:
    best = (np.inf, 1.0, 0.0)
    for a in np.arange(0.8, 2.001, 0.01):
        for b in np.arange(0.0, 0.0201, 0.0005):
            p = pull_table(dm, s_fit, mt, a, b)
            cost = float(np.nansum(np.log(p) ** 2))
            if cost < best[0]:
                best = (cost, float(a), float(b))
    return best[1], best[2]


THRESHOLDS = (0.15, 0.25, 0.35, 0.5)
LIMITS = (24.8, 24.9, 25.0, 25.1, 25.2, 25.3, 25.4)


def operating_points(checkpoint: str, frame, truth_path: Path) -> dict:
    """Best (threshold, target limit) per match radius by F1 on the tuning frame."""
    from skyvar.evaluate.report import evaluate_detections

    best: dict[str, tuple] = {}
    for th in THRESHOLDS:
        cat = PNetDetector(checkpoint=checkpoint, device="cpu", check_inputs=False, threshold=th,
                           report_mag_max=None).detect(frame)
        mag = np.nan_to_num(np.asarray(cat["mag"], float), nan=99.0)
        for lim in LIMITS:
            c = cat.copy()
            c["target"] = mag < lim
            m = evaluate_detections([c], truth_path, None, oracle=False)
            print(f"threshold {th:.2f}  target limit {lim:.1f}: F1@0.1 {m['f1']['0.1']:.4f}  F1@1 {m['f1']['1']:.4f}")
            for k in ("0.1", "1"):
                if k not in best or m["f1"][k] > best[k][0]:
                    best[k] = (m["f1"][k], th, lim)
    return {k: {"threshold": v[1], "report_mag_max": v[2], "f1_tuning": round(v[0], 4)} for k, v in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="a release name or a checkpoint file")
    ap.add_argument("--data", default=str(ROOT / "datasets" / "tune" / "default"))
    ap.add_argument("--write", action="store_true", help="store the fitted values in the checkpoint's metadata")
    ap.add_argument("--skip-operating-points", action="store_true")
    a = ap.parse_args()
    from astropy.table import Table

    from skyvar.io.fits import read_frame

    d = tuning_frame(Path(a.data))
    frame = read_frame(d / "frames" / "frame_0000.fits")
    truth = Table.read(d / "truth.ecsv")
    det = PNetDetector(checkpoint=a.checkpoint, device="cpu", check_inputs=False, refine_err_scale=1.0,
                       refine_err_floor=0.0)
    cat = det.detect(frame)
    ok = np.isfinite(np.asarray(cat["flux_err_fit"], float)) & (np.asarray(cat["flux"], float) > 0)
    cat = cat[ok]
    di, ti, _ = match_catalogs(np.c_[cat["x"], cat["y"]], np.c_[truth["x"], truth["y"]], 1.0)
    mt = np.asarray(truth["mag"], float)[ti]
    sel = (mt >= EDGES[0]) & (mt < EDGES[-1])
    di, ti, mt = di[sel], ti[sel], mt[sel]
    dm = np.asarray(frame.flux_to_mag(np.asarray(cat["flux"], float)))[di] - mt
    s_fit = MAG_PER_LN * np.asarray(cat["flux_err_fit"], float)[di] / np.asarray(cat["flux"], float)[di]
    scale, floor = fit_scale_floor(dm, s_fit, mt)
    p0, p1 = pull_table(dm, s_fit, mt, 1.0, 0.0), pull_table(dm, s_fit, mt, scale, floor)
    print(f"# refined PNet mag_err calibration on {d} ({len(dm)} matches within 1 px, i = 18-25)")
    print(f"scale a = {scale:.2f}, floor b = {floor:.4f} mag")
    print("| i bin | n | pull σ (raw fit errors) | pull σ (calibrated) |\n|---|---|---|---|")
    idx = np.digitize(mt, EDGES) - 1
    for k in range(len(EDGES) - 1):
        print(f"| {EDGES[k]:.1f}–{EDGES[k + 1]:.1f} | {(idx == k).sum()} | {p0[k]:.2f} | {p1[k]:.2f} |")
    ops = None
    if not a.skip_operating_points:
        ops = operating_points(a.checkpoint, frame, d / "truth.ecsv")
        print("operating points (best F1 per match radius):", ops)
    if a.write:
        import torch

        from skyvar.models.registry import RELEASES, checkpoint_path, update_card_sha256

        path = checkpoint_path(a.checkpoint)
        ck = torch.load(path, map_location="cpu", weights_only=False)
        ck.setdefault("meta", {}).update(refine_err_scale=round(scale, 3), refine_err_floor=round(floor, 5),
                                         refine_err_calibration=f"benchmarks/tune_pnet_refined.py on {Path(a.data).name} "
                                                                f"(seed 12): pull sigma per 0.5-mag bin i = 18-25")
        if ops is not None:
            ck["meta"]["refined_operating_points"] = ops
        from skyvar.utils.atomic import atomic_path

        with atomic_path(path) as tmp:
            torch.save(ck, tmp)
        if a.checkpoint in RELEASES:
            update_card_sha256(a.checkpoint)
        print(f"wrote refine_err_scale/floor and the operating points into {path}")


if __name__ == "__main__":
    main()
