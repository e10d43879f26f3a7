"""Cleaning padded light curves and cutting them into uninterrupted runs.

Minute-cadence searches work on *uninterrupted* runs (one night's staring observation, 3-4 hours):
the flare statistic (phi_VV, consecutive pairs) and the short-period periodogram (2/T to the pseudo-
Nyquist frequency) are defined per run, while the spliced light curve of several runs of one field
serves the "general" periodicity search. A :class:`~skyvar.lightcurves.batch.LightCurveBatch` row
may hold any number of runs (the long store keeps one row per source and band); :func:`split_runs`
cuts every row at gaps longer than ``gap`` days, vectorised over all rows (no Python loop over light
curves), and returns a new batch of segments with a pointer back to the parent row.

Flags (bitmask, per row; shared by the flare and periodogram stages):
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from skyvar.flags import SearchFlag
from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.utils.log import get_logger

log = get_logger(__name__)

FLAG_TOO_SHORT = int(SearchFlag.TOO_SHORT)  #: too few valid points (or no run long enough): outputs are NaN
FLAG_NONFINITE = int(SearchFlag.NONFINITE)  #: non-finite time or magnitude values were dropped
FLAG_UNSORTED = int(SearchFlag.UNSORTED)  #: times were not sorted; sorted here
FLAG_DUPLICATE_TIME = int(SearchFlag.DUPLICATE_TIME)  #: two or more points share a time stamp (kept)
FLAG_DEGENERATE = int(SearchFlag.DEGENERATE)  #: zero scatter or a singular fit: the statistic is undefined (NaN)
FLAG_BAD_ERRORS = int(SearchFlag.BAD_ERRORS)  #: non-finite or non-positive magnitude errors (weights unusable)

FLAG_NAMES = {
    FLAG_TOO_SHORT: "too_short",
    FLAG_NONFINITE: "nonfinite_dropped",
    FLAG_UNSORTED: "unsorted_times",
    FLAG_DUPLICATE_TIME: "duplicate_times",
    FLAG_DEGENERATE: "degenerate",
    FLAG_BAD_ERRORS: "bad_errors",
}
__doc__ += "\n".join(f"``{v} = {k}``" for k, v in FLAG_NAMES.items())


def describe_flags(flag: int) -> list[str]:
    """Names of the bits set in ``flag``."""
    return [name for bit, name in FLAG_NAMES.items() if int(flag) & bit]


def clean_batch(batch: LightCurveBatch) -> tuple[LightCurveBatch, np.ndarray]:
    """Drop non-finite points, sort rows by time and move valid points to the front of each row.

    Returns the cleaned batch (same rows, same order) and a per-row flag bitmask. The input is not
    modified. Padding keeps ``mask`` False and NaN values.
    """
    time = np.asarray(batch.time, dtype=np.float64)
    mag = np.asarray(batch.mag, dtype=np.float64)
    err = np.asarray(batch.mag_err, dtype=np.float64) if batch.mag_err is not None else np.full_like(mag, np.nan)
    mask = np.asarray(batch.mask, dtype=bool)
    if time.ndim != 2 or time.shape != mag.shape or mask.shape != mag.shape:
        raise ValueError(f"LightCurveBatch arrays must be 2-D and of equal shape; got time {time.shape}, "
                         f"mag {mag.shape}, mask {mask.shape}")
    n, L = mag.shape
    flags = np.zeros(n, dtype=np.int64)
    finite = np.isfinite(time) & np.isfinite(mag)
    valid = mask & finite
    flags[(mask & ~finite).any(axis=1)] |= FLAG_NONFINITE
    bad_err = valid & ~(np.isfinite(err) & (err > 0))
    flags[bad_err.any(axis=1)] |= FLAG_BAD_ERRORS

    key = np.where(valid, time, np.inf)
    rows = np.arange(n)[:, None]
    if L > 1:
        # disorder among valid points, even when invalid points sit between them
        run_max = np.maximum.accumulate(np.where(valid, time, -np.inf), axis=1)
        unsorted = ((time[:, 1:] < run_max[:, :-1]) & valid[:, 1:]).any(axis=1)
        compact_needed = (~valid[:, :-1] & valid[:, 1:]).any(axis=1)
    else:
        unsorted = compact_needed = np.zeros(n, dtype=bool)
    flags[unsorted] |= FLAG_UNSORTED
    need = unsorted | compact_needed
    t2, m2, e2, v2 = time.copy(), mag.copy(), err.copy(), valid.copy()
    if need.any():
        o = np.argsort(key[need], axis=1, kind="stable")
        r = rows[need]
        t2[need], m2[need], e2[need], v2[need] = time[r, o], mag[r, o], err[r, o], valid[r, o]
    t2[~v2] = np.nan
    m2[~v2] = np.nan
    e2[~v2] = np.nan
    if L > 1:
        dup = (np.diff(t2, axis=1) == 0) & v2[:, 1:] & v2[:, :-1]
        flags[dup.any(axis=1)] |= FLAG_DUPLICATE_TIME
    flag_pts = None
    if batch.flag is not None:
        flag_pts = np.asarray(batch.flag)
        if need.any():
            flag_pts = flag_pts.copy()
            flag_pts[need] = flag_pts[rows[need], np.argsort(key[need], axis=1, kind="stable")]
        flag_pts = np.where(v2, flag_pts, 0)
    out = LightCurveBatch(source_id=np.asarray(batch.source_id), band=np.asarray(batch.band), time=t2, mag=m2,
                          mag_err=e2, mask=v2, flag=flag_pts)
    return out, flags


def row_quantiles(x_sorted: np.ndarray, n: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Linear-interpolated quantiles (numpy's default) of rows sorted ascending with NaN padding last."""
    out = []
    rows = np.arange(x_sorted.shape[0])
    if x_sorted.ndim != 2 or x_sorted.shape[1] == 0:
        return [np.full(x_sorted.shape[0], np.nan) for _ in qs]
    for q in qs:
        pos = np.clip((n - 1) * q, 0, None)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        frac = pos - lo
        lo_c = np.clip(lo, 0, x_sorted.shape[1] - 1)
        hi_c = np.clip(hi, 0, x_sorted.shape[1] - 1)
        v = x_sorted[rows, lo_c] * (1 - frac) + x_sorted[rows, hi_c] * frac
        out.append(np.where(n > 0, v, np.nan))
    return out


