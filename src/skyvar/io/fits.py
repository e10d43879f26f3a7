"""Reading and writing image frames.

A frame is a 2-D image in electrons (or ADU with ``GAIN``) with the metadata needed for photometry:
exposure time, gain, read noise, mid-exposure MJD, zero point, filter and a celestial WCS. Real
frames miss keys; :func:`read_frame` falls back with a warning where a sane default exists and raises
:class:`FrameError` (naming the file) where none does:

- no ``EXPTIME`` (or EXPOSURE/ITIME): an error, unless the caller supplies ``exptime`` (the config's
  ``frame.exptime=``; used only when the header lacks it) — a silent 1 s would put every magnitude
  6 mag off;
- no zero point (``ZP``/MAGZERO/MAGZP/ZEROPT): the frame reads (fluxes, detection and positions need
  none) with ``zp`` NaN, and asking it for a magnitude (:meth:`Frame.flux_to_mag`, which every
  catalogue does) is an error naming the file, unless ``zp`` is supplied (``frame.zp=``);
- no ``RDNOISE``: a warning stating the value assumed (``rdnoise``, default 0 e⁻);
- an empty or constant frame (every usable pixel equal, e.g. all zeros) is an error; pixels with
  absurd values (|value| > 1e12 e⁻: fill values such as −1e30) are masked like NaN, with a message
  naming the file; a frame with nothing else is an error.

Pixel convention: numpy ``data[y, x]``; 0-indexed pixel centres (FITS/WCS are 1-indexed; astropy's
``pixel_to_world`` already uses 0-indexed pixels, so no conversion is needed through it).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from skyvar.flags import FrameMask
from skyvar.utils.atomic import atomic_path
from skyvar.utils.log import get_logger

log = get_logger(__name__)

# Mask bits shared by the simulator, detectors and catalogues.
MASK_SATURATED = int(FrameMask.SATURATED)
MASK_BAD = int(FrameMask.BAD)  # NaN/inf or flagged bad pixel

DEFAULT_ZP = 25.85  # CSST i band, mag for 1 e-/s (DESIGN.md §4): the simulator's; never assumed for a frame
ABSURD_E = 1e12  # |pixel| above this many electrons is a fill value, not data


class FrameError(ValueError):
    """A frame that cannot be used; the message names the file and the reason."""


@dataclasses.dataclass
class Frame:
    data: np.ndarray  # float32, electrons (ADU * gain), bad pixels set to 0 and flagged in mask
    mask: np.ndarray  # uint8 bit mask (MASK_SATURATED, MASK_BAD)
    header: fits.Header
    exptime: float  # s
    gain: float  # e-/ADU (data is already multiplied by it)
    rdnoise: float  # e- per pixel, effective for the stored image
    zp: float  # AB mag giving 1 e-/s
    mjd: float  # mid-exposure MJD (NaN if unknown; see mid_exposure_mjd)
    filter: str
    wcs: WCS | None
    path: Path | None = None
    saturate: float = np.inf  # e-
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def frame_id(self) -> str:
        if self.path is None:
            return "frame"
        name = self.path.name
        for sfx in (".fits.gz", ".fits.fz", ".fit.gz", ".fits", ".fit", ".fts"):
            if name.lower().endswith(sfx):
                return name[: -len(sfx)]
        return self.path.stem

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    def _need_zp(self) -> None:
        if not np.isfinite(self.zp):
            raise FrameError(f"{self.path}: no zero point in the header (ZP, MAGZERO, MAGZP or ZEROPT); magnitudes "
                             f"need one: set frame.zp=<AB mag giving 1 e-/s>")

    def flux_to_mag(self, flux_e: np.ndarray) -> np.ndarray:
        """AB magnitude of a flux in electrons over the exposure (NaN where flux <= 0). Raises
        :class:`FrameError` when the frame has no zero point."""
        self._need_zp()
        flux_e = np.asarray(flux_e, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            m = self.zp - 2.5 * np.log10(flux_e / self.exptime)
        return np.where(flux_e > 0, m, np.nan)

    def mag_to_flux(self, mag: np.ndarray) -> np.ndarray:
        self._need_zp()
        return self.exptime * 10 ** (-0.4 * (np.asarray(mag, dtype=float) - self.zp))

    def to_ccddata(self):
        """The frame as an ``astropy.nddata.CCDData`` in electrons: the mask as a boolean array (any
        bit set), the uncertainty as the per-pixel Poisson + read-noise standard deviation, the WCS and
        header carried over (``EXPTIME``, ``GAIN=1`` since the data are in electrons, ``ZP``, ``MJD-AVG``)."""
        from astropy import units as u
        from astropy.nddata import CCDData, StdDevUncertainty

        hdr = self.header.copy()
        hdr["EXPTIME"], hdr["GAIN"], hdr["RDNOISE"], hdr["ZP"] = self.exptime, 1.0, self.rdnoise, self.zp
        if np.isfinite(self.mjd):
            hdr["MJD-AVG"] = self.mjd
        var = np.clip(self.data, 0, None).astype(np.float64) + self.rdnoise**2
        return CCDData(self.data, unit=u.electron, mask=self.mask != 0, wcs=self.wcs, meta=hdr,
                       uncertainty=StdDevUncertainty(np.sqrt(var).astype(np.float32)))

    @classmethod
    def from_ccddata(cls, ccd, zp: float | None = None, rdnoise: float | None = None, filter: str | None = None):
        """A Frame from an ``astropy.nddata.CCDData`` (unit electron, or adu with ``GAIN`` in its meta).
        Header keys fill what is not given; the time comes from :func:`mid_exposure_mjd`."""
        from astropy import units as u

        hdr = fits.Header(ccd.meta) if not isinstance(ccd.meta, fits.Header) else ccd.meta.copy()
        gain = float(hdr.get("GAIN", 1.0))
        if ccd.unit is None:
            raise FrameError("CCDData without a unit: give electron or adu (with GAIN in the meta)")
        if ccd.unit.is_equivalent(u.electron):
            data = np.asarray(ccd.data, np.float32) * np.float32(ccd.unit.to(u.electron))
            gain_applied = 1.0
        elif ccd.unit.is_equivalent(u.adu):
            data = np.asarray(ccd.data, np.float32) * np.float32(gain)
            gain_applied = gain
        else:
            raise FrameError(f"CCDData in {ccd.unit}: skyvar frames need electron or adu")
        mask = np.zeros(data.shape, np.uint8)
        if ccd.mask is not None:
            mask[np.asarray(ccd.mask, bool)] |= MASK_BAD
        bad = ~np.isfinite(data)
        mask[bad] |= MASK_BAD
        data[bad] = 0.0
        if "EXPTIME" not in hdr:
            raise FrameError("CCDData meta has no EXPTIME: magnitudes would be wrong; set meta['EXPTIME']")
        exptime = float(hdr["EXPTIME"])
        wcs = ccd.wcs
        if wcs is None:  # CCDData built from an array and a header keeps the WCS only in the header
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                try:
                    wcs = WCS(hdr, naxis=2)
                except Exception:
                    wcs = None
        wcs = wcs if wcs is not None and wcs.has_celestial else None
        return cls(data=data, mask=mask, header=hdr, exptime=exptime, gain=gain_applied,
                   rdnoise=float(rdnoise if rdnoise is not None else hdr.get("RDNOISE", 0.0)),
                   zp=float(zp if zp is not None else hdr.get("ZP", float("nan"))),
                   mjd=mid_exposure_mjd(hdr, exptime), filter=str(filter or hdr.get("FILTER", "unknown")),
                   wcs=wcs)

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RA, Dec in degrees of 0-indexed pixel positions (NaN without a WCS)."""
        x = np.asarray(x, dtype=float)
        if self.wcs is None or not self.wcs.has_celestial:
            return np.full_like(x, np.nan), np.full_like(x, np.nan)
        ra, dec = self.wcs.celestial.all_pix2world(x, np.asarray(y, dtype=float), 0)
        return np.asarray(ra), np.asarray(dec)


