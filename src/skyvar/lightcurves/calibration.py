"""Empirical calibration of false-discovery / false-alarm probabilities and binned excess thresholds.

The minute-cadence paper (Lin et al., WFST; Sections 3.2 and 3.3.2) calibrates theoretical
probabilities ``p`` (the flare FDR of eq. 4 and the periodogram FAP of eq. 5) against their observed
distribution over *all* light curves of one observation: the cumulative distribution of ``log10 p``
is histogrammed, the bins with ``log10 CDF >= -1`` (the bulk, i.e. ~90 % of the light curves, which
are assumed to be noise) are fitted with a line through the origin, ``log10 CDF = k * log10 p``, and
the calibrated probability is ``p_cal = p**k`` (``k < 1`` when the tail is heavier than the ideal
null ``CDF = p``). Figures 3 and 5 of the paper show these fits; :func:`plot_cdf_calibration`
draws them.

Everything here works on ``log10 p`` because eq. 4 and eq. 5 underflow double precision for strong
signals (a large flare easily has ``FDR < 1e-300``); ``log10 p_cal = k * log10 p`` stays finite.

The same module holds the frequency-/magnitude-binned "N sigma excess" thresholds used for the
Pwr_max-f_max diagram (Figure 4) and for the inverse von Neumann ratio against magnitude (Figure 2),
and :func:`group_runs`, which clusters uninterrupted runs by time into observations.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from skyvar.utils.log import get_logger

log = get_logger(__name__)

#: robust sigma from the median absolute deviation of a normal distribution
MAD_TO_SIGMA = 1.482602218505602


@dataclasses.dataclass
class CdfCalibration:
    """Result of :func:`fit_cdf_calibration`.

    ``k`` is the fitted slope (``log10 CDF = k log10 p``); ``edges``/``log10_cdf`` are the histogram
    (CDF evaluated at the upper edge of each bin, in log10 p); ``used`` marks the bins entering the
    fit. ``fitted`` is False when the sample was too small or degenerate, in which case ``k = 1``
    (no calibration: the theoretical null is kept) and ``reason`` says why.
    """

    k: float
    edges: np.ndarray
    log10_cdf: np.ndarray
    used: np.ndarray
    n: int
    bin_size: float
    log10_cdf_min: float
    fitted: bool = True
    reason: str = ""

    def apply(self, log10_p: np.ndarray) -> np.ndarray:
        """Calibrated ``log10 p_cal = k * log10 p`` (NaN stays NaN)."""
        return self.k * np.asarray(log10_p, dtype=np.float64)

    def as_dict(self) -> dict:
        return {"k": float(self.k), "n": int(self.n), "fitted": bool(self.fitted), "reason": self.reason,
                "bin_size": self.bin_size, "log10_cdf_min": self.log10_cdf_min,
                "n_bins_used": int(self.used.sum())}


def fit_cdf_calibration(
    log10_p: np.ndarray,
    bin_size: float = 0.2,
    log10_cdf_min: float = -1.0,
    min_samples: int = 50,
    min_bins: int = 1,
) -> CdfCalibration:
    """Fit ``log10 CDF = k * log10 p`` over the bins with ``log10 CDF >= log10_cdf_min``.

    Parameters
    ----------
    log10_p : array
        ``log10`` of the theoretical probabilities (FDR or FAP) of all light curves of one
        observation; non-finite values are ignored. Values are clipped to ``<= 0``.
    bin_size : float
        Histogram bin width in dex (0.2 for the flare FDRs of Figure 3, 1.0 for the FAPs of Figure 5).
    log10_cdf_min : float
        Only bins whose cumulative fraction satisfies ``log10 CDF >= log10_cdf_min`` enter the fit
        (-1: the 90 % of light curves assumed to follow the null).
    min_samples, min_bins : int
        Below these the fit is not attempted and ``k = 1`` is returned with ``fitted=False``.

    The CDF is evaluated at the upper edge of every bin (the fraction of light curves with
    ``log10 p <=`` that edge); edges run from 0 downwards in steps of ``bin_size``, so the bin
    touching ``p = 1`` (``log10 CDF = 0`` at ``log10 p = 0``) carries no weight in a fit through
    the origin. The slope is the least-squares solution through the origin, ``k = sum(xy)/sum(x^2)``.
    """
    x = np.asarray(log10_p, dtype=np.float64).ravel()
    x = np.minimum(x[np.isfinite(x)], 0.0)
    n = x.size
    if bin_size <= 0:
        raise ValueError(f"bin_size must be > 0, got {bin_size}")
    empty = np.zeros(0)
    if n < max(min_samples, 1):
        return CdfCalibration(1.0, empty, empty, empty.astype(bool), n, bin_size, log10_cdf_min, False,
                              f"only {n} finite values (< {min_samples})")
    lo = np.floor(x.min() / bin_size) * bin_size
    n_edges = int(round(-lo / bin_size)) + 1
    edges = -bin_size * np.arange(n_edges)[::-1]  # ascending, last edge = 0
    xs = np.sort(x)
    counts = np.searchsorted(xs, edges + 1e-12 * bin_size, side="right")
    cdf = counts / n
    with np.errstate(divide="ignore"):
        log10_cdf = np.log10(cdf)
    used = (log10_cdf >= log10_cdf_min) & (edges < 0) & (cdf > 0)
    if used.sum() < min_bins:
        return CdfCalibration(1.0, edges, log10_cdf, used, n, bin_size, log10_cdf_min, False,
                              f"only {int(used.sum())} bins with log10 CDF >= {log10_cdf_min}")
    xe, ye = edges[used], log10_cdf[used]
    k = float(np.sum(xe * ye) / np.sum(xe * xe))
    if not np.isfinite(k) or k <= 0:
        return CdfCalibration(1.0, edges, log10_cdf, used, n, bin_size, log10_cdf_min, False,
                              f"degenerate slope {k}")
    return CdfCalibration(k, edges, log10_cdf, used, n, bin_size, log10_cdf_min, True, "")


def plot_cdf_calibration(ax, cal: CdfCalibration, label: str = "", quantity: str = "FDR") -> None:
    """Draw one panel of Figure 3 / Figure 5: the empirical log CDF (step line), the fitted model
    ``k log p`` and the region where the data exceed the model (shaded)."""
    if cal.edges.size == 0:
        ax.text(0.5, 0.5, f"{label}\nnot fitted: {cal.reason}", ha="center", va="center", transform=ax.transAxes)
        return
    ok = np.isfinite(cal.log10_cdf)
    x, y = cal.edges[ok], cal.log10_cdf[ok]
    ax.step(x, y, where="post", color="tab:blue", lw=1.5, label=f"{label} (N={cal.n})")
    model = cal.k * x
    ax.plot(x, model, color="tab:red", lw=1.2, label=f"fit k = {cal.k:.3f}" + ("" if cal.fitted else " (unfitted)"))
    xf = np.linspace(float(x.min()), float(x.max()), 800)
    yf = y[np.clip(np.searchsorted(x, xf, side="right") - 1, 0, len(y) - 1)]  # the step function
    ax.fill_between(xf, cal.k * xf, yf, where=yf > cal.k * xf, color="tab:blue", alpha=0.2, lw=0)
    ax.plot(x, x, color="0.5", ls=":", lw=1, label=f"ideal null (CDF = {quantity})")
    ymin = max(float(y.min()), -8.0) - 0.3 if y.size else -5
    ax.set_ylim(ymin, 0.2)
    ax.set_xlim(max(float(x.min()), 2.5 * ymin / max(cal.k, 1e-3)), 0.05)
    ax.set_xlabel(f"log10 {quantity}")
    ax.set_ylabel("log10 CDF")
    ax.legend(fontsize=7, loc="lower right")


@dataclasses.dataclass
class BinnedThreshold:
    """Per-bin ``median + n_sigma * sigma`` thresholds of ``y`` against ``x`` (:func:`binned_excess_threshold`).

    ``centers``/``median``/``sigma``/``threshold`` per bin; ``populated`` marks bins with enough
    points for their own statistics (the others are interpolated from their neighbours). When
    ``poly_coef`` is set (``poly_order`` given), thresholds are evaluated from the polynomial fitted to
    the per-bin thresholds instead of the step function.
    """

    edges: np.ndarray
    centers: np.ndarray
    median: np.ndarray
    sigma: np.ndarray
    threshold: np.ndarray
    counts: np.ndarray
    populated: np.ndarray
    n_sigma: float
    poly_coef: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.poly_coef is not None:
            xc = np.clip(x, self.edges[0], self.edges[-1])
            return np.polyval(self.poly_coef, xc)
        idx = np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, len(self.centers) - 1)
        out = self.threshold[idx]
        return np.where(np.isfinite(x), out, np.nan)


def binned_excess_threshold(
    x: np.ndarray,
    y: np.ndarray,
    n_bins: int | None = 100,
    bin_size: float | None = None,
    n_sigma: float = 10.0,
    min_per_bin: int = 10,
    poly_order: int | None = None,
    range: tuple[float, float] | None = None,
) -> BinnedThreshold:
    """Thresholds for an ``n_sigma`` excess of ``y`` in bins of ``x``.

    The paper's Pwr_max-f_max diagram (Figure 4) uses 100 uniform frequency bins and a 10 sigma excess
    per bin; its variability selection (Figure 2) fits polynomials to the 10 sigma excesses against
    magnitude. Sigma is robust, ``1.4826 * MAD`` about the bin median, so the candidates themselves
    barely move the threshold. Bins with fewer than ``min_per_bin`` points take the threshold
    interpolated (linearly in ``x``) from populated bins. With ``poly_order``, a polynomial is fitted
    to the populated bins' thresholds (weighted by sqrt(count)) and used for evaluation.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        raise ValueError("binned_excess_threshold: no finite (x, y) pairs")
    lo, hi = range if range is not None else (float(x.min()), float(x.max()))
    if hi <= lo:
        hi = lo + 1e-9 * max(abs(lo), 1.0)
    if bin_size is not None:
        nb = max(1, int(np.ceil((hi - lo) / bin_size)))
        edges = lo + bin_size * np.arange(nb + 1)
    else:
        nb = int(n_bins or 100)
        edges = np.linspace(lo, hi, nb + 1)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, nb - 1)
    order = np.argsort(idx, kind="stable")
    idx_s, y_s = idx[order], y[order]
    counts = np.bincount(idx_s, minlength=nb)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    med = np.full(nb, np.nan)
    sig = np.full(nb, np.nan)
    for b in np.flatnonzero(counts >= max(min_per_bin, 1)):  # loop over <= n_bins bins, not sources
        v = y_s[starts[b]:starts[b] + counts[b]]
        m = np.median(v)
        med[b] = m
        sig[b] = MAD_TO_SIGMA * np.median(np.abs(v - m))
    populated = np.isfinite(med)
    centers = 0.5 * (edges[:-1] + edges[1:])
    thr = med + n_sigma * sig
    if not populated.any():
        # too few points anywhere: one global bin
        m = np.median(y)
        s = MAD_TO_SIGMA * np.median(np.abs(y - m))
        thr[:] = m + n_sigma * s
        med[:] = m
        sig[:] = s
    elif not populated.all():
        for arr in (thr, med, sig):
            arr[~populated] = np.interp(centers[~populated], centers[populated], arr[populated])
    coef = None
    if poly_order is not None and populated.sum() > poly_order:
        w = np.sqrt(counts[populated])
        coef = np.polyfit(centers[populated], thr[populated], int(poly_order), w=w)
    return BinnedThreshold(edges, centers, med, sig, thr, counts, populated, float(n_sigma), coef)
