"""Magnitude-dependent excess selection of variable candidates (Lin et al., WFST minute cadence, §3.1).

A variability index of non-variable stars (``robust_std``, ``inv_eta``) follows a trend with magnitude
set by the photometric precision. Per magnitude bin (default 0.2 mag, light curves with >= 20
epochs) take the median of the index and its scatter σ; the threshold is ``median + n_sigma·σ``
(default 10σ). Fit the bin medians and the bin thresholds against the bin centres with polynomials
(5th order for robust std, 3rd for 1/η as in the paper; in log10 of the index by default, see
:func:`fit_excess`) and select the light curves above the fitted threshold at their median
magnitude. σ per bin is robust by default (1.4826·MAD, so the variables
being searched for do not inflate their own threshold); ``scatter="std"`` uses the plain standard
deviation. Polynomials are evaluated only inside the fitted magnitude range (clamped at its ends), as
a polynomial extrapolated beyond its data is meaningless. Bands are fitted separately.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.polynomial import Polynomial

from skyvar.utils.atomic import write_json_atomic
from skyvar.utils.log import get_logger

log = get_logger(__name__)

PAPER_ORDERS = {"robust_std": 5, "inv_eta": 3}


@dataclasses.dataclass
class ExcessFit:
    index: str
    order: int
    n_sigma: float
    bin_size: float
    scatter: str
    bin_center: np.ndarray
    bin_median: np.ndarray
    bin_sigma: np.ndarray
    bin_count: np.ndarray
    median_poly: Polynomial
    threshold_poly: Polynomial
    mag_range: tuple[float, float]
    space: str = "linear"  # the polynomials model the values ("linear") or their log10 ("log")

    def _clamp(self, mag):
        return np.clip(np.asarray(mag, dtype=float), *self.mag_range)

    def _value(self, poly, mag):
        v = poly(self._clamp(mag))
        return 10.0 ** v if self.space == "log" else v

    def median_at(self, mag) -> np.ndarray:
        return self._value(self.median_poly, mag)

    def threshold_at(self, mag) -> np.ndarray:
        return self._value(self.threshold_poly, mag)

    def sigma_at(self, mag) -> np.ndarray:
        return (self.threshold_at(mag) - self.median_at(mag)) / self.n_sigma

    def select(self, mag, value) -> tuple[np.ndarray, np.ndarray]:
        """(excess in units of the fitted σ, candidate mask) of each light curve; NaN/False where undefined."""
        mag = np.asarray(mag, dtype=float)
        value = np.asarray(value, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (value - self.median_at(mag)) / self.sigma_at(mag)
            cand = value > self.threshold_at(mag)
        ok = np.isfinite(mag) & np.isfinite(value)
        return np.where(ok, z, np.nan), cand & ok

    def to_dict(self) -> dict:
        return {
            "index": self.index, "order": self.order, "n_sigma": self.n_sigma, "bin_size": self.bin_size,
            "scatter": self.scatter, "space": self.space, "mag_range": list(self.mag_range),
            "bin_center": self.bin_center.tolist(), "bin_median": self.bin_median.tolist(),
            "bin_sigma": self.bin_sigma.tolist(), "bin_count": self.bin_count.tolist(),
            "median_coef": self.median_poly.convert().coef.tolist(),
            "threshold_coef": self.threshold_poly.convert().coef.tolist(),
        }


def fit_excess(mag, value, order: int = 5, bin_size: float = 0.2, n_sigma: float = 10.0, min_per_bin: int = 10,
               scatter: str = "mad", index: str = "index", space: str = "log") -> ExcessFit:
    """Fit the median and the ``n_sigma`` excess of ``value`` against ``mag`` per bin with polynomials.

    ``space="log"`` (default) fits the polynomials to log10 of the bin medians and thresholds: scatter
    indices span decades between bright and faint stars, and a 5th-order polynomial in linear units
    rings where they rise steeply (near the detection limit), dipping below the median and selecting
    thousands of constant stars in a ZTF-like field (docs/results/variability.md, Figure 2). Falls
    back to ``"linear"`` when a bin median or threshold is not positive. The paper does not say
    which; its Figure 2 plots both indices on log axes."""
    mag = np.asarray(mag, dtype=float)
    value = np.asarray(value, dtype=float)
    ok = np.isfinite(mag) & np.isfinite(value)
    mag, value = mag[ok], value[ok]
    if scatter not in ("mad", "std"):
        raise ValueError(f"scatter must be 'mad' or 'std', got {scatter!r}")
    if space not in ("log", "linear"):
        raise ValueError(f"space must be 'log' or 'linear', got {space!r}")
    if not len(mag):
        raise ValueError(f"no finite ({index}, magnitude) pairs to fit")
    edges0 = np.floor(mag.min() / bin_size) * bin_size
    b = np.floor((mag - edges0) / bin_size).astype(np.int64)
    df = pd.DataFrame({"b": b, "v": value})
    g = df.groupby("b")["v"]
    count = g.size()
    med = g.median()
    if scatter == "mad":
        sig = 1.4826 * df.assign(d=(df["v"] - df["b"].map(med)).abs()).groupby("b")["d"].median()
    else:
        sig = g.std(ddof=1)
    use = count.index[(count >= min_per_bin).to_numpy()]
    if len(use) < order + 1:
        raise ValueError(f"{index}: only {len(use)} magnitude bins with >= {min_per_bin} light curves; a "
                         f"polynomial of order {order} needs {order + 1} (use larger bins or a lower order)")
    centers = edges0 + (use.to_numpy() + 0.5) * bin_size
    bm, bs, bc = med[use].to_numpy(), sig[use].to_numpy(), count[use].to_numpy()
    thr = bm + n_sigma * bs
    if space == "log" and not (np.all(bm > 0) and np.all(thr > 0)):
        log.info("%s: non-positive bin medians: excess polynomials fitted in linear units", index)
        space = "linear"
    tf = np.log10 if space == "log" else (lambda v: v)
    pm = Polynomial.fit(centers, tf(bm), order)
    pt = Polynomial.fit(centers, tf(thr), order)
    return ExcessFit(index=index, order=order, n_sigma=float(n_sigma), bin_size=float(bin_size), scatter=scatter,
                     bin_center=centers, bin_median=bm, bin_sigma=bs, bin_count=bc, median_poly=pm,
                     threshold_poly=pt, mag_range=(float(centers.min()), float(centers.max())), space=space)


def select_excess(mag, value, fit: ExcessFit) -> tuple[np.ndarray, np.ndarray]:
    """(excess in units of the fitted σ, candidate mask) of each light curve; NaN/False where undefined."""
    return fit.select(mag, value)

class ExcessStage:
    """Light-curve pipeline stage ``excess``: the magnitude-dependent excess selection, per band.

    Needs the ``indices`` stage before it (columns ``median_mag`` and the indices in ``orders``).
    Adds ``excess_<index>`` (σ above the fitted median), ``cand_<index>`` and ``excess_candidate``
    (any index selected); writes ``plots/excess/excess_<band>.png`` (the paper's Figure 2) and
    ``plots/excess/fits.json``. Light curves with fewer than ``min_points`` good epochs are neither
    fitted nor selected.
    """

    name = "excess"

    def __init__(self, orders: dict | None = None, bin_size: float = 0.2, n_sigma: float = 10.0,
                 min_points: int = 20, min_per_bin: int = 10, scatter: str = "mad", mag_column: str = "median_mag",
                 plots: bool = True, space: str = "log"):
        self.orders = dict(orders or PAPER_ORDERS)
        self.bin_size = float(bin_size)
        self.n_sigma = float(n_sigma)
        self.min_points = int(min_points)
        self.min_per_bin = int(min_per_bin)
        self.scatter = scatter
        self.space = space
        self.mag_column = mag_column
        self.plots = plots

    def __call__(self, batch, out_dir):
        return pd.DataFrame(index=range(len(batch)))  # population-level: everything happens in finalize

    def finalize(self, features: pd.DataFrame, out_dir) -> pd.DataFrame:
        need = [self.mag_column, *self.orders]
        missing = [c for c in need if c not in features.columns]
        if missing:
            raise ValueError(f"excess stage needs columns {missing}: put the indices stage before it")
        features = features.copy()
        for idx in self.orders:
            features[f"excess_{idx}"] = np.nan
            features[f"cand_{idx}"] = False
        fits_out: dict = {}
        n_col = "n_used" if "n_used" in features else "n_good"
        for band, sub in features.groupby("band", sort=True):
            eligible = sub[sub[n_col] >= self.min_points] if n_col in sub else sub
            # rows without the index's magnitude (a multi-band search's band="all" rows) are not selected
            eligible = eligible[np.isfinite(eligible[self.mag_column].to_numpy(dtype=float))]
            if not len(eligible):
                continue
            fits: dict[str, ExcessFit] = {}
            for idx, order in self.orders.items():
                try:
                    fit = fit_excess(eligible[self.mag_column], eligible[idx], order=order, bin_size=self.bin_size,
                                     n_sigma=self.n_sigma, min_per_bin=self.min_per_bin, scatter=self.scatter,
                                     index=idx, space=self.space)
                except ValueError as e:
                    log.warning("excess selection skipped for band %r, %s: %s", band, idx, e)
                    continue
                z, cand = select_excess(eligible[self.mag_column], eligible[idx], fit)
                features.loc[eligible.index, f"excess_{idx}"] = z
                features.loc[eligible.index, f"cand_{idx}"] = cand
                fits[idx] = fit
                fits_out[f"{band}:{idx}"] = fit.to_dict()
                log.info("band %r: %d of %d light curves above the %.0fσ %s threshold", band, int(cand.sum()),
                         len(eligible), self.n_sigma, idx)
            if self.plots and fits:
                from skyvar.lightcurves.plots import plot_excess_selection

                plot_excess_selection(eligible, fits, Path(out_dir) / "plots" / self.name / f"excess_{band or 'all'}.png",
                                      mag_column=self.mag_column, title=f"band {band!r}" if band else "")
        features["excess_candidate"] = features[[f"cand_{i}" for i in self.orders]].any(axis=1)
        if fits_out:
            write_json_atomic(Path(out_dir) / "plots" / self.name / "fits.json", fits_out)
        return features


def load_fits(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
