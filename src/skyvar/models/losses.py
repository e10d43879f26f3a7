"""Losses for dense detection and regression (PNet, dense-field paper §3.2.2).

- :func:`sigmoid_focal_loss`: Lin et al. (2017), FL(p_t) = −α_t (1 − p_t)^γ log p_t, the paper's
  eq. (3) with γ = 2, for binary targets.
- :func:`centernet_focal_loss`: the penalty-reduced pixel-wise focal loss of CenterNet (Zhou et al.
  2019, eq. 1) for Gaussian-splatted heatmaps: positives (y = 1) cost −(1 − p)^γ log p, every other
  cell −(1 − y)^β p^γ log(1 − p); the sum is divided by the number of positives.
- :func:`masked_l1` / :func:`masked_mse`: the paper's MAE (astrometry) and MSE (photometry) over the
  cells that carry a regression target, with per-cell weights.
- :func:`gaussian_nll`: −log N(y | μ, σ²) up to a constant, with σ² = exp(log_var), for the magnitude
  uncertainty head; ``detach_mean`` keeps the mean trained by the MSE alone, so the uncertainty head
  cannot trade accuracy for a larger predicted error.

All take logits/predictions and targets as tensors of the same shape and return a scalar.
Probabilities are computed in log-space (``logsigmoid``) so saturated logits give finite losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0,
                       reduction: str = "sum", normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Binary focal loss on logits (Lin et al. 2017). ``alpha`` weights positives (1 − alpha negatives);
    ``None`` disables the balancing. With ``reduction='sum'`` the total is divided by ``normalizer``
    (e.g. the number of positives) when given."""
    target = target.to(logits.dtype)
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    p = logp.exp()
    p_t = p * target + (1 - p) * (1 - target)
    ce = -(target * logp + (1 - target) * log1mp)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return _reduce(loss, reduction, normalizer)


def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, beta: float = 4.0,
                         pos_threshold: float = 1.0 - 1e-4) -> torch.Tensor:
    """Penalty-reduced focal loss of CenterNet for a heatmap ``target`` in [0, 1] with exact 1 at centres.

    Normalised by the number of positives (at least 1), as in CenterNet.
    """
    target = target.to(logits.dtype)
    logp = F.logsigmoid(logits)
    log1mp = F.logsigmoid(-logits)
    p = logp.exp()
    pos = target >= pos_threshold
    pos_loss = -((1 - p) ** gamma) * logp
    neg_loss = -((1 - target) ** beta) * (p**gamma) * log1mp
    loss = torch.where(pos, pos_loss, neg_loss).sum()
    n_pos = pos.sum().clamp(min=1).to(logits.dtype)
    return loss / n_pos


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ w |pred − target| / Σ w over cells (``weight`` broadcasts over the channel axis of pred)."""
    w = weight.expand_as(pred).to(pred.dtype)
    return (w * (pred - target).abs()).sum() / w.sum().clamp(min=1e-6)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ w (pred − target)² / Σ w."""
    w = weight.expand_as(pred).to(pred.dtype)
    return (w * (pred - target) ** 2).sum() / w.sum().clamp(min=1e-6)


def gaussian_nll(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                 detach_mean: bool = True, log_var_min: float = -14.0, log_var_max: float = 6.0) -> torch.Tensor:
    """Weighted mean of 0.5 [log σ² + (y − μ)² / σ²] (the Gaussian NLL without its constant)."""
    mu = mean.detach() if detach_mean else mean
    lv = log_var.clamp(log_var_min, log_var_max)
    nll = 0.5 * (lv + (target - mu) ** 2 * torch.exp(-lv))
    w = weight.expand_as(nll).to(nll.dtype)
    return (w * nll).sum() / w.sum().clamp(min=1e-6)


def _reduce(loss: torch.Tensor, reduction: str, normalizer=None) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        s = loss.sum()
        if normalizer is not None:
            s = s / torch.as_tensor(normalizer, dtype=s.dtype, device=s.device).clamp(min=1)
        return s
    raise ValueError(f"unknown reduction {reduction!r}; choose none, mean or sum")
