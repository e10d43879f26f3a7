"""The light-curve store: long-format tables of measurements, partitioned Parquet on disk.

One row per measurement (DESIGN.md §3): ``source_id, band, time, mag, mag_err, flag`` — time in
days (MJD unless the producer says otherwise), AB magnitudes, 1σ errors in mag, ``flag`` an int32
bit mask. Catalogue flags (see :mod:`skyvar.detect.base`) occupy the low 16 bits; cleaning adds the
``FLAG_*`` bits below. A light curve is one ``(source_id, band)``: bands are never mixed.

On disk a store is a directory of hive partitions ``part=00012/*.parquet``; a source's rows (all
bands) always live in one partition (``partition_of``: a stable hash of ``source_id``), so every
partition holds complete light curves and can be processed on its own (one Dask task each).

:func:`open_store` accepts what users have: a partitioned store directory, a single Parquet or CSV
file, or a directory of loose Parquet/CSV files (read and hash-partitioned in memory; a bad file is
reported and skipped). Common survey column names are mapped (``mjd``→``time``, ``magerr``→
``mag_err``, ``filtercode``→``band``, ``oid``→``source_id``, ``catflags``→``flag`` …).

:func:`clean_long` makes a table safe to use and says what it did (:class:`CleanReport`): rows with
non-finite or non-numeric time/mag or a missing id are dropped; non-finite or non-positive errors are
flagged ``FLAG_BAD_ERR``; repeated (source, band, time) rows are dropped when identical and flagged
``FLAG_DUPLICATE_TIME`` (all but the first) when they disagree; rows are sorted by (source, band,
time); one-point curves and multi-band sources are counted and reported.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skyvar.flags import CATALOG_BITS, PointFlag
from skyvar.utils.log import get_logger

log = get_logger(__name__)

STORE_COLUMNS = ("source_id", "band", "time", "mag", "mag_err", "flag")
REQUIRED_COLUMNS = ("source_id", "time", "mag")

FLAG_BAD_ERR = int(PointFlag.BAD_ERR)  # mag_err not finite or <= 0
FLAG_DUPLICATE_TIME = int(PointFlag.DUPLICATE_TIME)  # another measurement of the curve at the same time came first
CATALOG_FLAG_MASK = CATALOG_BITS

#: Column names seen in survey products, mapped onto the store's names (case-insensitive).
COLUMN_ALIASES: dict[str, str] = {
    "mjd": "time", "hjd": "time", "bjd": "time", "jd": "time", "t": "time", "times": "time",
    "magerr": "mag_err", "mag_error": "mag_err", "e_mag": "mag_err", "err": "mag_err", "sigma_mag": "mag_err",
    "filter": "band", "filtercode": "band", "passband": "band", "fid": "band",
    "oid": "source_id", "objectid": "source_id", "object_id": "source_id", "id": "source_id",
    "sourceid": "source_id", "source": "source_id",
    "flags": "flag", "catflags": "flag",
}
TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz", ".txt")


class StoreError(ValueError):
    """An unusable light-curve table; the message names the file and the reason."""


# --------------------------------------------------------------------------------------- cleaning
@dataclasses.dataclass
class CleanReport:
    source: str
    n_in: int = 0
    n_out: int = 0
    dropped_nonfinite: int = 0
    dropped_missing_id: int = 0
    dropped_identical_duplicates: int = 0
    flagged_bad_err: int = 0
    flagged_duplicate_time: int = 0
    unsorted_curves: int = 0
    one_point_curves: int = 0
    n_curves: int = 0
    multi_band_sources: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)
    infos: list[str] = dataclasses.field(default_factory=list)
    #: light curves that cleaning removed entirely: ``{"source_id", "band", "reason", "file"}`` each
    rejected: list[dict] = dataclasses.field(default_factory=list)

    def note(self, msg: str, problem: bool = True) -> None:
        """Record what cleaning did; ``problem=False`` for routine notes (renamed columns …)."""
        (self.messages if problem else self.infos).append(msg)

    def log(self, logger=log) -> None:
        for m in self.infos:
            logger.debug("%s: %s", self.source, m)
        for m in self.messages:
            logger.warning("%s: %s", self.source, m)

    def merge(self, other: CleanReport) -> CleanReport:
        for f in dataclasses.fields(self):
            if f.type in ("int", int):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.messages.extend(f"{other.source}: {m}" for m in other.messages)
        self.infos.extend(f"{other.source}: {m}" for m in other.infos)
        self.rejected.extend(other.rejected)
        return self

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def normalize_columns(df: pd.DataFrame, source: str = "<table>", report: CleanReport | None = None,
                      default_source_id=None) -> pd.DataFrame:
    """Rename alias columns onto the store's names; complain clearly about what is missing.

    Without any id column, ``default_source_id`` (e.g. the file name of a per-object file) is used.
    """
    lower = {c: str(c).strip().lower() for c in df.columns}
    rename = {}
    present = {lower[c] for c in df.columns}
    for c in df.columns:
        name = lower[c]
        if name in STORE_COLUMNS:
            if name != c:
                rename[c] = name
        elif name in COLUMN_ALIASES and COLUMN_ALIASES[name] not in present:
            target = COLUMN_ALIASES[name]
            if target not in rename.values():
                rename[c] = target
    if rename:
        df = df.rename(columns=rename)
        aliased = {k: v for k, v in rename.items() if str(k).strip().lower() != v}
        if aliased and report is not None:
            report.note("renamed columns " + ", ".join(f"{k}->{v}" for k, v in aliased.items()), problem=False)
    if "source_id" not in df.columns and default_source_id is not None:
        df = df.assign(source_id=default_source_id)
        if report is not None:
            report.note(f"no source_id column: one light curve per band, id {default_source_id!r} from the file name",
                        problem=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise StoreError(f"{source}: missing required column(s) {missing}; have {list(df.columns)} "
                         f"(a light-curve table needs {', '.join(REQUIRED_COLUMNS)}, optionally band, mag_err, flag)")
    return df


def clean_long(df: pd.DataFrame, source: str = "<table>", band_default: str = "",
               default_source_id=None) -> tuple[pd.DataFrame, CleanReport]:
    """Validate and clean a long table; returns (clean table with exactly :data:`STORE_COLUMNS`, report)."""
    rep = CleanReport(source=source, n_in=len(df))
    df = normalize_columns(df, source, rep, default_source_id)
    out = pd.DataFrame(index=df.index)
    out["source_id"] = df["source_id"]
    if "band" in df.columns:
        band = df["band"].astype("string")
        missing_band = band.isna()
        if missing_band.any():
            rep.note(f"{int(missing_band.sum())} rows without a band: set to {band_default!r}")
        out["band"] = band.fillna(band_default).str.strip().astype(str)
    else:
        out["band"] = band_default
    for c in ("time", "mag"):
        col = pd.to_numeric(df[c], errors="coerce")
        bad_text = int(col.isna().sum() - df[c].isna().sum())
        if bad_text:
            rep.note(f"{bad_text} non-numeric {c} values")
        out[c] = col.astype(np.float64)
    if "mag_err" in df.columns:
        out["mag_err"] = pd.to_numeric(df["mag_err"], errors="coerce").astype(np.float64)
    else:
        rep.note("no mag_err column: errors set to NaN (error-weighted indices Q/Q1/Q2 will be NaN)")
        out["mag_err"] = np.nan
    if "flag" in df.columns:
        out["flag"] = pd.to_numeric(df["flag"], errors="coerce").fillna(0).astype(np.int64).astype(np.int32)
    else:
        out["flag"] = np.int32(0)

    miss_id = out["source_id"].isna().to_numpy()
    if miss_id.any():
        rep.dropped_missing_id = int(miss_id.sum())
        rep.note(f"dropped {rep.dropped_missing_id} rows without source_id")
    fin = np.isfinite(out["time"].to_numpy()) & np.isfinite(out["mag"].to_numpy())
    bad = ~fin & ~miss_id
    if bad.any():
        rep.dropped_nonfinite = int(bad.sum())
        rep.note(f"dropped {rep.dropped_nonfinite} rows with NaN/inf time or mag")
    if bad.any():
        # A curve whose every row goes is named, not silently lost (the rows' count says how many).
        cur = pd.DataFrame({"source_id": out["source_id"].to_numpy()[~miss_id], "band": out["band"].to_numpy()[~miss_id],
                            "ok": fin[~miss_id]})
        per = cur.groupby(["source_id", "band"], sort=True, dropna=False)["ok"].agg(["sum", "size"])
        for (sid, band), r in per[per["sum"] == 0].iterrows():
            rep.rejected.append({"source_id": _plain(sid), "band": str(band), "file": source,
                                 "reason": f"no usable measurement: all {int(r['size'])} rows have a non-finite or "
                                           "non-numeric time or magnitude"})
        if rep.rejected:
            rep.note(f"{len(rep.rejected)} light curves had no usable row and were removed (listed in failures)")
    out = out[fin & ~miss_id]
    if pd.api.types.is_float_dtype(out["source_id"]) and len(out):
        sid = out["source_id"].to_numpy()
        if np.all(sid == np.round(sid)):
            out["source_id"] = sid.astype(np.int64)

    err = out["mag_err"].to_numpy()
    bad_err = ~(np.isfinite(err) & (err > 0))
    if bad_err.any():
        rep.flagged_bad_err = int(bad_err.sum())
        rep.note(f"flagged {rep.flagged_bad_err} rows with NaN/inf or non-positive mag_err (FLAG_BAD_ERR)")
        out["flag"] = out["flag"].to_numpy() | np.where(bad_err, FLAG_BAD_ERR, 0).astype(np.int32)

    # Unsorted curves are counted before the sort that fixes them.
    if len(out):
        keys = ["source_id", "band"]
        same = (out[keys].shift() == out[keys]).all(axis=1).to_numpy()
        back = same & (np.diff(out["time"].to_numpy(), prepend=-np.inf) < 0)
        if back.any():
            rep.unsorted_curves = int(pd.Series(back).groupby(_curve_codes(out)).any().sum())
            rep.note(f"{rep.unsorted_curves} light curves were not sorted by time: sorted")
    out = out.sort_values(["source_id", "band", "time"], kind="mergesort").reset_index(drop=True)

    dup = out.duplicated(["source_id", "band", "time"], keep=False).to_numpy()
    if dup.any():
        identical = out.duplicated(["source_id", "band", "time", "mag", "mag_err"], keep="first").to_numpy()
        if identical.any():
            rep.dropped_identical_duplicates = int(identical.sum())
            rep.note(f"dropped {rep.dropped_identical_duplicates} exact duplicate measurements")
            out = out[~identical].reset_index(drop=True)
        later = out.duplicated(["source_id", "band", "time"], keep="first").to_numpy()
        if later.any():
            rep.flagged_duplicate_time = int(later.sum())
            rep.note(f"flagged {rep.flagged_duplicate_time} measurements repeating a (source, band, time) "
                     "with a different value (FLAG_DUPLICATE_TIME; the first is kept)")
            out["flag"] = out["flag"].to_numpy() | np.where(later, FLAG_DUPLICATE_TIME, 0).astype(np.int32)

    if len(out):
        sizes = out.groupby(["source_id", "band"], sort=False).size()
        rep.one_point_curves = int((sizes < 2).sum())
        rep.n_curves = len(sizes)
        if rep.one_point_curves:
            rep.note(f"{rep.one_point_curves} one-point light curves (kept; their indices will be NaN and flagged)")
        nb = sizes.reset_index().groupby("source_id").size()
        rep.multi_band_sources = int((nb > 1).sum())
    out["flag"] = out["flag"].astype(np.int32)
    rep.n_out = len(out)
    return out[list(STORE_COLUMNS)], rep


def _plain(v):
    """A JSON-friendly scalar (numpy ints and floats become Python ones)."""
    return v.item() if isinstance(v, np.generic) else v


def _curve_codes(df: pd.DataFrame) -> np.ndarray:
    return df.groupby(["source_id", "band"], sort=False).ngroup().to_numpy()


# -------------------------------------------------------------------------------------- reading
def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """One Parquet or CSV file as a DataFrame (raw columns); StoreError naming the file when unreadable."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            df = pq.read_table(path).to_pandas()
        elif name.endswith((".csv", ".csv.gz", ".txt")):
            df = pd.read_csv(path, comment="#", sep=None if name.endswith(".txt") else ",",
                             engine="python" if name.endswith(".txt") else "c")
        else:
            raise StoreError(f"{path}: unknown light-curve table format (use {', '.join(TABLE_SUFFIXES)})")
    except StoreError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:
        raise StoreError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    if len(df.columns) == 0:
        raise StoreError(f"{path}: no columns")
    return df


