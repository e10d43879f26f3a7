"""The light-curve feature pipeline: a store in, one feature row per (source, band) out.

``python infer.py pipeline=lightcurves input=<store dir | table.parquet | table.csv | dir of tables |
light-curve archive(s)> out_dir=D`` writes ``D/lightcurve_features.parquet`` (one row per source and
band, plus one ``band = "all"`` row per multi-band source from the multi-band period search), per-stage
plots under ``D/plots/<stage>/``, ``D/summary.json`` and ``D/failures.json``. Inputs are opened by
:func:`skyvar.lightcurves.readers.open_lightcurves` (MACHO archives, the Stripe 82 layout, tables).

Stages (the extension interface)
--------------------------------
The pipeline config holds ``stages:``, a mapping of names to objects built by ``_target_`` (each from
``conf/stage/<name>.yaml``; a null entry drops a stage; a plain list also works). A stage is any object
with

* ``name: str`` — column owner and plot folder name;
* ``__call__(batch: LightCurveBatch, out_dir: pathlib.Path) -> pandas.DataFrame`` — one row per
  batch row, in the batch's order, holding only the columns the stage adds (the index is ignored).
  ``batch.mask`` already excludes padding and points whose store ``flag`` hits ``mask_flags``;
  rows are sorted by time. A stage may write plots under ``out_dir / "plots" / name``;
* optionally ``source_rows(batch, out_dir) -> pandas.DataFrame`` — for searches over all bands of a
  source together (the multi-band period search): at most one row per source of the batch, with a
  ``source_id`` column and the stage's columns. The pipeline appends them as rows with
  ``band = "all"`` (:data:`ALL_BANDS`) whose ``n_obs``/``n_good`` are summed and ``time_min``/
  ``time_max`` spanned over the source's bands; the per-band stages' columns are empty there. All
  bands of a source are always in the same batch;
* optionally ``finalize(features: pandas.DataFrame, out_dir: pathlib.Path) -> pandas.DataFrame`` —
  called once, in stage order, after every partition is done, with the whole feature table (all
  stages' columns); it returns the table with its columns added or updated. Population-level steps
  (the magnitude-dependent excess selection, a probability model applied to indices) live here.

Stages are called on batches of at most ``batch_curves`` light curves of similar length (sorted by
length to keep padding small). Stage outputs are concatenated column-wise after the pipeline's own
columns ``source_id, band, n_obs, n_good, time_min, time_max``; a column name used twice is an error.
A stage that raises (or breaks the contract) on a batch is retried on halves of the batch down to
single light curves, so an error loses only that stage's columns of the curves it fails on (NaN
there); the other curves and the other stages keep theirs. The failed stages are named per row in
the ``stage_errors`` column and listed per curve in ``failures.json``; a stage failing on every curve
tried (``max_single_failures`` in a row, no success) is given up for the rest of the batch. A
partition with stage errors is written without its resume stamp, so a rerun recomputes it. The
stage's simple attributes (numbers, strings, lists) and class name enter the resume hash, so changing
a stage's parameters recomputes; a ``version`` attribute can force it.

Nothing lost without a name
---------------------------
``failures.json`` lists, besides unreadable files and failed partitions/finalize steps, every light
curve that cleaning rejected (``stage: "clean"``, with ``source_id``, ``band`` and ``reason``): curves
whose rows were all non-finite (removed by cleaning, no feature row), curves with no usable point or
only one (kept, NaN features), and curves without a usable ``mag_err`` (kept; Q, Q1, Q2 undefined).
The feature table says the same per row in ``reject_reason`` ("" when fine). ``summary.json`` keeps
the cleaning messages and counts ``n_rejected_curves`` and ``n_stage_error_curves``.

Partitions, resume, scale
-------------------------
The store is read one partition at a time (a partition holds complete light curves, see
:mod:`skyvar.lightcurves.store`); each partition's features go to ``D/partitions/<key>.parquet``
atomically, stamped with a content hash of the partition's files and the pipeline/stage config, and a
rerun skips partitions whose stamp matches. :func:`partition_features` is a plain function of a long
DataFrame, so the same work maps over ``dask.dataframe`` partitions (:func:`dask_features`, or
``dask.enabled=true`` here: one task per store partition on a ``distributed`` cluster, local by
default) when a survey outgrows one machine.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from skyvar.flags import DEFAULT_LIGHTCURVE_MASK
from skyvar.flags import mask as flag_mask
from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.readers import open_lightcurves
from skyvar.lightcurves.store import open_store
from skyvar.pipeline.resume import parquet_stamp, write_stamped_parquet
from skyvar.utils.atomic import write_json_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)

BASE_COLUMNS = ("source_id", "band", "n_obs", "n_good", "time_min", "time_max")
#: The ``band`` of the rows holding what a stage found from all bands of a source together.
ALL_BANDS = "all"
#: Per-row bookkeeping columns written after the stages' columns ("" when nothing went wrong).
NOTE_COLUMNS = ("reject_reason", "stage_errors")
#: Cap on the per-curve entries of one (stage, reason) group in failures.json; the rest are counted.
MAX_LISTED_PER_GROUP = 10_000
# Catalogue flags that make a point unusable by default: saturated, edge, fit failed, bad pixels,
# non-positive flux (skyvar.detect.base), and repeated times (store cleaning). Blends are kept.
# skyvar.flags: saturated, edge, fit_failed, bad_pixels, nonpositive, duplicate_time
DEFAULT_MASK_FLAGS = DEFAULT_LIGHTCURVE_MASK


def stage_signature(stage: Any) -> dict:
    """What identifies a stage's configuration for resuming: class and simple public attributes."""
    simple = (int, float, str, bool, type(None))

    def ok(v):
        if isinstance(v, simple):
            return True
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and ok(x) for k, x in v.items())
        return False

    attrs = {k: v for k, v in sorted(vars(stage).items()) if not k.startswith("_") and ok(v)} \
        if hasattr(stage, "__dict__") else {}
    return {"class": f"{type(stage).__module__}.{type(stage).__qualname__}", "name": getattr(stage, "name", "?"),
            "version": getattr(stage, "version", None), "attrs": attrs}


