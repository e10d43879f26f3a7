"""The PSF of a frame as a photutils ``ImagePSF``: rebuilt from the simulator's header, or empirical.

Three sources, tried in this order by :func:`psf_for_frame` (``mode="auto"``):

1. ``simulator``: frames written by :mod:`skyvar.sim.field` carry ``PSFMODEL``, ``PSFJITTR``,
   ``PSFDIL`` and ``PIXSCALE``; the PSF is rebuilt exactly as the simulator drew it (the GalSim profile
   convolved with the pixel, drawn as :class:`skyvar.sim.psf.PSFBank` draws it but with ``oversampling``
   samples per pixel instead of 64: the samples coincide with the simulator's). ``PSFVAR`` (a PSF whose width changes across
   the frame) is honoured by :meth:`FramePSF.at`, which returns the PSF at a position.
2. ``epsf``: an effective PSF built with photutils' ``EPSFBuilder`` from bright, isolated, unsaturated
   stars of the frame itself (real frames, other instruments).
3. ``gaussian``: a circular Gaussian with the FWHM measured from the frame's stars, when too few stars
   qualify for an ePSF (tiny or nearly empty frames).

Conventions
-----------
- Every model is *pixel-integrated*: its value at an offset (dx, dy) is the fraction of a unit-flux
  star's light that falls in the pixel whose centre is at that offset (photutils' ``ImagePSF``
  convention, data summing to ``oversampling**2``).
- Flux normalisation (``norm_radius``): the model sums to 1 over the (2R+1)² pixel square around the
  star with R = ``norm_radius``. The simulator draws stars fainter than i = 20 on exactly such
  10-px-radius stamps and records the flux drawn in them as truth, so with the default R = 10 a fitted
  flux is directly comparable to the truth flux (brighter stars are drawn on larger stamps; their
  extra ≈ 1–2 % of wing light is outside this convention). An ePSF is normalised by photutils to
  unit flux over its own stamp (a square of about 5 FWHM, at least 11 px).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
from astropy.table import Table

from skyvar.utils.log import get_logger

log = get_logger(__name__)

SIM_PSF_KEYS = ("PSFMODEL", "PSFJITTR", "PIXSCALE")


@dataclasses.dataclass
class FramePSF:
    """A frame's PSF: a unit-flux photutils ``ImagePSF`` centred at (0, 0) plus bookkeeping."""

    model: object  # photutils.psf.ImagePSF
    fwhm: float  # px, of the pixel-integrated PSF
    source: str  # simulator | epsf | gaussian
    note: str = ""
    # position-dependent PSF (simulator PSFVAR): callable (x, y) -> ImagePSF; None when constant
    _at: object = None

    def at(self, x: float, y: float):
        """The ``ImagePSF`` at frame position (x, y) (the constant model when the PSF does not vary)."""
        return self.model if self._at is None else self._at(float(x), float(y))

    @property
    def sigma(self) -> float:
        return self.fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))

    def evaluate(self, dx: np.ndarray, dy: np.ndarray, model=None) -> np.ndarray:
        """Pixel-integrated unit-flux PSF at offsets (dx, dy) [px] from the star (any, equal shapes)."""
        m = self.model if model is None else model
        dx = np.asarray(dx, dtype=float)
        dy = np.asarray(dy, dtype=float)
        v = m.evaluate(dx.ravel(), dy.ravel(), 1.0, 0.0, 0.0)
        return np.asarray(v, dtype=float).reshape(dx.shape)


# ------------------------------------------------------------------------------------------ simulator
def has_sim_psf(header) -> bool:
    """True when the header determines the simulator's PSF: its keys are there and the model is the
    default Airy (the simulator writes no aberrations or Moffat shape; see :func:`psf_from_header`)."""
    return (header is not None and all(k in header for k in SIM_PSF_KEYS)
            and str(header["PSFMODEL"]).strip().lower() == "airy")


