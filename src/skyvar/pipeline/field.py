"""The field pipeline: CSST-like frames to a periodic-variable candidate catalogue (the dense-field
paper's Figure 1), with the evaluation of every stage when a truth table is given.

``python infer.py pipeline=field input=<frames: file|dir|glob> out_dir=D [detector=sep|pnet|photutils_psf]
[truth=<truth.ecsv>] [pipeline.photometry=auto|forced|per_frame]``. With no input it simulates a small
CSST-like time series first (``pipeline.simulate``) and evaluates against its truth.

Stages (each in its own folder under ``D``; every one optional except photometry)
-------------------------------------------------------------------------------------
1. ``reference`` (forced photometry only): the detector on a median stack of the first
   ``reference.n_frames`` readable frames -> ``D/reference/reference.ecsv``.
2. ``photometry``: per-frame catalogues ``D/photometry/catalogs/<frame>.ecsv`` (DESIGN.md §3). Two
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
   (:data:`CANDIDATE_FLAGS`); plots in ``D/plots/``.
7. ``eval_lightcurves`` and ``eval_classification`` (truth): light-curve scatter versus magnitude and
   the paper's confusion matrix (:mod:`skyvar.evaluate.lightcurves`) -> ``D/eval/``.

Resume: each stage writes ``D/<stage>/_stage.json`` last, holding a content hash of its configuration,
of its inputs (frame names, sizes and modification times) and of the hashes of the stages it reads;
a rerun skips every stage whose hash is unchanged and whose outputs exist, so a run killed midway
resumes where it stopped (photometry also resumes frame by frame, features partition by partition).
Outputs are written atomically. Bad input (an unreadable frame, a catalogue that cannot be read) is
reported with its stage and file in ``D/failures.json`` and the run completes for the rest.
``D/summary.json`` holds every stage's status, wall time and metrics.

Logging: with a logger configured (``logger=wandb``: offline by default) the run's config, each
stage's metrics, the candidate table and the figures (example light curves, detections) are logged.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skyvar.utils.atomic import write_json_atomic, write_table_atomic, write_text_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.inputs import expand_inputs
from skyvar.utils.log import get_logger

log = get_logger(__name__)

#: ``flags`` bits of ``candidates.ecsv``.
CANDIDATE_FLAGS = {
    "excess": 1,  # above the magnitude-dependent excess threshold (robust std or 1/eta)
    "periodic_ls": 2,  # Lomb-Scargle candidate (binned excess or FAP_cal)
    "flare": 4,  # flare candidate (FDR_cal)
    "periodic_cnn": 8,  # Astronet p_periodic >= threshold
    "few_points": 16,  # fewer than ``candidates.min_points`` good epochs
    "blended": 32,  # at least half of the points flagged blended by the photometry
}
#: Bumped when a stage's code changes what it writes, so earlier outputs are not reused.
STAGE_VERSIONS = {"eval_classification": 2}
STAGES = ("simulate", "reference", "photometry", "eval_detection", "associate", "features", "candidates",
          "eval_lightcurves", "eval_classification")


class ComponentMissing(RuntimeError):
    """A configured component (detector, stage, model) is not available in this installation."""


def _plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (resolved); anything else unchanged."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg


def instantiate_component(cfg: Any, what: str) -> Any:
    """Build ``cfg`` (a dict with ``_target_``, or an object already) with a clear message when its
    code, or a model file it names (``checkpoint``), is missing."""
    cfg = _plain(cfg)
    if not isinstance(cfg, dict):
        return cfg
    target = cfg.get("_target_", "?")
    ckpt = cfg.get("checkpoint")
    if ckpt:
        p = Path(str(ckpt))
        if not p.is_absolute() and not p.exists():
            p = Path(os.environ.get("SKYVAR_ROOT", ".")) / p
        if not p.exists():
            raise ComponentMissing(f"{what}: model file {ckpt} not found (train or install the released "
                                   f"checkpoint; see its MODEL_CARD.md)")
    from hydra.utils import instantiate

    try:
        return instantiate(cfg, _convert_="partial")
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (ImportError, ModuleNotFoundError)) or "Error locating target" in str(e):
            raise ComponentMissing(f"{what}: {target} is not available in this installation ({cause})") from e
        raise


def files_fingerprint(files: list[Path]) -> list:
    out = []
    for f in files:
        try:
            s = f.stat()
            out.append([str(f), s.st_size, s.st_mtime_ns])
        except OSError:
            out.append([str(f), None, None])
    return out


class FieldPipeline:
    def __init__(self, out_dir: str, input: Any = None, truth: str | None = None, detector: Any = None,
                 photometry: str = "auto", per_frame_detectors: list | None = None, reference: dict | None = None,
                 forced: dict | None = None, associate: dict | None = None, lightcurves: dict | None = None,
                 candidates: dict | None = None, evaluate: dict | None = None, simulate: dict | None = None,
                 device: str = "auto", resume: bool = True, progress: bool = True, logger: Any = None,
                 plots: bool = True, frame: dict | None = None, **_ignored):
        if detector is None:
            raise ValueError("pipeline=field needs a detector (detector=sep|pnet|photutils_psf)")
        self.out_dir = Path(out_dir)
        self.input = _plain(input)
        self.truth = truth
        self.detector_cfg = _plain(detector)
        self.photometry = str(photometry)
        if self.photometry not in ("auto", "forced", "per_frame"):
            raise ValueError(f"photometry={photometry!r}: choose auto, forced or per_frame")
        self.per_frame_detectors = list(per_frame_detectors) if per_frame_detectors is not None else []
        self.reference_cfg = {"method": "median", "n_frames": 5, "min_separation": 0.5, **(_plain(reference) or {})}
        self.forced_cfg = dict(_plain(forced) or {})
        self.associate_cfg = {"radius_px": 1.0, "n_partitions": 8, **(_plain(associate) or {})}
        self.lc_cfg = dict(_plain(lightcurves) or {})
        self.cand_cfg = {"min_points": 50, "p_periodic_threshold": None, "n_plot": 12, **(_plain(candidates) or {})}
        self.eval_cfg = {"detection_frames": 10, "match_radii": [0.1, 1.0], "target_mag_max": 25.0,
                         "lc_match_radius": 1.0, **(_plain(evaluate) or {})}
        self.sim_cfg = dict(_plain(simulate) or {})
        self.device = device
        self.resume = bool(resume)
        self.progress = bool(progress)
        self.logger_cfg = _plain(logger)
        self.plots = bool(plots)
        # values for header keys a frame lacks (read_frame's exptime/zp/rdnoise/gain; the config's frame.*)
        self.frame_kw = {k: v for k, v in dict(_plain(frame) or {}).items() if v is not None}
        self.failures: list[dict] = []
        self.skipped: list[dict] = []
        self.summary: dict[str, Any] = {"stages": {}}
        self._hash: dict[str, str] = {}
        self._logger = None

    # ------------------------------------------------------------------ stage bookkeeping
    def _stage(self, name: str, key: Any, fn: Callable[[Path], dict], outputs: list[str] | None = None,
               fatal: bool = True) -> dict:
        """Run stage ``name`` into ``D/name`` unless its manifest has the same hash; returns its record.
        A non-fatal stage (the evaluations) that raises is reported in failures.json and the run goes on."""
        d = self.out_dir / name
        h = stable_hash({"stage": name, "key": key, "version": STAGE_VERSIONS.get(name, 1)})
        self._hash[name] = h
        man = d / "_stage.json"
        if self.resume and man.exists():
            try:
                rec = json.loads(man.read_text())
            except (OSError, ValueError):
                rec = {}
            if rec.get("hash") == h and all((d / o).exists() for o in rec.get("outputs", [])):
                log.info("stage %s: unchanged inputs and config, reused (%s)", name, d)
                rec["reused"] = True
                self.failures += rec.get("failures", [])
                self.summary["stages"][name] = _brief(rec)
                return rec
        d.mkdir(parents=True, exist_ok=True)
        log.info("stage %s: running", name)
        t0 = time.perf_counter()
        try:
            res = fn(d) or {}
        except Exception as e:
            if fatal:
                raise
            log.error("stage %s failed: %s", name, e)
            err = {"stage": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
            self.failures.append(err)
            self.summary["stages"][name] = {"status": "failed", "error": err["error"]}
            return {"status": "failed"}
        rec = {"stage": name, "hash": h, "status": "done", "wall_s": round(time.perf_counter() - t0, 2),
               "outputs": list(outputs or []) + list(res.pop("_outputs", [])), "reused": False,
               "failures": res.pop("_failures", []), **res}
        for f in rec["failures"]:
            f.setdefault("stage", name)
        self.failures += rec["failures"]
        write_json_atomic(man, rec)
        self.summary["stages"][name] = _brief(rec)
        self._log_metrics(name, rec.get("metrics"))
        log.info("stage %s: done in %.1f s", name, rec["wall_s"])
        return rec

    def _skip(self, name: str, why: str) -> None:
        log.warning("stage %s skipped: %s", name, why)
        self.skipped.append({"stage": name, "reason": why})
        self.summary["stages"][name] = {"status": "skipped", "reason": why}

    # ------------------------------------------------------------------ logging
    def _make_logger(self):
        cfg = self.logger_cfg
        if not cfg:
            return None
        if not isinstance(cfg, dict):  # a logger object passed in directly
            return cfg
        items = cfg.values() if isinstance(cfg, dict) and "_target_" not in cfg else [cfg]
        for c in items:
            if not c:
                continue
            try:
                lg = instantiate_component(c, "logger")
                log.info("logging to %s", type(lg).__name__)
                return lg
            except Exception as e:  # logging must never stop a run
                log.warning("logger %s unavailable: %s", c.get("_target_") if isinstance(c, dict) else c, e)
        return None

    def _log_metrics(self, stage: str, metrics: Any) -> None:
        if self._logger is None or not metrics:
            return
        flat = {}

        def walk(prefix, v):
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}/{k}", x)
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v):
                flat[prefix] = float(v)

        walk(stage, metrics)
        try:
            if flat and hasattr(self._logger, "log_metrics"):
                self._logger.log_metrics(flat)
        except Exception as e:
            log.warning("could not log %s metrics: %s", stage, e)

    def _log_artifacts(self, cand_path: Path | None, images: list[Path]) -> None:
        lg = self._logger
        if lg is None:
            return
        try:
            if cand_path is not None and cand_path.exists() and hasattr(lg, "log_table"):
                from astropy.table import Table

                df = Table.read(cand_path).to_pandas()
                sort = "p_periodic" if "p_periodic" in df else ("excess_robust_std" if "excess_robust_std" in df else None)
                if sort:
                    df = df.sort_values(sort, ascending=False, na_position="last")
                lg.log_table(key="field/candidates", dataframe=df.head(500))
            imgs = [str(p) for p in images if Path(p).exists()]
            if imgs and hasattr(lg, "log_image"):
                lg.log_image(key="field/figures", images=imgs)
        except Exception as e:
            log.warning("could not log tables/images: %s", e)

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        t_start = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._logger = self._make_logger()
        if self._logger is not None and hasattr(self._logger, "log_hyperparams"):
            try:
                self._logger.log_hyperparams(self.config())
            except Exception as e:
                log.warning("could not log the config: %s", e)
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

        ref_hash = None
        if mode == "forced":
            rec = self._stage("reference", {"frames": fp[: max(1, int(self.reference_cfg["n_frames"])) + 20],
                                            "detector": self.detector_cfg, "cfg": self.reference_cfg},
                              lambda d: self._reference(d, files, detector), outputs=["reference.ecsv"])
            ref_hash = self._hash["reference"]
            from skyvar.detect.forced_psf import ForcedPSFDetector

            fc = {k: v for k, v in self.forced_cfg.items() if k != "_target_"}
            phot_detector = ForcedPSFDetector(**{"name": f"{name}+forced_psf", **fc})
            phot_detector.set_reference(self.out_dir / "reference" / "reference.ecsv")
            phot_cfg = {"forced": self.forced_cfg, "reference": ref_hash, "name": phot_detector.name}
        else:
            phot_detector, phot_cfg = detector, {"detector": self.detector_cfg, "model": _model_fingerprint(self.detector_cfg)}
        self.summary["name"] = getattr(phot_detector, "name", name)
        rec = self._stage("photometry", {"frames": fp, "mode": mode, "cfg": phot_cfg},
                          lambda d: self._photometry(d, files, phot_detector, phot_cfg))
        catalogs = [Path(p) for p in rec.get("catalogs", [])]
        if not catalogs:
            self._finish(t_start)
            raise RuntimeError(f"no frame could be measured; see {self.out_dir / 'failures.json'}")

        if truth:
            self._stage("eval_detection", {"phot": self._hash["photometry"], "truth": files_fingerprint([Path(truth)]),
                                           "cfg": {k: self.eval_cfg[k] for k in ("detection_frames", "match_radii",
                                                                                 "target_mag_max")}},
                        lambda d: self._eval_detection(d, catalogs, truth), outputs=["metrics.json"], fatal=False)
        self._stage("associate", {"phot": self._hash["photometry"], "cfg": self.associate_cfg},
                    lambda d: self._associate(d, catalogs, files[0]), outputs=["store", "sources.parquet"])
        stages, stage_sig = self._lightcurve_stages()
        self._stage("features", {"assoc": self._hash["associate"], "stages": stage_sig,
                                 "cfg": {k: v for k, v in self.lc_cfg.items() if k != "stages"}},
                    lambda d: self._features(d, stages), outputs=["lightcurve_features.parquet"])
        thr = self._p_threshold(stages)
        self._stage("candidates", {"features": self._hash["features"], "cfg": self.cand_cfg, "thr": thr},
                    lambda d: self._candidates(d, thr), outputs=["../candidates.ecsv"])
        if truth:
            self._stage("eval_lightcurves", {"assoc": self._hash["associate"], "truth": files_fingerprint([Path(truth)]),
                                             "cfg": self.eval_cfg},
                        lambda d: self._eval_lightcurves(d, truth), outputs=["metrics.json"], fatal=False)
            self._stage("eval_classification", {"cand": self._hash["candidates"], "lc": self._hash["eval_lightcurves"],
                                                "cfg": self.eval_cfg},
                        lambda d: self._eval_classification(d, truth, thr), outputs=["metrics.json"], fatal=False)
        return self._finish(t_start)

    def config(self) -> dict:
        return {"detector": self.detector_cfg, "photometry": self.photometry, "reference": self.reference_cfg,
                "forced": self.forced_cfg, "associate": self.associate_cfg, "lightcurves": self.lc_cfg,
                "candidates": self.cand_cfg, "evaluate": self.eval_cfg, "input": str(self.input),
                "truth": str(self.truth), "device": self.device}

    def _finish(self, t_start: float) -> dict:
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
        self._log_artifacts(self.out_dir / "candidates.ecsv", imgs[:24])
        if self._logger is not None:
            try:
                exp = getattr(self._logger, "experiment", None)
                if exp is not None and hasattr(exp, "finish"):
                    exp.finish()
            except Exception as e:
                log.warning("could not close the logger: %s", e)
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
            simulate_field_to_disk(cfg, progress=self.progress)
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
        return {"metrics": {"n_reference": len(ref), "n_frames": len(frames)}, "_failures": failures}

    def _photometry(self, d: Path, files: list[Path], detector, cfg: dict) -> dict:
        from skyvar.pipeline.detect import DetectPipeline
        from skyvar.utils.config import stable_hash as _h

        dp = DetectPipeline(detector=detector, out_dir=str(d), detector_config=cfg, resume=self.resume,
                            progress=self.progress, frame=self.frame_kw)
        # Resume after an interruption: catalogues already written with this configuration are found
        # from their ECSV header alone (reading 1000 full catalogues would take minutes).
        want = _h({"detector": cfg})
        done, todo = [], []
        for f in files:
            c = d / "catalogs" / f"{_frame_id(f)}.ecsv"
            (done if self.resume and _ecsv_config_hash(c) == want else todo).append((f, c))
        if done:
            log.info("photometry: %d of %d frames already measured with this configuration", len(done), len(files))
        t0 = time.perf_counter()
        cats, failures = dp.detect_files([f for f, _ in todo])
        wall = time.perf_counter() - t0
        cats = sorted([c for _, c in done] + list(cats))
        n_src = []
        for c in cats[:3]:
            from skyvar.lightcurves.associate import read_catalog

            try:
                n_src.append(len(read_catalog(c)))
            except Exception:
                pass
        for f in failures:
            f["step"] = f.pop("stage", "detect")
        return {"catalogs": [str(c) for c in cats],
                "metrics": {"n_frames": len(cats), "n_failed": len(failures), "n_resumed": len(done),
                            "s_per_frame": wall / max(len(todo), 1),
                            "sources_per_frame": float(np.mean(n_src)) if n_src else 0.0},
                "_failures": failures}

    def _eval_detection(self, d: Path, catalogs: list[Path], truth) -> dict:
        from skyvar.evaluate.report import evaluate_detections

        k = max(1, int(self.eval_cfg["detection_frames"]))
        idx = np.unique(np.linspace(0, len(catalogs) - 1, min(k, len(catalogs))).round().astype(int))
        m = evaluate_detections([catalogs[i] for i in idx], truth, out_dir=d, match_radii=self.eval_cfg["match_radii"],
                                target_mag_max=float(self.eval_cfg["target_mag_max"]), plots_enabled=self.plots,
                                oracle=self.eval_cfg.get("oracle", True))
        keep = {q: m[q] for q in ("recall", "precision", "f1")}
        for r, s in m["by_radius"].items():
            keep[f"mean_abs_dm_r{r}"] = s["photometry"]["mean_abs_dm"]
        return {"metrics": {**keep, "n_frames": m["n_frames"]}}

    def _pixel_scale(self, frame_file: Path) -> float | None:
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

    def _associate(self, d: Path, catalogs: list[Path], first_frame: Path) -> dict:
        from skyvar.pipeline.associate import AssociatePipeline

        cfg = dict(self.associate_cfg)
        r_px = float(cfg.pop("radius_px"))
        scale = cfg.pop("pixel_scale", None) or self._pixel_scale(first_frame)
        if scale is None:
            kw = {"radius_pix": r_px}
        else:
            kw = {"radius_arcsec": r_px * scale, "radius_pix": r_px, "pixel_scale": scale}
        ap = AssociatePipeline(input=[str(c) for c in catalogs], out_dir=str(d), progress=self.progress, **kw, **cfg)
        s = ap.run()
        fails = json.loads((d / "failures.json").read_text()) if (d / "failures.json").exists() else []
        for f in fails:
            f["step"] = f.pop("stage", "associate")
        return {"metrics": {k: s[k] for k in ("n_frames", "n_sources", "n_measurements", "unusable_detections")},
                "radius_px": r_px, "_failures": fails}

    def _lightcurve_stages(self) -> tuple[list, list]:
        stages, sig = [], []
        spec = self.lc_cfg.get("stages") or {}
        items = spec.items() if isinstance(spec, dict) else [(s.get("name", s.get("_target_")), s) for s in spec]
        from skyvar.pipeline.lightcurves import stage_signature

        for key, scfg in items:
            if not scfg:
                continue
            try:
                st = instantiate_component(scfg, f"light-curve stage {key}")
            except ComponentMissing as e:
                self._skip(f"features.{key}", str(e))
                continue
            stages.append(st)
            sig.append({**stage_signature(st), "model": _model_fingerprint(scfg)})
        return stages, sig

    def _features(self, d: Path, stages: list) -> dict:
        from skyvar.pipeline.lightcurves import LightCurvePipeline

        cfg = {k: v for k, v in self.lc_cfg.items() if k != "stages"}
        lp = LightCurvePipeline(input=str(self.out_dir / "associate" / "store"), out_dir=str(d), stages=stages,
                                resume=self.resume, progress=self.progress, **cfg)
        s = lp.run()
        fails = json.loads((d / "failures.json").read_text()) if (d / "failures.json").exists() else []
        for f in fails:
            f["step"] = f.pop("stage", "features")
        return {"metrics": {"n_lightcurves": s["n_lightcurves"], "n_sources": s["n_sources"]},
                "stages_run": s["stages"], "_failures": fails}

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
        from skyvar.pipeline.lightcurves import read_features

        feats = read_features(self.out_dir / "features")
        sources = pd.read_parquet(self.out_dir / "associate" / "sources.parquet")
        blend = _blended_fraction(self.out_dir / "associate" / "store")
        cand = build_candidates(feats, sources, blend, thr, int(self.cand_cfg["min_points"]))
        from astropy.table import Table

        t = Table.from_pandas(cand)
        t.meta.update(description="skyvar field pipeline candidates: one row per source and band",
                      flags={k: v for k, v in CANDIDATE_FLAGS.items()}, p_periodic_threshold=thr,
                      detector=self.summary.get("detector"), photometry=self.summary.get("photometry"),
                      missing_components=[s["stage"] for s in self.skipped])
        write_table_atomic(t, self.out_dir / "candidates.ecsv")
        n_flag = {k: int((cand["flags"] & v).astype(bool).sum()) for k, v in CANDIDATE_FLAGS.items()}
        if self.plots:
            try:
                plot_candidates(cand, self.out_dir / "associate" / "store", self.out_dir / "plots",
                                n=int(self.cand_cfg["n_plot"]))
                plot_detections(self.out_dir, self.truth)
            except Exception as e:
                log.error("candidate plots failed: %s", e)
        return {"metrics": {"n_sources": len(cand), **{f"n_{k}": v for k, v in n_flag.items()}}}

    def _eval_lightcurves(self, d: Path, truth) -> dict:
        from skyvar.evaluate.lightcurves import evaluate_lightcurves

        m = evaluate_lightcurves(self.out_dir / "associate" / "store", self.out_dir / "associate" / "sources.parquet",
                                 truth, d, name=self.summary.get("name", ""),
                                 radius=float(self.eval_cfg["lc_match_radius"]),
                                 target_mag_max=float(self.eval_cfg["target_mag_max"]), plots=self.plots,
                                 mask_flags=int(self.lc_cfg.get("mask_flags", 0)))
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
        if "p_periodic" in cand and np.isfinite(cand["p_periodic"].to_numpy(float)).any():
            score, t = "p_periodic", thr
        else:
            # no classifier: the periodogram's candidate flag stands in
            cand["periodic_ls"] = ((cand["flags"] & CANDIDATE_FLAGS["periodic_ls"]) > 0).astype(float)
            score, t = "periodic_ls", 0.5
        rep = classification_report(cand, match, tr, score=score, threshold=t,
                                    target_mag_max=float(self.eval_cfg["target_mag_max"]),
                                    snr_total=tr.lightcurve_snr_total(noise_params(tr)))
        write_json_atomic(d / "metrics.json", rep)
        if self.plots:
            plot_confusion({self.summary.get("name", "pipeline"): rep}, d / "confusion.png")
        return {"metrics": {"score": score, "recall_snr_ge7": rep.get("recall_snr_ge7"),
                            **{f"{w}_{k}": rep[w][k] for w in ("pipeline", "detected")
                               for k in ("precision", "recall", "f1")}}}


# ------------------------------------------------------------------------------------------ helpers
def _model_fingerprint(cfg: Any) -> list | None:
    """Size and modification time of the model file a component config names (``checkpoint``), so a
    retrained model at the same path invalidates what was computed with the old one."""
    cfg = _plain(cfg)
    if not isinstance(cfg, dict) or not cfg.get("checkpoint"):
        return None
    p = Path(str(cfg["checkpoint"]))
    if not p.is_absolute() and not p.exists():
        p = Path(os.environ.get("SKYVAR_ROOT", ".")) / p
    return files_fingerprint([p])


def _frame_id(path: Path) -> str:
    name = Path(path).name
    for sfx in (".fits.gz", ".fits.fz", ".fit.gz", ".fits", ".fit", ".fts"):
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return Path(path).stem


def _ecsv_config_hash(path: Path) -> str | None:
    """The ``config_hash`` in an ECSV catalogue's header (None if absent or unreadable)."""
    import re

    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith("#"):
                    return None
                m = re.search(r"config_hash:\s*['\"]?([0-9a-f]+)", line)
                if m:
                    return m.group(1)
    except OSError:
        return None
    return None


