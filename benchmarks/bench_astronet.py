"""Speed of the Astronet chain: cleaning + gridding, batched BLS, folding/views, classification.

Light curves: CSST-like 1000-epoch i-band curves at the paper's variable fractions
(``python -m skyvar.sim lightcurves survey=csst``), read back from the long-format store.
Peer: astropy ``BoxLeastSquares`` curve by curve on the same period grid (timed on ``--peer-n``
curves and extrapolated). The target is 100,000 light curves; ``--n`` runs fewer and the table
extrapolates linearly (every stage is linear in the number of curves).

    python benchmarks/bench_astronet.py [--n 100000] [--peer-n 30] [--checkpoint models/astronet-csst/astronet.pt]
        [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import Timer, device_info, print_table  # noqa: E402


class CpuTimer(Timer):
    """Wall and process CPU time (on a shared machine CPU time is the stable number)."""

    def __enter__(self):
        self.c0 = time.process_time()
        return super().__enter__()

    def __exit__(self, *a):
        super().__exit__(*a)
        self.cpu = time.process_time() - self.c0

from skyvar.data.lightcurve_views import iter_store_batches  # noqa: E402
from skyvar.lightcurves.views import (  # noqa: E402
    ViewConfig,
    _chunked_bls,
    bls_search,
    grid_light_curves,
    make_views,
)
from skyvar.sim.csst_lightcurves import CSSTLightCurveConfig, simulate_csst_lightcurves  # noqa: E402
from skyvar.utils.config import config_from_dotlist  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="light curves (target 100,000)")
    ap.add_argument("--peer-n", type=int, default=30, help="light curves for the astropy BLS peer")
    ap.add_argument("--checkpoint", default="astronet-csst")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(device_info(), f"| device for views/BLS/network: {a.device}")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_astronet_"))
    sim = config_from_dotlist(CSSTLightCurveConfig, base={"out_dir": str(work / "lc"), "seed": 11, "n_stars": a.n})
    with Timer() as t_sim:
        simulate_csst_lightcurves(sim)
    cfg = ViewConfig(device=a.device, min_depth_snr=5.0)
    predictor = None
    ck = Path(a.checkpoint)
    if ck.exists():
        from skyvar.models.astronet_module import load_astronet

        predictor = load_astronet(ck, device=a.device)
        cfg = config_from_dotlist(ViewConfig, base={**predictor.views, "device": a.device})
    t = {"read": 0.0, "clean+grid": 0.0, "bls": 0.0, "views": 0.0, "network": 0.0}
    c = dict.fromkeys(t, 0.0)
    n = n_gate = 0
    n_periods = 0
    peer_batch = None
    it = iter_store_batches(work / "lc" / "lightcurves.parquet")
    while True:
        with CpuTimer() as tr:
            batch = next(it, None)
        t["read"] += tr.s
        c["read"] += tr.cpu
        if batch is None:
            break
        n += len(batch)
        with CpuTimer() as tg:
            g = grid_light_curves(batch, cfg)
        t["clean+grid"] += tg.s
        c["clean+grid"] += tg.cpu
        rows = np.flatnonzero(g.n_points >= cfg.min_points)
        with CpuTimer() as tb:
            res = _chunked_bls(g, rows, cfg, keep=False, progress=False)
        t["bls"] += tb.s
        c["bls"] += tb.cpu
        n_periods = len(res.periods)
        ok = np.isfinite(res.power) & (res.depth_snr >= cfg.min_depth_snr)
        r = rows[ok]
        n_gate += len(r)
        with CpuTimer() as tv:
            gv, lv, _ = make_views(g.time, g.filled[r], res.period[ok], res.t0[ok], res.duration[ok], cfg)
        t["views"] += tv.s
        c["views"] += tv.cpu
        if predictor is not None and len(r):
            aux = np.stack([res.period[ok], res.duration[ok], res.depth[ok], g.mag[r], res.depth_snr[ok], res.sde[ok]], 1)
            with CpuTimer() as tn:
                predictor.predict(gv, lv, aux)
            t["network"] += tn.s
            c["network"] += tn.cpu
        if peer_batch is None:
            peer_batch = (g, rows[: a.peer_n])
        print(f"  {n} light curves ...", flush=True)
    # peer: astropy per curve on the same grid of periods and durations
    g, rows = peer_batch
    acfg = dataclasses.replace(cfg, method="astropy")
    with CpuTimer() as tp:
        bls_search(g.time, g.flux[rows], g.ivar[rows], acfg)
    tcfg = dataclasses.replace(cfg, method="torch")
    with CpuTimer() as tq:
        bls_search(g.time, g.flux[rows], g.ivar[rows], tcfg)
    per = {k: v / max(n, 1) for k, v in t.items()}
    rows_out = []
    for k, v in t.items():
        if k == "network" and predictor is None:
            continue
        rows_out.append({"stage": k, "n": n if k != "network" else n_gate, "wall_s": v, "cpu_s": c[k],
                         "wall_ms_per_curve": 1e3 * per[k], "cpu_ms_per_curve": 1e3 * c[k] / max(n, 1),
                         "extrapolated_100k_wall_s": per[k] * 100_000})
    total = sum(per.values())
    rows_out.append({"stage": "total (BLS+views+classification)", "n": n, "wall_s": sum(t.values()),
                     "cpu_s": sum(c.values()), "wall_ms_per_curve": 1e3 * total,
                     "cpu_ms_per_curve": 1e3 * sum(c.values()) / max(n, 1), "extrapolated_100k_wall_s": total * 100_000})
    print_table(rows_out, f"Astronet chain, {n} CSST-like light curves x 1000 epochs, {n_periods} trial periods, "
                f"{n_gate} passed the BLS gate; simulation took {t_sim.s:.0f} s (not counted)")
    k = max(len(rows), 1)
    peer = [{"bls": "skyvar torch (batched)", "n": len(rows), "wall_ms_per_curve": 1e3 * tq.s / k,
             "cpu_ms_per_curve": 1e3 * tq.cpu / k},
            {"bls": "astropy BoxLeastSquares (per curve)", "n": len(rows), "wall_ms_per_curve": 1e3 * tp.s / k,
             "cpu_ms_per_curve": 1e3 * tp.cpu / k}]
    big = {"bls": f"skyvar torch, full run (batches of {cfg.bls_chunk})", "n": n,
           "wall_ms_per_curve": 1e3 * per["bls"], "cpu_ms_per_curve": 1e3 * c["bls"] / max(n, 1)}
    for r in (big, *peer):
        r["astropy_cpu_ratio"] = peer[1]["cpu_ms_per_curve"] / max(r["cpu_ms_per_curve"], 1e-9)
    print_table([big, *peer], "BLS peer comparison (same periods and durations)")
    if predictor is None:
        print(f"(no checkpoint at {ck}: network stage skipped)")


if __name__ == "__main__":
    main()