def psf_from_header(header, oversampling: int = 8, norm_radius: int = 10, model_radius: int | None = None,
                    psf_levels: int = 5) -> FramePSF | None:
    """The simulator's PSF for a frame header, or None when the header does not determine it.

    ``oversampling`` must divide the simulator's 64-per-pixel grid. ``model_radius`` (px, default
    ``norm_radius``) is the half-size of the model image. The header determines the PSF only for the
    default ``airy`` model (wavelength and aperture fixed, jitter ``PSFJITTR`` and dilation ``PSFDIL``
    given): the simulator does not write an OpticalPSF's aberrations or a Moffat's shape, so for those
    models the header PSF would be wrong (an aberrated frame's fluxes came out 13 % low with it) and
    None is returned — detectors then build an empirical PSF, and the oracle reads the simulator's
    configuration (:func:`psf_from_sim_config`).
    """
    if not has_sim_psf(header):
        return None
    from skyvar.sim.psf import PSFConfig

    model_name = str(header["PSFMODEL"]).strip().lower()
    cfg = PSFConfig(model=model_name, jitter_sigma_arcsec=float(header["PSFJITTR"]),
                    dilate=float(header.get("PSFDIL", 1.0)))
    ny, nx = int(header.get("NAXIS2", 0) or 0), int(header.get("NAXIS1", 0) or 0)
    return frame_psf_from_config(cfg, float(header["PIXSCALE"]), float(header.get("PSFVAR", 0.0) or 0.0), nx, ny,
                                 oversampling, norm_radius, model_radius, psf_levels)


