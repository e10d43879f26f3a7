"""The detector interface shared by classical baselines and neural models.

Every detector returns an astropy ``Table`` with the catalogue columns of DESIGN.md §3, so the
evaluation harness never special-cases one. A detector implements :meth:`Detector._detect`, which
returns at least ``x, y, flux, flux_err`` (0-indexed pixels, electrons) and optionally ``flags``;
:meth:`Detector.detect` adds magnitudes, sky positions and bookkeeping.
"""

from __future__ import annotations

import abc

import numpy as np
from astropy.table import Table

from skyvar.flags import PointFlag
from skyvar.io.fits import MASK_BAD, MASK_SATURATED, Frame

CATALOG_COLUMNS = ("x", "y", "ra", "dec", "flux", "flux_err", "mag", "mag_err", "flags", "frame_id", "detector")

# Catalogue flag bits (OR-ed).
# Catalogue ``flags`` bits: the registry is skyvar.flags.PointFlag (names kept for the detectors).
FLAG_SATURATED = int(PointFlag.SATURATED)
FLAG_BLENDED = int(PointFlag.BLENDED)
FLAG_EDGE = int(PointFlag.EDGE)
FLAG_FIT_FAILED = int(PointFlag.FIT_FAILED)
FLAG_BAD_PIXELS = int(PointFlag.BAD_PIXELS)
FLAG_NONPOSITIVE = int(PointFlag.NONPOSITIVE)

MAG_ERR_FACTOR = 2.5 / np.log(10.0)


class Detector(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``_detect``."""

    name: str = "detector"

    def detect(self, frame: Frame) -> Table:
        raw = self._detect(frame)
        return finalize_catalog(raw, frame, self.name)

    @abc.abstractmethod
    def _detect(self, frame: Frame) -> Table:
        """Return a table with at least ``x, y, flux, flux_err`` (electrons) for ``frame``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def empty_catalog(frame_id: str = "", detector: str = "") -> Table:
    t = Table()
    for c in CATALOG_COLUMNS:
        if c in ("frame_id", "detector"):
            t[c] = np.array([], dtype="U64")
        elif c == "flags":
            t[c] = np.array([], dtype=np.int32)
        else:
            t[c] = np.array([], dtype=np.float64)
    t.meta.update(frame_id=frame_id, detector=detector)
    return t


def finalize_catalog(raw: Table, frame: Frame, detector: str, core_radius: float = 1.5) -> Table:
    """Add ``ra, dec, mag, mag_err, flags, frame_id, detector`` to a raw detection table.

    Flags from the frame mask are OR-ed in for any masked pixel within ``core_radius`` px.
    Columns beyond the contract (e.g. ``peak``, ``npix``) are kept after the contract columns.
    """
    if raw is None or len(raw) == 0:
        out = empty_catalog(frame.frame_id, detector)
        _add_meta(out, frame, detector)
        return out
    t = Table(raw, copy=True)
    x = np.asarray(t["x"], dtype=float)
    y = np.asarray(t["y"], dtype=float)
    flux = np.asarray(t["flux"], dtype=float)
    ferr = np.asarray(t["flux_err"], dtype=float) if "flux_err" in t.colnames else np.full_like(flux, np.nan)
    flags = np.asarray(t["flags"], dtype=np.int32).copy() if "flags" in t.colnames else np.zeros(len(t), np.int32)

    ra, dec = frame.pixel_to_world(x, y)
    mag = frame.flux_to_mag(flux)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag_err = np.where(flux > 0, MAG_ERR_FACTOR * ferr / flux, np.nan)
    flags |= np.where(flux > 0, 0, FLAG_NONPOSITIVE).astype(np.int32)
    flags |= _mask_flags(frame, x, y, core_radius)

    out = Table()
    out["x"], out["y"], out["ra"], out["dec"] = x, y, ra, dec
    out["flux"], out["flux_err"], out["mag"], out["mag_err"] = flux, ferr, mag, mag_err
    out["flags"] = flags
    out["frame_id"] = np.full(len(t), frame.frame_id, dtype=f"U{max(len(frame.frame_id), 1)}")
    out["detector"] = np.full(len(t), detector, dtype=f"U{max(len(detector), 1)}")
    for c in t.colnames:
        if c not in out.colnames:
            out[c] = t[c]
    out.meta.update(t.meta)  # detector provenance (PSF source, background level ...)
    out["x"].unit = out["y"].unit = "pix"
    out["ra"].unit = out["dec"].unit = "deg"
    out["flux"].unit = out["flux_err"].unit = "electron"
    out["mag"].unit = out["mag_err"].unit = "mag"
    _add_meta(out, frame, detector)
    return out


def _add_meta(t: Table, frame: Frame, detector: str) -> None:
    t.meta.update(
        frame_id=frame.frame_id,
        detector=detector,
        zp=float(frame.zp),
        exptime=float(frame.exptime),
        mjd=float(frame.mjd) if np.isfinite(frame.mjd) else None,
        filter=frame.filter,
        source_file=str(frame.path) if frame.path else None,
        pixel_convention="0-indexed, first pixel centre at (0, 0)",
    )


def _mask_flags(frame: Frame, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    flags = np.zeros(len(x), dtype=np.int32)
    ny, nx = frame.shape
    ir = int(np.ceil(r))
    xi = np.rint(x).astype(int)
    yi = np.rint(y).astype(int)
    edge = (xi - ir < 0) | (yi - ir < 0) | (xi + ir >= nx) | (yi + ir >= ny)
    flags[edge] |= FLAG_EDGE
    if not frame.mask.any():
        return flags
    for dy in range(-ir, ir + 1):
        for dx in range(-ir, ir + 1):
            if dx * dx + dy * dy > r * r + 1e-9:
                continue
            xx = np.clip(xi + dx, 0, nx - 1)
            yy = np.clip(yi + dy, 0, ny - 1)
            m = frame.mask[yy, xx]
            flags[(m & MASK_SATURATED) > 0] |= FLAG_SATURATED
            flags[(m & MASK_BAD) > 0] |= FLAG_BAD_PIXELS
    return flags