def _batches_by_length(df: pd.DataFrame, batch_curves: int) -> tuple[np.ndarray, int]:
    """Row -> batch number, grouping light curves of similar length (df sorted by source, band, time).

    All bands of a source go to the same batch (multi-band searches see the whole source), sources
    ordered by their longest light curve; a batch holds about ``batch_curves`` light curves."""
    keys = df[["source_id", "band"]]
    code = (keys.ne(keys.shift()).any(axis=1).cumsum().to_numpy() - 1) if len(df) else np.zeros(0, int)
    n_curves = int(code[-1]) + 1 if len(code) else 0
    if not n_curves:
        return code, 0
    sizes = np.bincount(code, minlength=n_curves)
    first = np.r_[0, np.flatnonzero(np.diff(code)) + 1]  # first row of each curve
    sid = df["source_id"].to_numpy()[first]
    src = np.r_[0, np.cumsum(sid[1:] != sid[:-1])]  # curve -> source (sources are contiguous)
    n_src = int(src[-1]) + 1
    longest = np.zeros(n_src, dtype=np.int64)
    np.maximum.at(longest, src, sizes)
    order = np.argsort(longest, kind="stable")
    before = np.empty(n_src, dtype=np.int64)
    before[order] = np.cumsum(np.bincount(src, minlength=n_src)[order]) - np.bincount(src, minlength=n_src)[order]
    per_src = before // max(1, int(batch_curves))
    _, per_src = np.unique(per_src, return_inverse=True)
    per_curve = per_src[src]
    return per_curve[code], int(per_curve.max()) + 1