def _stem(path: Path) -> str:
    name = path.name
    for sfx in TABLE_SUFFIXES:
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return path.stem


def partition_of(source_id, n_partitions: int) -> np.ndarray:
    """Stable partition number of each source id (same id -> same partition, any run, any machine)."""
    s = pd.Series(np.asarray(source_id))
    if n_partitions <= 1:
        return np.zeros(len(s), dtype=np.int64)
    h = pd.util.hash_pandas_object(s, index=False).to_numpy()
    return (h % np.uint64(n_partitions)).astype(np.int64)


@dataclasses.dataclass
class Partition:
    """A piece of a store holding complete light curves; ``load()`` returns the cleaned long table."""

    key: str
    files: tuple[Path, ...]
    fingerprint: str
    _frame: pd.DataFrame | None = dataclasses.field(default=None, repr=False)

    def load(self, columns: list[str] | None = None) -> pd.DataFrame:
        if self._frame is not None:
            df = self._frame
        else:
            tables = [pq.read_table(f) for f in self.files]
            df = pa.concat_tables(tables, promote_options="default").to_pandas() if tables else pd.DataFrame(
                columns=list(STORE_COLUMNS))
            df = df.drop(columns=[c for c in df.columns if c == "part"])
            df = df.sort_values(["source_id", "band", "time"], kind="mergesort").reset_index(drop=True)
        return df if columns is None else df[columns]


