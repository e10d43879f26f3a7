"""SExtractor-style detection and photometry with sep: the dense-field paper's classical detector.

Steps (SExtractor's, via sep, which is derived from the SExtractor code base):

1. Background: SExtractor's mesh background (``back_size`` / ``back_filtersize``) over the whole frame.
2. Detection: the background-subtracted image, filtered with ``filter_kernel`` (SExtractor's
   ``default.conv`` by default), thresholded at ``detect_thresh`` x the background rms (the global rms,
   as SExtractor without a weight map, or the rms map with ``rms: map``), islands of at least
   ``detect_minarea`` pixels, multi-threshold deblending (``deblend_nthresh``, ``deblend_mincont``) and
   cleaning. Defaults are the paper's Table 2: MINAREA 3, THRESH 1.6, NTHRESH 60, MINCONT 0.001.
3. Positions: windowed positions (``sep.winpos``, SExtractor's XWIN/YWIN). The window width is the
   PSF's Gaussian sigma (``winpos_sigma: psf``) or, as SExtractor, 2/2.35 x the half-light radius of
   each object (``winpos_sigma: sextractor``), which neighbours inflate in crowded fields. A windowed
   position more than ``winpos_max_shift`` px from the barycentre (a window captured by a neighbour)
   is replaced by the barycentre; ``null`` keeps SExtractor's behaviour.
4. Fluxes, all in electrons with 1-sigma errors (background rms plus the source's Poisson noise):
   ``flux_aper`` in a circle of ``aper_radius`` px; ``flux_psf``, the PSF-weighted (matched-filter)
   flux sum(P D)/sum(P^2) over a (2 ``psf_radius`` + 1)^2 box at the windowed position, with the frame's
   PSF (:mod:`skyvar.detect.psf_models`), masked pixels left out of both sums; ``flux_auto``
   (SExtractor's FLUX_AUTO, Kron 2.5) when ``auto_flux`` is on. ``flux_type`` picks the catalogue's
   ``flux``.

Dense frames: sep's internal buffers are sized for sparse fields and fail at CSST density ("internal
pixel buffer full", "object deblending overflow"); :meth:`SepDetector._detect` raises the limits
(``pixstack``, ``sub_object_limit``) and extracts tile by tile (``tile``, ``overlap``) with core
ownership (:mod:`skyvar.detect.tiling`), so any frame size runs in bounded memory.

Masked pixels (``frame.mask``: NaN/inf/bad) are excluded from the background, from detection and from
every flux; saturated pixels are detected but left out of the PSF-weighted flux (the wings measure a
saturated star). Pixels are 0-indexed (SExtractor's are 1-indexed: X_IMAGE = x + 1).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from skyvar.detect.background import sextractor_background
from skyvar.detect.base import FLAG_BLENDED, FLAG_FIT_FAILED, FLAG_SATURATED, Detector
from skyvar.detect.tiling import Tile, detect_tiled
from skyvar.io.fits import MASK_BAD, MASK_SATURATED, Frame
from skyvar.utils.log import get_logger

log = get_logger(__name__)

# SExtractor's default.conv: 3x3 pyramid ("all-ground" convolution mask, FWHM = 2 px)
DEFAULT_CONV = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])


def _kernel(spec) -> np.ndarray | None:
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "null", "")):
        return None
    if isinstance(spec, str):
        if spec.lower() == "default":
            return DEFAULT_CONV
        if spec.lower().startswith("gauss"):  # gauss<FWHM>_<size>, e.g. gauss2.0_5
            fwhm, size = spec[5:].split("_")
            n = int(size)
            c = (n - 1) / 2.0
            yy, xx = np.mgrid[:n, :n]
            return np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * (float(fwhm) / 2.3548) ** 2))
        raise ValueError(f"filter_kernel {spec!r}: default, none, gauss<fwhm>_<size> or a 2-D list")
    k = np.asarray([list(r) for r in spec], dtype=float)  # lists or Hydra ListConfigs
    if k.ndim != 2:
        raise ValueError("filter_kernel must be 2-D")
    return k


class SepDetector(Detector):
    """SExtractor-style detector (sep) with the dense-field paper's Table 2 settings by default."""

    def __init__(
        self,
        name: str = "sep",
        detect_thresh: float = 1.6,
        detect_minarea: int = 3,
        deblend_nthresh: int = 60,
        deblend_mincont: float = 0.001,
        filter_kernel="default",
        filter_type: str = "matched",
        clean: bool = True,
        clean_param: float = 1.0,
        rms: str = "global",
        back_size: int = 64,
        back_filtersize: int = 3,
        position: str = "win",
        winpos_sigma="psf",
        winpos_max_shift: float | None = 1.0,
        aper_radius: float = 2.5,
        psf: str = "auto",
        psf_radius: int = 3,
        flux_type: str = "psf",
        auto_flux: bool = False,
        tile: int = 1024,
        overlap: int = 64,
        pixstack: int | None = None,
        sub_object_limit: int = 16384,
    ):
        self.name = name
        self.detect_thresh = float(detect_thresh)
        self.detect_minarea = int(detect_minarea)
        self.deblend_nthresh = int(deblend_nthresh)
        self.deblend_mincont = float(deblend_mincont)
        self.filter_kernel = _kernel(filter_kernel)
        self.filter_type = filter_type
        self.clean = bool(clean)
        self.clean_param = float(clean_param)
        if rms not in ("global", "map"):
            raise ValueError(f"rms {rms!r}: choose global (SExtractor without weights) or map")
        self.rms = rms
        self.back_size = int(back_size)
        self.back_filtersize = int(back_filtersize)
        if position not in ("win", "bary"):
            raise ValueError(f"position {position!r}: choose win or bary")
        self.position = position
        self.winpos_sigma = winpos_sigma
        self.winpos_max_shift = None if winpos_max_shift is None else float(winpos_max_shift)
        self.aper_radius = float(aper_radius)
        self.psf_mode = psf
        self.psf_radius = int(psf_radius)
        if flux_type not in ("psf", "aper", "auto"):
            raise ValueError(f"flux_type {flux_type!r}: choose psf, aper or auto")
        self.flux_type = flux_type
        self.auto_flux = bool(auto_flux) or flux_type == "auto"
        self.tile = int(tile)
        self.overlap = int(overlap)
        self.pixstack = pixstack
        self.sub_object_limit = int(sub_object_limit)
        self.last_psf = None  # the FramePSF of the last frame (diagnostics)

    # ------------------------------------------------------------------ public pieces
    def background(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, float]:
        bad = (frame.mask & MASK_BAD) > 0
        return sextractor_background(frame.data, bad, self.back_size, self.back_filtersize)

    def extract(self, data_sub: np.ndarray, rms_map: np.ndarray, global_rms: float, bad: np.ndarray) -> np.ndarray:
        """sep.extract on one (tile) array; returns sep's structured object array."""
        import sep

        err = global_rms if self.rms == "global" else np.ascontiguousarray(rms_map, dtype=np.float32)
        mask = np.ascontiguousarray(bad) if bad.any() else None
        return sep.extract(
            np.ascontiguousarray(data_sub, dtype=np.float32), self.detect_thresh, err=err, mask=mask,
            minarea=self.detect_minarea, filter_kernel=self.filter_kernel, filter_type=self.filter_type,
            deblend_nthresh=self.deblend_nthresh, deblend_cont=self.deblend_mincont, clean=self.clean,
            clean_param=self.clean_param,
        )

    # ------------------------------------------------------------------ Detector
    def _detect(self, frame: Frame) -> Table:
        from threadpoolctl import threadpool_limits

        # Small BLAS calls only (ePSF interpolation, fits): extra BLAS threads just spin, and on a busy
        # machine they turn a 1-s ePSF build into minutes.
        with threadpool_limits(limits=1):
            return self._detect_frame(frame)

    def _detect_frame(self, frame: Frame) -> Table:
        import sep

        # Dense fields: an island at 1.6 sigma can hold most of a tile, and every star in it is a
        # deblending sub-object; size both buffers for the worst case of a tile.
        side = min(self.tile, max(frame.shape))
        sep.set_extract_pixstack(int(self.pixstack or max(300_000, side * side + 1)))
        sep.set_sub_object_limit(self.sub_object_limit)

        bad = (frame.mask & MASK_BAD) > 0
        back, rms_map, global_rms = self.background(frame)
        data_sub = frame.data - back
        data_sub[bad] = 0.0
        if not np.isfinite(global_rms) or global_rms <= 0:
            log.warning("%s: background rms is %s (a constant image?); no sources", frame.frame_id, global_rms)
            return Table()
        psf = self._psf(frame, data_sub, global_rms, bad, rms_map)
        self.last_psf = psf

        def run_tile(t: Tile) -> Table:
            return self._measure_tile(t, data_sub, rms_map, global_rms, bad, frame.mask, psf)

        cat = detect_tiled(frame.shape, run_tile, tile=self.tile, overlap=self.overlap)
        cat.meta["psf_source"] = psf.source if psf is not None else "none"
        cat.meta["background_rms"] = global_rms
        return cat

    def _psf(self, frame: Frame, data_sub, global_rms, bad, rms_map):
        from skyvar.detect.psf_models import has_sim_psf, psf_for_frame

        if self.psf_mode in (None, "none"):
            if self.flux_type == "psf" or self.winpos_sigma == "psf":
                raise ValueError("flux_type=psf and winpos_sigma=psf need a PSF (psf: auto|simulator|epsf)")
            return None
        if self.psf_mode in ("auto", "simulator") and has_sim_psf(frame.header):
            return psf_for_frame(frame, mode="simulator")
        # Empirical PSF: stars from a first detection pass on the (central part of the) frame.
        ny, nx = frame.shape
        cy, cx = ny // 2, nx // 2
        h = min(self.tile, 1024) // 2
        sl = (slice(max(cy - h, 0), cy + h), slice(max(cx - h, 0), cx + h))
        objs = self.extract(data_sub[sl], rms_map[sl], global_rms, bad[sl])
        src = Table({"x": objs["x"] + sl[1].start, "y": objs["y"] + sl[0].start, "flux": objs["flux"],
                     "a": objs["a"], "b": objs["b"]}) if len(objs) else Table(names=("x", "y", "flux", "a", "b"))
        if len(src):
            src = src[(objs["flag"] & 1) == 0]  # not blended
        return psf_for_frame(frame, data_sub=data_sub, rms=global_rms, sources=src, mode="epsf")

    def _measure_tile(self, t: Tile, data_sub, rms_map, global_rms, bad, mask, psf) -> Table:
        import sep

        sl = t.slices
        d = np.ascontiguousarray(data_sub[sl], dtype=np.float32)
        r = np.ascontiguousarray(rms_map[sl], dtype=np.float32)
        b = np.ascontiguousarray(bad[sl])
        m = mask[sl]
        if not np.any(~b):
            return Table()
        objs = self.extract(d, r, global_rms, b)
        n = len(objs)
        if n == 0:
            return Table()
        x, y = objs["x"].astype(float), objs["y"].astype(float)
        err = global_rms if self.rms == "global" else r
        bmask = b if b.any() else None

        # windowed positions
        if self.winpos_sigma == "sextractor" or self.auto_flux:
            kr, _ = sep.kron_radius(d, x, y, objs["a"], objs["b"], objs["theta"], 6.0, mask=bmask)
            fauto, fauto_err, fauto_flag = sep.sum_ellipse(d, x, y, objs["a"], objs["b"], objs["theta"], 2.5 * kr,
                                                           err=err, gain=1.0, subpix=1, mask=bmask)
        if self.winpos_sigma == "sextractor":
            rhalf, _ = sep.flux_radius(d, x, y, 6.0 * objs["a"], 0.5, normflux=fauto, subpix=5, mask=bmask)
            sig = 2.0 / 2.35 * rhalf
        elif self.winpos_sigma == "psf":
            sig = np.full(n, psf.sigma if psf is not None else 1.0)
        else:
            sig = np.full(n, float(self.winpos_sigma))
        sig = np.where(np.isfinite(sig), sig, 0.0)  # sep (like SExtractor) clamps tiny windows itself
        xw, yw, wflag = sep.winpos(d, x, y, sig, mask=bmask)
        # In crowds the window can be pulled onto a neighbour; keep the barycentre when it moves too far.
        away = ~np.isfinite(xw) | ~np.isfinite(yw)
        if self.winpos_max_shift is not None:
            away |= np.hypot(xw - x, yw - y) > self.winpos_max_shift
        xw = np.where(away, x, xw)
        yw = np.where(away, y, yw)
        xp, yp = (xw, yw) if self.position == "win" else (x, y)

        fa, fa_err, fa_flag = sep.sum_circle(d, xp, yp, self.aper_radius, err=err, gain=1.0, mask=bmask)

        flags = np.zeros(n, dtype=np.int32)
        flags[(objs["flag"] & sep.OBJ_MERGED) > 0] |= FLAG_BLENDED
        flags[(objs["flag"] & (sep.OBJ_TRUNC | sep.OBJ_SINGU)) > 0] |= FLAG_FIT_FAILED
        out = Table()
        out["x"], out["y"] = xp + t.x0, yp + t.y0
        if psf is not None:
            fp, fp_err, fp_bad = self._psf_flux(d, r if self.rms == "map" else None, global_rms, m, xp, yp, psf,
                                                 (t.x0 + t.x1) / 2.0, (t.y0 + t.y1) / 2.0)
            flags[fp_bad] |= FLAG_FIT_FAILED
        else:
            fp = fp_err = np.full(n, np.nan)
        chosen = {"psf": (fp, fp_err), "aper": (fa, fa_err)}
        if self.auto_flux:
            chosen["auto"] = (fauto, fauto_err)
        out["flux"], out["flux_err"] = chosen[self.flux_type]
        out["flags"] = flags
        out["x_bary"], out["y_bary"] = x + t.x0, y + t.y0
        out["x_win"], out["y_win"] = xw + t.x0, yw + t.y0
        out["flux_aper"], out["flux_aper_err"] = fa, fa_err
        out["flux_psf"], out["flux_psf_err"] = fp, fp_err
        if self.auto_flux:
            out["flux_auto"], out["flux_auto_err"] = fauto, fauto_err
        out["flux_iso"] = objs["flux"].astype(float)
        out["peak"] = objs["peak"].astype(float)
        out["npix"] = objs["npix"].astype(np.int32)
        out["a"], out["b"], out["theta"] = objs["a"], objs["b"], objs["theta"]
        out["sep_flag"] = objs["flag"].astype(np.int32)
        sat = (m & MASK_SATURATED) > 0
        if sat.any():
            xi = np.clip(np.rint(xp).astype(int), 0, d.shape[1] - 1)
            yi = np.clip(np.rint(yp).astype(int), 0, d.shape[0] - 1)
            flags[sat[yi, xi]] |= FLAG_SATURATED
            out["flags"] = flags
        return out

    def _psf_flux(self, d, rms_tile, global_rms, m, x, y, psf, tx, ty):
        """PSF-weighted flux sum(P D)/sum(P^2) and its error at fixed positions (tile coordinates).

        Pixels masked bad or saturated, or outside the tile, are left out of both sums; sources with
        less than 30 % of the PSF's sum(P^2) on good pixels are returned as bad.
        """
        R = self.psf_radius
        n = len(x)
        off = np.arange(-R, R + 1)
        xi = np.rint(x).astype(int)
        yi = np.rint(y).astype(int)
        px = xi[:, None, None] + off[None, None, :]  # (n, 1, S)
        py = yi[:, None, None] + off[None, :, None]  # (n, S, 1)
        px, py = np.broadcast_arrays(px, py)
        ny, nx = d.shape
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        pxc, pyc = np.clip(px, 0, nx - 1), np.clip(py, 0, ny - 1)
        good = inside & ((m[pyc, pxc] & (MASK_BAD | MASK_SATURATED)) == 0)
        model = psf.at(tx, ty)
        P = psf.evaluate(px - x[:, None, None], py - y[:, None, None], model=model)
        D = d[pyc, pxc].astype(float)
        Pg = np.where(good, P, 0.0)
        spp = (Pg * Pg).sum((1, 2))
        spp_all = (P * P).sum((1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            f = (Pg * D).sum((1, 2)) / spp
            var_b = (global_rms**2 if rms_tile is None else rms_tile[pyc, pxc].astype(float) ** 2)
            var = var_b + np.clip(f[:, None, None] * P, 0, None)  # background + the star's Poisson noise
            ferr = np.sqrt((Pg * Pg * var).sum((1, 2))) / spp
        badfit = ~(spp > 0.3 * spp_all)
        f = np.where(spp > 0, f, np.nan)
        ferr = np.where(spp > 0, ferr, np.nan)
        return f, ferr, badfit if n else np.zeros(0, bool)
