"""PNet: a CenterNet-derived, fully convolutional star detector/astrometer/photometer for dense fields.

Architecture (dense-field paper §3.2.1, adapted):

- a compact encoder–decoder (U-Net with additive, FPN-style skips) of residual blocks; the encoder
  downsamples ``len(channels) - 1`` times so the receptive field spans many PSF widths (≈ 100 px with
  the defaults; the deepest stage uses dilated convolutions), the decoder returns to the full input
  resolution, so no two stars are merged into one feature cell (the paper removed CenterNet's
  output stride for this reason);
- heads at *super*-resolution: a shared full-resolution 3×3 convolution, then 1×1 convolutions
  whose ``upsample²`` sub-pixel channels are rearranged by ``PixelShuffle`` into an output grid
  ``upsample`` times finer than the pixels (default 2: 0.5 px cells). Two stars sharing a 1 px cell
  (≈ 1.3 % of stars at the paper's density) usually sit in different 0.5 px cells, which lifts the
  3×3-NMS ceiling of a stride-1 heatmap (≈ 89 %) to ≈ 99 % (measured in ``docs/results/pnet.md``).
- outputs per fine cell: ``heat`` (logit of a star centre), ``offset`` (dx, dy in input pixels from
  the fine cell's centre to the star), ``mag`` (instrumental magnitude −2.5 log10(flux / 1000 e⁻))
  and ``log_var`` (log variance of ``mag``, for honest ``mag_err``).

Everything is fp32 (the paper moved PNet from fp16 to fp32 for photometric precision). Batch
normalisation by default (it trains several times faster here than the normalisation-free variant,
``norm="none"``, measured over the first 100 steps); every residual block starts as the identity
(a zero-initialised gain, SkipInit).

Input (see :func:`normalize_input`): three channels built from a frame in electrons,
``asinh((I − B) / s)``, the mask (1 = NaN/saturated/bad, whose pixels are zeroed) and
``log(σ_bg / s)`` with σ_bg = sqrt(B + RN²) the background noise, s = ``input_scale`` e⁻.
The network is independent of exposure time and zero point: it predicts electrons.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAG_REF_E = 1000.0  # the ``mag`` head predicts −2.5 log10(flux_e / MAG_REF_E)


def _as_b1hw(v, like: torch.Tensor) -> torch.Tensor:
    """A scalar, per-image (B,), map (B, H, W) or (B, 1, H, W) value broadcastable to ``like`` (B, 1, H, W)."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if t.dim() == 1:
        t = t[:, None, None, None]
    elif t.dim() == 3:
        t = t[:, None]
    elif t.dim() == 2:
        t = t[None, None]
    return t


def normalize_input(image_e: torch.Tensor, background_e, mask: torch.Tensor | None = None,
                    rdnoise_e=0.0, scale_e: float = 10.0) -> torch.Tensor:
    """(B, 3, H, W) network input from images in electrons, (B, H, W) or (B, 1, H, W).

    ``background_e`` and ``rdnoise_e`` are scalars, per-image (B,) values or maps; ``mask`` is nonzero
    where pixels are unusable: those are set to 0 so no NaN or saturated value reaches a neighbour's
    measurement, and the mask itself is the second channel.
    """
    if image_e.dim() == 3:
        image_e = image_e[:, None]
    bkg = _as_b1hw(background_e, image_e)
    m = torch.zeros_like(image_e) if mask is None else (mask.reshape(image_e.shape) != 0).to(image_e.dtype)
    resid = torch.nan_to_num(image_e - bkg, nan=0.0, posinf=0.0, neginf=0.0)
    x = torch.asinh(resid / scale_e) * (1 - m)
    rn = _as_b1hw(rdnoise_e, image_e)
    noise = torch.sqrt(bkg.clamp(min=0) + rn**2).clamp(min=1e-3)
    return torch.cat([x, m, torch.log(noise / scale_e).expand_as(x)], dim=1)


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(min(8, c), c)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose none, batch or group")


