"""Ragged light curves as padded arrays: the common currency of the light-curve modules.

A :class:`LightCurveBatch` holds ``n`` light curves padded to the longest one: ``time``, ``mag``,
``mag_err`` of shape ``(n, L)`` and ``mask`` (True where a point is valid). Rows are sorted by time;
padding sits at the end of each row with ``mask`` False (values there are NaN and must be ignored).
``source_id`` and ``band`` label the rows. Times are MJD (days) unless the producer says otherwise.

The long-format store (DESIGN.md §3: one row per measurement ``source_id, band, time, mag, mag_err,
flag``) converts to and from a batch with :meth:`from_long` / :meth:`to_long`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd


@dataclasses.dataclass
class LightCurveBatch:
    source_id: np.ndarray  # (n,) int64 or str
    band: np.ndarray  # (n,) str
    time: np.ndarray  # (n, L) float64, days
    mag: np.ndarray  # (n, L) float64
    mag_err: np.ndarray  # (n, L) float64
    mask: np.ndarray  # (n, L) bool, True = valid
    flag: np.ndarray | None = None  # (n, L) int32 per-point flags from the store, 0 where padded

    def __len__(self) -> int:
        return int(self.mag.shape[0])

    @property
    def n_points(self) -> np.ndarray:
        return self.mask.sum(axis=1)

    def to_torch(self, device: str = "cpu", dtype=None):
        """(time, mag, mag_err, mask) as torch tensors on ``device`` (NaN padding replaced by 0)."""
        import torch

        dtype = dtype or torch.float64
        conv = lambda a: torch.as_tensor(np.where(self.mask, a, 0.0), dtype=dtype, device=device)  # noqa: E731
        return conv(self.time), conv(self.mag), conv(self.mag_err), torch.as_tensor(self.mask, device=device)

    @classmethod
    def from_long(
        cls,
        df: pd.DataFrame,
        id_col: str = "source_id",
        band_col: str = "band",
        time_col: str = "time",
        mag_col: str = "mag",
        err_col: str = "mag_err",
        flag_col: str = "flag",
    ) -> LightCurveBatch:
        """Pack a long table into a batch, one row per (source_id, band), each sorted by time."""
        if band_col not in df.columns:
            df = df.assign(**{band_col: ""})
        df = df.sort_values([id_col, band_col, time_col], kind="mergesort")
        keys = df[[id_col, band_col]]
        grp = keys.ne(keys.shift()).any(axis=1).cumsum().to_numpy() - 1
        n = int(grp[-1]) + 1 if len(grp) else 0
        counts = np.bincount(grp, minlength=n) if n else np.zeros(0, int)
        L = int(counts.max()) if n else 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if n else np.zeros(0, int)
        pos = np.arange(len(df)) - starts[grp] if n else np.zeros(0, int)

        def pad(col, fill=np.nan, dtype=np.float64):
            a = np.full((n, L), fill, dtype=dtype)
            a[grp, pos] = df[col].to_numpy(dtype=dtype)
            return a

        mask = np.zeros((n, L), bool)
        mask[grp, pos] = True
        first = np.r_[0, np.flatnonzero(np.diff(grp)) + 1][:n] if n else np.zeros(0, int)
        flag = pad(flag_col, 0, np.int32) if flag_col in df.columns else None
        return cls(
            source_id=df[id_col].to_numpy()[first],
            band=df[band_col].astype(str).to_numpy()[first],
            time=pad(time_col),
            mag=pad(mag_col),
            mag_err=pad(err_col) if err_col in df.columns else np.where(mask, np.nan, np.nan),
            mask=mask,
            flag=flag,
        )

    def to_long(self) -> pd.DataFrame:
        r, c = np.nonzero(self.mask)
        out = {
            "source_id": self.source_id[r],
            "band": self.band[r],
            "time": self.time[r, c],
            "mag": self.mag[r, c],
            "mag_err": self.mag_err[r, c],
        }
        out["flag"] = self.flag[r, c] if self.flag is not None else np.zeros(len(r), np.int32)
        return pd.DataFrame(out)
