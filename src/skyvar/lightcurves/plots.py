"""Figures of the variability modules (matplotlib, Agg; every file written atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.utils.atomic import savefig_atomic

LABELS = {
    "Q": "Q", "Q1": "Q1", "Q2": "Q2", "std": "Std (mag)", "iter_std": "Iter-std (mag)", "iter_std_3": "Iter-std, 3 it.",
    "cv": r"$C_\nu$", "kurtosis": r"$\kappa$", "skewness": r"$\gamma$", "mad": "MAD (mag)", "amp": "Amp (mag)",
    "robust_std": "robust std (mag)", "inv_eta": r"$1/\eta$",
}
# Indices that are positive and span decades: histogram and plot them on a log axis.
LOG_INDICES = {"Q", "Q1", "Q2", "std", "iter_std", "iter_std_3", "cv", "mad", "amp", "robust_std", "inv_eta"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


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
    plt = _plt()
    out_dir = Path(out_dir)
    written = []
    bands = sorted(features["band"].unique()) if "band" in features else [""]
    ncol = 4
    nrow = int(np.ceil(len(names) / ncol))
    for band in bands:
        sub = features[features["band"] == band] if "band" in features else features
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
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
                ax.xaxis.set_minor_formatter(plt.NullFormatter())
            ax.set_xlabel(LABELS.get(name, name))
            ax.set_yticks([])
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        if label_col is not None:
            axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"variability indices{f', band {band}' if band else ''} ({len(sub)} light curves)")
        fig.subplots_adjust(left=0.03, right=0.98, bottom=0.09, top=0.92, wspace=0.12, hspace=0.45)
        written.append(savefig_atomic(fig, out_dir / f"distributions_{band or 'all'}.png", bbox_inches=None))
        plt.close(fig)

        if "median_mag" in sub and len(sub):
            show = [n for n in ("robust_std", "inv_eta", "Q2", "std") if n in sub]
            fig, axes = plt.subplots(1, len(show), figsize=(3.4 * len(show), 3.0), squeeze=False)
            for ax, name in zip(axes.flat, show):
                ax.scatter(sub["median_mag"], sub[name], s=2, alpha=0.4, lw=0, color="k")
                if name in LOG_INDICES:
                    ax.set_yscale("log")
                ax.set_xlabel("median magnitude")
                ax.set_ylabel(LABELS.get(name, name))
            fig.subplots_adjust(left=0.08, right=0.98, bottom=0.16, top=0.95, wspace=0.4)
            written.append(savefig_atomic(fig, out_dir / f"vs_magnitude_{band or 'all'}.png", bbox_inches=None))
            plt.close(fig)
    return written


def plot_excess_selection(df: pd.DataFrame, fits: dict, path: Path, mag_column: str = "median_mag",
                          title: str = "") -> Path:
    """The minute-cadence paper's Figure 2: counts per bin (all and selected), then each index against
    median magnitude with the fitted median and n-sigma excess curves, selected points coloured."""
    plt = _plt()
    from skyvar.lightcurves.excess import select_excess

    idxs = list(fits)
    fig, axes = plt.subplots(1 + len(idxs), 1, figsize=(5.5, 2.4 * (1 + len(idxs))), sharex=True, squeeze=False)
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
        _, cand = select_excess(mag, v, fit)
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
    plt.close(fig)
    return out
