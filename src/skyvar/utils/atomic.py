"""Atomic writes: a reader never sees a half-written output, and an interrupted run leaves no debris
that a resumed run could mistake for a finished file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success.

    The temporary file keeps the destination's suffix (``suffix`` overrides it) so writers that
    infer the format from the file name (astropy, pyarrow) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sfx = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{sfx}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give outputs the permissions a plain open() would
        with contextlib.suppress(OSError):
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def write_table_atomic(table, path: str | os.PathLike, **kwargs) -> Path:
    """Write an astropy Table (ECSV, FITS, Parquet … by suffix) atomically."""
    path = Path(path)
    fmt = kwargs.pop("format", None)
    if fmt is None:
        fmt = {".ecsv": "ascii.ecsv", ".fits": "fits", ".parquet": "parquet", ".csv": "ascii.csv"}.get(
            path.suffix.lower()
        )
    with atomic_path(path) as tmp:
        table.write(tmp, format=fmt, overwrite=True, **kwargs)
    return path


def savefig_atomic(fig, path: str | os.PathLike, **kwargs) -> Path:
    kwargs.setdefault("dpi", 120)
    kwargs.setdefault("bbox_inches", "tight")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return Path(path)


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
