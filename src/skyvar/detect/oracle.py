"""The oracle detector: the measured ceiling of detection, astrometry and photometry on a frame.

Evaluation only: it needs the truth. Every rendered star — the targets, the fainter stars (i > 25)
and, for simulated frames, the stars just outside the frame whose light falls into it — starts at its
true position and true flux, and the frame is fitted with its true PSF (the simulator's header) by the
same crowded-field fit that refines PNet (:class:`skyvar.detect.refine.CrowdedPSFFitter`: x, y, flux
and a local sky per star, all neighbours' models subtracted, ``n_iter`` Gauss–Newton sweeps). The
targets' positions are free; the fainter stars are neighbours whose fluxes are fitted at their true
positions (a faint star free to move slides into a brighter neighbour and trades flux with it, which is
the detection problem, not the measurement the ceiling is about); stars outside the frame are fixed.

The catalogue holds the targets (truth mag < ``target_mag_max``): it is what a method that found every
target, and only targets, with perfect starting values would measure with a few sweeps of the fit.
Recall at 0.1 px is then limited by photon noise and crowding alone, which is why it sits well below
the Cramér–Rao expectation for isolated stars (``skyvar.sim.field_validation.recall_ceiling``).

``n_iter`` matters, and the reports say which was used: the fit starts at the truth, and the few
sweeps a refinement makes keep it closer to the truth than a fit run to convergence (on the held-out
default frame recall at 0.1 px is 0.713 / 0.689 / 0.673 / 0.662 after 2 / 4 / 8 / 16 sweeps; the
converged least-squares solution of a faint star beside a bright one wanders). The default equals the
refinement's, so "PNet + refinement versus oracle" compares the same estimator started from PNet's
catalogue and from the truth.

``python infer.py pipeline=detect detector=oracle truth=T input=<frames> out_dir=D`` writes its
catalogues and report like any detector; the evaluation harness also runs it beside every detector when
truth is given (``evaluate.oracle``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.table import Table

from skyvar.detect.base import FLAG_FIT_FAILED, Detector
from skyvar.detect.refine import FIT_FAILED, FIT_RUNAWAY, CrowdedPSFFitter
from skyvar.io.fits import MASK_BAD, MASK_SATURATED, Frame
from skyvar.utils.log import get_logger

log = get_logger(__name__)


def margin_stars(truth_path: Path, frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, flux) of the simulated stars outside the frame that shed light into it, rebuilt from the
    ``sim_config.yaml`` beside a :mod:`skyvar.sim.field` truth table (empty when there is none).

    Fluxes are in the truth's unit (electrons within the 21 x 21 px stamp): the catalogue flux times the
    median ratio of truth flux to catalogue flux of the in-frame stars."""
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    cfg_path = Path(truth_path).parent / "sim_config.yaml"
    if not cfg_path.exists():
        return empty
    try:
        from omegaconf import OmegaConf

        from skyvar.sim.field import FieldSimConfig, draw_catalogue

        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FieldSimConfig), OmegaConf.load(cfg_path)))
        cat = draw_catalogue(cfg, np.random.default_rng([cfg.seed, 0]))
    except Exception as e:  # an unreadable or foreign config: no margin stars, said once
        log.warning("oracle: cannot rebuild the margin stars from %s (%s: %s)", cfg_path, type(e).__name__, e)
        return empty
    ny, nx = cfg.shape
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    out = ~((x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5))
    flux_cat = cfg.exptime * 10 ** (-0.4 * (np.asarray(cat["mag_input"], float) - cfg.zp))
    try:
        tr = Table.read(truth_path)
        ids = np.asarray(tr["source_id"])
        ratio = float(np.median(np.asarray(tr["flux"], float) / flux_cat[ids]))
    except Exception:
        ratio = 1.0
    dx = float(frame.header.get("POINTDX", 0.0) or 0.0)
    dy = float(frame.header.get("POINTDY", 0.0) or 0.0)
    return x[out] + dx, y[out] + dy, flux_cat[out] * ratio


