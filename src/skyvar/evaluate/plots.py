"""Figures of the dense-field paper (Figs 6-9) for any set of detectors side by side.

Each function returns the Figure, or saves it and returns the path when ``path`` is given. It takes ``results``: {detector name: metrics dict from :func:`skyvar.evaluate.report.evaluate_detections`}
and, for scatter plots, ``pairs``: {name: DataFrame of matched pairs (m_true, m_meas, dist, tp)}.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skyvar.utils.plotting import save_or_return, subplots


def _centres(m):
    e = np.asarray(m["mag_bins"])
    return 0.5 * (e[1:] + e[:-1])


def _r(m, radius):
    return m["by_radius"][_key(radius)]


def _key(radius) -> str:
    return f"{float(radius):g}"


def detections_vs_mag(results: dict, radius: float, path: Path | None = None):
    """Fig. 6: number of targets and of true detections per magnitude bin."""
    fig, ax = subplots(figsize=(6, 4))
    first = next(iter(results.values()))
    c = _centres(first)
    ax.step(c, _r(first, radius)["per_bin"]["n_targets"], where="mid", color="k", lw=2, label="truth (targets)")
    for name, m in results.items():
        ax.step(c, _r(m, radius)["per_bin"]["tp"], where="mid", label=f"{name} (TP, r={radius:g} px)")
    ax.set_yscale("log")
    ax.set_xlabel("true i [mag]")
    ax.set_ylabel("stars per bin")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def f1_vs_mag(results: dict, radius: float, path: Path | None = None):
    """Fig. 7: F1 (and recall, precision) per magnitude bin."""
    fig, ax = subplots(figsize=(6, 4))
    for name, m in results.items():
        pb = _r(m, radius)["per_bin"]
        (line,) = ax.plot(_centres(m), pb["f1"], "-o", ms=3, label=f"{name} F1")
        ax.plot(_centres(m), pb["recall"], ":", color=line.get_color(), lw=1, label=f"{name} recall")
        ax.plot(_centres(m), pb["precision"], "--", color=line.get_color(), lw=1, label=f"{name} precision")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("i [mag]")
    ax.set_ylabel(f"score (match radius {radius:g} px)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def photometric_error(pairs: dict, path: Path | None = None, target_mag_max: float = 25.0):
    """Fig. 8: Δm = m_measured − m_true against the true magnitude, one panel per detector."""
    n = len(pairs)
    fig, axes = subplots(1, n, figsize=(4.5 * n, 4), squeeze=False, sharey=True)
    for ax, (name, p) in zip(axes[0], pairs.items()):
        p = p[p["tp"]]
        dm = p["m_meas"] - p["m_true"]
        ok = np.isfinite(dm)
        ax.hexbin(p["m_true"][ok], dm[ok], gridsize=60, extent=(14, target_mag_max, -1.5, 1.5), bins="log", mincnt=1,
                  cmap="viridis")
        ax.axhline(0, color="r", lw=0.8)
        ax.set_title(f"{name}: mean |Δm| = {np.mean(np.abs(dm[ok])):.3f}" if ok.any() else name, fontsize=9)
        ax.set_xlabel("true i [mag]")
    axes[0][0].set_ylabel("m_measured − m_true [mag]")
    return _save(fig, path)


def photometric_scatter(results: dict, radius: float, path: Path | None = None):
    """Fig. 9: standard deviation of Δm per magnitude bin (and the robust scatter)."""
    fig, ax = subplots(figsize=(6, 4))
    for name, m in results.items():
        pb = _r(m, radius)["per_bin"]
        (line,) = ax.semilogy(_centres(m), pb["phot_std"], "-o", ms=3, label=f"{name} std")
        ax.semilogy(_centres(m), pb["phot_scatter"], ":", color=line.get_color(), label=f"{name} 1.4826 MAD")
    ax.set_xlabel("true i [mag]")
    ax.set_ylabel("photometric scatter [mag]")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def astrometric_error(results: dict, radius: float, path: Path | None = None):
    fig, ax = subplots(figsize=(6, 4))
    for name, m in results.items():
        pb = _r(m, radius)["per_bin"]
        (line,) = ax.semilogy(_centres(m), pb["astro_rms_px"], "-o", ms=3, label=f"{name} RMS")
        ax.semilogy(_centres(m), pb["astro_median_px"], ":", color=line.get_color(), label=f"{name} median")
    ax.set_xlabel("true i [mag]")
    ax.set_ylabel(f"position error [px] (matches within {radius:g} px)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def _save(fig, path):
    """Save to ``path`` (returned) or, with no path, return the Figure (for a notebook)."""
    return save_or_return(fig, path)
