"""Figures of the variability modules (matplotlib Figures without pyplot: no backend switch).

``plot_*`` functions that take a path write the file atomically; the others return the Figure and
leave saving to the caller (the pipeline stages).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd

from skyvar.utils.atomic import savefig_atomic
from skyvar.utils.plotting import subplots

LABELS = {
    "Q": "Q", "Q1": "Q1", "Q2": "Q2", "std": "Std (mag)", "iter_std": "Iter-std (mag)", "iter_std_3": "Iter-std, 3 it.",
    "cv": r"$C_\nu$", "kurtosis": r"$\kappa$", "skewness": r"$\gamma$", "mad": "MAD (mag)", "amp": "Amp (mag)",
    "robust_std": "robust std (mag)", "inv_eta": r"$1/\eta$",
}
# Indices that are positive and span decades: histogram and plot them on a log axis.
LOG_INDICES = {"Q", "Q1", "Q2", "std", "iter_std", "iter_std_3", "cv", "mad", "amp", "robust_std", "inv_eta"}


def _bins(v: np.ndarray, name: str, n: int = 50):
    v = v[np.isfinite(v)]
    if name in LOG_INDICES:
        v = v[v > 0]
        if len(v) < 2:
            return None, v
        lo, hi = np.percentile(v, [0.5, 99.5])
        return np.geomspace(max(lo, 1e-12), max(hi, lo * 1.01), n), v
    if len(v) < 2:
        return None, v
    lo, hi = np.percentile(v, [0.5, 99.5])
    return np.linspace(lo, hi if hi > lo else lo + 1, n), v


def plot_index_distributions(features: pd.DataFrame, out_dir: Path, names: list[str],
                             label_col: str | None = None, labels: dict | None = None) -> list[Path]:
    """Histograms of each index (per band; split by ``label_col`` when given, as the paper's Fig. 4)
    and the indices against median magnitude. Returns the files written."""
    out_dir = Path(out_dir)
    written = []
    bands = sorted(features["band"].unique()) if "band" in features else [""]
    if "band" in features:  # bands without any index value (band="all" rows of a multi-band search)
        has = features[[n for n in names if n in features]].notna().any(axis=1).groupby(features["band"]).any()
        bands = [b for b in bands if has.get(b, False)]
    ncol = 4
    nrow = int(np.ceil(len(names) / ncol))
    for band in bands:
        sub = features[features["band"] == band] if "band" in features else features
        fig, axes = subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
        for ax, name in zip(axes.flat, names):
            groups = [(None, sub)] if label_col is None else [
                (lab, sub[sub[label_col] == lab]) for lab in sorted(sub[label_col].unique())]
            edges, _ = _bins(sub[name].to_numpy(dtype=float), name)
            for lab, g in groups:
                _, v = _bins(g[name].to_numpy(dtype=float), name)
                if edges is None or not len(v):
                    continue
                text = (labels or {}).get(lab, str(lab)) if lab is not None else None
                ax.hist(v, bins=edges, histtype="step", lw=1.2, label=text)
            if name in LOG_INDICES:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(LABELS.get(name, name))
            ax.set_yticks([])
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        if label_col is not None:
            axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"variability indices{f', band {band}' if band else ''} ({len(sub)} light curves)")
        fig.subplots_adjust(left=0.03, right=0.98, bottom=0.09, top=0.92, wspace=0.12, hspace=0.45)
        written.append(savefig_atomic(fig, out_dir / f"distributions_{band or 'all'}.png", bbox_inches=None))

        if "median_mag" in sub and len(sub):
            show = [n for n in ("robust_std", "inv_eta", "Q2", "std") if n in sub]
            fig, axes = subplots(1, len(show), figsize=(3.4 * len(show), 3.0), squeeze=False)
            for ax, name in zip(axes.flat, show):
                ax.scatter(sub["median_mag"], sub[name], s=2, alpha=0.4, lw=0, color="k")
                if name in LOG_INDICES:
                    ax.set_yscale("log")
                ax.set_xlabel("median magnitude")
                ax.set_ylabel(LABELS.get(name, name))
            fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.95, wspace=0.4)
            written.append(savefig_atomic(fig, out_dir / f"vs_magnitude_{band or 'all'}.png", bbox_inches=None))
    return written


def plot_excess_selection(df: pd.DataFrame, fits: dict, path: Path, mag_column: str = "median_mag",
                          title: str = "") -> Path:
    """The minute-cadence paper's Figure 2: counts per bin (all and selected), then each index against
    median magnitude with the fitted median and n-sigma excess curves, selected points coloured."""
    idxs = list(fits)
    fig, axes = subplots(1 + len(idxs), 1, figsize=(5.5, 2.4 * (1 + len(idxs))), sharex=True, squeeze=False)
    axes = axes[:, 0]
    mag = df[mag_column].to_numpy(dtype=float)
    any_fit = next(iter(fits.values()))
    lo = np.floor(np.nanmin(mag) / any_fit.bin_size) * any_fit.bin_size
    hi = np.ceil(np.nanmax(mag) / any_fit.bin_size) * any_fit.bin_size + any_fit.bin_size
    edges = np.arange(lo, hi + 1e-9, any_fit.bin_size)
    axes[0].hist(mag[np.isfinite(mag)], bins=edges, histtype="step", color="0.5", label="light curves")
    colors = ["tab:green", "tab:blue", "tab:orange", "tab:purple"]
    for k, (name, fit) in enumerate(fits.items()):
        v = df[name].to_numpy(dtype=float)
        _, cand = fit.select(mag, v)
        axes[0].hist(mag[cand], bins=edges, histtype="step", color=colors[k % 4],
                     label=f"{LABELS.get(name, name)} > {fit.n_sigma:g}σ ({int(cand.sum())})")
        ax = axes[1 + k]
        ax.scatter(mag[~cand], v[~cand], s=2, lw=0, color="0.6", alpha=0.5)
        ax.scatter(mag[cand], v[cand], s=5, lw=0, color=colors[k % 4])
        grid = np.linspace(*fit.mag_range, 200)
        ax.plot(grid, fit.median_at(grid), color="k", lw=1.2, label="median")
        ax.plot(grid, fit.threshold_at(grid), color="r", lw=1.2, label=f"{fit.n_sigma:g}σ excess")
        ax.plot(fit.bin_center, fit.bin_median, "k.", ms=3)
        ax.set_ylabel(LABELS.get(name, name))
        if name in LOG_INDICES and np.nanmin(v[v > 0]) > 0:
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_yscale("log")
    axes[0].set_ylabel(f"N per {any_fit.bin_size:g} mag")
    axes[0].legend(fontsize=7)
    axes[-1].set_xlabel("median magnitude")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    out = savefig_atomic(fig, path)
    return out


# ------------------------------------------------------------------------------ period searches
def _grid_axes(n: int, w: float, h: float):
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = subplots(nrow, ncol, figsize=(w * ncol, h * nrow), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def plot_pwr_fmax(runs: pd.DataFrame, thresholds: dict):
    """The minute-cadence paper's Figure 4: Pwr_max against f_max of the runs of each observation
    (``runs.obs_group``) with its binned n-sigma threshold (:class:`~skyvar.lightcurves.calibration.
    BinnedThreshold`), runs above it circled. Returns the Figure."""
    groups = sorted(thresholds)
    fig, axes = _grid_axes(len(groups), 4.5, 3.5)
    for ax, g in zip(axes, groups):
        sub = runs[runs.obs_group == g]
        thr = thresholds[g]
        c = sub.candidate_binned.to_numpy(bool)
        ax.scatter(sub.f_max[~c], sub.pwr_max[~c], s=2, c="0.5", label=f"N={int((~c).sum())} below")
        ax.scatter(sub.f_max[c], sub.pwr_max[c], s=25, facecolors="none", edgecolors="tab:red",
                   label=f"N={int(c.sum())} above")
        ax.stairs(thr.threshold, thr.edges, color="tab:red", lw=1, label=f"{thr.n_sigma:g} sigma")
        ax.set_yscale("log")
        ax.set_xlabel("f_max (d^-1)")
        ax.set_ylabel("Pwr_max")
        ax.set_title(f"observation {g} (t0={sub.t_start.min():.2f})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Pwr_max - f_max diagram (cf. paper Fig. 4)")
    return fig


def plot_fap_calibration(calibrations: dict):
    """The minute-cadence paper's Figure 5: the FAP calibration fit of each group. Returns the Figure."""
    from skyvar.lightcurves.calibration import plot_cdf_calibration

    groups = sorted(calibrations)
    fig, axes = _grid_axes(len(groups), 4.2, 3.4)
    for ax, g in zip(axes, groups):
        plot_cdf_calibration(ax, calibrations[g], label=g, quantity="FAP")
    fig.suptitle("FAP calibration (cf. paper Fig. 5)")
    return fig


def plot_period_candidate(t, mag, mag_err, freq, power, f_max: float, title: str = "", zoom: bool = False,
                          ylabel: str = "power (variance-scaled)"):
    """A periodogram (``freq`` in d^-1) with its peak ``f_max`` marked, beside the light curve folded at
    ``1/f_max``; ``zoom`` adds an inset of +-12/T around the peak (fringes of spliced or survey
    sampling). Returns the Figure."""
    t, mag, mag_err = (np.asarray(a, float) for a in (t, mag, mag_err))
    P = 1.0 / f_max
    fig, (a1, a2) = subplots(1, 2, figsize=(10, 3.4))
    a1.plot(freq, power, "k-", lw=0.3)
    a1.axvline(f_max, c="tab:red", lw=0.8, ls=":")
    span = t.max() - t.min()
    if zoom:
        ins = a1.inset_axes([0.58, 0.55, 0.4, 0.4])
        z = np.abs(freq - f_max) < 12.0 / span
        ins.plot(freq[z], power[z], "k-", lw=0.6)
        ins.axvline(f_max, c="tab:red", lw=0.8, ls=":")
        ins.tick_params(labelsize=6)
    a1.set_xlabel("frequency (d^-1)")
    a1.set_ylabel(ylabel)
    a1.set_title(title, fontsize=9)
    ph = np.mod((t - t.min()) / P, 1.0)
    for off in (0, 1):
        a2.errorbar(ph + off, mag, mag_err, fmt=".", ms=3, c="k", lw=0.4)
    a2.invert_yaxis()
    a2.set_xlabel(f"phase (P = {P * 24 * 60:.2f} min = {P:.5f} d)")
    a2.set_ylabel("mag")
    return fig


def plot_multiband_candidate(t, mag, mag_err, band, freq, power, f_max: float, title: str = ""):
    """The multi-band scan around its chosen peak ``f_max`` (d^-1) beside every band folded at
    ``1/f_max``, each band shifted to its median (bands in the order of their labels). Returns the Figure."""
    t, mag, mag_err = (np.asarray(a, float) for a in (t, mag, mag_err))
    band = np.asarray(band).astype(str)
    fig, (a1, a2) = subplots(1, 2, figsize=(10, 3.6))
    a1.plot(freq, power, "k-", lw=0.4)
    a1.axvline(f_max, c="tab:red", lw=0.8, ls=":")
    a1.set_xlabel("frequency (d^-1)")
    a1.set_ylabel("multi-band power (standard)")
    a1.set_title(title, fontsize=9)
    ph = np.mod((t - t.min()) * f_max, 1.0)
    bands = sorted(set(band))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    offset = 0.0
    for i, b in enumerate(bands):
        m = band == b
        y = mag[m] - np.median(mag[m])
        for off in (0, 1):
            a2.errorbar(ph[m] + off, y + offset, mag_err[m], fmt=".", ms=3, lw=0.3, c=colors[i % len(colors)],
                        label=b if off == 0 else None)
        offset += 1.2 * max(np.ptp(y) if y.size else 0.0, 0.1)
    a2.invert_yaxis()
    a2.set_xlabel(f"phase (P = {1 / f_max:.6f} d)")
    a2.set_ylabel("mag - median (bands offset)")
    a2.legend(fontsize=7, loc="upper right", ncol=min(len(bands), 5))
    return fig
