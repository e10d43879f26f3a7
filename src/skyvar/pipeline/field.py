"""The field pipeline: CSST-like frames to a periodic-variable candidate catalogue (the dense-field
paper's Figure 1), with the evaluation of every stage when a truth table is given.

``skyvar infer pipeline=field input=<frames: file|dir|glob> out_dir=D [detector=sep|pnet|photutils_psf]
[truth=<truth.ecsv>] [pipeline.photometry=auto|forced|per_frame]``. With no input it simulates a small
CSST-like time series first (``pipeline.simulate``) and evaluates against its truth.

Stages (each in its own folder under ``D``; every one optional except photometry)
-------------------------------------------------------------------------------------
1. ``reference`` (forced photometry only): the detector on a median stack of the first
   ``reference.n_frames`` readable frames -> ``D/reference/reference.ecsv``.
2. ``photometry``: per-frame catalogues ``D/photometry/catalogs/<frame>.parquet`` (DESIGN.md §3; Parquet
   between stages, ``skyvar.io.catalog``; ``pipeline.catalog_format=ecsv`` for readable ones). Two
   paths: ``per_frame`` runs the detector on every frame (PNet: detection and photometry per frame,
   as the paper); ``forced`` measures the reference stars on every frame with forced PSF photometry
   (:mod:`skyvar.detect.forced_psf`; the classical time-series practice, and the only affordable way
   to PSF-fit 1000 dense frames). ``auto`` (default) is ``per_frame`` for the detectors named in
   ``per_frame_detectors`` and ``forced`` otherwise. The shipped config lists none: measured on a
   1024² x 1000-epoch series, PNet as the reference detector with forced photometry gives PNet's
   completeness (0.93 of the targets) at the photon-noise scatter of PSF photometry, and beats both
   the paper's per-frame PNet and the classical pipeline (``docs/results/end_to_end.md``);
   ``photometry=per_frame`` runs the paper's per-frame PNet.
3. ``eval_detection`` (truth): :func:`skyvar.evaluate.report.evaluate_detections` on
   ``evaluate.detection_frames`` evenly spaced frames -> ``D/eval/detection/`` (Figures 6-9).
4. ``associate``: catalogues -> light-curve store ``D/associate/store`` + ``sources.parquet``
   (:class:`skyvar.pipeline.associate.AssociatePipeline`; radius ``associate.radius_px`` pixels).
5. ``features``: the light-curve feature pipeline (:class:`skyvar.pipeline.lightcurves.LightCurvePipeline`)
   with the stages of ``lightcurves.stages``: variability indices, excess selection, flare search,
   periodogram, Astronet. A stage whose code or model is not installed is skipped with a message
   (``summary.json: skipped_components``); the rest runs.
6. ``candidates``: ``D/candidates.ecsv``, one row per source (and band): position, mean/median
   magnitude, the indices, excess, period, FAP, flare FDR, p_periodic, class and ``flags``
   (:class:`skyvar.flags.CandidateFlag`, :mod:`skyvar.pipeline.candidates`); plots in ``D/plots/``.
7. ``eval_lightcurves`` and ``eval_classification`` (truth): light-curve scatter versus magnitude and
   the paper's confusion matrix (:mod:`skyvar.evaluate.lightcurves`) -> ``D/eval/``.

Resume (:mod:`skyvar.pipeline.resume`): each stage writes ``D/<stage>/_stage.json`` last, holding a content hash of its configuration,
of its inputs (frame names, sizes and modification times) and of the hashes of the stages it reads;
a rerun skips every stage whose hash is unchanged and whose outputs exist, so a run killed midway
resumes where it stopped (photometry also resumes frame by frame, features partition by partition).
Outputs are written atomically. Bad input (an unreadable frame, a catalogue that cannot be read) is
reported with its stage and file in ``D/failures.json`` and the run completes for the rest.
``D/summary.json`` holds every stage's status, wall time and metrics.

Scale out (:mod:`skyvar.pipeline.distributed`): with ``pipeline.dask.enabled=true`` the same stages run
on a Dask cluster (a LocalCluster with one worker per core, or ``pipeline.dask.address=`` to join one):
the simulation and the photometry are one task per frame (the worker reads the frame, detects with its
own detector, built once per worker, and writes the catalogue), association one task per frame (sharding
by sky tile) and one per tile (``associate.tile_px``, ``associate.margin_px``), the features one per store
partition. The outputs are the serial run's (same catalogues, same sources and ids, same candidates), and
resume works across serial and Dask runs: the stage hashes do not depend on where the work ran.

Logging: with a logger configured (``logger=wandb``: offline by default) the run's config, each
stage's metrics, the candidate table and the figures (example light curves, detections) are logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skyvar.pipeline.candidates import BLEND_DEFAULTS, CANDIDATE_FLAGS, blended_fraction, build_candidates
from skyvar.pipeline.components import (
    ComponentMissing,
    files_fingerprint,
    instantiate_component,
    model_fingerprint,
    plain,
)
from skyvar.pipeline.resume import StageRunner
from skyvar.pipeline.tracking import RunTracker
from skyvar.utils.atomic import savefig_atomic, write_json_atomic, write_table_atomic, write_text_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.inputs import expand_inputs
from skyvar.utils.log import get_logger

log = get_logger(__name__)

__all__ = ["FieldPipeline", "STAGES", "CANDIDATE_FLAGS"]

#: Bumped when a stage's code changes what it writes, so earlier outputs are not reused.
STAGE_VERSIONS = {"eval_classification": 5, "candidates": 3, "photometry": 2}
STAGES = ("simulate", "reference", "photometry", "eval_detection", "associate", "features", "candidates",
          "eval_lightcurves", "eval_classification")


class FieldPipeline:
    """Frames to a periodic-variable candidate catalogue; see the module documentation for the stages."""

    def __init__(self, out_dir: str, input: Any = None, truth: str | None = None, detector: Any = None,
                 photometry: str = "auto", per_frame_detectors: list | None = None, reference: dict | None = None,
                 forced: dict | None = None, associate: dict | None = None, lightcurves: dict | None = None,
                 candidates: dict | None = None, evaluate: dict | None = None, simulate: dict | None = None,
                 device: str = "auto", resume: bool = True, progress: bool = True, logger: Any = None,
                 plots: bool = True, catalog_format: str = "parquet", dask: dict | None = None,
                 frame: dict | None = None):
        if detector is None:
            raise ValueError("pipeline=field needs a detector (detector=sep|pnet|photutils_psf)")
        from skyvar.io.catalog import CATALOG_FORMATS

        self.out_dir = Path(out_dir)
        self.input = plain(input)
        self.truth = truth
        self.detector_cfg = plain(detector)
        self.photometry = str(photometry)
        if self.photometry not in ("auto", "forced", "per_frame"):
            raise ValueError(f"photometry={photometry!r}: choose auto, forced or per_frame")
        if catalog_format not in CATALOG_FORMATS:
            raise ValueError(f"catalog_format={catalog_format!r}: choose one of {', '.join(CATALOG_FORMATS)}")
        self.catalog_format = catalog_format
        self.per_frame_detectors = list(per_frame_detectors) if per_frame_detectors is not None else []
        self.reference_cfg = _merge("reference", {"method": "median", "n_frames": 5, "min_separation": 0.5}, reference)
        self.forced_cfg = dict(plain(forced) or {})
        self.associate_cfg = _merge("associate", {"radius_px": 1.0, "n_partitions": 8, "read_threads": 2,
                                                  "pixel_scale": None, "n_candidates": 3, "flush_rows": 5_000_000,
                                                  "tile_px": 2048, "margin_px": None},
                                    associate)
        from skyvar.pipeline.distributed import DaskConfig

        self.dask_cfg = DaskConfig.from_any(dask)
        self.client = None
        self.lc_cfg = dict(plain(lightcurves) or {})
        self.cand_cfg = _merge("candidates", {"min_points": 50, "p_periodic_threshold": None, "n_plot": 12,
                                              "score": "adjusted", "blends": dict(BLEND_DEFAULTS)}, candidates)
        self.eval_cfg = _merge("evaluate", {"detection_frames": 10, "match_radii": [0.1, 1.0], "target_mag_max": 25.0,
                                            "lc_match_radius": 1.0, "oracle": True}, evaluate)
        # values for header keys a frame lacks (read_frame's exptime/zp/rdnoise/gain; the config's frame.*)
        self.frame_kw = {k: v for k, v in dict(plain(frame) or {}).items() if v is not None}
        self.sim_cfg = dict(plain(simulate) or {})
        self.device = device
        self.resume = bool(resume)
        self.progress = bool(progress)
        self.logger_cfg = plain(logger)
        self.plots = bool(plots)
        self.tracker = RunTracker(None)
        self.runner = StageRunner(self.out_dir, resume=self.resume, versions=STAGE_VERSIONS,
                                  on_metrics=lambda st, m: self.tracker.metrics(st, m))
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def failures(self) -> list[dict]:
        return self.runner.failures

    @property
    def skipped(self) -> list[dict]:
        return self.runner.skipped

    def _stage(self, name, key, fn, outputs=None, fatal=True) -> dict:
        return self.runner.run(name, key, fn, outputs=outputs, fatal=fatal)

    def _hash(self, name: str) -> str:
        return self.runner.hashes[name]

    def config(self) -> dict:
        return {"detector": self.detector_cfg, "photometry": self.photometry, "reference": self.reference_cfg,
                "forced": self.forced_cfg, "associate": self.associate_cfg, "lightcurves": self.lc_cfg,
                "candidates": self.cand_cfg, "evaluate": self.eval_cfg, "input": str(self.input),
                "truth": str(self.truth), "device": self.device, "catalog_format": self.catalog_format,
                "dask": dataclasses.asdict(self.dask_cfg)}

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        t_start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = RunTracker.from_config(self.logger_cfg)
        self.tracker.hyperparams(self.config())
        if self.dask_cfg.enabled:
            from skyvar.pipeline.distributed import dask_client

            ctx = dask_client(self.dask_cfg)  # one cluster for every stage of the run
        else:
            ctx = contextlib.nullcontext(None)
        with ctx as client:
            self.client = client
            try:
                return self._run(t_start)
            finally:
                self.client = None

    def _run(self, t_start: float) -> dict:
        inp, truth = self.input, self.truth
        if inp is None:
            inp, sim_truth = self._simulate()
            truth = truth or sim_truth
        self.truth = truth
        files = expand_inputs(inp)
        log.info("field pipeline: %d frames -> %s", len(files), self.out_dir)
        dname = self.detector_cfg.get("name", "") if isinstance(self.detector_cfg, dict) else ""
        detector = instantiate_component(self.detector_cfg, f"detector {dname}".strip())
        name = getattr(detector, "name", "detector")
        mode = self.photometry
        if mode == "auto":
            mode = "per_frame" if name in self.per_frame_detectors else "forced"
        self.summary.update(detector=name, photometry=mode, n_inputs=len(files), truth=str(truth) if truth else None)
        fp = files_fingerprint(files)

        if mode == "forced":
            ref_rec = self._stage("reference", {"frames": fp[: max(1, int(self.reference_cfg["n_frames"])) + 20],
                                      "detector": self.detector_cfg, "cfg": self.reference_cfg},
                        lambda d: self._reference(d, files, detector), outputs=["reference.ecsv"])
            from skyvar.detect.forced_psf import ForcedPSFDetector

            # how the work is cut (forced.region_px, forced.frames_per_task) changes no output: not hashed
            regions = {"region_px": self.forced_cfg.get("region_px", 2048),
                       "frames_per_task": self.forced_cfg.get("frames_per_task")}
            fc = {k: v for k, v in self.forced_cfg.items() if k not in ("_target_", *regions)}
            ref_path = self.out_dir / "reference" / "reference.ecsv"
            # the first readable frame fixes the weights and saturation mask of every frame, so a frame's
            # photometry does not depend on the order the frames are measured in (resume, Dask)
            series = ref_rec.get("series_frame") or str(files[0])
            phot_detector = ForcedPSFDetector(**{"name": f"{name}+forced_psf", **fc, "series_frame": series})
            phot_detector.set_reference(ref_path)
            phot_cfg = {"forced": {k: v for k, v in self.forced_cfg.items() if k not in regions},
                        "reference": self._hash("reference"), "name": phot_detector.name, "series_frame": series}
            # what a Dask worker builds (once) instead of receiving the object
            phot_spec = {"_target_": "skyvar.detect.forced_psf.ForcedPSFDetector", "name": phot_detector.name,
                         **fc, "series_frame": series, "reference": str(ref_path)}
        else:
            phot_detector = detector
            phot_cfg = {"detector": self.detector_cfg, "model": model_fingerprint(self.detector_cfg)}
            phot_spec = self.detector_cfg if isinstance(self.detector_cfg, dict) else detector
            regions = None
        self.summary["name"] = getattr(phot_detector, "name", name)
        rec = self._stage("photometry", {"frames": fp, "mode": mode, "cfg": phot_cfg, "fmt": self.catalog_format},
                          lambda d: self._photometry(d, files, phot_detector, phot_cfg, phot_spec, regions))
        catalogs = [Path(p) for p in rec.get("catalogs", [])]
        if not catalogs:
            self._finish(t_start)
            raise RuntimeError(f"no frame could be measured; see {self.out_dir / 'failures.json'}")

        if truth:
            self._stage("eval_detection", {"phot": self._hash("photometry"), "truth": files_fingerprint([Path(truth)]),
                                           "cfg": {k: self.eval_cfg[k] for k in ("detection_frames", "match_radii",
                                                                                 "target_mag_max")}},
                        lambda d: self._eval_detection(d, catalogs, truth), outputs=["metrics.json"], fatal=False)
        self._stage("associate", {"phot": self._hash("photometry"), "cfg": self.associate_cfg},
                    lambda d: self._associate(d, catalogs, files[0]), outputs=["store", "sources.parquet"])
        stages, stage_sig = self._lightcurve_stages()
        self._stage("features", {"assoc": self._hash("associate"), "stages": stage_sig,
                                 "cfg": {k: v for k, v in self.lc_cfg.items() if k != "stages"}},
                    lambda d: self._features(d, stages), outputs=["lightcurve_features.parquet"])
        thr = self._p_threshold(stages)
        self._stage("candidates", {"features": self._hash("features"), "cfg": self.cand_cfg, "thr": thr},
                    lambda d: self._candidates(d, thr), outputs=["../candidates.ecsv"])
        if truth:
            self._stage("eval_lightcurves", {"assoc": self._hash("associate"), "truth": files_fingerprint([Path(truth)]),
                                             "cfg": self.eval_cfg},
                        lambda d: self._eval_lightcurves(d, truth), outputs=["metrics.json"], fatal=False)
            self._stage("eval_classification", {"cand": self._hash("candidates"), "lc": self._hash("eval_lightcurves"),
                                                "cfg": self.eval_cfg},
                        lambda d: self._eval_classification(d, truth, thr), outputs=["metrics.json"], fatal=False)
        return self._finish(t_start)

    def _finish(self, t_start: float) -> dict:
        self.summary["stages"] = self.runner.stages
        self.summary["failures"] = len(self.failures)
        self.summary["skipped_components"] = self.skipped
        self.summary["wall_s"] = round(time.perf_counter() - t_start, 2)
        self.summary["candidates"] = str(self.out_dir / "candidates.ecsv")
        write_json_atomic(self.out_dir / "failures.json", self.failures)
        write_json_atomic(self.out_dir / "summary.json", self.summary)
        write_text_atomic(self.out_dir / "config.json", json.dumps(self.config(), indent=1, default=str) + "\n")
        if self.failures:
            log.warning("%d inputs failed (stage and file in %s); the rest completed", len(self.failures),
                        self.out_dir / "failures.json")
        imgs = sorted((self.out_dir / "plots").glob("*.png")) + sorted(self.out_dir.glob("eval_*/*.png"))
        self.tracker.table("field/candidates", self.out_dir / "candidates.ecsv", sort=["p_periodic", "excess_robust_std"])
        self.tracker.images("field/figures", imgs[:24])
        self.tracker.finish()
        log.info("field pipeline done in %.1f s: %s", self.summary["wall_s"], self.out_dir / "candidates.ecsv")
        return self.summary

    # ------------------------------------------------------------------ stages
    def _simulate(self) -> tuple[Path, Path]:
        from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk
        from skyvar.utils.config import config_from_dotlist

        cfg_d = {"size": 256, "n_epochs": 100, "seed": 2024, **self.sim_cfg}
        sim_dir = Path(cfg_d.pop("out_dir", None) or self.out_dir / "sim")
        cfg = config_from_dotlist(FieldSimConfig, base={**cfg_d, "out_dir": str(sim_dir)})

        def run(d):
            log.info("no input: simulating a %dx%d CSST-like field, %d epochs (seed %d) into %s", cfg.size, cfg.size,
                     cfg.n_epochs, cfg.seed, sim_dir)
            simulate_field_to_disk(cfg, progress=self.progress, client=self.client)
            return {"sim_dir": str(sim_dir)}

        self._stage("simulate", {"sim": stable_hash(cfg)}, run)
        return sim_dir / "frames", sim_dir / "truth.ecsv"

    def _reference(self, d: Path, files: list[Path], detector) -> dict:
        from skyvar.detect.forced_psf import build_reference
        from skyvar.io.fits import FrameError, read_frame

        n = max(1, int(self.reference_cfg["n_frames"]))
        frames, failures = [], []
        for f in files:
            if len(frames) >= n:
                break
            try:
                frames.append(read_frame(f, **self.frame_kw))
            except FrameError as e:
                log.error("reference: skipping %s: %s", f, e)
                failures.append({"file": str(f), "step": "read", "error": str(e)})
        if not frames:
            raise RuntimeError("reference: no readable frame")
        ref = build_reference(frames, detector, method=self.reference_cfg["method"],
                              min_separation=float(self.reference_cfg["min_separation"]))
        write_table_atomic(ref, d / "reference.ecsv")
        log.info("reference: %d stars from %d frame(s) (%s)", len(ref), len(frames), self.reference_cfg["method"])
        return {"metrics": {"n_reference": len(ref), "n_frames": len(frames)}, "_failures": failures,
                "series_frame": str(frames[0].path)}

    def _photometry(self, d: Path, files: list[Path], detector, cfg: dict, spec=None, regions: dict | None = None) -> dict:
        from skyvar.detect.batch import DetectorSpec, detect_files
        from skyvar.io.catalog import read_catalog_table

        # a catalogue already written with this configuration is kept (frame by frame resume); on Dask
        # each frame to do is a task and the detector is built once per worker from its spec
        h = stable_hash({"detector": cfg})
        task_det = detector
        if self.client is not None:
            task_det = DetectorSpec.of(spec if spec is not None else detector, extra_key=h)
        res = None
        if regions is not None:  # forced photometry of frames larger than forced.region_px: by sky region
            from skyvar.detect.forced_psf import measure_by_region

            res = measure_by_region(detector, files, d / "catalogs", h, fmt=self.catalog_format, **regions,
                                    task_detector=task_det, resume=self.resume, progress=self.progress,
                                    client=self.client, frame=self.frame_kw)
        if res is None:
            res = detect_files(task_det, files, d / "catalogs", h, fmt=self.catalog_format,
                               resume=self.resume, progress=self.progress, client=self.client, frame=self.frame_kw)
        if res.n_resumed:
            log.info("photometry: %d of %d frames already measured with this configuration", res.n_resumed, len(files))
        n_src = []
        for c in res.catalogs[:3]:
            try:
                n_src.append(len(read_catalog_table(c)))
            except Exception:
                pass
        for f in res.failures:  # in the field run, "stage" names the pipeline stage
            f["step"] = f.pop("stage")
        return {"catalogs": [str(c) for c in sorted(res.catalogs)],
                "metrics": {"n_frames": len(res.catalogs), "n_failed": len(res.failures), "n_resumed": res.n_resumed,
                            "s_per_frame": res.wall_s / max(res.n_measured, 1),
                            "sources_per_frame": float(np.mean(n_src)) if n_src else 0.0,
                            **_task_metrics(res.task_stats)},
                "_failures": res.failures}

    def _eval_detection(self, d: Path, catalogs: list[Path], truth) -> dict:
        from skyvar.evaluate.report import evaluate_detections

        k = max(1, int(self.eval_cfg["detection_frames"]))
        idx = np.unique(np.linspace(0, len(catalogs) - 1, min(k, len(catalogs))).round().astype(int))
        m = evaluate_detections([catalogs[i] for i in idx], truth, out_dir=d, match_radii=self.eval_cfg["match_radii"],
                                target_mag_max=float(self.eval_cfg["target_mag_max"]), plots_enabled=self.plots,
                                oracle=self.eval_cfg["oracle"])
        keep = {q: m[q] for q in ("recall", "precision", "f1")}
        for r, s in m["by_radius"].items():
            keep[f"mean_abs_dm_r{r}"] = s["photometry"]["mean_abs_dm"]
        return {"metrics": {**keep, "n_frames": m["n_frames"]}}

    def _associate(self, d: Path, catalogs: list[Path], first_frame: Path) -> dict:
        from skyvar.pipeline.associate import AssociatePipeline

        cfg = dict(self.associate_cfg)
        r_px = float(cfg.pop("radius_px"))
        scale = cfg.pop("pixel_scale", None) or _pixel_scale(first_frame)
        if scale is None:
            kw = {"radius_pix": r_px}
        else:
            kw = {"radius_arcsec": r_px * scale, "radius_pix": r_px, "pixel_scale": scale}
        dask = dataclasses.asdict(self.dask_cfg) if self.client is not None else None
        ap = AssociatePipeline(input=[str(c) for c in catalogs], out_dir=str(d), progress=self.progress, dask=dask,
                               **kw, **cfg)
        s = ap.run()
        fails = _read_failures(d, "associate")
        tiles = {k: s["tiles"][k] for k in ("n_tiles", "tile_conflicts", "max_tracked_sources")} if s.get("tiles") \
            else {"n_tiles": 1}
        return {"metrics": {**{k: s[k] for k in ("n_frames", "n_sources", "n_measurements", "unusable_detections")},
                            **tiles, **_task_metrics(getattr(ap, "task_stats", []))},
                "radius_px": r_px, "_failures": fails}

    def _lightcurve_stages(self) -> tuple[list, list]:
        from skyvar.pipeline.lightcurves import stage_signature

        stages, sig = [], []
        spec = self.lc_cfg.get("stages") or {}
        items = spec.items() if isinstance(spec, dict) else [(s.get("name", s.get("_target_")), s) for s in spec]
        for key, scfg in items:
            if not scfg:
                continue
            try:
                st = instantiate_component(scfg, f"light-curve stage {key}")
            except ComponentMissing as e:
                self.runner.skip(f"features.{key}", str(e))
                continue
            stages.append(st)
            sig.append({**stage_signature(st), "model": model_fingerprint(scfg)})
        return stages, sig

    def _features(self, d: Path, stages: list) -> dict:
        from skyvar.pipeline.lightcurves import LightCurvePipeline

        cfg = {k: v for k, v in self.lc_cfg.items() if k != "stages"}
        if self.client is not None:
            cfg["dask"] = dataclasses.asdict(self.dask_cfg)
        lp = LightCurvePipeline(input=str(self.out_dir / "associate" / "store"), out_dir=str(d), stages=stages,
                                resume=self.resume, progress=self.progress, **cfg)
        s = lp.run()
        return {"metrics": {"n_lightcurves": s["n_lightcurves"], "n_sources": s["n_sources"],
                            **_task_metrics(getattr(lp, "task_stats", []))},
                "stages_run": s["stages"], "_failures": _read_failures(d, "features")}

    def _p_threshold(self, stages: list) -> float:
        """The p_periodic decision threshold: configured, else the classifier's own (tuned on validation)."""
        if self.cand_cfg.get("p_periodic_threshold") is not None:
            return float(self.cand_cfg["p_periodic_threshold"])
        for st in stages:
            if hasattr(st, "predictor"):
                if getattr(st, "threshold", None) is not None:
                    return float(st.threshold)
                try:
                    return float(st.predictor.threshold)
                except Exception as e:
                    log.warning("could not read the classifier's threshold (%s); using 0.5", e)
        return 0.5

    def _candidates(self, d: Path, thr: float) -> dict:
        from astropy.table import Table

        from skyvar.pipeline.lightcurves import read_features

        feats = read_features(self.out_dir / "features")
        sources = pd.read_parquet(self.out_dir / "associate" / "sources.parquet")
        blend = blended_fraction(self.out_dir / "associate" / "store")
        cand = build_candidates(feats, sources, blend, thr, int(self.cand_cfg["min_points"]),
                                score=str(self.cand_cfg["score"]), blends=plain(self.cand_cfg["blends"]))
        t = Table.from_pandas(cand)
        t.meta.update(description="skyvar field pipeline candidates: one row per source and band",
                      flags=dict(CANDIDATE_FLAGS), p_periodic_threshold=thr,
                      p_periodic_score=f"p_periodic_final ({self.cand_cfg['score']} probability, blend-attributed)",
                      detector=self.summary.get("detector"), photometry=self.summary.get("photometry"),
                      missing_components=[s["stage"] for s in self.skipped])
        write_table_atomic(t, self.out_dir / "candidates.ecsv")
        n_flag = {k: int((cand["flags"] & v).astype(bool).sum()) for k, v in CANDIDATE_FLAGS.items()}
        if self.plots:
            try:
                self._save_plots(cand)
            except Exception as e:
                log.error("candidate plots failed: %s", e)
        return {"metrics": {"n_sources": len(cand), **{f"n_{k}": v for k, v in n_flag.items()}}}

    def _save_plots(self, cand: pd.DataFrame) -> None:
        from skyvar.pipeline.field_plots import plot_detections, plot_scatter_vs_mag, plot_top_candidates

        out = self.out_dir / "plots"
        savefig_atomic(plot_scatter_vs_mag(cand), out / "scatter_vs_mag.png")
        fig = plot_top_candidates(cand, self.out_dir / "associate" / "store", n=int(self.cand_cfg["n_plot"]))
        if fig is not None:
            savefig_atomic(fig, out / "top_candidates.png")
        cats = sorted((self.out_dir / "photometry" / "catalogs").glob("*.*"))
        if cats:
            from astropy.table import Table

            from skyvar.io.catalog import read_catalog_table
            from skyvar.io.fits import read_frame

            cat = read_catalog_table(cats[0])
            src = cat.meta.get("source_file")
            if src and Path(src).exists():
                truth = Table.read(self.truth) if self.truth and Path(self.truth).exists() else None
                savefig_atomic(plot_detections(cat, read_frame(src), truth), out / "detections.png")

    def _eval_lightcurves(self, d: Path, truth) -> dict:
        from skyvar.evaluate.lightcurves import evaluate_lightcurves
        from skyvar.flags import mask

        m = evaluate_lightcurves(self.out_dir / "associate" / "store", self.out_dir / "associate" / "sources.parquet",
                                 truth, d, name=self.summary.get("name", ""),
                                 radius=float(self.eval_cfg["lc_match_radius"]),
                                 target_mag_max=float(self.eval_cfg["target_mag_max"]), plots=self.plots,
                                 mask_flags=mask(self.lc_cfg.get("mask_flags", 0)))
        return {"metrics": {k: m[k] for k in ("n_sources", "n_matched", "target_lightcurve_completeness",
                                              "scatter_at_20", "scatter_at_22", "scatter_at_24")}}

    def _eval_classification(self, d: Path, truth, thr: float) -> dict:
        from astropy.table import Table

        from skyvar.evaluate.lightcurves import (
            TimeSeriesTruth,
            classification_report,
            noise_params,
            plot_confusion,
        )

        cand = Table.read(self.out_dir / "candidates.ecsv").to_pandas()
        mpath = self.out_dir / "eval_lightcurves" / "sources_vs_truth.parquet"
        match = pd.read_parquet(mpath) if mpath.exists() else None
        tr = TimeSeriesTruth(truth)
        if match is None:
            match = tr.match_sources(pd.read_parquet(self.out_dir / "associate" / "sources.parquet"),
                                     float(self.eval_cfg["lc_match_radius"]))
        if "p_periodic_final" in cand and np.isfinite(cand["p_periodic_final"].to_numpy(float)).any():
            score, t = "p_periodic_final", thr
        elif "p_periodic" in cand and np.isfinite(cand["p_periodic"].to_numpy(float)).any():
            score, t = "p_periodic", thr
        else:
            # no classifier: the periodogram's candidate flag stands in
            cand["periodic_ls"] = ((cand["flags"] & CANDIDATE_FLAGS["periodic_ls"]) > 0).astype(float)
            score, t = "periodic_ls", 0.5
        snr_total = tr.lightcurve_snr_total(noise_params(tr))
        rep = classification_report(cand, match, tr, score=score, threshold=t,
                                    target_mag_max=float(self.eval_cfg["target_mag_max"]), snr_total=snr_total)
        # the classification-independent ceiling: periodic targets with a light curve of their own (matched
        # one-to-one to a source with >= candidates.min_points good epochs); no classifier can find the rest
        tt = tr.table
        per = tt["periodic"].to_numpy(bool) & (tt["mag"].to_numpy(float) < float(self.eval_cfg["target_mag_max"]))
        mm = match[match["truth_row"] >= 0].merge(cand[["source_id", "n_good"]], on="source_id")
        own = np.zeros(len(tt), bool)
        own[mm.loc[mm["n_good"].to_numpy(float) >= float(self.cand_cfg["min_points"]), "truth_row"].to_numpy(int)] = True
        rep["ceiling_own_lightcurve"] = {"recall": float(own[per].mean()) if per.any() else None,
                                         "recall_snr_ge7": float(own[per & (snr_total >= 7)].mean())
                                         if (per & (snr_total >= 7)).any() else None}
        # the same run scored without the prior adjustment and the blend attribution, for comparison
        rep["alternatives"] = {}
        for alt in ("p_periodic", "p_periodic_adjusted"):
            if alt != score and alt in cand and np.isfinite(cand[alt].to_numpy(float)).any():
                r = classification_report(cand, match, tr, score=alt, threshold=t,
                                          target_mag_max=float(self.eval_cfg["target_mag_max"]), snr_total=snr_total)
                rep["alternatives"][alt] = {"pipeline": r["pipeline"], "recall_snr_ge7": r.get("recall_snr_ge7")}
        # unresolved blends (a detection between a constant star and a variable < 1 px away, carrying
        # the variable's period) matched to the variable rather than to the nearest star
        src = pd.read_parquet(self.out_dir / "associate" / "sources.parquet")
        cp = cand.drop_duplicates("source_id").set_index("source_id")["period_bls"] if "period_bls" in cand else None
        if cp is not None:
            m2 = match[["source_id", "truth_row"]].merge(src, on="source_id", how="left")
            sm = tr.signal_rematch(m2, m2, cp.reindex(m2["source_id"]).to_numpy(float),
                                   radius=float(self.eval_cfg["lc_match_radius"]))
            r = classification_report(cand, sm, tr, score=score, threshold=t,
                                      target_mag_max=float(self.eval_cfg["target_mag_max"]), snr_total=snr_total)
            rep["alternatives"]["signal_matched"] = {"n_rematched": int(sm["rematched"].sum()), "pipeline": r["pipeline"],
                                                     "recall_snr_ge7": r.get("recall_snr_ge7")}
        write_json_atomic(d / "metrics.json", rep)
        if self.plots:
            plot_confusion({self.summary.get("name", "pipeline"): rep}, d / "confusion.png")
        return {"metrics": {"score": score, "recall_snr_ge7": rep.get("recall_snr_ge7"),
                            **{f"{w}_{k}": rep[w][k] for w in ("pipeline", "detected")
                               for k in ("precision", "recall", "f1")}}}


