"""Figures of the field pipeline. Each function returns matplotlib Figures (no pyplot state, no backend
switch, so they display inline in a notebook); the pipeline saves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.flags import CandidateFlag

__all__ = ["plot_scatter_vs_mag", "plot_top_candidates", "plot_detections"]


def plot_scatter_vs_mag(cand: pd.DataFrame):
    """The field's scatter-versus-magnitude diagram with the candidates of each kind marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    y = cand["robust_std"].to_numpy(float) if "robust_std" in cand else cand["std"].to_numpy(float)
    x = cand["mag_median"].to_numpy(float)
    ax.scatter(x, y, s=1, color="0.6", rasterized=True, label="sources")
    for flag, col in ((CandidateFlag.EXCESS, "tab:orange"), (CandidateFlag.PERIODIC_LS, "tab:blue"),
                      (CandidateFlag.PERIODIC_CNN, "tab:red"), (CandidateFlag.FLARE, "tab:green")):
        s = (cand["flags"].to_numpy() & int(flag)) > 0
        if s.any():
            ax.scatter(x[s], y[s], s=6, color=col, label=f"{flag.name.lower()} ({int(s.sum())})")
    ax.set_yscale("log")
    ax.set_xlabel("median magnitude")
    ax.set_ylabel("robust std [mag]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_top_candidates(cand: pd.DataFrame, store: Path, n: int = 12):
    """Light curves of the ``n`` top candidates (by p_periodic, else FAP, else scatter), folded at their
    period when one is known; None when there are no candidates."""
    from matplotlib.figure import Figure

    from skyvar.evaluate.lightcurves import load_curves

    p = cand["p_periodic"].to_numpy(float)
    if np.isfinite(p).any():
        score = p
    elif "log10_fap_cal" in cand:
        score = -np.nan_to_num(cand["log10_fap_cal"].to_numpy(float), nan=0.0)
    else:
        score = cand["robust_std"].to_numpy(float)
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf))[:n]
    if not len(order):
        return None
    cols = 3
    rows = int(np.ceil(len(order) / cols))
    fig = Figure(figsize=(10, 2.2 * rows))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    curves = load_curves(store, cand["source_id"].to_numpy()[order])
    for ax, i in zip(axes.ravel(), order):
        r = cand.iloc[i]
        lc = curves.get(int(r["source_id"]), pd.DataFrame({"time": [], "mag": []}))
        per = r.get("period_bls") if np.isfinite(r.get("period_bls", np.nan)) else r.get("period", np.nan)
        t = lc["time"].to_numpy(float)
        if np.isfinite(per) and per > 0 and len(t):
            ax.plot(np.mod(t - t.min(), per) / per, lc["mag"], ".", ms=1.5)
            ax.set_xlabel("phase", fontsize=7)
        elif len(t):
            ax.plot(t - t.min(), lc["mag"], ".", ms=1.5)
        ax.invert_yaxis()
        ax.set_title(f"id {int(r['source_id'])} m={r['mag_median']:.2f} P={per:.3f} p={r['p_periodic']:.2f} "
                     f"{r['class']}", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(order):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_detections(catalog, frame, truth=None, size: int = 96):
    """A ``size``² cutout at the centre of ``frame`` (a :class:`skyvar.io.fits.Frame`) with the
    catalogue's detections (an astropy Table with x, y) and, given a truth table, the targets (i < 25)."""
    from matplotlib.figure import Figure

    ny, nx = frame.shape
    s = min(size, ny, nx)
    y0, x0 = (ny - s) // 2, (nx - s) // 2
    cut = frame.data[y0 : y0 + s, x0 : x0 + s]
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    v = np.percentile(cut, [5, 99.5])
    ax.imshow(np.arcsinh((cut - v[0]) / max(v[1] - v[0], 1e-9) * 10), origin="lower", cmap="gray")
    x, y = np.asarray(catalog["x"], float) - x0, np.asarray(catalog["y"], float) - y0
    sel = (x > -0.5) & (x < s - 0.5) & (y > -0.5) & (y < s - 0.5)
    ax.plot(x[sel], y[sel], "+", color="tab:red", ms=6, label=f"{catalog.meta.get('detector', 'catalogue')}")
    if truth is not None:
        tx, ty = np.asarray(truth["x"], float) - x0, np.asarray(truth["y"], float) - y0
        ts = (tx > -0.5) & (tx < s - 0.5) & (ty > -0.5) & (ty < s - 0.5) & (np.asarray(truth["mag"], float) < 25)
        ax.plot(tx[ts], ty[ts], "o", mfc="none", color="tab:cyan", ms=5, mew=0.7, label="truth (i < 25)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{catalog.meta.get('frame_id', '')}: {s}x{s} px cutout", fontsize=9)
    fig.tight_layout()
    return fig
