"""The detect pipeline: frames -> per-frame catalogues (any detector) -> evaluation report.

``skyvar infer pipeline=detect detector=<sep|photutils_psf|pnet> input=<file|dir|glob> out_dir=D
[truth=<truth.ecsv>] [pipeline.catalog_format=ecsv|parquet|fits]`` writes ``D/catalogs/<frame>.ecsv`` and, with truth, ``D/report/``. With no
input it first simulates a CSST-like field into ``D/sim`` (the demo) and evaluates against its truth.

A bad frame (corrupt, truncated, all-NaN …) is reported in ``D/failures.json`` and skipped; the rest
are processed. Catalogues are written atomically; a rerun skips frames whose catalogue was written by
the same detector configuration (``resume=true``). The work over files is
:func:`skyvar.detect.batch.detect_files`, shared with ``pipeline=field``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from skyvar.detect.base import Detector
from skyvar.utils.atomic import write_json_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.inputs import expand_inputs
from skyvar.utils.log import get_logger

log = get_logger(__name__)


class DetectPipeline:
    """Frames -> per-frame catalogues with any detector -> (with truth) the evaluation report."""

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
        catalog_format: str = "ecsv",
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
        from skyvar.io.catalog import CATALOG_FORMATS

        if catalog_format not in CATALOG_FORMATS:
            raise ValueError(f"catalog_format={catalog_format!r}: choose one of {', '.join(CATALOG_FORMATS)}")
        self.catalog_format = catalog_format

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
        from skyvar.detect.batch import detect_files

        res = detect_files(self.detector, files, self.out_dir / "catalogs", self.config_hash,
                           fmt=self.catalog_format, resume=self.resume, progress=self.progress)
        return res.catalogs, res.failures

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
