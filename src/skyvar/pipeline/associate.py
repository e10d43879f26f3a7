"""The associate pipeline: per-frame catalogues -> partitioned light-curve store.

``skyvar infer pipeline=associate input=<dir|glob of catalogues> out_dir=D`` writes ``D/store/``
(partitioned Parquet, long format ``source_id, band, time, mag, mag_err, flag``), ``D/sources.parquet``
(one row per source: first-detection anchor ``ra, dec, x, y``, ``first_mjd``, ``first_frame``,
``n_measurements``), ``D/failures.json`` (catalogues reported and skipped) and ``D/summary.json``.
See :mod:`skyvar.lightcurves.associate` for the matching rules.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from skyvar.lightcurves.associate import CATALOG_SUFFIXES, associate_catalogs
from skyvar.lightcurves.store import open_store
from skyvar.utils.atomic import atomic_path, write_json_atomic
from skyvar.utils.inputs import expand_inputs
from skyvar.utils.log import get_logger

log = get_logger(__name__)


class AssociatePipeline:
    """Per-frame catalogues -> the partitioned light-curve store and the source list (module doc)."""

    def __init__(self, input: str | list, out_dir: str, radius_arcsec: float = 1.0,
                 radius_pix: float | None = None, pixel_scale: float | None = None, n_partitions: int = 16,
                 n_candidates: int = 3, read_threads: int = 2, flush_rows: int = 5_000_000,
                 progress: bool = True, truth: str | None = None):
        if input is None:
            raise ValueError("pipeline=associate needs input=<directory or glob of per-frame catalogues>")
        if truth is not None:
            # accepting it silently would suggest an evaluation that does not happen
            raise ValueError("pipeline=associate does not use truth=; evaluate light curves against a simulation "
                             "with pipeline=field (truth=...) or `skyvar compare-lightcurves`")
        self.input = input
        self.out_dir = Path(out_dir)
        self.kw = dict(radius_arcsec=radius_arcsec, radius_pix=radius_pix, pixel_scale=pixel_scale,
                       n_partitions=n_partitions, n_candidates=n_candidates, read_threads=read_threads,
                       flush_rows=flush_rows)
        self.progress = progress

    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = expand_inputs(self.input, suffixes=CATALOG_SUFFIXES)
        t0 = time.perf_counter()
        res = associate_catalogs(files, self.out_dir / "store", progress=self.progress, **self.kw)
        wall = time.perf_counter() - t0
        src = res.sources
        # Measurements per source, from the store itself (what a reader will actually find).
        counts = np.zeros(len(src), dtype=np.int64)
        for p in open_store(res.store).partitions:
            ids = p.load(["source_id"])["source_id"].to_numpy()
            counts += np.bincount(ids, minlength=len(src))[: len(src)]
        src["n_measurements"] = counts
        with atomic_path(self.out_dir / "sources.parquet") as tmp:
            pq.write_table(pa.Table.from_pandas(src, preserve_index=False), tmp)
        write_json_atomic(self.out_dir / "failures.json", res.failures)
        summary = {
            "n_inputs": len(files), "n_frames": res.n_frames, "n_failed": len(res.failures),
            "n_sources": len(src), "n_measurements": res.n_measurements,
            "unusable_detections": res.unmatched_detections, "match_mode": res.mode,
            "radius": res.radius, "radius_unit": "chord (unit sphere)" if res.mode == "sky" else "pix",
            "radius_arcsec": self.kw["radius_arcsec"], "wall_s": round(wall, 2), "store": str(res.store),
        }
        write_json_atomic(self.out_dir / "summary.json", summary)
        if res.failures:
            log.warning("%d of %d catalogues failed; see %s", len(res.failures), len(files),
                        self.out_dir / "failures.json")
        log.info("associated %d frames into %d sources, %d measurements (%.1f s)", res.n_frames, len(src),
                 res.n_measurements, wall)
        return summary
