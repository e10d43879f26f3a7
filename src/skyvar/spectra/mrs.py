"""Reading LAMOST medium-resolution (MRS, R ~ 7500) spectra.

One MRS file holds one target observed on one night (one plan, one spectrograph, one fibre):

- primary HDU ``Information``: header only (OBSID, RA/DEC, OBJNAME, DESIG, PLANID, LMJD, SPID,
  FIBERID, site LONGITUD/LATITUDE, HELIO/HELIO_RV, VACUUM …);
- ``COADD_B`` / ``COADD_R``: the night's co-added blue (≈ 4950–5350 Å) and red (≈ 6300–6800 Å) arm,
  table columns FLUX, IVAR, LOGLAM (log10 Å), ANDMASK, ORMASK; header SNR and the list of combined
  exposures (LMJMLIS0, LMJMLIS1 …);
- ``B-<LMJM>`` / ``R-<LMJM>``: every single exposure, columns FLUX, IVAR, LOGLAM, PIXMASK; header
  LMJM (local modified Julian *minute* of the exposure start), EXPTIME [s], SNR.

:func:`read_mrs` returns one :class:`~skyvar.spectra.spectrum.Spectrum` per (exposure or co-add, arm),
wavelengths in Å sorted ascending (single red-arm exposures are stored descending on the native CCD
grid), ``vacuum`` from the header (LAMOST writes vacuum), flux in the file's relative units, ivar in
1/flux², ``mask`` True where ivar <= 0, the pixel mask (PIXMASK, or ANDMASK for co-adds) is non-zero,
values are not finite, or the flux is exactly 0 (a fill value: the shared file's blue co-add has such a
run with ivar > 0 and no mask bit).

Times. LMJM counts minutes of *Beijing local time* (UTC + 8 h) since MJD 0 and marks the exposure
start to the minute (checked against DATE-BEG/DATE-OBS of the shared file). ``meta['mjd']`` is the
mid-exposure UTC MJD, ``meta['bjd_tdb']`` the barycentric Julian date (TDB) and ``meta['hjd']`` the
heliocentric Julian date (UTC) of mid-exposure, both for the target's RA/Dec seen from the site in the
header (Xinglong, height 960 m). A co-add gets the mean of its exposures' mid-times. The flux is
already heliocentric-corrected by the LAMOST pipeline (``HELIO``/``HELIO_RV`` in meta).

Quality. Real files contain exposures with SNR <= 0 or a negative median flux (failed extraction or
sky subtraction). The reader keeps them but records the reason in ``meta['flag']`` (empty string when
usable); :func:`usable` filters them. Unreadable files raise :class:`MRSReadError` naming the file, a
:class:`skyvar.spectra.io.SpectrumReadError` (the FITS opening and header look-ups are the shared ones
of :mod:`skyvar.spectra.io`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from skyvar.spectra.io import SpectrumReadError, header_value, open_fits
from skyvar.spectra.spectrum import Spectrum
from skyvar.utils.log import get_logger

log = get_logger(__name__)

ARMS = {"B": (4950.0, 5350.0), "R": (6300.0, 6800.0)}  # nominal coverage [Å]
KNOWN_MASK_COLUMNS = ("PIXMASK", "ANDMASK", "ORMASK")
LAMOST_SITE = {"lon": 117.58, "lat": 40.39, "height": 960.0}  # deg, deg, m (Xinglong station)
BEIJING_UTC_OFFSET_DAYS = 8.0 / 24.0


class MRSReadError(SpectrumReadError):
    """An MRS file (or one of its extensions) that cannot be read; the message names the file.

    A :class:`skyvar.spectra.io.SpectrumReadError`, so batch readers that catch ``SpectrumError`` skip it.
    """


@contextlib.contextmanager
def _open_mrs(path: Path) -> Iterator[fits.HDUList]:
    """The shared guarded FITS open of :mod:`skyvar.spectra.io` (every HDU loaded inside the guard, so
    truncation fails here), with its errors raised as MRSReadError."""
    try:
        with open_fits(path) as hdul:
            yield hdul
    except MRSReadError:
        raise
    except SpectrumReadError as e:
        raise MRSReadError(str(e)) from e


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().upper() in ("T", "TRUE", "1", "Y", "YES")
    return bool(v)


def _hval(hdr: fits.Header, keys: str | Iterable[str], default: Any = None, cast=float) -> Any:
    return header_value(hdr, keys, default, cast)


def _file_meta(hdr: fits.Header, path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {"file": str(path), "survey": "LAMOST-MRS"}
    for name, key, cast in (
        ("obsid", "OBSID", int), ("designation", "DESIG", str), ("objname", "OBJNAME", str),
        ("ra", "RA", float), ("dec", "DEC", float), ("planid", "PLANID", str), ("lmjd", "LMJD", int),
        ("spid", "SPID", int), ("fiberid", "FIBERID", int), ("helio_rv", "HELIO_RV", float),
        ("data_release", "DATA_V", str), ("mag1", "MAG1", float),
    ):
        v = _hval(hdr, key, None, cast)
        if v is not None:
            meta[name] = v
    meta["helio"] = _as_bool(hdr.get("HELIO", False))
    # OBJNAME is the input-catalogue id (Gaia source id for the time-domain plates): stable across nights.
    meta["source"] = str(meta.get("objname") or meta.get("designation") or meta.get("obsid") or path.stem)
    meta["site"] = {
        "lon": _hval(hdr, "LONGITUD", LAMOST_SITE["lon"]),
        "lat": _hval(hdr, "LATITUDE", LAMOST_SITE["lat"]),
        "height": LAMOST_SITE["height"],
    }
    return meta


def exposure_times(mjd_utc, ra, dec, site: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric Julian date (TDB) and heliocentric Julian date (UTC) of UTC MJDs.

    ``ra``, ``dec`` [deg] scalars or arrays matching ``mjd_utc`` (one target per time); NaN where a
    time or position is unknown. One vectorised astropy call for all times; the IERS tables shipped with
    astropy are used, no download is attempted.
    """
    from astropy import units as u
    from astropy.coordinates import EarthLocation, SkyCoord
    from astropy.time import Time
    from astropy.utils import iers

    mjd_utc = np.atleast_1d(np.asarray(mjd_utc, dtype=float))
    ra = np.broadcast_to(np.asarray(np.nan if ra is None else ra, dtype=float), mjd_utc.shape)
    dec = np.broadcast_to(np.asarray(np.nan if dec is None else dec, dtype=float), mjd_utc.shape)
    bjd = np.full(mjd_utc.shape, np.nan)
    hjd = np.full(mjd_utc.shape, np.nan)
    ok = np.isfinite(mjd_utc) & np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        return bjd, hjd
    site = site or LAMOST_SITE
    loc = EarthLocation.from_geodetic(site["lon"] * u.deg, site["lat"] * u.deg, site["height"] * u.m)
    coord = SkyCoord(ra[ok] * u.deg, dec[ok] * u.deg)
    with iers.conf.set_temp("auto_download", False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IERS-B range notes; sub-second effect on light travel time
        t = Time(mjd_utc[ok], format="mjd", scale="utc", location=loc)
        bjd[ok] = (t.tdb + t.light_travel_time(coord, kind="barycentric")).jd
        hjd[ok] = (t.utc + t.light_travel_time(coord, kind="heliocentric")).jd
    return bjd, hjd


def add_times(spectra: Iterable[Spectrum]) -> None:
    """Fill ``meta['bjd_tdb']`` and ``meta['hjd']`` of many spectra in one vectorised call."""
    spectra = list(spectra)
    if not spectra:
        return
    mjd = np.array([s.meta.get("mjd", np.nan) for s in spectra], dtype=float)
    ra = np.array([s.meta.get("ra", np.nan) for s in spectra], dtype=float)
    dec = np.array([s.meta.get("dec", np.nan) for s in spectra], dtype=float)
    sites = {(s.meta.get("site") or {}).get("lon", LAMOST_SITE["lon"]) for s in spectra}
    site = spectra[0].meta.get("site") if len(sites) == 1 else None  # mixed sites: the LAMOST default
    bjd, hjd = exposure_times(mjd, ra, dec, site)
    for s, b, h in zip(spectra, bjd, hjd):
        s.meta["bjd_tdb"], s.meta["hjd"] = float(b), float(h)


def lmjm_to_mjd_mid(lmjm: float, exptime_s: float) -> float:
    """Mid-exposure UTC MJD from the LAMOST local modified Julian minute of the exposure start."""
    return float(lmjm) / 1440.0 - BEIJING_UTC_OFFSET_DAYS + 0.5 * float(exptime_s) / 86400.0


def _coadd_lmjms(hdr: fits.Header) -> list[int]:
    out: list[int] = []
    for k in sorted(k for k in hdr if k.startswith("LMJMLIS")):
        for tok in str(hdr[k]).replace(",", "-").split("-"):
            tok = tok.strip()
            if tok.isdigit():
                out.append(int(tok))
    return out


def _columns(hdu, path: Path) -> dict[str, str]:
    names = {c.upper(): c for c in hdu.columns.names}
    missing = [c for c in ("FLUX", "IVAR", "LOGLAM") if c not in names]
    if missing:
        raise MRSReadError(f"{path}[{hdu.name}]: table lacks columns {missing}")
    return names


def _spectrum_from_hdu(hdu, path: Path, file_meta: dict, vacuum: bool) -> Spectrum:
    name = hdu.name.upper()
    cols = _columns(hdu, path)
    d = hdu.data
    if d is None or len(d) < 10:
        raise MRSReadError(f"{path}[{name}]: {0 if d is None else len(d)} rows, too short for a spectrum")
    flux = np.asarray(d[cols["FLUX"]], dtype=np.float64).ravel()
    ivar = np.asarray(d[cols["IVAR"]], dtype=np.float64).ravel()
    loglam = np.asarray(d[cols["LOGLAM"]], dtype=np.float64).ravel()
    pixmask = np.zeros(flux.shape, dtype=np.int64)
    for m in ("PIXMASK", "ANDMASK"):  # ORMASK (bad in *some* exposure) is too strict for a co-add
        if m in cols:
            pixmask = np.asarray(d[cols[m]], dtype=np.int64).ravel()
            break
    notes: list[str] = []
    unknown = [c for c in cols if "MASK" in c and c not in KNOWN_MASK_COLUMNS]
    if unknown:
        msg = f"{path}[{name}]: mask column(s) {unknown} not understood; their pixels are NOT masked"
        warnings.warn(msg, UserWarning, stacklevel=3)
        notes.append(f"mask column(s) {unknown} not understood and ignored")
    good_wave = np.isfinite(loglam)
    if not good_wave.all():
        notes.append(f"{int((~good_wave).sum())} pixels with non-finite LOGLAM dropped")
        flux, ivar, loglam, pixmask = flux[good_wave], ivar[good_wave], loglam[good_wave], pixmask[good_wave]
    order = np.argsort(loglam, kind="stable")
    flux, ivar, loglam, pixmask = flux[order], ivar[order], loglam[order], pixmask[order]
    dup = np.concatenate([[False], np.diff(loglam) <= 0])
    if dup.any():
        notes.append(f"{int(dup.sum())} duplicate wavelengths dropped")
        keep = ~dup
        flux, ivar, loglam, pixmask = flux[keep], ivar[keep], loglam[keep], pixmask[keep]
    wave = 10.0**loglam
    # exact zeros are fill values of the LAMOST pipeline (e.g. COADD_B 5209.8-5210.5 Å of the shared
    # file, ivar > 0 and masks 0): no sky-subtracted pixel is exactly 0
    bad = (~np.isfinite(flux)) | (~np.isfinite(ivar)) | (ivar <= 0) | (pixmask != 0) | (flux == 0.0)
    flux = np.where(np.isfinite(flux), flux, 0.0)
    ivar = np.where(bad, 0.0, ivar)

    hdr = hdu.header
    meta = dict(file_meta)
    meta["extname"] = name
    meta["warnings"] = [f"{path}[{name}]: {n}" for n in notes]
    if name.startswith("COADD"):
        arm = name.split("_")[-1][:1]
        meta["kind"] = "coadd"
        lmjms = _coadd_lmjms(hdr)
        meta["lmjm_list"] = lmjms
        exptime = _hval(hdr, "EXPTIME", 1200.0)
        mids = [lmjm_to_mjd_mid(m, exptime) for m in lmjms]
        meta["mjd"] = float(np.mean(mids)) if mids else np.nan
        meta["exposure"] = f"{meta.get('lmjd', 'na')}C"
        meta["exptime"] = float(exptime) * max(len(lmjms), 1)
    else:
        arm = name[:1]
        meta["kind"] = "single"
        lmjm = _hval(hdr, "LMJM", None, int)
        if lmjm is None and "-" in name and name.split("-", 1)[1].isdigit():
            lmjm = int(name.split("-", 1)[1])
            meta["warnings"].append(f"{path}[{name}]: no LMJM keyword; taken from the extension name")
        exptime = _hval(hdr, "EXPTIME", None)
        if exptime is None:
            exptime = 1200.0
            meta["warnings"].append(f"{path}[{name}]: no EXPTIME; assuming 1200 s (MRS default)")
        meta["lmjm"] = lmjm
        meta["exptime"] = float(exptime)
        meta["mjd"] = lmjm_to_mjd_mid(lmjm, exptime) if lmjm is not None else np.nan
        meta["exposure"] = str(lmjm) if lmjm is not None else name
    if arm not in ARMS:
        raise MRSReadError(f"{path}[{name}]: cannot tell the arm from the extension name")
    meta["arm"] = arm
    snr = _hval(hdr, "SNR", None)
    if snr is None:
        good = ~bad
        snr = float(np.median(flux[good] * np.sqrt(ivar[good]))) if good.any() else 0.0
        meta["warnings"].append(f"{path}[{name}]: no SNR keyword; median flux*sqrt(ivar) = {snr:.2f} used")
    meta["snr"] = float(snr)
    meta["flag"] = quality_flag(flux, ivar, bad, meta["snr"])
    return Spectrum(wavelength=wave, flux=flux, ivar=ivar, mask=bad, vacuum=vacuum, meta=meta)


def quality_flag(flux: np.ndarray, ivar: np.ndarray, bad: np.ndarray, snr: float, min_good: int = 100) -> str:
    """Why a spectrum must not be used ('' if usable): SNR <= 0, median flux <= 0, too few good pixels."""
    reasons = []
    if not np.isfinite(snr) or snr <= 0:
        reasons.append("snr<=0")
    good = ~bad
    if good.sum() < min_good:
        reasons.append(f"good_pixels<{min_good}")
    elif np.median(flux[good]) <= 0:
        reasons.append("median_flux<=0")
    return ",".join(reasons)


def read_mrs(path: str | os.PathLike, kind: str = "all", arms: Iterable[str] = ("B", "R"),
             times: bool = True) -> list[Spectrum]:
    """Read a LAMOST MRS file: every single exposure (``kind='single'``), the co-adds (``'coadd'``) or
    both (``'all'``), for the requested arms. Returns spectra in file order with metadata (see module
    docstring: source, ra, dec, spid, fiberid, arm, kind, exposure, mjd, bjd_tdb, hjd, snr, flag …).

    ``times=False`` skips the barycentric/heliocentric dates (fill them later for many files at once with
    :func:`add_times`). Raises MRSReadError (naming the file) when the file is unreadable or holds no MRS
    arm extension. A single damaged extension is skipped with its reason in every returned spectrum's
    ``meta['warnings']``.
    """
    if kind not in ("all", "single", "coadd"):
        raise ValueError(f"kind must be 'all', 'single' or 'coadd', got {kind!r}")
    arms = tuple(a.upper()[:1] for a in arms)
    path = Path(path)
    out: list[Spectrum] = []
    ext_notes: list[str] = []
    with _open_mrs(path) as hdul:
        hdr0 = hdul[0].header
        file_meta = _file_meta(hdr0, path)
        if "VACUUM" in hdr0:
            vacuum = _as_bool(hdr0["VACUUM"])
        else:
            vacuum = True
            ext_notes.append(f"{path}: no VACUUM keyword; assuming vacuum wavelengths (LAMOST default)")
        n_arm_ext = 0
        for hdu in hdul[1:]:
            name = (hdu.name or "").upper()
            is_coadd = name.startswith("COADD_")
            is_single = len(name) > 2 and name[1] == "-" and name[0] in "BR"
            if not (is_coadd or is_single):
                continue
            n_arm_ext += 1
            arm = name.split("_")[-1][:1] if is_coadd else name[0]
            if arm not in arms or (kind == "single" and is_coadd) or (kind == "coadd" and is_single):
                continue
            if not isinstance(hdu, fits.BinTableHDU):
                ext_notes.append(f"{path}[{name}]: not a binary table; skipped")
                continue
            try:
                out.append(_spectrum_from_hdu(hdu, path, file_meta, vacuum))
            except MRSReadError as e:
                ext_notes.append(f"{e}; skipped")
    if n_arm_ext == 0:
        raise MRSReadError(f"{path}: no LAMOST MRS extensions (COADD_B/R, B-<lmjm>, R-<lmjm>) found")
    if not out and ext_notes:
        raise MRSReadError(f"{path}: every requested extension failed: " + "; ".join(ext_notes))
    for s in out:
        s.meta["warnings"] = ext_notes + s.meta["warnings"]
        s.meta.setdefault("bjd_tdb", np.nan)
        s.meta.setdefault("hjd", np.nan)
    if times:
        add_times(out)
    for n in ext_notes:
        log.warning(n)
    return out


def scan_mrs(path: str | os.PathLike) -> dict[str, Any]:
    """Header-only look at an MRS file (no spectrum is read): the file metadata of :func:`read_mrs`
    (source, obsid, designation, ra, dec, planid, lmjd, spid, fiberid …) plus ``extensions``: a list of
    (extname, arm, kind, snr). Used to group a survey's files by star before reading them in chunks.
    Raises MRSReadError (naming the file) for unreadable files or files without MRS extensions."""
    path = Path(path)
    if not path.exists():
        raise MRSReadError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                meta = _file_meta(hdul[0].header, path)
                exts = []
                for hdu in hdul[1:]:
                    name = (hdu.name or "").upper()
                    if name.startswith("COADD_"):
                        exts.append((name, name.split("_")[-1][:1], "coadd", _hval(hdu.header, "SNR", np.nan)))
                    elif len(name) > 2 and name[1] == "-" and name[0] in "BR":
                        exts.append((name, name[0], "single", _hval(hdu.header, "SNR", np.nan)))
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
        raise MRSReadError(f"{path}: cannot read FITS headers ({type(e).__name__}: {e})") from e
    if not exts:
        raise MRSReadError(f"{path}: no LAMOST MRS extensions (COADD_B/R, B-<lmjm>, R-<lmjm>) found")
    meta["extensions"] = exts
    return meta


def usable(spectra: Iterable[Spectrum]) -> tuple[list[Spectrum], list[Spectrum]]:
    """Split spectra into (usable, flagged) by ``meta['flag']``."""
    ok, bad = [], []
    for s in spectra:
        (bad if s.meta.get("flag") else ok).append(s)
    return ok, bad