# ------------------------------------------------------------------------------------------ helpers
def _merge(what: str, defaults: dict, given: Any) -> dict:
    """Defaults updated by the config; a key the block does not know is an error (a typo must not be
    silently ignored)."""
    given = dict(plain(given) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"pipeline.{what}: unknown key(s) {unknown}; valid: {', '.join(sorted(defaults))}")
    return {**defaults, **given}


def _task_metrics(stats: list[dict]) -> dict:
    """Dask tasks of a stage: their summed CPU seconds and the largest worker peak RSS [MB]."""
    stats = [s for s in stats or [] if s]
    if not stats:
        return {}
    return {"n_tasks": len(stats), "task_cpu_s": round(sum(s.get("cpu_s", 0.0) for s in stats), 2),
            "worker_peak_rss_mb": max(s.get("peak_rss_mb", 0.0) for s in stats)}


def _read_failures(d: Path, step: str) -> list[dict]:
    p = d / "failures.json"
    fails = json.loads(p.read_text()) if p.exists() else []
    for f in fails:
        f["step"] = f.pop("stage", step)
    return fails


def _pixel_scale(frame_file: Path) -> float | None:
    """Arcsec per pixel from ``PIXSCALE`` or the celestial WCS (None when neither is there)."""
    from astropy.io import fits

    try:
        h = fits.getheader(frame_file)
    except OSError:
        return None
    if "PIXSCALE" in h:
        return float(h["PIXSCALE"])
    try:
        from astropy.wcs import WCS
        from astropy.wcs.utils import proj_plane_pixel_scales

        w = WCS(h, naxis=2)
        if w.has_celestial:
            return float(np.mean(proj_plane_pixel_scales(w.celestial)) * 3600.0)
    except Exception:
        return None
    return None
