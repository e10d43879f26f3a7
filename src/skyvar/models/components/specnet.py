"""SpecNet: the residual 1-D CNN of Jing et al. for binary-star identification from normalised spectra.

Basic residual blocks (He et al. 2015: two 3-tap convolutions with batch norm and an identity or 1x1
projection shortcut), then two fully connected layers with dropout 0.5 and a 2-class output
(single, binary). The paper gives no layer counts; the defaults here (4 stages of 2 blocks, 16–128
channels) are sized for ~3500-pixel LAMOST spectra.

The feature map is average-pooled to ``pool_bins`` positions (not to one), so the classifier still
knows *where* in wavelength a feature is: a line ratio is informative, a global average of it is not.
Input: ``(batch, in_channels, npix)`` normalised flux; channel 0 is flux - 1 (0 at masked pixels).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock1d(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus shortcut, then ReLU (He et al. 2015, "basic" block) in 1-D."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SpecNet(nn.Module):
    def __init__(self, in_channels: int = 1, channels: tuple | list = (16, 32, 64, 128), blocks_per_stage: int = 2,
                 stem_kernel: int = 7, pool_bins: int = 16, hidden: int = 256, dropout: float = 0.5,
                 n_classes: int = 2):
        super().__init__()
        c0 = channels[0]
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, c0, stem_kernel, stride=2, padding=stem_kernel // 2, bias=False),
            nn.BatchNorm1d(c0), nn.ReLU(inplace=True), nn.MaxPool1d(3, stride=2, padding=1),
        )
        layers = []
        c_prev = c0
        for i, c in enumerate(channels):
            for b in range(blocks_per_stage):
                layers.append(BasicBlock1d(c_prev, c, stride=2 if (b == 0 and i > 0) else 1))
                c_prev = c
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(pool_bins)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_prev * pool_bins, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, n_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` for ``x`` of shape (batch, in_channels, npix) or (batch, npix)."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.pool(self.blocks(self.stem(x))))