class OracleDetector(Detector):
    """Truth-seeded PSF fit of every rendered star (module docstring). ``truth``: the truth table (ECSV;
    a time series' per-epoch offsets and magnitudes are used through
    :class:`skyvar.evaluate.report.TruthSet`). Output columns beyond the contract: ``source_id``,
    ``x_true``, ``y_true``, ``mag_true``, ``fit_status``, ``chi2``, ``sky``, ``x_err``, ``y_err``."""

    name = "oracle"

    def __init__(self, truth: str | os.PathLike | None = None, target_mag_max: float = 25.0, n_iter: int = 4,
                 fit_radius: float = 3.0, fit_sky: bool = True, move_faint: bool = False, margin: bool = True,
                 device: str = "auto", name: str = "oracle"):
        if truth is None:
            raise ValueError("detector=oracle needs the truth table (truth=<truth.ecsv>); it is for evaluation only")
        from skyvar.device import resolve_device
        from skyvar.evaluate.report import TruthSet

        self.name = name
        self.truth_path = Path(truth)
        self.truth = TruthSet(self.truth_path)
        self.target_mag_max = float(target_mag_max)
        self.n_iter = int(n_iter)
        self.fit_radius = float(fit_radius)
        self.fit_sky = bool(fit_sky)
        self.move_faint = bool(move_faint)
        self.margin = bool(margin)
        self.device = resolve_device(device)

    def _psf(self, frame: Frame):
        """The true PSF: a ``psf.fits`` beside the truth, else the simulator's configuration beside it (every
        parameter, aberrations included), else the frame header (the default Airy PSF only)."""
        from skyvar.detect.psf_models import psf_from_header, psf_from_sim_config, read_psf_file

        sidecar = self.truth_path.parent / "psf.fits"
        if sidecar.exists():
            return read_psf_file(sidecar)
        p = psf_from_sim_config(self.truth_path.parent / "sim_config.yaml")
        if p is None:
            p = psf_from_header(frame.header)
        if p is None:
            raise ValueError(f"{frame.path}: the oracle needs the frame's true PSF ({sidecar}, the simulator's "
                             f"sim_config.yaml beside the truth, or its header keys)")
        return p

    def _detect(self, frame: Frame) -> Table:
        x, y, mag = self.truth.for_frame(frame.frame_id)
        flux = frame.mag_to_flux(mag)
        sid = self.truth.source_id
        n_in = len(x)
        if self.margin:
            mx, my, mf = margin_stars(self.truth_path, frame)
            x, y, flux = np.r_[x, mx], np.r_[y, my], np.r_[flux, mf]
        is_target = np.zeros(len(x), bool)
        is_target[:n_in] = mag < self.target_mag_max
        fit = np.zeros(len(x), bool)
        fit[:n_in] = True
        move = is_target | (fit if self.move_faint else False)
        bad = (frame.mask & (MASK_BAD | MASK_SATURATED)) > 0
        from skyvar.detect.pnet import estimate_background

        bkg = estimate_background(frame.data, frame.mask)
        fitter = CrowdedPSFFitter(frame.data, self._psf(frame), x, y, flux, background=bkg,
                                  read_var=frame.rdnoise**2, bad=bad, fit=fit, move=move, fit_radius=self.fit_radius,
                                  fit_sky=self.fit_sky, device=self.device)
        res = fitter.run(self.n_iter)
        sel = np.flatnonzero(is_target)
        out = Table()
        out["x"], out["y"] = res.x[sel], res.y[sel]
        out["flux"], out["flux_err"] = res.flux[sel], res.flux_err[sel]
        st = res.status[sel]
        out["flags"] = np.where(np.isin(st, (FIT_FAILED, FIT_RUNAWAY)), FLAG_FIT_FAILED, 0).astype(np.int32)
        out["source_id"] = sid[sel]
        out["x_true"], out["y_true"], out["mag_true"] = x[sel], y[sel], mag[sel]
        out["fit_status"] = st.astype(np.int16)
        out["chi2"], out["sky"] = res.chi2[sel], res.sky[sel]
        out["x_err"], out["y_err"] = res.x_err[sel], res.y_err[sel]
        out.meta.update(oracle_n_iter=self.n_iter, oracle_n_stars=int(len(x)), oracle_n_margin=int(len(x) - n_in),
                        oracle_truth=str(self.truth_path))
        return out
