"""The detect pipeline: frames -> per-frame catalogues (any detector) -> evaluation report.

``python infer.py pipeline=detect detector=<sep|photutils_psf|pnet> input=<file|dir|glob> out_dir=D
[truth=<truth.ecsv>]`` writes ``D/catalogs/<frame>.ecsv`` and, with truth, ``D/report/``. With no
input it first simulates a CSST-like field into ``D/sim`` (the demo) and evaluates against its truth.

A bad frame (corrupt, truncated, all-NaN …) is reported in ``D/failures.json`` and skipped; the rest
are processed. Catalogues are written atomically; a rerun skips frames whose catalogue was written by
the same detector configuration (``resume=true``).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from astropy.table import Table

from skyvar.detect.base import Detector
from skyvar.io.fits import FrameError, read_frame
from skyvar.utils.atomic import write_json_atomic, write_table_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.inputs import expand_inputs
from skyvar.utils.log import get_logger

log = get_logger(__name__)


class DetectPipeline:
    def __init__(
        self,
        detector: Detector,
        out_dir: str,
        input: str | list | None = None,
        truth: str | None = None,
        simulate: dict | None = None,
        evaluate: dict | None = None,
        detector_config: dict | None = None,
        resume: bool = True,
        progress: bool = True,
        logger: Any = None,
        frame: dict | None = None,
    ):
        self.detector = detector
        self.out_dir = Path(out_dir)
        self.input = input
        self.truth = truth
        self.simulate = dict(simulate or {})
        self.evaluate = dict(evaluate or {})
        self.config_hash = stable_hash({"detector": detector_config or repr(detector)})
        self.resume = resume
        self.progress = progress
        self.logger = logger
        # values for header keys a frame lacks (read_frame's exptime/zp/rdnoise/gain; the config's frame.*)
        self.frame_kw = {k: v for k, v in dict(frame or {}).items() if v is not None}

    # ------------------------------------------------------------------ steps
    def _simulated_inputs(self) -> tuple[Path, Path]:
        from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk
        from skyvar.utils.config import config_from_dotlist

        sim_dir = self.out_dir / "sim"
        cfg = config_from_dotlist(FieldSimConfig, base={**self.simulate, "out_dir": str(sim_dir)})
        log.info("no input given: simulating a %dx%d CSST-like field (seed %d) into %s", cfg.size, cfg.size,
                 cfg.seed, sim_dir)
        simulate_field_to_disk(cfg)
        return sim_dir / "frames", sim_dir / "truth.ecsv"

    def detect_files(self, files: list[Path]) -> tuple[list[Path], list[dict]]:
        cat_dir = self.out_dir / "catalogs"
        done: list[Path] = []
        failures: list[dict] = []
        it = files
        if self.progress:
            from tqdm.auto import tqdm

            it = tqdm(files, desc=f"detect[{self.detector.name}]", unit="frame")
        for f in it:
            try:
                frame = read_frame(f, **self.frame_kw)
            except FrameError as e:
                log.error("skipping %s: %s", f, e)
                failures.append({"file": str(f), "stage": "read", "error": str(e)})
                continue
            out = cat_dir / f"{frame.frame_id}.ecsv"
            if self.resume and out.exists() and _same_config(out, self.config_hash):
                done.append(out)
                continue
            t0 = time.perf_counter()
            try:
                cat = self.detector.detect(frame)
            except Exception as e:  # one bad frame must not stop a batch
                log.error("detector %s failed on %s: %s", self.detector.name, f, e)
                failures.append({"file": str(f), "stage": "detect", "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc(limit=5)})
                continue
            cat.meta["config_hash"] = self.config_hash
            cat.meta["runtime_s"] = round(time.perf_counter() - t0, 3)
            if frame.warnings:
                cat.meta["input_warnings"] = list(frame.warnings)
            write_table_atomic(cat, out)
            done.append(out)
            log.info("%s: %d sources (%.1f s)", frame.frame_id, len(cat), cat.meta["runtime_s"])
        return done, failures

    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        inp, truth = self.input, self.truth
        if inp is None:
            inp, sim_truth = self._simulated_inputs()
            truth = truth or sim_truth
        files = expand_inputs(inp)
        catalogs, failures = self.detect_files(files)
        summary: dict[str, Any] = {
            "detector": self.detector.name,
            "n_inputs": len(files),
            "n_catalogs": len(catalogs),
            "n_failed": len(failures),
            "catalog_dir": str(self.out_dir / "catalogs"),
        }
        write_json_atomic(self.out_dir / "failures.json", failures)
        if failures:
            log.warning("%d of %d frames failed; see %s", len(failures), len(files), self.out_dir / "failures.json")
        if truth is not None and catalogs:
            from skyvar.evaluate.report import evaluate_detections

            metrics = evaluate_detections(
                catalogs=catalogs, truth=truth, out_dir=self.out_dir / "report", logger=self.logger,
                **self.evaluate,
            )
            summary["metrics"] = {k: metrics[k] for k in ("recall", "precision", "f1") if k in metrics}
        write_json_atomic(self.out_dir / "summary.json", summary)
        return summary


def _same_config(path: Path, config_hash: str) -> bool:
    try:
        meta = Table.read(path, format="ascii.ecsv").meta
    except Exception:
        return False
    return meta.get("config_hash") == config_hash