def _header_float(hdr: fits.Header, keys: tuple[str, ...], default: float | None, what: str, path, notes,
                  warn: bool = True, hint: str = ""):
    for k in keys:
        if k in hdr and hdr[k] not in (None, ""):
            try:
                v = float(hdr[k])
            except (TypeError, ValueError):
                continue
            if np.isfinite(v):
                return v
    if default is None:
        raise FrameError(f"{path}: header has none of {list(keys)} ({what}) and no default exists{hint}")
    msg = f"{path}: header has none of {list(keys)} ({what}); assuming {default}{hint}"
    if warn:
        notes.append(msg)
        warnings.warn(msg, stacklevel=3)
    return default


def mid_exposure_mjd(header: fits.Header, exptime: float | None = None, path: str | os.PathLike = "",
                     notes: list[str] | None = None) -> float:
    """The mid-exposure MJD of a frame, by the FITS standard's time keywords (WCS Paper III):

    1. ``MJD-AVG``, else ``DATE-AVG`` (ISO): the mid-exposure time itself;
    2. ``MJD-OBS``, else ``DATE-OBS`` (with ``TIME-OBS`` when the date has no time): the exposure
       **start**, plus ``EXPTIME / 2``;
    3. ``MJD-MID`` (a common non-standard key) as given; ``MJD`` alone is taken as the mid-time with
       a note.

    Returns NaN (with a note) when none is usable. The time scale is the header's (``TIMESYS``,
    UTC by default); it is not converted."""
    notes = notes if notes is not None else []

    def num(key):
        try:
            v = float(header[key])
            return v if np.isfinite(v) else None
        except (KeyError, TypeError, ValueError):
            return None

    def iso(key, time_key=None):
        v = header.get(key)
        if not isinstance(v, str) or not v.strip():
            return None
        v = v.strip()
        if "T" not in v and time_key and isinstance(header.get(time_key), str):
            v = f"{v}T{header[time_key].strip()}"
        try:
            from astropy.time import Time

            return float(Time(v, format="isot" if "T" in v else "iso", scale="utc").mjd)
        except Exception:
            return None

    half = 0.5 * float(exptime) / 86400.0 if exptime is not None and np.isfinite(exptime) and exptime > 0 else None
    for mid in (num("MJD-AVG"), iso("DATE-AVG")):
        if mid is not None:
            return mid
    for start, key in ((num("MJD-OBS"), "MJD-OBS"), (iso("DATE-OBS", "TIME-OBS"), "DATE-OBS")):
        if start is not None:
            if half is None:
                notes.append(f"{path}: {key} is the exposure start and EXPTIME is unknown; time not centred")
                return start
            return start + half
    for key in ("MJD-MID", "MJD"):
        v = num(key)
        if v is not None:
            if key == "MJD":
                notes.append(f"{path}: only 'MJD' in the header; taken as the mid-exposure time")
            return v
    msg = f"{path}: no MJD-AVG, DATE-AVG, MJD-OBS or DATE-OBS in the header; frame time unknown (NaN)"
    notes.append(msg)
    warnings.warn(msg, stacklevel=3)
    return float("nan")