def _brief(rec: dict) -> dict:
    """A stage record for summary.json: without the long lists (they stay in the stage's manifest)."""
    return {k: v for k, v in rec.items() if k not in ("failures", "catalogs", "outputs", "hash")}


def _blended_fraction(store: Path) -> pd.DataFrame:
    """Per (source, band): fraction of measurements flagged ``FLAG_BLENDED`` by the photometry."""
    from skyvar.detect.base import FLAG_BLENDED
    from skyvar.lightcurves.store import open_store

    parts = []
    for p in open_store(store).partitions:
        df = p.load(["source_id", "band", "flag"])
        df = df.assign(bl=((df["flag"].to_numpy() & FLAG_BLENDED) > 0).astype(float))
        parts.append(df.groupby(["source_id", "band"], sort=False)["bl"].mean().reset_index())
    if not parts:
        return pd.DataFrame(columns=["source_id", "band", "blended_fraction"])
    return pd.concat(parts, ignore_index=True).rename(columns={"bl": "blended_fraction"})


#: Feature columns copied into the candidate table, in this order, when present.
CANDIDATE_COLUMNS = (
    "n_obs", "n_good", "mean_mag", "median_mag",
    "Q", "Q1", "Q2", "std", "iter_std", "cv", "kurtosis", "skewness", "mad", "amp", "robust_std", "inv_eta",
    "excess_robust_std", "excess_inv_eta", "excess_candidate",
    "period", "f_max", "pwr_max", "fap", "fap_cal", "log10_fap_cal", "period_candidate",
    "phi_vv_max", "fdr", "fdr_cal", "log10_fdr_cal", "flare_candidate", "flare_long_candidate",
    "p_periodic", "astronet_class", "astronet_period", "astronet_depth", "astronet_depth_snr",
)