def _take_rows(batch: LightCurveBatch, idx: np.ndarray) -> LightCurveBatch:
    """The batch restricted to rows ``idx`` (same padding width)."""
    return LightCurveBatch(
        source_id=np.asarray(batch.source_id)[idx], band=np.asarray(batch.band)[idx], time=batch.time[idx],
        mag=batch.mag[idx], mag_err=batch.mag_err[idx], mask=batch.mask[idx],
        flag=None if batch.flag is None else batch.flag[idx])


def _call_stage(st, batch: LightCurveBatch, out_dir: Path) -> pd.DataFrame:
    res = st(batch, out_dir)
    if not isinstance(res, pd.DataFrame) or len(res) != len(batch):
        raise ValueError(f"stage {getattr(st, 'name', st)!r} returned "
                         f"{type(res).__name__} of length {len(res) if hasattr(res, '__len__') else '?'}; "
                         f"expected a DataFrame with {len(batch)} rows")
    return res.reset_index(drop=True)


def _stage_isolated(st, batch: LightCurveBatch, out_dir: Path,
                    max_single_failures: int = 20) -> tuple[pd.DataFrame, dict[int, str]]:
    """Run a stage on a batch; on an error, bisect down to the failing light curves.

    Returns (one row per batch row, NaN where the stage failed; {row: error message} of the failures).
    """
    try:
        return _call_stage(st, batch, out_dir), {}
    except Exception as e:  # noqa: BLE001 - any stage error is isolated, not fatal
        first = f"{type(e).__name__}: {e}"
    n = len(batch)
    pieces: list[tuple[np.ndarray, pd.DataFrame]] = []
    errors: dict[int, str] = {}
    state = {"ok": 0, "single_fail": 0}
    stack = [np.arange(n)] if n <= 1 else [np.arange(n // 2, n), np.arange(n // 2)]
    if n <= 1:
        errors[0] = first
        stack = []
    while stack:
        idx = stack.pop()
        if state["ok"] == 0 and state["single_fail"] >= max_single_failures:
            # Failing on every curve tried: the stage is broken here, not the data. Give up on the rest.
            for i in idx:
                errors[int(i)] = (f"{first} (the stage failed on each of the {max_single_failures} curves tried "
                                  "alone; not retried further)")
            continue
        try:
            pieces.append((idx, _call_stage(st, _take_rows(batch, idx), out_dir)))
            state["ok"] += 1
        except Exception as e:  # noqa: BLE001
            if len(idx) == 1:
                errors[int(idx[0])] = f"{type(e).__name__}: {e}"
                state["single_fail"] += 1
            else:
                h = len(idx) // 2
                stack += [idx[h:], idx[:h]]
    if pieces:
        out = pd.concat([r.set_axis(i) for i, r in pieces]).reindex(range(n))
    else:
        out = pd.DataFrame(index=range(n))
    log.warning("stage %s failed on %d of %d light curves (%s); their %s columns are NaN", getattr(st, "name", st),
                len(errors), n, first, getattr(st, "name", st))
    return out.reset_index(drop=True), errors


def _reject_reasons(n_obs, n_good, usable, has_err) -> np.ndarray:
    """Per row, why the light curve is unusable (or partly so); "" when it is fine."""
    n_use = usable.sum(1)
    n_err = (usable & has_err).sum(1)
    out = np.full(len(n_obs), "", dtype=object)
    for i in np.flatnonzero((n_use < 2) | (n_err == 0)):
        if n_use[i] == 0:
            out[i] = (f"no usable point: of {n_obs[i]} measurements {n_obs[i] - n_good[i]} are masked by flags and "
                      f"{n_good[i]} have a non-finite time or magnitude")
        elif n_use[i] == 1:
            out[i] = f"too few points: 1 usable of {n_obs[i]} (the indices need at least 2)"
        else:
            out[i] = (f"no errors: none of the {n_use[i]} usable points has a finite positive mag_err "
                      "(Q, Q1, Q2 undefined; the other indices are computed)")
    return out


def partition_features(df: pd.DataFrame, stages: list, out_dir: str | Path, mask_flags: int = DEFAULT_MASK_FLAGS,
                       batch_curves: int = 50_000, max_single_failures: int = 20) -> pd.DataFrame:
    """Features of every light curve in a long table (complete curves; any order), one row per (source, band).

    A pure function of its inputs (plus the stages' plot side effects): this is what a Dask task runs.
    A stage error costs only that stage's columns of the curves it fails on (see the module docstring);
    ``reject_reason`` and ``stage_errors`` say per row what went wrong.
    """
    out_dir = Path(out_dir)
    cols = ["source_id", "band", "time", "mag", "mag_err", "flag"]
    if not len(df):
        return pd.DataFrame(columns=list(BASE_COLUMNS) + list(NOTE_COLUMNS))
    # Plain numpy columns: Dask hands over Arrow-backed dtypes whose boolean results cannot cumsum.
    df = pd.DataFrame({c: df[c].to_numpy() for c in cols if c in df.columns})
    if "flag" not in df.columns:
        df = df.assign(flag=np.int32(0))
    if "band" not in df.columns:
        df = df.assign(band="")
    df = df.sort_values(["source_id", "band", "time"], kind="mergesort").reset_index(drop=True)
    row_batch, n_batches = _batches_by_length(df, batch_curves)
    pieces = []
    for b in range(n_batches):
        sub = df[row_batch == b]
        batch = LightCurveBatch.from_long(sub)
        n_obs = batch.mask.sum(1)
        batch.mask &= (batch.flag & int(mask_flags)) == 0
        any_good = batch.mask.any(1)
        t_good = np.where(batch.mask, batch.time, np.nan)
        t_good[~any_good] = 0.0  # keeps nanmin quiet; set back to NaN below
        base = pd.DataFrame({
            "source_id": batch.source_id, "band": batch.band, "n_obs": n_obs, "n_good": batch.mask.sum(1),
            "time_min": np.where(any_good, np.nanmin(t_good, axis=1), np.nan),
            "time_max": np.where(any_good, np.nanmax(t_good, axis=1), np.nan),
        })
        usable = batch.mask & np.isfinite(batch.time) & np.isfinite(batch.mag)
        err = np.asarray(batch.mag_err, dtype=np.float64)
        has_err = np.isfinite(err) & (np.nan_to_num(err, nan=0.0) > 0)
        reject = _reject_reasons(n_obs, base["n_good"].to_numpy(), usable, has_err)
        stage_err = [[] for _ in range(len(batch))]
        parts = [base]
        for st in stages:
            res, errors = _stage_isolated(st, batch, out_dir, max_single_failures)
            for i, msg in errors.items():
                stage_err[i].append(f"{getattr(st, 'name', st)}: {' '.join(msg.split())}")
            parts.append(res)
        parts.append(pd.DataFrame({"reject_reason": reject, "stage_errors": ["\n".join(e) for e in stage_err]}))
        merged = pd.concat(parts, axis=1)
        dup = merged.columns[merged.columns.duplicated()].tolist()
        if dup:
            raise ValueError(f"stages produced the same column(s) twice: {dup}")
        pieces.append(merged)
        combined = _source_rows(stages, batch, base, out_dir)
        if combined is not None:
            pieces.append(combined)
    out = pd.concat(pieces, ignore_index=True)
    return out.sort_values(["source_id", "band"], kind="mergesort").reset_index(drop=True)


def _source_rows(stages: list, batch: LightCurveBatch, base: pd.DataFrame, out_dir: Path) -> pd.DataFrame | None:
    """The ``band = "all"`` rows of the stages that search all bands of a source together
    (``source_rows``): base columns summed (counts) or spanned (times) over the source's bands.

    A stage error is isolated as for the per-band stages: the batch is retried source by source and
    only the failing sources lose that stage's columns (their ``stage_errors`` say why)."""
    found = [st for st in stages if callable(getattr(st, "source_rows", None))]
    if not found:
        return None
    g = base.groupby("source_id", sort=False)
    rows = pd.DataFrame({"n_obs": g.n_obs.sum(), "n_good": g.n_good.sum(), "time_min": g.time_min.min(),
                         "time_max": g.time_max.max()})
    rows.index.name = "source_id"
    parts, errors = [], {}
    for st in found:
        try:
            parts.append(_call_source_rows(st, batch, out_dir))
        except Exception as e:  # noqa: BLE001 - retried per source below
            log.warning("stage %s: source_rows failed on a batch (%s: %s); retrying source by source",
                        st.name, type(e).__name__, e)
            codes, uniq = pd.factorize(pd.Series(batch.source_id))
            ok = []
            for k, sid in enumerate(uniq):
                try:
                    ok.append(_call_source_rows(st, _take_rows(batch, np.flatnonzero(codes == k)), out_dir))
                except Exception as e1:  # noqa: BLE001
                    errors.setdefault(sid, []).append(f"{st.name}: {' '.join(f'{type(e1).__name__}: {e1}'.split())}")
            parts.append(pd.concat(ok) if ok else pd.DataFrame())
    cols = pd.Index([c for p in parts for c in p.columns])
    if cols.duplicated().any() or cols.isin(BASE_COLUMNS + NOTE_COLUMNS).any():
        raise ValueError(f"source_rows of the stages produced the same column(s) twice: "
                         f"{cols[cols.duplicated() | cols.isin(BASE_COLUMNS + NOTE_COLUMNS)].tolist()}")
    found_rows = pd.concat(parts, axis=1, join="outer") if parts else pd.DataFrame()
    keep = found_rows.index.union(pd.Index(list(errors), dtype=rows.index.dtype))
    rows = rows.loc[rows.index.isin(keep)].join(found_rows, how="left").reset_index()
    rows.insert(1, "band", ALL_BANDS)
    rows["reject_reason"] = ""
    rows["stage_errors"] = ["\n".join(errors.get(s, [])) for s in rows["source_id"]]
    return rows  # possibly empty: its columns still enter the table (a stable schema across partitions)


def _call_source_rows(st, batch: LightCurveBatch, out_dir: Path) -> pd.DataFrame:
    res = st.source_rows(batch, out_dir)
    if not isinstance(res, pd.DataFrame) or "source_id" not in res.columns:
        raise ValueError(f"stage {st.name!r}: source_rows must return a DataFrame with a source_id column")
    return res.set_index("source_id")


def _has_stage_errors(df: pd.DataFrame) -> bool:
    return "stage_errors" in df.columns and bool((df["stage_errors"].fillna("") != "").any())


def curve_failures(features: pd.DataFrame, rejected: list[dict] | None = None,
                   max_listed: int = MAX_LISTED_PER_GROUP) -> list[dict]:
    """failures.json entries for single light curves: cleaning rejections and per-curve stage errors.

    ``rejected``: curves that cleaning removed entirely (:attr:`CleanReport.rejected`). One entry per
    curve ``{"source_id", "band", "stage", "reason"|"error", "feature_row"}``, at most ``max_listed``
    per (stage, kind of reason); beyond that one entry counts the rest (all are in the feature table).
    """
    entries: list[dict] = []
    for r in rejected or []:
        entries.append({"source_id": r["source_id"], "band": r["band"], "stage": "clean", "reason": r["reason"],
                        "file": r.get("file"), "feature_row": False})
    cols = set(features.columns)
    if "reject_reason" in cols:
        rr = features["reject_reason"].fillna("").astype(str)
        for i in np.flatnonzero(rr.to_numpy() != ""):
            entries.append({"source_id": features["source_id"].iat[i], "band": features["band"].iat[i],
                            "stage": "clean", "reason": rr.iat[i], "feature_row": True})
    if "stage_errors" in cols:
        se = features["stage_errors"].fillna("").astype(str)
        for i in np.flatnonzero(se.to_numpy() != ""):
            for item in se.iat[i].split("\n"):
                stage, _, err = item.partition(": ")
                entries.append({"source_id": features["source_id"].iat[i], "band": features["band"].iat[i],
                                "stage": stage, "error": err, "feature_row": True})
    out, counts = [], {}
    for e in entries:
        e["source_id"] = e["source_id"].item() if isinstance(e["source_id"], np.generic) else e["source_id"]
        key = (e["stage"], (e.get("reason") or e.get("error") or "").split(":")[0])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= max_listed:
            out.append(e)
    for (stage, kind), c in counts.items():
        if c > max_listed:
            out.append({"stage": stage, "kind": kind, "n_more_curves": c - max_listed,
                        "error": f"{c} light curves in all; the first {max_listed} are listed, the rest are "
                                 "in lightcurve_features.parquet (reject_reason / stage_errors)"})
    return out


def _write_features(df: pd.DataFrame, path: Path, stamp: str | None = None) -> None:
    write_stamped_parquet(df, path, stamp)


def _stamp_of(path: Path) -> str | None:
    return parquet_stamp(path)


def dask_features(ddf, stages: list, out_dir: str | Path, mask_flags: int = DEFAULT_MASK_FLAGS,
                  batch_curves: int = 50_000):
    """Map :func:`partition_features` over a ``dask.dataframe`` whose partitions hold complete light
    curves (e.g. :func:`store_to_dask`, or any frame after ``ddf.shuffle("source_id")``). Lazy."""
    probe = ddf._meta if hasattr(ddf, "_meta") else ddf.head(0)
    meta = partition_features(_probe_frame(probe), stages, Path(out_dir) / ".meta", mask_flags, batch_curves).iloc[:0]
    return ddf.map_partitions(partition_features, stages, str(out_dir), mask_flags, batch_curves, meta=meta)


def _probe_frame(meta: pd.DataFrame) -> pd.DataFrame:
    """A two-point light curve with the store's dtypes, to learn the stages' output columns."""
    sid = "x" if not pd.api.types.is_integer_dtype(meta.get("source_id", pd.Series(dtype=int))) else 0
    return pd.DataFrame({"source_id": [sid, sid], "band": ["", ""], "time": [0.0, 1.0], "mag": [15.0, 15.1],
                         "mag_err": [0.01, 0.01], "flag": np.zeros(2, np.int32)})


def store_to_dask(path: str | Path, **open_kwargs):
    """A ``dask.dataframe`` with one partition per store partition (complete light curves each)."""
    import dask.dataframe as dd

    handle = open_store(path, **open_kwargs)
    parts = handle.partitions
    if not parts:
        raise ValueError(f"{path}: empty light-curve store")
    return dd.from_map(_load_partition, parts, meta=parts[0].load().iloc[:0], enforce_metadata=False)


def _load_partition(p) -> pd.DataFrame:
    return p.load()


from skyvar.pipeline.distributed import DaskConfig  # noqa: E402  (the one `dask:` block; re-exported here)


class LightCurvePipeline:
    """A light-curve store (or loose tables) -> per-(source, band) features from the configured
    stages, partition by partition (see the module documentation)."""

    def __init__(self, input: str, out_dir: str, stages: list | None = None, mask_flags: int = DEFAULT_MASK_FLAGS,
                 batch_curves: int = 50_000, resume: bool = True, n_partitions: int | None = None,
                 rows_per_partition: int = 2_000_000, band_default: str = "", dask: dict | None = None,
                 progress: bool = True, truth: str | None = None):
        if input is None:
            raise ValueError("pipeline=lightcurves needs input=<store dir | parquet/csv file | dir of tables>")
        if truth is not None:
            # accepting it silently would suggest an evaluation that does not happen
            raise ValueError("pipeline=lightcurves does not use truth=; light curves are evaluated against a "
                             "simulation by pipeline=field (truth=...) or `skyvar compare-lightcurves`")
        self.input = input
        self.out_dir = Path(out_dir)
        # A mapping name -> stage (the config's `stages:`; a null entry drops that stage) or a list.
        if isinstance(stages, Mapping):
            stages = [st for st in stages.values() if st is not None]
        self.stages = list(stages or [])
        names = [getattr(s, "name", None) for s in self.stages]
        if any(n is None for n in names) or len(set(names)) != len(names):
            raise ValueError(f"every stage needs a distinct `name`; got {names}")
        self.mask_flags = flag_mask(mask_flags, "point")  # names (as configs write them) or an int
        self.batch_curves = int(batch_curves)
        self.resume = resume
        self.open_kwargs = dict(n_partitions=n_partitions, rows_per_partition=rows_per_partition,
                                band_default=band_default)
        self.dask = DaskConfig.from_any(dask)
        self.task_stats: list[dict] = []  # Dask: per partition task cpu_s, wall_s, peak_rss_mb
        self.progress = progress
        self.config_hash = stable_hash({"stages": [stage_signature(s) for s in self.stages],
                                        "mask_flags": self.mask_flags})

    # ------------------------------------------------------------------------------------------
    def _partition_stamp(self, p) -> str:
        return stable_hash({"data": p.fingerprint, "config": self.config_hash})

    def run(self) -> dict:
        t0 = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handle = open_lightcurves(self.input, **self.open_kwargs)
        part_dir = self.out_dir / "partitions"
        failures = list(handle.failures)
        todo, done = [], []
        for p in handle.partitions:
            path = part_dir / f"{p.key}.parquet"
            if self.resume and path.exists() and _stamp_of(path) == self._partition_stamp(p):
                done.append(path)
            else:
                todo.append(p)
        if done:
            log.info("resume: %d of %d partitions already done", len(done), len(handle.partitions))
        if self.dask.enabled and todo:
            new_paths, fails = self._run_dask(todo, part_dir)
        else:
            new_paths, fails = self._run_local(todo, part_dir)
        failures += fails
        paths = sorted(done + new_paths)
        frames = [pq.read_table(f).to_pandas() for f in paths]
        features = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(BASE_COLUMNS))
        features = features.sort_values(["source_id", "band"], kind="mergesort").reset_index(drop=True)
        # Stale partition files from an earlier, different store are not part of this result.
        keep = {f.name for f in paths}
        for f in part_dir.glob("*.parquet") if part_dir.exists() else []:
            if f.name not in keep:
                f.unlink()
        for st in self.stages:
            fin = getattr(st, "finalize", None)
            if fin is not None:
                try:
                    features = fin(features, self.out_dir)
                except Exception as e:
                    log.error("stage %s finalize failed: %s", st.name, e)
                    failures.append({"stage": f"{st.name}.finalize", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc(limit=5)})
        _write_features(features, self.out_dir / "lightcurve_features.parquet")
        per_curve = curve_failures(features, handle.report.rejected)
        n_rejected = sum(1 for e in per_curve if e.get("stage") == "clean") + sum(
            e.get("n_more_curves", 0) for e in per_curve if e.get("stage") == "clean")
        n_stage_err = int((features["stage_errors"].fillna("") != "").sum()) if "stage_errors" in features else 0
        n_failed = len(failures) + n_stage_err
        failures += per_curve
        write_json_atomic(self.out_dir / "failures.json", failures)
        summary = {
            "input": str(self.input), "store_kind": handle.kind, "n_partitions": len(handle.partitions),
            "n_partitions_computed": len(new_paths), "n_partitions_resumed": len(done),
            "n_failed": n_failed, "n_rejected_curves": n_rejected, "n_stage_error_curves": n_stage_err,
            "n_lightcurves": int((features["band"] != ALL_BANDS).sum()) if len(features) else 0,
            "n_combined": int((features["band"] == ALL_BANDS).sum()) if len(features) else 0,
            "n_sources": int(features["source_id"].nunique()) if len(features) else 0,
            "stages": [s.name for s in self.stages], "features": str(self.out_dir / "lightcurve_features.parquet"),
            "cleaning": {k: v for k, v in handle.report.as_dict().items() if k not in ("rejected", "infos")},
            "wall_s": round(time.perf_counter() - t0, 2), "dask": dataclasses.asdict(self.dask),
        }
        write_json_atomic(self.out_dir / "summary.json", summary)
        if failures:
            log.warning("%d failures; see %s", len(failures), self.out_dir / "failures.json")
        log.info("%d light curves of %d sources -> %s (%.1f s)", summary["n_lightcurves"], summary["n_sources"],
                 summary["features"], summary["wall_s"])
        return summary

    def _run_local(self, todo, part_dir: Path) -> tuple[list[Path], list[dict]]:
        paths, failures = [], []
        it = todo
        if self.progress and len(todo) > 1:
            from tqdm.auto import tqdm

            it = tqdm(todo, desc="lightcurves", unit="partition")
        for p in it:
            try:
                feats = partition_features(p.load(), self.stages, self.out_dir, self.mask_flags, self.batch_curves)
            except Exception as e:  # one bad partition must not stop the rest
                log.error("partition %s failed: %s", p.key, e)
                failures.append({"partition": p.key, "files": [str(f) for f in p.files][:5], "stage": "features",
                                 "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)})
                continue
            path = part_dir / f"{p.key}.parquet"
            # No resume stamp when a stage failed on some curves: a rerun retries them.
            _write_features(feats, path, None if _has_stage_errors(feats) else self._partition_stamp(p))
            paths.append(path)
        return paths, failures

    def _run_dask(self, todo, part_dir: Path) -> tuple[list[Path], list[dict]]:
        # one client helper for every pipeline; inside pipeline=field it is the field run's cluster
        from skyvar.pipeline.distributed import SharedObject, dask_client

        with dask_client(self.dask) as client:
            # the stages (models included) reach each worker once through a file, which outlives a
            # killed worker (scattered data dies with the workers holding it)
            stages = SharedObject.put(self.stages, part_dir.parent, "stages")
            futures = [client.submit(_dask_task, p, stages, str(self.out_dir), str(part_dir), self.mask_flags,
                                     self.batch_curves, self._partition_stamp(p), pure=False) for p in todo]
            paths, failures = [], []
            for p, fut in zip(todo, futures):
                try:
                    res = fut.result()
                except Exception as e:  # the partition's workers died (KilledWorker): report, go on
                    res = {"error": f"{type(e).__name__}: {e}"}
                if res.get("error"):
                    log.error("partition %s failed: %s", p.key, res["error"])
                    failures.append({"partition": p.key, "stage": "features", **res})
                else:
                    paths.append(Path(res["path"]))
                    self.task_stats.append(res.get("stats", {}))
            Path(stages.path).unlink(missing_ok=True)
            return paths, failures


def _dask_task(p, stages, out_dir, part_dir, mask_flags, batch_curves, stamp) -> dict:
    """One store partition on a Dask worker: load, compute, write its feature file; report, never raise."""
    from skyvar.pipeline.distributed import task_stats

    c0, w0 = time.thread_time(), time.perf_counter()
    try:
        if hasattr(stages, "get"):  # a SharedObject: this worker's copy of the stages
            stages = stages.get()
        feats = partition_features(p.load(), stages, out_dir, mask_flags, batch_curves)
        path = Path(part_dir) / f"{p.key}.parquet"
        _write_features(feats, path, None if _has_stage_errors(feats) else stamp)
        return {"path": str(path), "stats": task_stats(c0, w0)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}


def read_features(path: str | Path) -> pd.DataFrame:
    """The feature table written by the pipeline (``lightcurve_features.parquet`` or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "lightcurve_features.parquet"
    return pq.read_table(path).to_pandas()


def summary_of(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "summary.json").read_text())