def frame_header_values(header: fits.Header, path, notes: list[str], exptime: float | None = None,
                        gain: float | None = None, rdnoise: float | None = None, zp: float | None = None
                        ) -> tuple[float, float, float, float, float, float]:
    """The calibration values of a frame header, with the config's fallbacks for missing keys and a
    note per fallback: (exptime [s], gain [e-/ADU], read noise [e-], zero point [mag for 1 e-/s; NaN
    if unknown], mid-exposure MJD, saturation [ADU]). A missing or non-positive exposure time is a
    :class:`FrameError`. Shared by :func:`read_frame` and the section reader of forced photometry."""
    exptime = _header_float(header, ("EXPTIME", "EXPOSURE", "ITIME"), exptime, "exposure time [s]", path, notes,
                            hint="; set frame.exptime=<seconds>" if exptime is None else " s (from frame.exptime)")
    if exptime <= 0:
        raise FrameError(f"{path}: EXPTIME={exptime} must be positive")
    gain = _header_float(header, ("GAIN", "EGAIN", "CCDGAIN"), 1.0 if gain is None else gain, "gain [e-/ADU]", path,
                         notes, hint=" e-/ADU (set frame.gain=)" if gain is None else " e-/ADU (from frame.gain)")
    if gain <= 0:
        gain = 1.0
        notes.append(f"{path}: non-positive GAIN, using 1.0")
    rdnoise = _header_float(header, ("RDNOISE", "READNOIS", "RON"), 0.0 if rdnoise is None else float(rdnoise),
                            "read noise [e-]", path, notes,
                            hint=" e- (set frame.rdnoise=)" if rdnoise is None else " e- (from frame.rdnoise)")
    zp_val = _header_float(header, ("ZP", "MAGZERO", "MAGZP", "ZEROPT"), float("nan") if zp is None else float(zp),
                           "zero point [mag for 1 e-/s]", path, notes, warn=zp is not None,
                           hint=" (from frame.zp)" if zp is not None else "")
    if not np.isfinite(zp_val):
        notes.append(f"{path}: no zero point (ZP); magnitudes need frame.zp=")
    mjd = mid_exposure_mjd(header, exptime, path, notes)
    saturate = _header_float(header, ("SATURATE", "SATLEVEL"), float("inf"), "saturation [ADU]", path, notes, warn=False)
    return exptime, gain, rdnoise, zp_val, mjd, saturate


