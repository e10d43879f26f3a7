"""Expanding user inputs (a file, a directory or a glob) into a sorted list of files."""

from __future__ import annotations

import glob
import os
from pathlib import Path

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz")


def expand_inputs(spec: str | os.PathLike | list, suffixes: tuple[str, ...] = FITS_SUFFIXES) -> list[Path]:
    """Return the files named by ``spec``: a file, a directory (searched one level deep, then
    recursively if nothing is at the top), a glob pattern, or a list of these. Sorted, unique.

    Raises FileNotFoundError with the spec in the message when nothing matches.
    """
    if isinstance(spec, (list, tuple)):
        out: list[Path] = []
        for s in spec:
            out.extend(expand_inputs(s, suffixes))
        return sorted(set(out))
    s = str(spec)
    p = Path(s).expanduser()
    files: list[Path]
    if p.is_dir():
        files = [f for f in sorted(p.iterdir()) if f.is_file() and _has_suffix(f, suffixes)]
        if not files:
            files = [f for f in sorted(p.rglob("*")) if f.is_file() and _has_suffix(f, suffixes)]
    elif p.is_file():
        files = [p]
    else:
        files = [Path(f) for f in sorted(glob.glob(s, recursive=True)) if Path(f).is_file()]
    if not files:
        raise FileNotFoundError(f"no input files found for {s!r} (suffixes {', '.join(suffixes)})")
    return sorted(set(files))


def _has_suffix(f: Path, suffixes: tuple[str, ...]) -> bool:
    name = f.name.lower()
    return any(name.endswith(sfx) for sfx in suffixes) and not name.startswith(".")