def psf_from_sim_config(path, header=None, oversampling: int = 8, norm_radius: int = 10) -> FramePSF | None:
    """The exact PSF of a :mod:`skyvar.sim.field` frame from the ``sim_config.yaml`` written beside its
    truth (every PSF parameter, aberrations included); None when the file is missing or unreadable."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return None
    try:
        from omegaconf import OmegaConf

        from skyvar.sim.field import FieldSimConfig

        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FieldSimConfig), OmegaConf.load(path)))
    except Exception as e:  # a foreign or damaged file
        log.warning("cannot read the simulator configuration %s (%s: %s)", path, type(e).__name__, e)
        return None
    ny, nx = cfg.shape
    return frame_psf_from_config(cfg.psf, cfg.pixel_scale, cfg.psf_variation, nx, ny, oversampling, norm_radius,
                                 None, cfg.psf_levels)


def frame_psf_from_config(cfg, pixscale: float, variation: float, nx: int, ny: int, oversampling: int = 8,
                          norm_radius: int = 10, model_radius: int | None = None, psf_levels: int = 5) -> FramePSF:
    """FramePSF of a :class:`skyvar.sim.psf.PSFConfig` drawn as the simulator draws it (see the module
    docstring), with its variation across an nx x ny frame."""
    key = (tuple(sorted(dataclasses.asdict(cfg).items())), float(pixscale), int(oversampling), int(norm_radius),
           int(model_radius or norm_radius))
    base = _sim_image_psf(key, 1.0)
    note = f"simulator PSF ({cfg.model}, jitter {cfg.jitter_sigma_arcsec}\", dilate {cfg.dilate})"
    at = None
    if variation:
        levels = max(int(psf_levels), 2)
        scales = 1.0 + variation * (np.arange(levels) / (levels - 1) - 0.5)
        note += f"; varies by {variation:+.2%} across the frame ({levels} levels)"

        def at(x, y, _scales=scales, _nx=nx, _ny=ny, _key=key):
            s = ((x / max(_nx - 1, 1)) + (y / max(_ny - 1, 1))) / 2.0
            lev = int(np.clip(np.round(s * (len(_scales) - 1)), 0, len(_scales) - 1))
            return _sim_image_psf(_key, round(float(_scales[lev]), 6))[0]

    model, fwhm = base
    return FramePSF(model=model, fwhm=fwhm, source="simulator", note=note, _at=at)


@functools.lru_cache(maxsize=16)
def _sim_image_psf(key: tuple, jitter_scale: float):
    import galsim
    from photutils.psf import ImagePSF

    from skyvar.sim.psf import PSFConfig, make_psf

    cfg_items, pixscale, os_out, norm_r, model_r = key
    cfg = PSFConfig(**dict(cfg_items))
    if 64 % os_out:
        raise ValueError(f"oversampling {os_out} must divide the simulator's 64 samples per pixel")
    # The same profile and drawing call as skyvar.sim.psf.PSFBank, on a grid os_out (not 64) times finer
    # than the pixels: its samples are exactly every (64/os_out)-th sample of the simulator's bank.
    prof = galsim.Convolve(make_psf(cfg, jitter_scale), galsim.Pixel(pixscale))
    rmax = max(norm_r, model_r)
    nf = os_out * 2 * (rmax + 1) + 1
    fine = prof.drawImage(nx=nf, ny=nf, scale=pixscale / os_out, method="no_pixel").array.astype(np.float64)
    fine *= os_out**2  # fine[c + os_out*u] = fraction of the flux in a pixel centred at offset u
    c = os_out * (rmax + 1)
    half = model_r * os_out
    idx = c + np.arange(-half, half + 1)
    data = fine[np.ix_(idx, idx)].copy()
    # flux inside the (2R+1)^2 pixel square of a star at phase 0, as the simulator's stamps
    ints = c + os_out * np.arange(-norm_r, norm_r + 1)
    norm = float(fine[np.ix_(ints, ints)].sum())
    data /= norm
    model = ImagePSF(data, oversampling=os_out, origin=(half, half))
    return model, _fwhm_of(model)


def _fwhm_of(model, sampling: int = 20, half_width: float = 6.0) -> float:
    """FWHM [px] of an ``ImagePSF`` from the area above half maximum on a 1/``sampling`` px grid."""
    u = np.arange(-half_width, half_width + 1e-9, 1.0 / sampling)
    xx, yy = np.meshgrid(u, u)
    v = np.asarray(model.evaluate(xx.ravel(), yy.ravel(), 1.0, 0.0, 0.0))
    n_above = float((v >= 0.5 * v.max()).sum()) / sampling**2
    return float(2.0 * np.sqrt(n_above / np.pi))


# ------------------------------------------------------------------------------------------ empirical
def gaussian_image_psf(fwhm: float, oversampling: int = 8, radius: int = 10):
    """Pixel-integrated circular Gaussian as an ``ImagePSF`` (unit total flux)."""
    from photutils.psf import CircularGaussianPRF, ImagePSF

    half = radius * oversampling
    u = np.arange(-half, half + 1) / oversampling
    xx, yy = np.meshgrid(u, u)
    prf = CircularGaussianPRF(flux=1.0, x_0=0.0, y_0=0.0, fwhm=fwhm)
    data = np.asarray(prf(xx, yy), dtype=float)
    return ImagePSF(data, oversampling=oversampling, origin=(half, half))


def select_psf_stars(data_sub: np.ndarray, bad: np.ndarray, rms: float, sources: Table, n_max: int = 200,
                     min_snr: float = 30.0, isolation: float = 8.0, size: int = 15) -> Table:
    """Bright, isolated, unsaturated, round stars (x, y, flux) away from edges, brightest first.

    ``sources`` needs ``x, y`` and ``flux`` (background-subtracted, electrons); ``bad`` marks masked or
    saturated pixels; ``rms`` is the background noise per pixel.
    """
    from scipy.spatial import cKDTree

    if sources is None or len(sources) < 1:
        return Table(names=("x", "y", "flux"))
    x = np.asarray(sources["x"], float)
    y = np.asarray(sources["y"], float)
    flux = np.asarray(sources["flux"], float)
    ny, nx = data_sub.shape
    h = size // 2 + 1
    ok = (x > h) & (y > h) & (x < nx - 1 - h) & (y < ny - 1 - h) & np.isfinite(flux) & (flux > 0)
    snr = flux / (rms * np.sqrt(np.pi * 4.0) + 1e-30)
    ok &= snr > min_snr
    if len(x) > 1:
        d, _ = cKDTree(np.c_[x, y]).query(np.c_[x, y], k=2)
        ok &= d[:, 1] > isolation
    if "a" in sources.colnames and "b" in sources.colnames:
        ok &= np.asarray(sources["b"], float) > 0.7 * np.asarray(sources["a"], float)
    if bad is not None and bad.any():
        xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
        r = size // 2
        for i in np.flatnonzero(ok):
            if bad[max(yi[i] - r, 0): yi[i] + r + 1, max(xi[i] - r, 0): xi[i] + r + 1].any():
                ok[i] = False
    sel = np.flatnonzero(ok)
    sel = sel[np.argsort(-flux[sel])][: 3 * n_max]
    if len(sel) >= 5:
        # stars are the most compact sources: drop galaxies and blends by their second-moment width
        w = np.array([_moment_fwhm(data_sub, x[i], y[i]) for i in sel])
        ref = np.nanpercentile(w, 20)
        sel = sel[np.isfinite(w) & (w <= 1.25 * ref)]
    sel = sel[:n_max]
    return Table({"x": x[sel], "y": y[sel], "flux": flux[sel]})


def empirical_psf(data_sub: np.ndarray, bad: np.ndarray | None, rms: float, sources: Table,
                  oversampling: int | None = None, size: int | None = None, min_stars: int = 8,
                  maxiters: int = 5, fwhm_guess: float | None = None) -> FramePSF:
    """ePSF from the frame's own stars (``EPSFBuilder``), else a Gaussian of the stars' FWHM.

    ``oversampling`` None: 4 with at least 50 stars (enough to fill 16 sub-pixel phases), else 2.
    ``size`` None: the odd stamp side nearest 5 FWHM, 11 to 35 px (photutils interpolates the empty
    sub-pixels of the ePSF grid every iteration; its cost grows steeply with the grid).
    """
    stars_tbl = select_psf_stars(data_sub, bad, rms, sources, size=size or 15)
    fwhm = _fwhm_from_stars(data_sub, stars_tbl, fwhm_guess)
    if size is None:
        size = int(np.clip(2 * np.ceil(2.5 * fwhm) + 1, 11, 35))
    if oversampling is None:
        oversampling = 4 if len(stars_tbl) >= 50 else 2
    if len(stars_tbl) >= min_stars:
        try:
            from astropy.nddata import NDData
            from photutils.psf import EPSFBuilder, ImagePSF, extract_stars
            from threadpoolctl import threadpool_limits

            # EPSFBuilder's per-iteration interpolation makes tiny BLAS calls; with spare BLAS threads
            # spinning on a busy machine one build took from 1 s to over a minute
            with warnings.catch_warnings(), threadpool_limits(limits=1):
                warnings.simplefilter("ignore")
                nd = NDData(np.where(bad, 0.0, data_sub) if bad is not None else data_sub)
                stars = extract_stars(nd, stars_tbl["x", "y"], size=size)
                res = EPSFBuilder(oversampling=oversampling, maxiters=maxiters, progress_bar=False)(stars)
            epsf = res.epsf if hasattr(res, "epsf") else res[0]
            data = np.asarray(epsf.data, dtype=float)
            if np.isfinite(data).all() and data.sum() > 0:
                half = (np.array(data.shape) - 1) / 2.0
                model = ImagePSF(data, oversampling=oversampling, origin=(half[1], half[0]))
                f = _fwhm_of(model)
                return FramePSF(model=model, fwhm=f, source="epsf",
                                note=f"EPSFBuilder from {len(stars_tbl)} stars, oversampling {oversampling}")
        except Exception as e:  # photutils raises many kinds on degenerate star sets
            log.warning("ePSF build failed (%s: %s); using a Gaussian PSF", type(e).__name__, e)
    note = f"Gaussian PSF, FWHM {fwhm:.2f} px from {len(stars_tbl)} stars (too few for an ePSF)"
    return FramePSF(model=gaussian_image_psf(fwhm), fwhm=fwhm, source="gaussian", note=note)


def _moment_fwhm(data_sub: np.ndarray, x: float, y: float, r: int = 4) -> float:
    """FWHM [px] of a Gaussian with the same second moments as the positive pixels within ``r`` px."""
    ny, nx = data_sub.shape
    xi, yi = int(round(x)), int(round(y))
    y0, y1, x0, x1 = max(yi - r, 0), min(yi + r + 1, ny), max(xi - r, 0), min(xi + r + 1, nx)
    cut = np.clip(data_sub[y0:y1, x0:x1], 0, None).astype(float)
    if cut.sum() <= 0:
        return float("nan")
    yy, xx = np.mgrid[y0:y1, x0:x1]
    w = cut / cut.sum()
    mx, my = (w * xx).sum(), (w * yy).sum()
    var = 0.5 * ((w * (xx - mx) ** 2).sum() + (w * (yy - my) ** 2).sum())
    return float(2.3548 * np.sqrt(var)) if var > 0 else float("nan")


def _fwhm_from_stars(data_sub: np.ndarray, stars: Table, guess: float | None) -> float:
    """Median moment FWHM [px] of ``stars`` (``guess``, else 2.5, when there are none)."""
    vals = [_moment_fwhm(data_sub, x, y) for x, y in zip(stars["x"], stars["y"])]
    vals = [v for v in vals if np.isfinite(v)]
    if not vals:
        return float(guess or 2.5)
    return float(np.clip(np.median(vals), 0.8, 30.0))


def psf_for_frame(frame, data_sub: np.ndarray | None = None, rms: float | None = None, sources: Table | None = None,
                  mode: str = "auto", oversampling: int = 8, norm_radius: int = 10) -> FramePSF:
    """The PSF of ``frame`` (:class:`skyvar.io.fits.Frame`).

    ``mode``: ``auto`` (simulator header if present, else empirical), ``simulator`` (error if the
    header lacks the keys), ``epsf`` (always empirical). The empirical route needs the background-
    subtracted image, its rms and a source table (``x, y, flux``, optionally ``a, b``).
    """
    mode = (mode or "auto").lower()
    if mode not in ("auto", "simulator", "epsf"):
        raise ValueError(f"psf mode {mode!r}: choose auto, simulator or epsf")
    if mode in ("auto", "simulator"):
        psf = psf_from_header(frame.header, oversampling=oversampling, norm_radius=norm_radius)
        if psf is not None:
            return psf
        if mode == "simulator":
            raise ValueError(f"{frame.path}: header lacks the simulator's PSF keys {list(SIM_PSF_KEYS)}")
    if data_sub is None or sources is None:
        raise ValueError("an empirical PSF needs the background-subtracted image and a source list")
    from skyvar.io.fits import MASK_BAD, MASK_SATURATED

    bad = (frame.mask & (MASK_BAD | MASK_SATURATED)) > 0
    return empirical_psf(data_sub, bad, float(rms if rms is not None else np.std(data_sub)), sources)


# ------------------------------------------------------------------------------------------ PSF files
def normalise_to_stamp(model, norm_radius: int = 10):
    """A copy of ``model`` (``ImagePSF``) scaled to unit flux within the (2R+1)² px square around a star
    at phase 0, the convention of :func:`psf_from_header` (a smaller model: unit flux over its extent)."""
    from photutils.psf import ImagePSF

    u = np.arange(-norm_radius, norm_radius + 1, dtype=float)
    xx, yy = np.meshgrid(u, u)
    s = float(np.nansum(model.evaluate(xx.ravel(), yy.ravel(), 1.0, 0.0, 0.0)))
    if not np.isfinite(s) or s <= 0:
        raise ValueError("PSF model has no positive flux")
    os_ = int(np.atleast_1d(model.oversampling)[0])  # square sampling throughout skyvar
    return ImagePSF(np.asarray(model.data, float) / s, oversampling=os_, origin=tuple(float(o) for o in model.origin))


def read_psf_file(path, norm_radius: int = 10) -> FramePSF:
    """A PSF from a FITS file: the primary image is the pixel-integrated PSF sampled ``OVERSAMP`` times
    per pixel (default 1), centred on its central sample (or on ``CRPIX1/2``-style ``PSFX0/PSFY0``, 0-indexed
    samples); it is renormalised to unit flux within the (2R+1)² px square (:func:`normalise_to_stamp`)."""
    from astropy.io import fits
    from photutils.psf import ImagePSF

    from skyvar.io.fits import FrameError

    try:
        with fits.open(path) as h:
            data = np.asarray(h[0].data, float)
            hdr = h[0].header
    except (OSError, ValueError, TypeError) as e:
        raise FrameError(f"{path}: cannot read the PSF file ({type(e).__name__}: {e})") from e
    if data.ndim != 2 or not np.isfinite(data).all() or data.sum() <= 0:
        raise FrameError(f"{path}: a PSF file needs a finite 2-D image with positive flux")
    os_ = int(hdr.get("OVERSAMP", 1))
    oy = float(hdr.get("PSFY0", (data.shape[0] - 1) / 2.0))
    ox = float(hdr.get("PSFX0", (data.shape[1] - 1) / 2.0))
    model = normalise_to_stamp(ImagePSF(data, oversampling=os_, origin=(ox, oy)), norm_radius)
    return FramePSF(model=model, fwhm=_fwhm_of(model), source="file", note=f"PSF file {path}")


def write_psf_file(path, psf, radius: int = 12, oversampling: int = 4) -> None:
    """Write ``psf`` (FramePSF or photutils model) sampled ``oversampling`` times per pixel within
    ±``radius`` px as a FITS file readable by :func:`read_psf_file`."""
    from astropy.io import fits

    from skyvar.utils.atomic import atomic_path

    m = psf.model if hasattr(psf, "model") else psf
    half = radius * oversampling
    u = np.arange(-half, half + 1) / oversampling
    xx, yy = np.meshgrid(u, u)
    data = np.asarray(m.evaluate(xx.ravel(), yy.ravel(), 1.0, 0.0, 0.0), float).reshape(xx.shape)
    hdr = fits.Header()
    hdr["OVERSAMP"] = (oversampling, "samples per pixel")
    hdr["PSFX0"] = (float(half), "0-indexed sample of the PSF centre (x)")
    hdr["PSFY0"] = (float(half), "0-indexed sample of the PSF centre (y)")
    hdr["COMMENT"] = "pixel-integrated PSF; value at an offset = fraction of a unit star's flux in that pixel"
    with atomic_path(path) as tmp:
        fits.PrimaryHDU(data.astype(np.float32), header=hdr).writeto(tmp, overwrite=True)
