"""Metrics of the binary-star classifier: per regime, on a realistic population, with intervals, and the
gap between simulated and real spectra.

- ROC AUC and expected calibration error come from torchmetrics (``BinaryAUROC``,
  ``BinaryCalibrationError``), intervals from ``scipy.stats.bootstrap`` (percentile, paired resampling
  of (score, label)).
- :func:`regime_table`: AUC (test singles against the binaries of a regime) and recall at a threshold
  per |Δv| bin, per light-ratio bin (V-band F2/F1) and for the issue's target regime (|Δv| < 20 km/s,
  light ratio >= 0.3).
- :func:`population_auc`: singles against a binary population drawn with realistic weights.
- :func:`feature_gap`: real spectra against simulated singles in the network's feature space (the
  activations before the last layer): each real spectrum's Mahalanobis distance and its percentile among
  held-out simulated singles (a real spectrum at the 99.9th percentile looks like no simulated single).
"""

from __future__ import annotations

import numpy as np

DV_EDGES = (0.0, 5.0, 10.0, 20.0, 50.0, 100.0, np.inf)  # km/s
LR_EDGES = (0.0, 0.1, 0.3, 0.6, 1.0001)  # V-band light ratio F2 / F1


def auroc(score, label) -> float:
    """ROC AUC (torchmetrics BinaryAUROC) of any monotone score; NaN when only one class is present.

    torchmetrics reads scores outside [0, 1] as logits and applies a sigmoid, which saturates (ties) for
    scores beyond ~±17 (χ² values, large logit differences): the scores are first replaced by their ranks
    scaled into (0, 1), which keeps the order (and the ties) exactly."""
    import torch
    from scipy.stats import rankdata
    from torchmetrics.functional.classification import binary_auroc

    y = np.asarray(label).astype(int)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    s = np.asarray(score, dtype=np.float64)
    r = rankdata(s) / (len(s) + 1.0)
    return float(binary_auroc(torch.as_tensor(r), torch.as_tensor(y)))


