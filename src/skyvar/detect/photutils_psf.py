"""PSF photometry with photutils: the dense-field paper's classical photometry (§3.1.2).

Steps:

1. Background as the paper: the frame is cut into ``back_size`` (100) px boxes, each box's
   sigma-clipped median is its sky, the box grid is median-smoothed (``back_filtersize``) and
   interpolated (:func:`skyvar.detect.background.box_median_background`); it is subtracted.
   In a dense field the box median includes the light of the faint unresolved stars, so it sits above
   the true sky and the faint stars' fluxes come out low (magnitudes too faint) — the bias the paper
   describes; ``back_estimator: sextractor`` (mode) lowers it.
2. PSF: the simulation's PSF rebuilt from the frame header as an ``ImagePSF``, else an ePSF from the
   frame's own stars (:mod:`skyvar.detect.psf_models`).
3. Initial positions: the sep detector (:class:`skyvar.detect.sep_baseline.SepDetector`, Table 2
   settings, windowed positions, PSF-weighted fluxes) on the whole frame (``finder: sep``), or
   ``DAOStarFinder`` at ``dao_threshold`` x the background rms (``finder: dao``).
4. Fitting, tile by tile (``tile``/``overlap`` with core ownership): ``IterativePSFPhotometry``
   (``iterative: true``, mode ``new``: after the first fit the fitted stars are subtracted and
   ``DAOStarFinder`` looks for stars they hid, ``maxiters`` passes in all) or a single
   ``PSFPhotometry`` pass; positions free within ``xy_bounds`` px of the start, ``fit_shape`` px boxes,
   the Levenberg–Marquardt fitter, optional grouping of sources closer than ``group_separation`` px.
   Masked (bad, NaN) and saturated pixels are excluded from the fits; a star whose fit box holds no
   usable pixel (a saturated core) keeps sep's position and PSF-weighted flux (from its wings) and is
   flagged ``FLAG_FIT_FAILED``.

The default settings were chosen by measurement (docs/results/baselines.md): grouping changed nothing
at the separations sep leaves between its detections but cost time; one residual pass (``maxiters:
2``) found the stars sep missed next to brighter ones (recall at 1 px 0.64 -> 0.81 on the tuning
frame) for little time; a 3 x 3 fit box (``fit_shape: auto`` = the odd size nearest 1.5 FWHM, at least
3) was both faster and less contaminated by neighbours than 5 x 5 or 7 x 7 for the 2.3-px CSST PSF.

Output columns beyond the contract: ``x_init, y_init, flux_init, qfit, cfit, npix_fit, group_size,
iter_detected, phot_flags`` (photutils' flag bits), and the background level ``local_sky``.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.table import Table

from skyvar.detect.background import box_median_background
from skyvar.detect.base import FLAG_BLENDED, FLAG_FIT_FAILED, Detector
from skyvar.detect.tiling import Tile, detect_tiled
from skyvar.io.fits import MASK_BAD, MASK_SATURATED, Frame
from skyvar.utils.log import get_logger

log = get_logger(__name__)

# photutils PSF flags meaning the fit is unusable: outside bounds, no convergence, near a bound,
# no overlap with data, fully masked
_PHOT_FAILED = 2 | 8 | 32 | 64 | 128


class PhotutilsPSFDetector(Detector):
    """photutils PSF photometry with the paper's background and the simulation's (or an empirical) PSF."""

    def __init__(
        self,
        name: str = "photutils_psf",
        finder: str = "sep",
        sep: dict | None = None,
        dao_threshold: float = 3.0,
        psf: str = "auto",
        back_size: int = 100,
        back_filtersize: int = 3,
        back_estimator: str = "median",
        back_sigma: float = 3.0,
        fit_shape="auto",
        fitter: str = "lm",
        fitter_maxiters: int = 100,
        xy_bounds: float | None = 1.0,
        group_separation: float | None = None,
        iterative: bool = True,
        maxiters: int = 2,
        residual_threshold: float = 3.0,
        aperture_radius: float = 2.0,
        tile: int = 1024,
        overlap: int = 64,
    ):
        self.name = name
        if finder not in ("sep", "dao"):
            raise ValueError(f"finder {finder!r}: choose sep or dao")
        self.finder = finder
        self.sep_kwargs = dict(sep or {})
        self.dao_threshold = float(dao_threshold)
        self.psf_mode = psf
        self.back_size = int(back_size)
        self.back_filtersize = int(back_filtersize)
        self.back_estimator = back_estimator
        self.back_sigma = float(back_sigma)
        self.fit_shape = fit_shape
        if fitter not in ("lm", "trf"):
            raise ValueError(f"fitter {fitter!r}: choose lm (LevMarLSQFitter) or trf (TRFLSQFitter)")
        self.fitter = fitter
        self.fitter_maxiters = int(fitter_maxiters)
        self.xy_bounds = None if xy_bounds is None else float(xy_bounds)
        self.group_separation = None if not group_separation else float(group_separation)
        self.iterative = bool(iterative)
        self.maxiters = int(maxiters)
        self.residual_threshold = float(residual_threshold)
        self.aperture_radius = float(aperture_radius)
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.last_psf = None

    # ------------------------------------------------------------------ helpers
    def _fit_shape(self, fwhm: float) -> int:
        if isinstance(self.fit_shape, str):
            if self.fit_shape != "auto":
                raise ValueError(f"fit_shape {self.fit_shape!r}: an odd int or auto")
            return int(max(3, 2 * np.floor(0.75 * fwhm) + 1))
        fs = int(self.fit_shape)
        if fs < 3 or fs % 2 == 0:
            raise ValueError(f"fit_shape must be odd and >= 3, got {fs}")
        return fs

    def _make_fitter(self):
        from astropy.modeling.fitting import LevMarLSQFitter, TRFLSQFitter

        return LevMarLSQFitter() if self.fitter == "lm" else TRFLSQFitter()

    def _initial_sources(self, frame: Frame) -> tuple[Table, object]:
        """sep detections (frame coordinates) and the PSF sep used (simulator or empirical)."""
        from skyvar.detect.sep_baseline import SepDetector

        kw = {"psf": self.psf_mode if self.psf_mode not in (None, "none") else "auto", **self.sep_kwargs}
        sep_det = SepDetector(**kw)
        raw = sep_det._detect_frame(frame)
        return raw, sep_det.last_psf

    # ------------------------------------------------------------------ Detector
    def _detect(self, frame: Frame) -> Table:
        from threadpoolctl import threadpool_limits

        # one core by design; BLAS threads only spin on the small matrices of per-star fits
        with threadpool_limits(limits=1):
            return self._detect_frame(frame)

    def _detect_frame(self, frame: Frame) -> Table:
        bad = (frame.mask & MASK_BAD) > 0
        excl = (frame.mask & (MASK_BAD | MASK_SATURATED)) > 0
        back, rms, global_rms = box_median_background(frame.data, bad, self.back_size, self.back_filtersize,
                                                      sigma=self.back_sigma, estimator=self.back_estimator)
        if not np.isfinite(global_rms) or global_rms <= 0:
            log.warning("%s: background rms is %s (a constant image?); no sources", frame.frame_id, global_rms)
            return Table()
        data = (frame.data - back).astype(np.float64)
        data[bad] = 0.0
        rms = np.where(rms > 0, rms, global_rms).astype(np.float64)
        error = np.sqrt(rms**2 + np.clip(data, 0.0, None))  # background + source Poisson noise (electrons)

        init, psf = self._initial_sources(frame)
        if psf is None:  # sep ran without a PSF (no sources at all): nothing to fit
            return Table()
        self.last_psf = psf
        fit_shape = self._fit_shape(psf.fwhm)
        if self.finder == "sep" and len(init) == 0:
            return Table()
        ix = np.asarray(init["x"], float) if len(init) else np.zeros(0)
        iy = np.asarray(init["y"], float) if len(init) else np.zeros(0)
        if len(init):
            # sep's PSF-weighted fluxes: the starting fluxes, and the fallback where a fit has no data
            # (a saturated core fills the fit box; sep's 7 x 7 weighting measures the wings)
            fsep = np.asarray(init["flux_psf"] if "flux_psf" in init.colnames else init["flux"], float)
            esep = (np.asarray(init["flux_psf_err"], float) if "flux_psf_err" in init.colnames
                    else np.full(len(init), np.nan))
        else:
            fsep = esep = np.zeros(0)
        prior = (ix, iy, fsep, esep)

        def run_tile(t: Tile) -> Table:
            return self._fit_tile(t, data, error, excl, back, psf, fit_shape, global_rms, prior)

        with warnings.catch_warnings():
            # photutils warns per tile about non-converged fits and sources at bounds; they are flagged
            warnings.simplefilter("ignore")
            cat = detect_tiled(frame.shape, run_tile, tile=self.tile, overlap=self.overlap)
        cat.meta.update(psf_source=psf.source, psf_fwhm_px=round(float(psf.fwhm), 4), fit_shape=fit_shape,
                        background_rms=global_rms, psf_note=psf.note)
        return cat

    def _fit_tile(self, t: Tile, data, error, excl, back, psf, fit_shape, global_rms, prior) -> Table:
        from photutils.detection import DAOStarFinder
        from photutils.psf import IterativePSFPhotometry, PSFPhotometry, SourceGrouper

        ix, iy, fsep, esep = prior
        sl = t.slices
        d = np.ascontiguousarray(data[sl])
        e = np.ascontiguousarray(error[sl])
        m = np.ascontiguousarray(excl[sl])
        if m.all():
            return Table()
        model = psf.at((t.x0 + t.x1) / 2.0, (t.y0 + t.y1) / 2.0).copy()
        grouper = SourceGrouper(self.group_separation) if self.group_separation else None
        sel = (ix >= t.x0 - 0.5) & (ix < t.x1 - 0.5) & (iy >= t.y0 - 0.5) & (iy < t.y1 - 0.5)
        init = None
        if self.finder == "sep":
            if not sel.any():
                return Table()
            f0 = np.where(np.isfinite(fsep[sel]) & (fsep[sel] > 0), fsep[sel], global_rms)
            init = Table({"id": np.arange(1, sel.sum() + 1), "x": ix[sel] - t.x0, "y": iy[sel] - t.y0, "flux": f0})
        dao = DAOStarFinder(threshold=self.residual_threshold * global_rms if init is not None
                            else self.dao_threshold * global_rms, fwhm=psf.fwhm, exclude_border=True)
        common = dict(grouper=grouper, fitter=self._make_fitter(), fitter_maxiters=self.fitter_maxiters,
                      xy_bounds=self.xy_bounds, aperture_radius=self.aperture_radius,
                      group_warning_threshold=10**6)
        if self.iterative and self.maxiters > 1:
            phot = IterativePSFPhotometry(model, fit_shape, dao, maxiters=self.maxiters, mode="new", **common)
        else:
            phot = PSFPhotometry(model, fit_shape, finder=None if init is not None else dao, **common)
        res = phot(d, mask=m if m.any() else None, error=e, init_params=init)
        if res is None or len(res) == 0:
            return Table()
        x = np.asarray(res["x_fit"], float)
        y = np.asarray(res["y_fit"], float)
        xi = np.asarray(res["x_init"], float)
        yi = np.asarray(res["y_init"], float)
        pflags = np.asarray(res["flags"], np.int32)
        flux = np.asarray(res["flux_fit"], float)
        ferr = np.asarray(res["flux_err"], float) if "flux_err" in res.colnames else np.full(len(res), np.nan)
        lost = ~(np.isfinite(x) & np.isfinite(y) & np.isfinite(flux))
        x = np.where(lost, xi, x)
        y = np.where(lost, yi, y)
        flags = np.zeros(len(res), np.int32)
        flags[(pflags & _PHOT_FAILED) > 0] |= FLAG_FIT_FAILED
        flags[lost] |= FLAG_FIT_FAILED
        if init is not None and lost.any():
            it = np.asarray(res["iter_detected"], int) if "iter_detected" in res.colnames else np.ones(len(res), int)
            rid = np.asarray(res["id"], int)
            from_sep = lost & (it == 1) & (rid >= 1) & (rid <= len(init))
            k = rid[from_sep] - 1
            flux[from_sep] = fsep[sel][k]
            ferr[from_sep] = esep[sel][k]
        gsize = np.asarray(res["group_size"], int) if "group_size" in res.colnames else np.ones(len(res), int)
        flags[gsize > 1] |= FLAG_BLENDED
        out = Table()
        out["x"], out["y"] = x + t.x0, y + t.y0
        out["flux"], out["flux_err"] = flux, ferr
        out["flags"] = flags
        out["x_init"], out["y_init"] = xi + t.x0, yi + t.y0
        out["flux_init"] = np.asarray(res["flux_init"], float)
        for c in ("qfit", "cfit"):
            out[c] = np.asarray(res[c], float) if c in res.colnames else np.nan
        out["npix_fit"] = np.asarray(res["npixfit"], np.int32) if "npixfit" in res.colnames else -1
        out["group_size"] = gsize.astype(np.int32)
        out["iter_detected"] = (np.asarray(res["iter_detected"], np.int32) if "iter_detected" in res.colnames
                                else np.ones(len(res), np.int32))
        out["phot_flags"] = pflags
        xr = np.clip(np.rint(x).astype(int), 0, d.shape[1] - 1)
        yr = np.clip(np.rint(y).astype(int), 0, d.shape[0] - 1)
        out["local_sky"] = back[sl][yr, xr].astype(float)
        return out