@dataclasses.dataclass
class StoreHandle:
    path: Path
    kind: str  # "partitioned" | "file" | "files"
    partitions: list[Partition]
    failures: list[dict]
    report: CleanReport

    def read_all(self) -> pd.DataFrame:
        frames = [p.load() for p in self.partitions]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(STORE_COLUMNS))


def is_partitioned_store(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and p.name.startswith("part=") for p in path.iterdir())


def open_store(path: str | os.PathLike, n_partitions: int | None = None, rows_per_partition: int = 2_000_000,
               band_default: str = "") -> StoreHandle:
    """Open a light-curve store, a single table file or a directory of loose table files.

    A partitioned store is opened lazily (partitions load on demand and are assumed clean: they are
    written by :func:`write_store`). Loose files are read, cleaned (reported per file; unreadable
    ones are skipped and listed in ``failures``) and hash-partitioned in memory into
    ``n_partitions`` pieces (default: about ``rows_per_partition`` rows each).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"light-curve input not found: {path}")
    if is_partitioned_store(path):
        parts = []
        for d in sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("part=")):
            files = tuple(sorted(f for f in d.glob("*.parquet") if not f.name.startswith(".")))
            if files:
                fp = ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
                parts.append(Partition(key=d.name, files=files, fingerprint=fp))
        return StoreHandle(path, "partitioned", parts, [], CleanReport(source=str(path)))

    if path.is_file():
        files, kind = [path], "file"
    else:
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.name.lower().endswith(TABLE_SUFFIXES)
                       and not f.name.startswith("."))
        kind = "files"
        if not files:
            raise FileNotFoundError(f"no light-curve tables ({', '.join(TABLE_SUFFIXES)}) under {path}")
    frames, failures = [], []
    total = CleanReport(source=str(path))
    for f in files:
        rep = None
        try:
            df, rep = clean_long(read_table(f), source=str(f), band_default=band_default,
                                 default_source_id=_stem(f))
            if not len(df):
                raise StoreError(f"{f}: no usable rows (of {rep.n_in}): " + "; ".join(rep.messages or ["empty table"]))
        except (StoreError, OSError) as e:
            if kind == "file":
                raise
            log.error("skipping %s: %s", f, e)
            entry = {"file": str(f), "stage": "read", "error": str(e)}
            if rep is not None and rep.rejected:
                entry["curves"] = [{"source_id": r["source_id"], "band": r["band"]} for r in rep.rejected]
            failures.append(entry)
            continue
        rep.log()
        total.merge(rep)
        frames.append(df)
    if not frames:
        raise StoreError(f"{path}: none of {len(files)} light-curve files could be read; see the errors above")
    df = pd.concat(frames, ignore_index=True)
    if kind == "files" and len(frames) > 1:
        # A source may be split over files (one file per night, say): clean again as one table.
        df, rep = clean_long(df, source=str(path), band_default=band_default)
        rep.log()
        total.dropped_identical_duplicates += rep.dropped_identical_duplicates
        total.flagged_duplicate_time += rep.flagged_duplicate_time
        for f in ("one_point_curves", "n_curves", "multi_band_sources"):  # curve counts: of the whole
            setattr(total, f, getattr(rep, f))
        total.n_out = rep.n_out
        if total.rejected:  # a curve emptied in one file may have good rows in another: not rejected
            have = set(zip(df["source_id"].astype(str), df["band"].astype(str)))
            total.rejected = [r for r in total.rejected if (str(r["source_id"]), r["band"]) not in have]
    return StoreHandle(path, kind, partition_in_memory(df, files, n_partitions, rows_per_partition), failures, total)


def partition_in_memory(df: pd.DataFrame, files: list[Path], n_partitions: int | None,
                        rows_per_partition: int) -> list[Partition]:
    """Hash-partition a cleaned long table by source (loose files read into memory); each partition's
    fingerprint is the files' names, sizes and times plus its slot, so resume notices a changed file."""
    n = n_partitions or max(1, int(np.ceil(len(df) / max(rows_per_partition, 1))))
    part = partition_of(df["source_id"].to_numpy(), n)
    fp_base = ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    parts = []
    for k in range(n):
        sub = df[part == k]
        if len(sub):
            parts.append(Partition(key=f"part={k:05d}", files=tuple(files), fingerprint=f"{fp_base}#{k}/{n}",
                                   _frame=sub.reset_index(drop=True)))
    return parts


