"""Per-frame source catalogues on disk (DESIGN.md §3).

Two formats, one content (an astropy ``Table`` with columns ``x, y, ra, dec, flux, flux_err, mag,
mag_err, flags, frame_id, detector`` and the frame's metadata ``mjd, filter, frame_id, exptime, zp,
config_hash …`` in ``table.meta``):

* **ECSV** — the user-facing catalogue (``pipeline=detect``): human-readable, lossless, self-describing.
* **Parquet** — what pipeline stages pass to each other (``pipeline=field``): binary and columnar,
  ~10x faster to read for association and a third of the size; the meta rides in the Parquet schema
  (astropy's ``table_meta_yaml`` key), so :func:`catalog_meta` reads it without touching the rows.

FITS binary tables are read too. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import os
from pathlib import Path

from skyvar.utils.atomic import write_table_atomic

__all__ = ["CATALOG_FORMATS", "catalog_path", "write_catalog", "read_catalog_table", "catalog_meta",
           "frame_id_from_path"]

#: format name -> file suffix
CATALOG_FORMATS = {"ecsv": ".ecsv", "parquet": ".parquet", "fits": ".fits"}
_FRAME_SUFFIXES = (".fits.gz", ".fits.fz", ".fit.gz", ".fits", ".fit", ".fts")


def frame_id_from_path(path: str | os.PathLike) -> str:
    """The frame identifier skyvar uses for a frame file: its name without the FITS suffix."""
    name = Path(path).name
    for sfx in _FRAME_SUFFIXES:
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return Path(path).stem


def catalog_path(cat_dir: str | os.PathLike, frame_id: str, fmt: str = "ecsv") -> Path:
    if fmt not in CATALOG_FORMATS:
        raise ValueError(f"catalogue format {fmt!r}: choose one of {', '.join(CATALOG_FORMATS)}")
    return Path(cat_dir) / f"{frame_id}{CATALOG_FORMATS[fmt]}"


def write_catalog(table, path: str | os.PathLike) -> Path:
    """Write a catalogue atomically in the format its suffix names."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        # Parquet cannot hold object columns; the contract's columns are numeric or short strings
        table = table.copy(copy_data=False)
        for c in table.colnames:
            if table[c].dtype.kind == "O":
                table[c] = table[c].astype(str)
    return write_table_atomic(table, path)


def read_catalog_table(path: str | os.PathLike):
    """A catalogue file (ECSV, Parquet or FITS) as an astropy Table with its meta."""
    from astropy.table import Table

    path = Path(path)
    name = path.name.lower()
    if name.endswith(".ecsv"):
        return Table.read(path, format="ascii.ecsv")
    if name.endswith(".parquet"):
        return Table.read(path, format="parquet")
    return Table.read(path)


def catalog_meta(path: str | os.PathLike) -> dict | None:
    """The table meta of a catalogue without reading its rows (None when unreadable or absent)."""
    path = Path(path)
    if not path.exists():
        return None
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq
            from astropy.io.misc.yaml import load as yaml_load

            md = pq.read_schema(path).metadata or {}
            raw = md.get(b"table_meta_yaml")
            return dict((yaml_load(raw.decode()) or {}).get("meta", {})) if raw else {}
        if name.endswith(".ecsv"):
            from astropy.table import Table

            header, first = [], ""
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("#"):
                        header.append(line)
                    else:
                        first = line
                        break
            if not header or "%ECSV" not in header[0] or not first.strip():
                return None
            # the YAML header with zero data rows parses in milliseconds
            return dict(Table.read("".join(header) + first, format="ascii.ecsv").meta)
        from astropy.io import fits

        return dict(fits.getheader(path, 1))
    except Exception:
        return None
