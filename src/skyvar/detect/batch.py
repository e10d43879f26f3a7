"""Detection over many frames: the library layer that ``pipeline=detect`` and ``pipeline=field`` (and
the Dask workers) compose.

:func:`detect_files` runs one detector over a list of frame files and writes one catalogue per frame
(``<cat_dir>/<frame_id>.<fmt>``). It never stops on a bad frame: an unreadable frame or a detector
error is returned as a failure record (file, step, error) and the rest is processed. It resumes: a
catalogue already written with the same ``config_hash`` (stored in the catalogue's meta and read
without touching the rows) is kept and the frame is not read again.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from skyvar.detect.base import Detector
from skyvar.io.catalog import catalog_meta, catalog_path, frame_id_from_path, write_catalog
from skyvar.utils.log import get_logger

log = get_logger(__name__)

__all__ = ["DetectResult", "detect_file", "detect_files"]


@dataclasses.dataclass
class DetectResult:
    catalogs: list[Path]  # in the order of the input files (failed frames left out)
    failures: list[dict]  # {"file", "stage": "read"|"detect", "error", ["traceback"]}
    n_resumed: int = 0
    wall_s: float = 0.0  # detection time of the frames measured now (not the resumed ones)

    @property
    def n_measured(self) -> int:
        return len(self.catalogs) - self.n_resumed


def detect_file(detector: Detector, file: str | Path, out: str | Path, config_hash: str) -> Path:
    """Detect on one frame file and write its catalogue to ``out`` (raises FrameError on a bad frame,
    anything else on a detector failure)."""
    from skyvar.io.fits import read_frame

    frame = read_frame(file)
    t0 = time.perf_counter()
    cat = detector.detect(frame)
    cat.meta["config_hash"] = config_hash
    cat.meta["runtime_s"] = round(time.perf_counter() - t0, 3)
    if frame.warnings:
        cat.meta["input_warnings"] = list(frame.warnings)
    write_catalog(cat, out)
    log.info("%s: %d sources (%.1f s)", frame.frame_id, len(cat), cat.meta["runtime_s"])
    return Path(out)


def detect_files(detector: Detector, files: Sequence[str | Path], cat_dir: str | Path, config_hash: str,
                 fmt: str = "ecsv", resume: bool = True, progress: bool = False) -> DetectResult:
    """Run ``detector`` on every file; one catalogue per frame in ``cat_dir`` (see module doc)."""
    from skyvar.io.fits import FrameError

    cat_dir = Path(cat_dir)
    cats: list[Path] = []
    failures: list[dict] = []
    n_resumed = 0
    wall = 0.0
    it = list(files)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"detect[{getattr(detector, 'name', 'detector')}]", unit="frame")
    for f in it:
        f = Path(f)
        out = catalog_path(cat_dir, frame_id_from_path(f), fmt)
        if resume and (catalog_meta(out) or {}).get("config_hash") == config_hash:
            cats.append(out)
            n_resumed += 1
            continue
        t0 = time.perf_counter()
        try:
            detect_file(detector, f, out, config_hash)
        except FrameError as e:
            log.error("skipping %s: %s", f, e)
            failures.append({"file": str(f), "stage": "read", "error": str(e)})
            continue
        except Exception as e:  # one bad frame must not stop a batch
            log.error("detector %s failed on %s: %s", getattr(detector, "name", "?"), f, e)
            failures.append({"file": str(f), "stage": "detect", "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc(limit=5)})
            continue
        wall += time.perf_counter() - t0
        cats.append(out)
    return DetectResult(cats, failures, n_resumed, wall)