def build_candidates(features: pd.DataFrame, sources: pd.DataFrame, blended: pd.DataFrame | None, threshold: float,
                     min_points: int = 50) -> pd.DataFrame:
    """The candidate table: features joined with the source anchors, renamed and flagged."""
    f = features.copy()
    s = sources[[c for c in ("source_id", "ra", "dec", "x", "y", "first_mjd") if c in sources]]
    out = s.merge(f[["source_id", "band"]], on="source_id", how="right")
    for c in CANDIDATE_COLUMNS:
        out[c] = f[c].to_numpy() if c in f else np.nan
    out = out.rename(columns={"mean_mag": "mag_mean", "median_mag": "mag_median", "astronet_class": "class",
                              "astronet_period": "period_bls", "astronet_depth": "depth_bls",
                              "astronet_depth_snr": "depth_snr_bls"})
    if blended is not None and len(blended):
        out = out.merge(blended, on=["source_id", "band"], how="left")
    else:
        out["blended_fraction"] = np.nan

    def truthy(col):
        if col not in out:
            return np.zeros(len(out), bool)
        v = out[col]
        return v.fillna(False).astype(bool).to_numpy() if v.dtype == object else np.nan_to_num(v.to_numpy(float)) > 0

    p = out["p_periodic"].to_numpy(float)
    flags = np.zeros(len(out), np.int32)
    flags |= np.where(truthy("excess_candidate"), CANDIDATE_FLAGS["excess"], 0).astype(np.int32)
    flags |= np.where(truthy("period_candidate"), CANDIDATE_FLAGS["periodic_ls"], 0).astype(np.int32)
    flags |= np.where(truthy("flare_candidate"), CANDIDATE_FLAGS["flare"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(p, nan=-1) >= threshold, CANDIDATE_FLAGS["periodic_cnn"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(out["n_good"].to_numpy(float)) < min_points, CANDIDATE_FLAGS["few_points"], 0).astype(np.int32)
    flags |= np.where(np.nan_to_num(out["blended_fraction"].to_numpy(float)) >= 0.5, CANDIDATE_FLAGS["blended"], 0).astype(np.int32)
    out["flags"] = flags
    if out["class"].isna().all():
        # no classifier: a class from the searches, so the column is never empty
        cls = np.full(len(out), "non_variable", dtype=object)
        cls[(flags & CANDIDATE_FLAGS["excess"]) > 0] = "variable"
        cls[(flags & CANDIDATE_FLAGS["flare"]) > 0] = "flare"
        cls[(flags & CANDIDATE_FLAGS["periodic_ls"]) > 0] = "periodic"
        out["class"] = cls
    out["class"] = out["class"].astype(str)
    for c in out.columns:
        if out[c].dtype == object and c not in ("class", "band"):
            try:
                out[c] = out[c].astype(float)
            except (TypeError, ValueError):
                out[c] = out[c].astype(str)
    return out.sort_values(["source_id", "band"]).reset_index(drop=True)


def plot_candidates(cand: pd.DataFrame, store: Path, out: Path, n: int = 12) -> list[Path]:
    """The field's scatter-versus-magnitude diagram with candidates marked, and the top candidates'
    light curves (folded at their period when one is known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skyvar.evaluate.lightcurves import load_curves
    from skyvar.utils.atomic import savefig_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.2))
    y = cand["robust_std"].to_numpy(float) if "robust_std" in cand else cand["std"].to_numpy(float)
    x = cand["mag_median"].to_numpy(float)
    ax.scatter(x, y, s=1, color="0.6", rasterized=True, label="sources")
    for k, v, col in (("excess", 1, "tab:orange"), ("periodic_ls", 2, "tab:blue"), ("periodic_cnn", 8, "tab:red"),
                      ("flare", 4, "tab:green")):
        s = (cand["flags"].to_numpy() & v) > 0
        if s.any():
            ax.scatter(x[s], y[s], s=6, color=col, label=f"{k} ({int(s.sum())})")
    ax.set_yscale("log")
    ax.set_xlabel("median magnitude")
    ax.set_ylabel("robust std [mag]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(savefig_atomic(fig, out / "scatter_vs_mag.png"))
    plt.close(fig)
    score = cand["p_periodic"].to_numpy(float) if np.isfinite(cand["p_periodic"].to_numpy(float)).any() \
        else -np.nan_to_num(cand["log10_fap_cal"].to_numpy(float), nan=0.0) if "log10_fap_cal" in cand \
        else cand["robust_std"].to_numpy(float)
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf))[:n]
    if len(order):
        cols = 3
        rows = int(np.ceil(len(order) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(10, 2.2 * rows), squeeze=False)
        curves = load_curves(store, cand["source_id"].to_numpy()[order])
        for ax, i in zip(axes.ravel(), order):
            r = cand.iloc[i]
            lc = curves.get(int(r["source_id"]), pd.DataFrame({"time": [], "mag": []}))
            per = r.get("period_bls") if np.isfinite(r.get("period_bls", np.nan)) else r.get("period", np.nan)
            t = lc["time"].to_numpy(float)
            if np.isfinite(per) and per > 0:
                ax.plot(np.mod(t - t.min(), per) / per, lc["mag"], ".", ms=1.5)
                ax.set_xlabel("phase", fontsize=7)
            else:
                ax.plot(t - t.min(), lc["mag"], ".", ms=1.5)
            ax.invert_yaxis()
            ax.set_title(f"id {int(r['source_id'])} m={r['mag_median']:.2f} P={per:.3f} p={r['p_periodic']:.2f} "
                         f"{r['class']}", fontsize=7)
            ax.tick_params(labelsize=6)
        for ax in axes.ravel()[len(order):]:
            ax.axis("off")
        fig.tight_layout()
        paths.append(savefig_atomic(fig, out / "top_candidates.png"))
        plt.close(fig)
    return paths


def plot_detections(run_dir: Path, truth: str | None, size: int = 96) -> Path | None:
    """A cutout of the first measured frame with its catalogue (and the truth targets) overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.table import Table

    from skyvar.io.fits import read_frame
    from skyvar.utils.atomic import savefig_atomic

    cats = sorted((run_dir / "photometry" / "catalogs").glob("*.ecsv"))
    if not cats:
        return None
    cat = Table.read(cats[0])
    src = cat.meta.get("source_file")
    if not src or not Path(src).exists():
        return None
    fr = read_frame(src)
    ny, nx = fr.shape
    s = min(size, ny, nx)
    y0, x0 = (ny - s) // 2, (nx - s) // 2
    cut = fr.data[y0 : y0 + s, x0 : x0 + s]
    fig, ax = plt.subplots(figsize=(5, 5))
    v = np.percentile(cut, [5, 99.5])
    ax.imshow(np.arcsinh((cut - v[0]) / max(v[1] - v[0], 1e-9) * 10), origin="lower", cmap="gray")
    x, y = np.asarray(cat["x"], float) - x0, np.asarray(cat["y"], float) - y0
    sel = (x > -0.5) & (x < s - 0.5) & (y > -0.5) & (y < s - 0.5)
    ax.plot(x[sel], y[sel], "+", color="tab:red", ms=6, label=f"{cat.meta.get('detector', 'catalogue')}")
    if truth and Path(truth).exists():
        t = Table.read(truth)
        tx, ty = np.asarray(t["x"], float) - x0, np.asarray(t["y"], float) - y0
        ts = (tx > -0.5) & (tx < s - 0.5) & (ty > -0.5) & (ty < s - 0.5) & (np.asarray(t["mag"], float) < 25)
        ax.plot(tx[ts], ty[ts], "o", mfc="none", color="tab:cyan", ms=5, mew=0.7, label="truth (i < 25)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{cats[0].stem}: {s}x{s} px cutout", fontsize=9)
    fig.tight_layout()
    p = savefig_atomic(fig, run_dir / "plots" / "detections.png")
    plt.close(fig)
    return p
