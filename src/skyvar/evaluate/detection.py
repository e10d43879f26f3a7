"""Detection, astrometry and photometry metrics against truth, overall and per magnitude bin.

Definitions (dense-field paper §3.3, with the conventions made explicit):
- targets are truth stars brighter than ``target_mag_max`` (i < 25); fainter stars are rendered but
  are not targets: a detection matched to one is *neutral* (neither TP nor FP) and is counted apart;
- matching is one-to-one within the radius (:func:`skyvar.evaluate.matching.match_catalogs`) against
  all truth stars, so a faint neighbour can absorb a detection but never two;
- recall = TP / targets; precision = TP / (TP + FP); F1 their harmonic mean;
- per magnitude bin, recall uses the truth magnitude, FP are binned by the measured magnitude and
  precision_bin = TP_bin / (TP_bin + FP_bin);
- photometric error Δm = m_measured − m_true over TP pairs: bias = median Δm, scatter = 1.4826·MAD,
  mean |Δm| and median |Δm|;
- astrometric error: the distance |Δ| to the truth position — its median (the robust location, to
  compare with an oracle or a bound), RMS (dominated by the tail of the matches near the radius, so not
  comparable to a Gaussian bound), and the robust σ per axis, 1.4826·MAD of Δx and Δy pooled (the
  number comparable to a per-axis Cramér–Rao σ);
- mag_err calibration: the robust spread of (m − m_true)/mag_err (≈ 1 when errors are honest).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from skyvar.evaluate.matching import match_catalogs

DEFAULT_BINS = tuple(np.arange(14.0, 26.01, 0.5))


@dataclasses.dataclass
class FrameMatch:
    """Matched pairs of one frame at one radius (indices into the frame's catalogue and truth)."""

    det: np.ndarray
    truth: np.ndarray
    dist: np.ndarray
    tp: np.ndarray  # bool per pair: truth is a target
    fp_det: np.ndarray  # indices of unmatched detections
    fn_truth: np.ndarray  # indices of unmatched targets


def match_frame(det_xy, truth_xy, is_target, radius) -> FrameMatch:
    di, ti, dd = match_catalogs(det_xy, truth_xy, radius)
    tp = np.asarray(is_target, bool)[ti]
    matched_d = np.zeros(len(det_xy), bool)
    matched_d[di] = True
    matched_t = np.zeros(len(truth_xy), bool)
    matched_t[ti] = True
    fp = np.flatnonzero(~matched_d & np.all(np.isfinite(np.asarray(det_xy, float).reshape(-1, 2)), axis=1))
    fn = np.flatnonzero(np.asarray(is_target, bool) & ~matched_t)
    return FrameMatch(di, ti, dd, tp, fp, fn)


def robust_std(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return float("nan")
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _safe_div(a, b):
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _f1(p, r):
    p = np.asarray(p, float)
    r = np.asarray(r, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((p + r) > 0, 2 * p * r / (p + r), np.nan)


def _stat_per_bin(values, mags, edges, fn):
    idx = np.digitize(mags, edges) - 1
    out = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):
        v = values[idx == b]
        v = v[np.isfinite(v)]
        if len(v):
            out[b] = fn(v)
    return out


def summarise(
    pairs: dict,
    n_targets_by_mag: np.ndarray,
    fp_mags: np.ndarray,
    edges: np.ndarray,
) -> dict:
    """Metrics from pooled pairs of one radius: ``pairs`` has arrays ``m_true, m_meas, mag_err, dist,
    tp`` (bool) and ``truth_mag`` for every matched pair; ``n_targets_by_mag`` the target magnitudes."""
    tp = pairs["tp"]
    n_tp, n_fp = int(tp.sum()), int(len(fp_mags))
    n_t = int(len(n_targets_by_mag))
    rec = n_tp / n_t if n_t else float("nan")
    prec = n_tp / (n_tp + n_fp) if (n_tp + n_fp) else float("nan")
    f1 = float(_f1(prec, rec))
    h_t, _ = np.histogram(n_targets_by_mag, edges)
    h_tp, _ = np.histogram(pairs["m_true"][tp], edges)
    h_fp, _ = np.histogram(fp_mags[np.isfinite(fp_mags)], edges)
    rec_b = _safe_div(h_tp, h_t)
    prec_b = _safe_div(h_tp, h_tp + h_fp)
    dm = pairs["m_meas"][tp] - pairs["m_true"][tp]
    mt = pairs["m_true"][tp]
    dist = pairs["dist"][tp]
    pull = dm / pairs["mag_err"][tp]
    fin = np.isfinite(dm)
    has_xy = "dx" in pairs and "dy" in pairs
    dxy = np.r_[pairs["dx"][tp], pairs["dy"][tp]] if has_xy else np.zeros(0)
    mt2 = np.r_[mt, mt]
    out = {
        "recall": float(rec), "precision": float(prec), "f1": f1,
        "tp": n_tp, "fp": n_fp, "fn": n_t - n_tp, "neutral": int((~tp).sum()),
        "photometry": {
            "n": int(fin.sum()),
            "mean_abs_dm": float(np.mean(np.abs(dm[fin]))) if fin.any() else float("nan"),
            "median_dm": float(np.median(dm[fin])) if fin.any() else float("nan"),
            "scatter": robust_std(dm),
            "rms_dm": float(np.sqrt(np.mean(dm[fin] ** 2))) if fin.any() else float("nan"),
        },
        "astrometry": {
            "rms_px": float(np.sqrt(np.mean(dist**2))) if len(dist) else float("nan"),
            "median_px": float(np.median(dist)) if len(dist) else float("nan"),
            "robust_sigma_px": robust_std(dxy) if has_xy else float("nan"),
        },
        "mag_err_calibration": {
            "pull_robust_std": robust_std(pull),
            "pull_std": float(np.nanstd(pull[np.isfinite(pull)])) if np.isfinite(pull).any() else float("nan"),
            "n": int(np.isfinite(pull).sum()),
        },
        "per_bin": {
            "n_targets": h_t.tolist(), "tp": h_tp.tolist(), "fp": h_fp.tolist(),
            "recall": rec_b.tolist(), "precision": prec_b.tolist(), "f1": _f1(prec_b, rec_b).tolist(),
            "phot_bias": _stat_per_bin(dm, mt, edges, np.median).tolist(),
            "phot_scatter": _stat_per_bin(dm, mt, edges, robust_std).tolist(),
            "phot_mean_abs": _stat_per_bin(np.abs(dm), mt, edges, np.mean).tolist(),
            "phot_median_abs": _stat_per_bin(np.abs(dm), mt, edges, np.median).tolist(),
            "phot_std": _stat_per_bin(dm, mt, edges, lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else np.nan).tolist(),
            "astro_rms_px": _stat_per_bin(dist, mt, edges, lambda v: float(np.sqrt(np.mean(v**2)))).tolist(),
            "astro_median_px": _stat_per_bin(dist, mt, edges, np.median).tolist(),
            "astro_robust_sigma_px": (_stat_per_bin(dxy, mt2, edges, robust_std) if has_xy
                                      else np.full(len(edges) - 1, np.nan)).tolist(),
            "pull_robust_std": _stat_per_bin(pull, mt, edges, robust_std).tolist(),
        },
    }
    return out
