"""Astronet: a global-view and a local-view 1-D CNN column joined with auxiliary features.

Shallue & Vanderburg (2018) and the two-view Astronet-Triage configuration of Yu et al. (2019), as
adapted by the dense-field paper (§4.2, Figure 10):

- per view, ``n_blocks`` blocks of ``convs_per_block`` 1-D convolutions (kernel 5, "same" padding,
  ReLU) followed by max-pooling ("valid"); filters start at 16 and double every block;
- global view (201 bins): 5 blocks, pool 5 / stride 2 → 256 × 3; local view (61 bins): 2 blocks,
  pool 7 / stride 2 → 32 × 11 (the Astronet-Triage settings);
- with ``local_channels = 4`` (views built with ``ViewConfig.vetting``) the local column reads the
  primary, secondary-eclipse, odd-event and even-event local views as channels;
- the flattened columns are concatenated with the (standardised) auxiliary features (and, with
  ``aux_hidden > 0``, their representation by a 2-layer MLP of that width) and pass through
  ``fc_layers`` fully connected layers of ``fc_width`` units (ReLU, dropout) — the "pre-logits" —
  to one logit for periodic versus non-periodic (sigmoid at inference) and, optionally, a
  multi-class head (``n_classes`` logits; e.g. constant / EB / transit / pulsator / flare).
"""

from __future__ import annotations

import torch
from torch import nn


class ViewColumn(nn.Sequential):
    """Convolutional column for one view: input (B, 1, L) → flattened features (B, C·L')."""

    def __init__(self, length: int, n_blocks: int, convs_per_block: int = 2, kernel_size: int = 5,
                 initial_filters: int = 16, filter_factor: float = 2.0, pool_size: int = 5, pool_stride: int = 2,
                 in_channels: int = 1):
        layers: list[nn.Module] = []
        c_in, L = in_channels, length
        for b in range(n_blocks):
            c_out = int(round(initial_filters * filter_factor**b))
            for _ in range(convs_per_block):
                layers += [nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True)]
                c_in = c_out
            if L >= pool_size:
                layers.append(nn.MaxPool1d(pool_size, pool_stride))
                L = (L - pool_size) // pool_stride + 1
        layers.append(nn.Flatten())
        super().__init__(*layers)
        self.out_features = c_in * L
        self.out_length = L


class AstronetCNN(nn.Module):
    """``forward(global_view (B, G), local_view (B, L), aux (B, A))`` → dict with ``logit`` (B,) and,
    with ``n_classes > 0``, ``class_logits`` (B, n_classes)."""

    def __init__(self, global_bins: int = 201, local_bins: int = 61, n_aux: int = 6, global_blocks: int = 5,
                 local_blocks: int = 2, convs_per_block: int = 2, kernel_size: int = 5, initial_filters: int = 16,
                 filter_factor: float = 2.0, global_pool: tuple[int, int] = (5, 2), local_pool: tuple[int, int] = (7, 2),
                 fc_layers: int = 4, fc_width: int = 512, dropout: float = 0.0, n_classes: int = 0,
                 local_channels: int = 1, aux_hidden: int = 0):
        super().__init__()
        self.global_bins, self.local_bins, self.n_aux = global_bins, local_bins, n_aux
        self.local_channels = int(local_channels)
        # an aux tower gives the few scalar features a representation of their own before they meet the
        # ~1000 convolutional features (otherwise they are a handful of inputs among many)
        self.aux_tower = (nn.Sequential(nn.Linear(n_aux, aux_hidden), nn.ReLU(inplace=True),
                                        nn.Linear(aux_hidden, aux_hidden), nn.ReLU(inplace=True))
                          if aux_hidden and n_aux else None)
        self.global_column = ViewColumn(global_bins, global_blocks, convs_per_block, kernel_size, initial_filters,
                                        filter_factor, *global_pool)
        self.local_column = ViewColumn(local_bins, local_blocks, convs_per_block, kernel_size, initial_filters,
                                       filter_factor, *local_pool, in_channels=self.local_channels)
        n_in = self.global_column.out_features + self.local_column.out_features + (
            n_aux + aux_hidden if self.aux_tower is not None else n_aux)
        fc: list[nn.Module] = []
        for _ in range(fc_layers):
            fc += [nn.Linear(n_in, fc_width), nn.ReLU(inplace=True)]
            if dropout > 0:
                fc.append(nn.Dropout(dropout))
            n_in = fc_width
        self.pre_logits = nn.Sequential(*fc)
        self.head = nn.Linear(n_in, 1)
        self.class_head = nn.Linear(n_in, n_classes) if n_classes > 0 else None

    def forward(self, global_view: torch.Tensor, local_view: torch.Tensor, aux: torch.Tensor | None = None) -> dict:
        if local_view.dim() == 2:
            local_view = local_view.unsqueeze(1)
        if local_view.shape[1] != self.local_channels:
            raise ValueError(f"AstronetCNN expects {self.local_channels} local-view channel(s), got {local_view.shape[1]} "
                             "(views built with another ViewConfig.vetting than the network's)")
        parts = [self.global_column(global_view.unsqueeze(1)), self.local_column(local_view)]
        if self.n_aux:
            if aux is None:
                raise ValueError(f"AstronetCNN was built with n_aux={self.n_aux} auxiliary features; got none")
            parts.append(aux)
            if self.aux_tower is not None:
                parts.append(self.aux_tower(aux))
        h = self.pre_logits(torch.cat(parts, dim=1))
        out = {"logit": self.head(h).squeeze(-1)}
        if self.class_head is not None:
            out["class_logits"] = self.class_head(h)
        return out
