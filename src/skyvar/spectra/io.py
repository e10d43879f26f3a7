"""Reading spectra from FITS: LAMOST low-resolution (LRS) files and the helpers other readers share.

Every reader returns :class:`skyvar.spectra.spectrum.Spectrum` (wavelength in Å, air or vacuum as the
file says, flux, inverse variance, ``mask`` True = bad) or raises :class:`SpectrumReadError` whose
message names the file and the reason. The shared pieces for other readers (e.g. LAMOST MRS):

- :func:`open_fits`: a context manager that opens a FITS file and forces every HDU to load inside a
  guard, so truncated/corrupt/gzip-damaged files fail there with one clear error;
- :func:`header_value`: typed header look-up over several candidate keys with defaults;
- :func:`read_spectra`: run any reader over many files, collecting per-file failures instead of stopping.

LAMOST LRS layouts handled (``read_lamost_lrs``):

- DR1–DR8 "image" layout: primary HDU of shape (5, npix) with rows flux, inverse variance,
  wavelength, andmask, ormask (header ``EXTEN0``); this is the layout of the shared test files;
- DR9+ "table" layout: a binary-table extension (``COADD``) with array columns FLUX, IVAR,
  WAVELENGTH, ANDMASK, ORMASK.

Wavelengths are air or vacuum according to the header keyword ``VACUUM`` (LAMOST writes T); a file
without it is assumed vacuum and a warning is recorded in ``meta['warnings']``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from skyvar.spectra.spectrum import Spectrum
from skyvar.utils.log import get_logger

log = get_logger(__name__)


class SpectrumError(ValueError):
    """Base class of every spectrum problem that should skip one file, not stop a batch."""


class SpectrumReadError(SpectrumError):
    """A file that cannot be read as a spectrum; the message names the file and the reason."""


# Errors astropy/gzip/numpy raise on truncated or corrupt files.
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                fits.VerifyError)


@contextlib.contextmanager
def open_fits(path: str | os.PathLike) -> Iterator[fits.HDUList]:
    """Open a FITS file (plain or gzip) with every HDU's data loaded, or raise SpectrumReadError.

    Data are read eagerly (``lazy_load_hdus=False``, no memmap) and touched inside the guard, so a file
    truncated in its data section fails here instead of later in the caller.
    """
    path = Path(path)
    if not path.exists():
        raise SpectrumReadError(f"{path}: no such file")
    if path.is_dir():
        raise SpectrumReadError(f"{path}: is a directory, not a FITS file")
    if path.stat().st_size == 0:
        raise SpectrumReadError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
            hdul.verify("silentfix")
            for h in hdul:
                _ = h.data  # force the read: truncation shows up here
    except SpectrumReadError:
        raise
    except _READ_ERRORS as e:
        raise SpectrumReadError(f"{path}: cannot read FITS ({type(e).__name__}: {e})") from e
    try:
        yield hdul
    finally:
        hdul.close()


def header_value(hdr: fits.Header, keys: str | Iterable[str], default: Any = None, cast: Callable = float,
                 path: str | os.PathLike | None = None, required: bool = False) -> Any:
    """The first usable value among ``keys`` cast with ``cast`` (str values are stripped).

    Missing, empty, non-castable or non-finite values are skipped. With ``required`` and nothing usable a
    SpectrumReadError names the file and the keys; otherwise ``default`` is returned.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    for k in keys:
        if k not in hdr:
            continue
        v = hdr[k]
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        try:
            out = cast(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            continue
        if isinstance(out, float) and not np.isfinite(out):
            continue
        return out
    if required:
        raise SpectrumReadError(f"{path}: header has none of {keys}")
    return default


def _as_bool(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        return v.strip().upper() in ("T", "TRUE", "1", "Y", "YES")
    return bool(v)


# Header keys copied into Spectrum.meta (lower-case names); SNR keys are per-band median S/N per pixel.
_LAMOST_META = {
    "obsid": ("OBSID", int), "designation": ("DESIG", str), "objname": ("OBJNAME", str),
    "ra": ("RA", float), "dec": ("DEC", float), "mjd": ("MJD", float), "lmjd": ("LMJD", float),
    "planid": ("PLANID", str), "spid": ("SPID", int), "fiberid": ("FIBERID", int),
    "class": ("CLASS", str), "subclass": ("SUBCLASS", str), "z": ("Z", float), "z_err": ("Z_ERR", float),
    "snr_u": ("SNRU", float), "snr_g": ("SNRG", float), "snr_r": ("SNRR", float), "snr_i": ("SNRI", float),
    "snr_z": ("SNRZ", float), "helio_rv": ("HELIO_RV", float), "data_release": ("DATA_V", str),
    "date_obs": ("DATE-OBS", str), "exptime": ("EXPTIME", float),
}


def lamost_meta(hdr: fits.Header, path: Path) -> dict:
    """The LAMOST header keys skyvar uses, under lower-case names; missing ones are absent."""
    meta: dict[str, Any] = {"file": str(path), "survey": "LAMOST"}
    for name, (key, cast) in _LAMOST_META.items():
        v = header_value(hdr, key, None, cast)
        if v is not None:
            meta[name] = v
    return meta


def read_lamost_lrs(path: str | os.PathLike) -> Spectrum:
    """Read one LAMOST low-resolution spectrum (image or table layout; plain or gzipped FITS).

    Returns a Spectrum with wavelength [Å] (``vacuum`` from header ``VACUUM``), flux (LAMOST relative
    flux units), ivar [1/flux²] and ``mask`` True where ivar <= 0, ANDMASK != 0, or flux/ivar are not
    finite. ORMASK is kept in ``meta['ormask']`` so callers can choose to use it (pixels bad in *some*
    exposure). Raises SpectrumReadError for unreadable files, wrong shapes, non-monotonic wavelengths
    or no usable pixel.
    """
    path = Path(path)
    with open_fits(path) as hdul:
        hdr = hdul[0].header.copy()
        table_hdu = None
        for h in hdul[1:]:
            if isinstance(h, fits.BinTableHDU) and h.data is not None and "FLUX" in [c.upper() for c in h.columns.names]:
                table_hdu = h
                break
        if table_hdu is not None:  # DR9+ layout
            cols = {c.upper(): c for c in table_hdu.columns.names}
            missing = [c for c in ("FLUX", "IVAR", "WAVELENGTH") if c not in cols]
            if missing:
                raise SpectrumReadError(f"{path}: table HDU {table_hdu.name!r} lacks columns {missing}")
            row = table_hdu.data[0]

            def col(name, default=None):
                return np.asarray(row[cols[name]], dtype=np.float64).ravel() if name in cols else default

            flux, ivar, wave = col("FLUX"), col("IVAR"), col("WAVELENGTH")
            andmask = col("ANDMASK", np.zeros_like(flux))
            ormask = col("ORMASK", np.zeros_like(flux))
            hdr.update({k: v for k, v in table_hdu.header.items() if k in _HEADER_EXTRA_KEYS})
        else:
            data = hdul[0].data
            if data is None:
                raise SpectrumReadError(f"{path}: primary HDU has no data and no FLUX table was found")
            data = np.asarray(data, dtype=np.float64)
            if data.ndim != 2 or data.shape[0] < 3:
                raise SpectrumReadError(f"{path}: primary image has shape {data.shape}; expected (5, npix) "
                                        "rows flux, ivar, wavelength, andmask, ormask")
            flux, ivar, wave = data[0], data[1], data[2]
            andmask = data[3] if data.shape[0] > 3 else np.zeros_like(flux)
            ormask = data[4] if data.shape[0] > 4 else np.zeros_like(flux)

    meta = lamost_meta(hdr, path)
    notes: list[str] = []
    if "VACUUM" in hdr:
        vacuum = _as_bool(hdr["VACUUM"])
    else:
        vacuum = True
        notes.append(f"{path}: header has no VACUUM keyword; assuming vacuum wavelengths (LAMOST default)")
    return _validated_spectrum(path, wave, flux, ivar, andmask, ormask, vacuum, meta, notes)


# Keys a DR9+ table extension may carry that override the primary header.
_HEADER_EXTRA_KEYS = ("VACUUM",)


def _validated_spectrum(path, wave, flux, ivar, andmask, ormask, vacuum, meta, notes) -> Spectrum:
    n = len(flux)
    if n < 10:
        raise SpectrumReadError(f"{path}: only {n} pixels")
    if not (len(ivar) == len(wave) == n):
        raise SpectrumReadError(f"{path}: flux/ivar/wavelength lengths differ ({n}, {len(ivar)}, {len(wave)})")
    if not np.all(np.isfinite(wave)):
        raise SpectrumReadError(f"{path}: wavelength array has NaN/inf")
    dw = np.diff(wave)
    if not (np.all(dw > 0)):
        raise SpectrumReadError(f"{path}: wavelength array is not strictly increasing "
                                f"({int((dw <= 0).sum())} non-increasing steps)")
    if wave[0] < 1000 or wave[-1] > 30000:
        raise SpectrumReadError(f"{path}: wavelength range {wave[0]:.1f}-{wave[-1]:.1f} is not in Å")
    finite = np.isfinite(flux) & np.isfinite(ivar)
    n_nonfinite = int((~finite).sum())
    if n_nonfinite:
        notes.append(f"{path}: {n_nonfinite} NaN/inf flux or ivar pixels masked")
    ivar = np.where(finite & (ivar > 0), ivar, 0.0)
    flux = np.where(finite, flux, 0.0)
    andmask = np.nan_to_num(andmask).astype(np.int64)
    ormask = np.nan_to_num(ormask).astype(np.int64)
    mask = (ivar <= 0) | (andmask != 0)
    if mask.all():
        raise SpectrumReadError(f"{path}: every pixel is masked (ivar <= 0 or ANDMASK set)")
    meta["ormask"] = ormask
    meta["andmask"] = andmask
    meta["warnings"] = notes
    for msg in notes:
        log.debug(msg)
    return Spectrum(wavelength=wave, flux=flux, ivar=ivar, mask=mask, vacuum=vacuum, meta=meta)


def read_spectrum(path: str | os.PathLike, format: str = "auto") -> Spectrum:
    """Read a spectrum file; ``format`` 'auto' | 'lamost_lrs'. Only LAMOST LRS is known here."""
    if format in ("auto", "lamost_lrs"):
        return read_lamost_lrs(path)
    raise ValueError(f"unknown spectrum format {format!r}")


def read_spectra(paths: Iterable[str | os.PathLike], reader: Callable[[Path], Spectrum] = read_lamost_lrs,
                 ) -> tuple[list[Spectrum], list[dict]]:
    """Read many files with ``reader``; a file that raises SpectrumError is reported and skipped.

    Returns (spectra, failures) where each failure is ``{"file", "stage": "read", "error"}``.
    """
    out: list[Spectrum] = []
    failures: list[dict] = []
    for p in paths:
        p = Path(p)
        try:
            out.append(reader(p))
        except SpectrumError as e:
            log.error("skipping %s", e)
            failures.append({"file": str(p), "stage": "read", "error": str(e)})
    return out, failures


def spectrum_id(path: str | os.PathLike) -> str:
    """File name without the FITS suffixes (``spec-55859-F5902_sp03-232``)."""
    name = Path(path).name
    for sfx in (".fits.gz", ".fit.gz", ".fits.fz", ".fits", ".fit", ".fts"):
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return Path(path).stem


def write_lamost_lrs(path: str | os.PathLike, spectrum: Spectrum, header: dict | None = None) -> Path:
    """Write a Spectrum in the LAMOST DR1–8 image layout (5 x npix; used for simulated files and tests).

    ``header`` entries (e.g. OBSID, RA, DEC, SNRG, CLASS, SUBCLASS) go to the primary header; the file is
    written atomically; a ``.gz`` suffix compresses it.
    """
    from skyvar.utils.atomic import atomic_path

    andmask = spectrum.meta.get("andmask")
    andmask = np.where(spectrum.mask, 1, 0) if andmask is None else np.asarray(andmask)
    ormask = spectrum.meta.get("ormask")
    ormask = np.zeros(len(spectrum.flux)) if ormask is None else np.asarray(ormask)
    data = np.vstack([spectrum.flux, np.where(spectrum.mask, 0.0, spectrum.ivar), spectrum.wavelength, andmask,
                      ormask]).astype(np.float32)
    hdu = fits.PrimaryHDU(data)
    hdu.header["EXTEN0"] = "Flux, Inverse, Wavelength, Andmask, Ormask"
    hdu.header["VACUUM"] = bool(spectrum.vacuum)
    hdu.header["TELESCOP"] = "LAMOST"
    for k, v in (header or {}).items():
        hdu.header[k] = v
    with atomic_path(path) as tmp:
        hdu.writeto(tmp, overwrite=True)
    return Path(path)


# The public name (skyvar.spectra.read_lrs): LAMOST low-resolution spectra.
read_lrs = read_lamost_lrs