@dataclasses.dataclass
class Segments:
    """Uninterrupted runs cut from a batch by :func:`split_runs`.

    ``batch`` has one row per segment (valid points first, sorted); ``parent`` is the row index in
    the batch that was split, ``index`` the segment's position within its parent (0, 1, ...),
    ``t_start``/``t_end`` its first and last time and ``n_points`` its number of points.
    ``n_segments`` (per parent row) counts all runs, including those shorter than ``min_points``
    (which are not in ``batch``).
    """

    batch: LightCurveBatch
    parent: np.ndarray
    index: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    n_points: np.ndarray
    n_segments: np.ndarray

    def __len__(self) -> int:
        return len(self.parent)

    @property
    def span(self) -> np.ndarray:
        return self.t_end - self.t_start


def split_runs(batch: LightCurveBatch, gap: float = 0.25, min_points: int = 1, clean: bool = True) -> Segments:
    """Cut every light curve at gaps longer than ``gap`` (days) between consecutive valid points.

    ``batch`` should be cleaned (:func:`clean_batch`); with ``clean=True`` it is cleaned here. Runs with
    fewer than ``min_points`` points are dropped from the output batch (but counted in
    ``n_segments``). Vectorised: one pass over all points of all rows.
    """
    if clean:
        batch, _ = clean_batch(batch)
    n, L = batch.mag.shape
    valid = batch.mask
    nvalid = valid.sum(axis=1)
    if n == 0 or L == 0 or nvalid.sum() == 0:
        e = np.zeros(0, dtype=np.int64)
        empty = LightCurveBatch(np.asarray(batch.source_id)[:0], np.asarray(batch.band)[:0],
                                np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0), bool))
        return Segments(empty, e, e, np.zeros(0), np.zeros(0), e, np.zeros(n, dtype=np.int64))
    # valid points are compacted at the front of each row (clean_batch guarantees it)
    new_seg = np.zeros((n, L), dtype=bool)
    new_seg[:, 0] = True
    if L > 1:
        new_seg[:, 1:] = (np.diff(batch.time, axis=1) > gap) & valid[:, 1:]
    new_seg &= valid
    seg_in_row = np.cumsum(new_seg, axis=1) - 1  # segment index within row, valid where valid
    n_seg_row = new_seg.sum(axis=1)
    r, c = np.nonzero(valid)
    s_local = seg_in_row[r, c]
    seg_offset = np.concatenate([[0], np.cumsum(n_seg_row)[:-1]])
    gseg = seg_offset[r] + s_local  # global segment id, non-decreasing along (r, c)
    n_all = int(n_seg_row.sum())
    counts = np.bincount(gseg, minlength=n_all)
    keep = counts >= max(min_points, 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(r.size) - starts[gseg]
    new_id = np.cumsum(keep) - 1
    sel = keep[gseg]
    S = int(keep.sum())
    Ls = int(counts[keep].max()) if S else 0
    shape = (S, Ls)
    t = np.full(shape, np.nan)
    m = np.full(shape, np.nan)
    e = np.full(shape, np.nan)
    msk = np.zeros(shape, dtype=bool)
    rr, pp = new_id[gseg[sel]], pos[sel]
    rs, cs = r[sel], c[sel]
    t[rr, pp] = batch.time[rs, cs]
    m[rr, pp] = batch.mag[rs, cs]
    e[rr, pp] = batch.mag_err[rs, cs]
    msk[rr, pp] = True
    flg = None
    if batch.flag is not None:
        flg = np.zeros(shape, dtype=np.asarray(batch.flag).dtype)
        flg[rr, pp] = batch.flag[rs, cs]
    seg_parent_all = np.repeat(np.arange(n), n_seg_row)
    seg_index_all = np.arange(n_all) - np.repeat(seg_offset, n_seg_row)
    parent = seg_parent_all[keep]
    npts = counts[keep]
    t_start = t[:, 0] if S else np.zeros(0)
    t_end = t[np.arange(S), npts - 1] if S else np.zeros(0)
    sb = LightCurveBatch(source_id=np.asarray(batch.source_id)[parent], band=np.asarray(batch.band)[parent],
                         time=t, mag=m, mag_err=e, mask=msk, flag=flg)
    return Segments(sb, parent, seg_index_all[keep], t_start, t_end, npts, n_seg_row.astype(np.int64))


def group_runs(t_start: np.ndarray, t_end: np.ndarray, gap: float = 0.25) -> np.ndarray:
    """Cluster uninterrupted runs (segments) into observations by time overlap.

    Segments whose time ranges overlap or are separated by less than ``gap`` days belong to the same
    observation (one night's staring run, seen by many sources with different missing epochs).
    Returns an integer group id per segment, numbered in time order.
    """
    t_start = np.asarray(t_start, dtype=np.float64)
    t_end = np.asarray(t_end, dtype=np.float64)
    n = t_start.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(t_start, kind="stable")
    s, e = t_start[order], t_end[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(n, dtype=bool)
    new[1:] = s[1:] > reach[:-1] + gap
    gid_sorted = np.cumsum(new) - 1
    out = np.empty(n, dtype=np.int64)
    out[order] = gid_sorted
    return out


# ----------------------------------------------------------------------------- stage side tables
def batch_key(batch: LightCurveBatch) -> str:
    """Content fingerprint of a batch (ids, bands, times): names a stage's per-batch side files."""
    import hashlib

    h = hashlib.sha1()
    h.update(np.asarray(batch.source_id).astype(str).astype("U").tobytes())
    h.update(np.asarray(batch.band).astype(str).astype("U").tobytes())
    h.update(np.ascontiguousarray(np.where(batch.mask, batch.time, 0.0)).tobytes())
    return h.hexdigest()[:20]


class StageLog:
    """What a pipeline stage collects across partitions for its ``finalize``.

    The light-curve pipeline may skip partitions already computed (resume) or run them in Dask worker
    processes, so a stage's population-level step cannot rely on memory: with an ``out_dir`` the
    tables go to ``out_dir/<stage>/<kind>/<batch key>.parquet`` (atomically; a recomputed batch
    overwrites its file) and :meth:`collect` reads them back, keeping only the light curves present
    in the final feature table and, for duplicates left by earlier runs, the newest file. Without an
    ``out_dir`` (direct calls) they stay in memory.
    """

    def __init__(self, name: str):
        self.name = name
        self.memory: dict[str, list[pd.DataFrame]] = {}

    def reset(self) -> None:
        self.memory = {}

    def folder(self, out_dir, kind: str):
        from pathlib import Path

        return Path(out_dir) / self.name / kind

    def add(self, kind: str, df: pd.DataFrame, out_dir=None, key: str | None = None) -> None:
        if df is None or not len(df):
            return
        if out_dir is None:
            self.memory.setdefault(kind, []).append(df)
            return
        from skyvar.utils.atomic import atomic_path

        with atomic_path(self.folder(out_dir, kind) / f"{key}.parquet") as tmp:
            df.to_parquet(tmp, index=False)

    def collect(self, kind: str, out_dir=None, keys: pd.DataFrame | None = None,
                unique: tuple[str, ...] = ("source_id", "band", "run_index")) -> pd.DataFrame:
        frames = []
        if out_dir is not None and self.folder(out_dir, kind).exists():
            files = sorted(self.folder(out_dir, kind).glob("*.parquet"), key=lambda f: f.stat().st_mtime)
            for i, f in enumerate(files):
                try:
                    d = pd.read_parquet(f)
                except Exception as e:  # a damaged side file loses its rows, not the run
                    log.error("%s: unreadable %s (%s); skipped", self.name, f, e)
                    continue
                frames.append(d.assign(_order=i))
        if not frames:
            frames = [d.assign(_order=i) for i, d in enumerate(self.memory.get(kind, []))]
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True)
        if keys is not None and {"source_id", "band"} <= set(keys.columns):
            want = pd.MultiIndex.from_arrays([keys.source_id.astype(str), keys.band.astype(str)])
            have = pd.MultiIndex.from_arrays([df.source_id.astype(str), df.band.astype(str)])
            df = df[have.isin(want)]
        cols = [c for c in unique if c in df.columns]
        df = df.sort_values("_order", kind="stable")
        if cols:
            df = df.drop_duplicates(cols, keep="last")
        return df.drop(columns="_order").reset_index(drop=True)