def _cbr(ci: int, co: int, stride: int = 1, dilation: int = 1, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ci, co, 3, stride=stride, padding=dilation, dilation=dilation, bias=norm == "none"),
                         _norm(norm, co), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """conv-(norm)-ReLU-conv-(norm), scaled by a learnable gain that starts at 0 (SkipInit, De & Smith
    2020: every block starts as the identity), plus the identity, then ReLU."""

    def __init__(self, c: int, dilation: int = 1, norm: str = "batch"):
        super().__init__()
        self.conv1 = _cbr(c, c, dilation=dilation, norm=norm)
        self.conv2 = nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, bias=norm == "none")
        self.norm2 = _norm(norm, c)
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gain * self.norm2(self.conv2(self.conv1(x))) + x)


class PNet(nn.Module):
    """Encoder–decoder PNet. ``channels[i]`` and ``blocks[i]`` are the width and residual-block count at
    1/2^i of the input resolution; ``upsample`` is the output super-resolution factor."""

    HEADS = (("heat", 1), ("offset", 2), ("mag", 1), ("log_var", 1))

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] | list[int] = (16, 32, 64, 128),
                 blocks: tuple[int, ...] | list[int] = (1, 1, 1, 2), head_channels: int = 32, upsample: int = 2,
                 bottleneck_dilations: tuple[int, ...] | list[int] = (1, 2, 4), prior_prob: float = 0.003,
                 mag_init: float = -1.0, log_var_init: float = 0.0, norm: str = "batch"):
        super().__init__()
        channels, blocks = list(channels), list(blocks)
        if len(channels) != len(blocks) or len(channels) < 1:
            raise ValueError("channels and blocks must have the same (non-zero) length")
        self.upsample = int(upsample)
        self.stride = 2 ** (len(channels) - 1)
        self.stem = _cbr(in_channels, channels[0], norm=norm)
        last = len(channels) - 1
        self.encoder = nn.ModuleList()
        for i, (c, n) in enumerate(zip(channels, blocks)):
            dil = list(bottleneck_dilations) if i == last and i > 0 else [1]
            self.encoder.append(nn.Sequential(*[ResBlock(c, dil[j % len(dil)], norm) for j in range(n)]))
        self.down = nn.ModuleList([_cbr(channels[i - 1], channels[i], stride=2, norm=norm) for i in range(1, len(channels))])
        self.lateral = nn.ModuleList([nn.Conv2d(channels[i], channels[i - 1], 1) for i in range(last, 0, -1)])
        self.decoder = nn.ModuleList([ResBlock(channels[i - 1], norm=norm) for i in range(last, 0, -1)])
        self.head_conv = _cbr(channels[0], head_channels, norm=norm)
        # He initialisation (keeps the activation scale also without normalisation layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        u2 = self.upsample**2
        self.heads = nn.ModuleDict({name: nn.Conv2d(head_channels, k * u2, 1) for name, k in self.HEADS})
        # CenterNet/RetinaNet prior: start every cell at the real positive fraction so the focal loss
        # is not swamped by the negatives in the first steps.
        nn.init.constant_(self.heads["heat"].bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.normal_(self.heads["heat"].weight, std=1e-3)
        for name, b in (("offset", 0.0), ("mag", mag_init), ("log_var", log_var_init)):
            nn.init.normal_(self.heads[name].weight, std=1e-3)
            nn.init.constant_(self.heads[name].bias, b)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, C, H, W) with any H, W (padded internally to a multiple of the encoder stride).
        Returns fine-grid maps (B, k, u·H, u·W)."""
        H, W = x.shape[-2:]
        ph, pw = (-H) % self.stride, (-W) % self.stride
        if ph or pw:
            # zero padding with the mask channel set: the network sees "no data" there
            x = F.pad(x, (0, pw, 0, ph))
            if x.shape[1] >= 2:
                x[:, 1, H:, :] = 1.0
                x[:, 1, :, W:] = 1.0
        f = self.stem(x)
        skips = []
        for i, enc in enumerate(self.encoder):
            if i > 0:
                f = self.down[i - 1](f)
            f = enc(f)
            skips.append(f)
        for j, (lat, dec) in enumerate(zip(self.lateral, self.decoder)):
            skip = skips[-2 - j]
            f = F.interpolate(lat(f), size=skip.shape[-2:], mode="bilinear", align_corners=False) + skip
            f = dec(f)
        h = self.head_conv(f)
        u = self.upsample
        out = {name: F.pixel_shuffle(head(h), u) if u > 1 else head(h) for name, head in self.heads.items()}
        if ph or pw:
            out = {k: v[..., : u * H, : u * W] for k, v in out.items()}
        return out