def read_frame(path: str | os.PathLike, hdu: int | str | None = None, exptime: float | None = None,
               zp: float | None = None, rdnoise: float | None = None, gain: float | None = None) -> Frame:
    """Read a frame from FITS with validation (see the module docstring).

    - The first HDU holding a 2-D image is used unless ``hdu`` is given; a ``MASK`` extension is read.
    - NaN/inf pixels and absurd values (|v| > ``ABSURD_E`` e⁻) are set to 0 and flagged ``MASK_BAD``
      (they must not reach neighbours' photometry).
    - Pixels at or above ``SATURATE`` are flagged ``MASK_SATURATED``.
    - ``exptime``, ``zp``, ``rdnoise``, ``gain``: values for keys the header lacks (the config's
      ``frame.*``); the header wins where it has the key.
    - The time is the mid-exposure MJD (:func:`mid_exposure_mjd`: ``MJD-AVG``/``DATE-AVG``, else
      ``MJD-OBS``/``DATE-OBS`` (the start) + ``EXPTIME/2``).

    Raises FrameError for unreadable, truncated or empty files, non-2-D data, a missing exposure time,
    all-bad and constant frames.
    """
    path = Path(path)
    notes: list[str] = []
    if not path.exists():
        raise FrameError(f"{path}: no such file")
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            hdul.verify("silentfix")
            img_hdu = None
            if hdu is not None:
                img_hdu = hdul[hdu]
            else:
                for h in hdul:
                    if h.is_image and h.data is not None and getattr(h.data, "ndim", 0) == 2:
                        img_hdu = h
                        break
            if img_hdu is None or img_hdu.data is None:
                raise FrameError(f"{path}: no 2-D image HDU found")
            data = np.asarray(img_hdu.data)
            header = hdul[0].header.copy()
            if img_hdu is not hdul[0]:
                header.update(img_hdu.header)
            mask_in = None
            if "MASK" in hdul:
                mask_in = np.asarray(hdul["MASK"].data)
    except FrameError:
        raise
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError) as e:
        raise FrameError(f"{path}: cannot read FITS ({type(e).__name__}: {e})") from e
    if data.ndim != 2:
        raise FrameError(f"{path}: image is {data.ndim}-D, expected 2-D")
    if data.size == 0 or min(data.shape) < 4:
        raise FrameError(f"{path}: image of shape {data.shape} is too small")

    exptime, gain, rdnoise, zp_val, mjd, saturate = frame_header_values(header, path, notes, exptime, gain, rdnoise, zp)
    filt = str(header.get("FILTER", "unknown"))

    with np.errstate(over="ignore", invalid="ignore"):
        data = data.astype(np.float32) * np.float32(gain)
    mask = np.zeros(data.shape, dtype=np.uint8) if mask_in is None else mask_in.astype(np.uint8).copy()
    if mask.shape != data.shape:
        notes.append(f"{path}: MASK shape {mask.shape} != image {data.shape}; ignored")
        mask = np.zeros(data.shape, dtype=np.uint8)
    bad = ~np.isfinite(data)
    if bad.any():
        notes.append(f"{path}: {int(bad.sum())} NaN/inf pixels masked")
    absurd = np.isfinite(data) & (np.abs(data) > ABSURD_E)
    if absurd.any():
        msg = (f"{path}: {int(absurd.sum())} pixels with absurd values (|value| > {ABSURD_E:g} e-, e.g. "
               f"{float(data[absurd][0]):.3g}: fill values) masked")
        notes.append(msg)
        warnings.warn(msg, stacklevel=2)
        bad |= absurd
    if bad.all():
        raise FrameError(f"{path}: every pixel is NaN/inf or an absurd fill value")
    mask[bad] |= MASK_BAD
    data = np.where(bad, 0.0, data).astype(np.float32)
    good = data[(mask & MASK_BAD) == 0]
    if good.size and float(good.max()) == float(good.min()):
        raise FrameError(f"{path}: every usable pixel has the same value ({float(good.min()):g}): an empty or "
                         f"constant frame")
    sat_e = saturate * gain
    if np.isfinite(sat_e):
        mask[data >= sat_e] |= MASK_SATURATED

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
            if not wcs.has_celestial:
                wcs = None
                notes.append(f"{path}: no celestial WCS; ra/dec will be NaN")
        except Exception as e:  # astropy raises many kinds on malformed WCS
            wcs = None
            notes.append(f"{path}: unusable WCS ({e}); ra/dec will be NaN")
    for n in notes:
        log.debug(n)
    return Frame(
        data=data, mask=mask, header=header, exptime=exptime, gain=gain, rdnoise=rdnoise, zp=zp_val, mjd=mjd,
        filter=filt, wcs=wcs, path=path, saturate=sat_e, warnings=notes,
    )


def write_frame(path: str | os.PathLike, data: np.ndarray, header: fits.Header, mask: np.ndarray | None = None) -> Path:
    """Write a frame (float32 primary image, optional uint8 ``MASK`` extension) atomically."""
    hdus = [fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header)]
    if mask is not None:
        hdus.append(fits.ImageHDU(np.asarray(mask, dtype=np.uint8), name="MASK"))
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return Path(path)