def read_store(path: str | os.PathLike, **kwargs) -> pd.DataFrame:
    """The whole store (or table file / directory of tables) as one cleaned long DataFrame."""
    return open_store(path, **kwargs).read_all()


# -------------------------------------------------------------------------------------- writing
_SCHEMA = pa.schema([("source_id", pa.int64()), ("band", pa.string()), ("time", pa.float64()),
                     ("mag", pa.float64()), ("mag_err", pa.float64()), ("flag", pa.int32())])


def _arrow_table(df: pd.DataFrame) -> pa.Table:
    schema = _SCHEMA
    if not pd.api.types.is_integer_dtype(df["source_id"]):
        schema = schema.set(0, pa.field("source_id", pa.string()))
        df = df.assign(source_id=df["source_id"].astype(str))
    return pa.Table.from_pandas(df[list(STORE_COLUMNS)], schema=schema, preserve_index=False)


class StoreWriter:
    """Streaming writer of a partitioned store: ``append`` long tables, ``close`` to publish.

    Rows are buffered per partition and flushed as one Parquet file per partition and flush; the
    store is built in a hidden temporary directory next to ``path`` and renamed onto it by
    :meth:`close`, so a reader never sees a half-written store (an existing store is replaced).
    """

    def __init__(self, path: str | os.PathLike, n_partitions: int = 16, flush_rows: int = 5_000_000,
                 compression: str = "zstd"):
        self.path = Path(path)
        self.n_partitions = int(n_partitions)
        self.flush_rows = int(flush_rows)
        self.compression = compression
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self._buf: dict[int, list[pd.DataFrame]] = {}
        self._buffered = 0
        self._n_flush = 0
        self.n_rows = 0
        self._closed = False

    def append(self, df: pd.DataFrame) -> None:
        if not len(df):
            return
        part = partition_of(df["source_id"].to_numpy(), self.n_partitions)
        order = np.argsort(part, kind="stable")
        part_sorted = part[order]
        bounds = np.flatnonzero(np.diff(part_sorted)) + 1
        for idx in np.split(order, bounds):
            k = int(part[idx[0]])
            self._buf.setdefault(k, []).append(df.iloc[idx])
        self._buffered += len(df)
        self.n_rows += len(df)
        if self._buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        for k, frames in self._buf.items():
            d = self._tmp / f"part={k:05d}"
            d.mkdir(exist_ok=True)
            df = pd.concat(frames, ignore_index=True)
            pq.write_table(_arrow_table(df), d / f"chunk-{self._n_flush:05d}.parquet", compression=self.compression)
        self._buf.clear()
        self._buffered = 0
        self._n_flush += 1

    def close(self) -> Path:
        if self._closed:
            return self.path
        self.flush()
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(self._tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self._tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_store(df: pd.DataFrame, path: str | os.PathLike, n_partitions: int | None = None,
                rows_per_partition: int = 2_000_000, clean: bool = True) -> Path:
    """Write a long table as a partitioned store at ``path`` (cleaned first unless ``clean=False``)."""
    if clean:
        df, rep = clean_long(df, source=str(path))
        rep.log()
    n = n_partitions or max(1, int(np.ceil(len(df) / max(rows_per_partition, 1))))
    with StoreWriter(path, n_partitions=n, flush_rows=max(len(df), 1)) as w:
        w.append(df)
    return Path(path)


def iter_partition_frames(path: str | os.PathLike, **kwargs) -> Iterator[tuple[str, pd.DataFrame]]:
    for p in open_store(path, **kwargs).partitions:
        yield p.key, p.load()
