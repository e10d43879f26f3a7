"""Detection over many frames: the library layer that ``pipeline=detect`` and ``pipeline=field`` (and
the Dask workers) compose.

:func:`detect_files` runs one detector over a list of frame files and writes one catalogue per frame
(``<cat_dir>/<frame_id>.<fmt>``). It never stops on a bad frame: an unreadable frame or a detector
error is returned as a failure record (file, step, error) and the rest is processed. It resumes: a
catalogue already written with the same ``config_hash`` (stored in the catalogue's meta and read
without touching the rows) is kept and the frame is not read again.

On a Dask cluster (``client=``, :mod:`skyvar.pipeline.distributed`) the same work is one task per
frame: :func:`detect_file_task` runs on a worker, reads the frame there, detects with the worker's
own detector (built once per worker from a :class:`DetectorSpec` and cached, so a model is loaded once
per worker, not once per frame) and writes the catalogue; the client sends file names and receives
small records. Catalogues are identical to the serial run's (same detector, same code, one frame per
call), and the resume check happens on the client before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skyvar.detect.base import Detector
from skyvar.io.catalog import catalog_meta, catalog_path, frame_id_from_path, write_catalog
from skyvar.utils.log import get_logger

log = get_logger(__name__)

__all__ = ["DetectResult", "DetectorSpec", "detect_file", "detect_file_task", "detect_files"]


@dataclasses.dataclass
class DetectResult:
    catalogs: list[Path]  # in the order of the input files (failed frames left out)
    failures: list[dict]  # {"file", "stage": "read"|"detect", "error", ["traceback"]}
    n_resumed: int = 0
    wall_s: float = 0.0  # detection time of the frames measured now (not the resumed ones; summed over tasks)
    task_stats: list[dict] = dataclasses.field(default_factory=list)  # Dask: per task cpu_s, wall_s, peak_rss_mb, pid

    @property
    def n_measured(self) -> int:
        return len(self.catalogs) - self.n_resumed


def detect_file(detector: Detector, file: str | Path, out: str | Path, config_hash: str,
                frame: dict | None = None) -> Path:
    """Detect on one frame file and write its catalogue to ``out`` (raises FrameError on a bad frame,
    anything else on a detector failure)."""
    from skyvar.io.fits import read_frame

    # ``frame``: values for header keys the file lacks (read_frame's exptime, zp, rdnoise, gain)
    frame = read_frame(file, **{k: v for k, v in dict(frame or {}).items() if v is not None})
    t0 = time.perf_counter()
    cat = detector.detect(frame)
    cat.meta["config_hash"] = config_hash
    cat.meta["runtime_s"] = round(time.perf_counter() - t0, 3)
    if frame.warnings:
        cat.meta["input_warnings"] = list(frame.warnings)
    write_catalog(cat, out)
    log.info("%s: %d sources (%.1f s)", frame.frame_id, len(cat), cat.meta["runtime_s"])
    return Path(out)


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """How a worker gets its detector: ``config`` (a ``_target_`` dict, built on the worker) or ``blob``
    (a pickled Detector, for detectors made in Python). ``key``: content hash identifying it (the
    config, the model and reference files it names), the per-worker cache key."""

    config: dict | None = None
    blob: bytes | None = None
    key: str = ""
    blob_path: str | None = None  # a large pickled detector, in a file every worker reads once

    @classmethod
    def of(cls, detector: Any, extra_key: Any = None) -> DetectorSpec:
        """A spec for a Detector object, a ``_target_`` config dict or a spec (returned as is)."""
        if isinstance(detector, cls):
            return detector
        from skyvar.pipeline.components import model_fingerprint, plain
        from skyvar.utils.config import stable_hash

        detector = plain(detector)
        if isinstance(detector, dict):
            return cls(config=detector, key=stable_hash({"config": detector, "model": model_fingerprint(detector),
                                                         "extra": extra_key}))
        import cloudpickle

        blob = cloudpickle.dumps(detector)
        return cls(blob=blob, key=hashlib.sha256(blob).hexdigest()[:16])

    def build(self) -> Detector:
        if self.config is not None:
            from skyvar.pipeline.components import instantiate_component

            return instantiate_component(self.config, f"detector {self.config.get('name', '')}".strip())
        import pickle

        if self.blob is None and self.blob_path:
            return pickle.loads(Path(self.blob_path).read_bytes())
        return pickle.loads(self.blob)

    def spilled(self, folder: str | Path, limit: int = 1 << 20) -> DetectorSpec:
        """This spec with a pickled detector above ``limit`` bytes moved to a file in ``folder`` (read
        once per worker) instead of travelling with every task. Not Dask's scatter: scattered data dies
        with the worker holding it, a file does not."""
        if self.blob is None or len(self.blob) <= limit:
            return self
        from skyvar.utils.atomic import atomic_path

        p = Path(folder) / f".detector-{self.key}.pkl"
        if not p.exists():
            with atomic_path(p) as tmp:
                tmp.write_bytes(self.blob)
        return dataclasses.replace(self, blob=None, blob_path=str(p))

    def cached(self) -> Detector:
        """The detector of this worker (built on first use, then reused for every frame)."""
        from skyvar.pipeline.distributed import worker_cached

        return worker_cached(f"detector:{self.key}", self.build)


def detect_file_task(file: str, spec: DetectorSpec, cat_dir: str, config_hash: str, fmt: str = "ecsv",
                     frame: dict | None = None) -> dict:
    """One frame on a Dask worker: read it here, detect with this worker's cached detector, write its
    catalogue. Returns a small record (``status`` done|failed, ``catalog``, failure ``stage``/``error``,
    ``stats``); a bad frame or a detector error is a record, not an exception, as in :func:`detect_files`."""
    from skyvar.io.fits import FrameError
    from skyvar.pipeline.distributed import task_stats

    c0, w0 = time.thread_time(), time.perf_counter()
    f = Path(file)
    out = catalog_path(cat_dir, frame_id_from_path(f), fmt)
    rec: dict = {"file": str(f)}
    try:
        detector = spec.cached()
        detect_file(detector, f, out, config_hash, frame)
        rec.update(status="done", catalog=str(out))
    except FrameError as e:
        rec.update(status="failed", stage="read", error=str(e))
    except Exception as e:  # one bad frame must not stop a batch
        rec.update(status="failed", stage="detect", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc(limit=5))
    rec["stats"] = task_stats(c0, w0)
    return rec


def detect_files(detector: Detector | DetectorSpec | dict, files: Sequence[str | Path], cat_dir: str | Path,
                 config_hash: str, fmt: str = "ecsv", resume: bool = True, progress: bool = False,
                 client: Any = None, frame: dict | None = None) -> DetectResult:
    """Run ``detector`` on every file; one catalogue per frame in ``cat_dir`` (see module doc).

    ``detector``: a Detector, a ``_target_`` config or a :class:`DetectorSpec`. With a Dask ``client``
    each frame still to do is one task (:func:`detect_file_task`); without, frames run here in order.
    ``frame``: values for header keys a file lacks (``exptime``, ``zp``, ``rdnoise``, ``gain``).
    """
    from skyvar.io.fits import FrameError

    if client is not None:
        return _detect_files_dask(detector, files, cat_dir, config_hash, fmt, resume, progress, client, frame)
    if isinstance(detector, DetectorSpec):
        detector = detector.build()
    elif not hasattr(detector, "detect"):  # a `_target_` config
        detector = DetectorSpec.of(detector).build()
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
            detect_file(detector, f, out, config_hash, frame)
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


def _detect_files_dask(detector, files, cat_dir, config_hash, fmt, resume, progress, client,
                       frame: dict | None = None) -> DetectResult:
    from skyvar.pipeline.distributed import TaskFailed, run_tasks

    cat_dir = Path(cat_dir)
    cat_dir.mkdir(parents=True, exist_ok=True)
    files = [Path(f) for f in files]
    outs = [catalog_path(cat_dir, frame_id_from_path(f), fmt) for f in files]
    done = [resume and (catalog_meta(o) or {}).get("config_hash") == config_hash for o in outs]
    todo = [str(f) for f, d in zip(files, done) if not d]
    spec = DetectorSpec.of(detector).spilled(cat_dir)
    recs = run_tasks(detect_file_task, todo, spec, str(cat_dir), config_hash, fmt, frame, client=client,
                     desc="detect", progress=progress)
    if todo:
        from skyvar.pipeline.distributed import drop_cached

        client.run(drop_cached, f"detector:{spec.key}")  # the workers' detectors are done: free their memory
    by_file = dict(zip(todo, recs))
    cats, failures, stats = [], [], []
    wall = 0.0
    for f, o, d in zip(files, outs, done):
        if d:
            cats.append(o)
            continue
        r = by_file[str(f)]
        if isinstance(r, TaskFailed):
            log.error("frame %s: %s", f, r.error)
            failures.append({"file": str(f), "stage": "detect", "error": r.error})
            continue
        stats.append(r["stats"])
        if r["status"] == "done":
            cats.append(o)
            wall += r["stats"]["wall_s"]
        else:
            log.error("frame %s failed (%s): %s", f, r["stage"], r["error"])
            failures.append({k: r[k] for k in ("file", "stage", "error", "traceback") if k in r})
    return DetectResult(cats, failures, int(sum(done)), wall, stats)
