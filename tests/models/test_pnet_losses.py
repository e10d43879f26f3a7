"""PNet losses against hand-computed values and torch's reference implementations."""

import math

import pytest
import torch

from skyvar.models.losses import centernet_focal_loss, gaussian_nll, masked_l1, masked_mse, sigmoid_focal_loss


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def test_sigmoid_focal_loss_hand_values():
    # p = 0.5: CE = ln 2, (1 - p_t)^2 = 1/4; alpha_t = 0.25 for the positive, 0.75 for the negative
    logits = torch.zeros(2, dtype=torch.float64)
    target = torch.tensor([1.0, 0.0], dtype=torch.float64)
    loss = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0, reduction="none")
    assert loss.tolist() == pytest.approx([math.log(2) / 16, math.log(2) * 0.75 / 4], rel=1e-12)
    # p = 0.9 positive, no alpha: -(0.1)^2 ln 0.9
    one = sigmoid_focal_loss(_logit([0.9]), torch.ones(1, dtype=torch.float64), alpha=None, reduction="sum")
    assert float(one) == pytest.approx(-(0.1**2) * math.log(0.9), rel=1e-12)
    # gamma = 0, alpha None is plain binary cross-entropy
    x = torch.randn(50, dtype=torch.float64)
    y = (torch.rand(50) > 0.5).double()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="mean")
    assert float(sigmoid_focal_loss(x, y, alpha=None, gamma=0.0, reduction="mean")) == pytest.approx(float(ref), rel=1e-12)


def test_sigmoid_focal_loss_normalizer_and_bad_reduction():
    x, y = torch.zeros(4), torch.tensor([1.0, 0, 0, 0])
    s = sigmoid_focal_loss(x, y, reduction="sum")
    assert float(sigmoid_focal_loss(x, y, reduction="sum", normalizer=2)) == pytest.approx(float(s) / 2)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, y, reduction="max")


def test_centernet_focal_loss_hand_value():
    # target [1, 0.5, 0] with predictions p = [0.8, 0.3, 0.1], gamma 2, beta 4, one positive
    target = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    logits = _logit([0.8, 0.3, 0.1])
    pos = -(0.2**2) * math.log(0.8)
    neg_half = -(0.5**4) * 0.3**2 * math.log(0.7)
    neg_zero = -(1.0**4) * 0.1**2 * math.log(0.9)
    assert float(centernet_focal_loss(logits, target)) == pytest.approx(pos + neg_half + neg_zero, rel=1e-12)
    # normalised by the number of positives
    t2 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    l2 = _logit([0.8, 0.8, 0.1])
    assert float(centernet_focal_loss(l2, t2)) == pytest.approx((2 * pos + neg_zero) / 2, rel=1e-12)
    # no positives: divided by 1, finite even for saturated logits
    big = torch.tensor([-80.0, 80.0])
    assert torch.isfinite(centernet_focal_loss(big, torch.zeros(2)))


def test_masked_regression_losses_hand_values():
    pred = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    target = torch.zeros(2, 2)
    w = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    assert float(masked_l1(pred, target, w)) == pytest.approx((1 + 3 + 2 * 4) / 4)
    assert float(masked_mse(pred, target, w)) == pytest.approx((1 + 9 + 2 * 16) / 4)
    # channel broadcasting of the weight (B, 1, H, W) over (B, 2, H, W)
    p2 = torch.ones(1, 2, 1, 2)
    w2 = torch.tensor([[[[1.0, 0.0]]]])
    assert float(masked_l1(p2, torch.zeros_like(p2), w2)) == pytest.approx(1.0)
    # no weighted cells: 0, not NaN
    assert float(masked_mse(pred, target, torch.zeros(2, 2))) == 0.0


def test_gaussian_nll_matches_torch_and_detaches_mean():
    mean = torch.tensor([0.0, 1.0, -0.5], requires_grad=True)
    log_var = torch.log(torch.tensor([4.0, 0.25, 1.0])).requires_grad_(True)
    target = torch.tensor([2.0, 1.5, 0.5])
    w = torch.ones(3)
    nll = gaussian_nll(mean, log_var, target, w)
    assert float(nll) == pytest.approx((0.5 * (math.log(4) + 1) + 0.5 * (math.log(0.25) + 1) + 0.5 * (0 + 1)) / 3)
    ref = torch.nn.GaussianNLLLoss(full=False, reduction="mean")(mean, target, log_var.exp())
    assert float(nll) == pytest.approx(float(ref), rel=1e-6)
    # (these residuals equal sigma, the NLL optimum: move the target to get gradients)
    gaussian_nll(mean, log_var, target + 1.0, w).backward()
    assert mean.grad is None or torch.all(mean.grad == 0)  # the MSE alone trains the mean
    assert log_var.grad is not None and torch.all(log_var.grad != 0)
    # the minimum over log_var is at the squared residual
    lv = torch.linspace(-3, 3, 601)
    vals = torch.stack([gaussian_nll(torch.zeros(1), v[None], torch.ones(1), torch.ones(1)) for v in lv])
    assert float(lv[int(torch.argmin(vals))]) == pytest.approx(0.0, abs=0.011)