def ece(p, label, n_bins: int = 15) -> float:
    """Expected calibration error (L1, equal-width bins; torchmetrics BinaryCalibrationError)."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    return float(binary_calibration_error(torch.as_tensor(np.asarray(p, dtype=np.float64)),
                                          torch.as_tensor(np.asarray(label).astype(int)), n_bins=n_bins, norm="l1"))


def bootstrap_interval(statistic, *arrays, n_resamples: int = 500, seed: int = 0, confidence: float = 0.95):
    """``confidence`` interval of ``statistic(*arrays)`` by ``scipy.stats.bootstrap`` (paired, percentile)."""
    from scipy.stats import bootstrap

    arrays = tuple(np.asarray(a) for a in arrays)
    if len(arrays[0]) < 3:
        return [float("nan"), float("nan")]
    res = bootstrap(arrays, statistic, paired=True, vectorized=False, n_resamples=n_resamples, method="percentile",
                    confidence_level=confidence, random_state=np.random.default_rng(seed))
    return [float(res.confidence_interval.low), float(res.confidence_interval.high)]


def _auc_ci(s_single, s_bin, n_boot: int, seed: int = 0) -> tuple[float, list]:
    s = np.concatenate([s_single, s_bin])
    y = np.concatenate([np.zeros(len(s_single)), np.ones(len(s_bin))])
    a = auroc(s, y)
    if not np.isfinite(a) or n_boot <= 0:
        return a, [float("nan"), float("nan")]

    def stat(ss, yy):
        return auroc(ss, yy) if 0 < yy.sum() < len(yy) else 0.5

    return a, bootstrap_interval(stat, s, y, n_resamples=n_boot, seed=seed)


def regime_table(score_single, score_bin, dv_abs, light_ratio, p_bin=None, threshold: float = 0.5,
                 n_boot: int = 200, min_n: int = 10) -> dict:
    """AUC (with bootstrap interval) and recall at ``threshold`` per |Δv| and light-ratio bin.

    ``score_*`` any monotone score (logit or probability); ``p_bin`` the binaries' probabilities for the
    recall (defaults to ``score_bin``). Bins with fewer than ``min_n`` binaries are reported with n only.
    """
    score_single = np.asarray(score_single, dtype=float)
    score_bin = np.asarray(score_bin, dtype=float)
    p_bin = score_bin if p_bin is None else np.asarray(p_bin, dtype=float)
    dv = np.asarray(dv_abs, dtype=float)
    lr = np.asarray(light_ratio, dtype=float)

    def row(sel, name):
        n = int(sel.sum())
        out = {"bin": name, "n": n}
        if n >= min_n:
            a, ci = _auc_ci(score_single, score_bin[sel], n_boot)
            out.update({"auc": a, "auc_ci95": ci, f"recall_at_{threshold:g}": float((p_bin[sel] > threshold).mean())})
        return out

    def label(a, b, unit=""):
        return f"{a:g}-{b:g}{unit}" if np.isfinite(b) else f">={a:g}{unit}"

    by_dv = [row((dv >= a) & (dv < b), label(a, b, " km/s")) for a, b in zip(DV_EDGES[:-1], DV_EDGES[1:])]
    by_lr = [row((lr >= a) & (lr < b), label(a, min(b, 1.0))) for a, b in zip(LR_EDGES[:-1], LR_EDGES[1:])]
    target = row((dv < 20) & (lr >= 0.3), "|dv| < 20 km/s, light ratio >= 0.3")
    return {"by_dv": by_dv, "by_light_ratio": by_lr, "target": target}


def population_auc(score_single, score_bin, n_boot: int = 200) -> dict:
    """AUC of singles against every binary of a realistic population (all q, realistic |Δv|)."""
    a, ci = _auc_ci(np.asarray(score_single, float), np.asarray(score_bin, float), n_boot)
    return {"auc": a, "auc_ci95": ci, "n_single": len(score_single), "n_binary": len(score_bin)}


def penultimate_features(model, x: np.ndarray, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Activations feeding the last linear layer of a SpecNet (after ReLU), (n, hidden)."""
    import torch

    net = model.net if hasattr(model, "net") else model
    net = net.to(device).eval()
    head = list(net.head.children())
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.asarray(x[s:s + batch_size], dtype=np.float32), device=device)
            if xb.dim() == 2:
                xb = xb.unsqueeze(1)
            h = net.pool(net.blocks(net.stem(xb)))
            for layer in head[:-1]:  # Flatten, Dropout (eval: identity), Linear, ReLU, Dropout
                h = layer(h)
            out.append(h.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def feature_gap(f_sim_fit: np.ndarray, f_sim_ref: np.ndarray, f_real: np.ndarray, shrink: float = 0.1) -> dict:
    """Mahalanobis distances in feature space, the covariance fitted on ``f_sim_fit`` (simulated singles,
    with ``shrink`` towards its diagonal); each real spectrum's distance is ranked among those of the
    held-out simulated singles ``f_sim_ref``. Returns distances and percentiles."""
    mu = f_sim_fit.mean(0)
    C = np.cov(f_sim_fit, rowvar=False)
    C = (1 - shrink) * C + shrink * np.diag(np.diag(C)) + 1e-6 * np.eye(len(C))
    Ci = np.linalg.inv(C)

    def dist(f):
        d = f - mu
        return np.sqrt(np.einsum("ij,jk,ik->i", d, Ci, d))

    d_ref = dist(f_sim_ref)
    d_real = dist(f_real)
    pct = np.array([float((d_ref < d).mean() * 100) for d in d_real])
    return {"sim_median": float(np.median(d_ref)), "sim_p99": float(np.percentile(d_ref, 99)),
            "real": d_real.tolist(), "real_percentile": pct.tolist(), "real_median_percentile": float(np.median(pct))}
