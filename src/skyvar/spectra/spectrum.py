"""The common spectrum structure returned by every reader and simulator (DESIGN.md §3).

Wavelengths in Å (``vacuum`` says air or vacuum), flux in the file's units, inverse variance in
1/flux², ``mask`` True where a pixel is *bad*. Batches of spectra on a common grid are plain arrays
(``flux[n, npix]`` …) plus a shared ``wavelength``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Spectrum:
    """One spectrum: ``wavelength`` [Å] (air or vacuum per ``vacuum``), ``flux`` (file units), ``ivar``
    [1/flux²] (0 = no information), ``mask`` (True = bad pixel), ``meta`` (obsid, ra/dec [deg], snr,
    class, times in MJD/BJD as named …). :meth:`to_specutils` converts to ``specutils``."""

    wavelength: np.ndarray  # (npix,) Å
    flux: np.ndarray  # (npix,)
    ivar: np.ndarray  # (npix,) inverse variance; 0 where unknown/bad
    mask: np.ndarray  # (npix,) bool, True = bad pixel
    vacuum: bool = True  # wavelengths in vacuum (False: air)
    meta: dict = dataclasses.field(default_factory=dict)  # obsid, ra, dec, snr, class, time (MJD/BJD) …

    def __post_init__(self):
        n = len(self.wavelength)
        for name in ("flux", "ivar", "mask"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Spectrum.{name} has {len(getattr(self, name))} pixels, wavelength has {n}")

    @property
    def good(self) -> np.ndarray:
        return (~self.mask) & (self.ivar > 0) & np.isfinite(self.flux)

    @property
    def masked_fraction(self) -> float:
        return float(1.0 - self.good.mean()) if len(self.flux) else 1.0

    def to_specutils(self, flux_unit=None):
        """This spectrum as a ``specutils.Spectrum`` (``Spectrum1D`` before specutils 2.0).

        Spectral axis in Å (air or vacuum as ``self.vacuum`` says, recorded in ``meta['vacuum']``), flux in
        ``flux_unit`` (default ``meta['flux_unit']`` or dimensionless: LAMOST fluxes are relative),
        uncertainty ``InverseVariance(ivar)``, ``mask`` True = bad (specutils' convention too), a copy of
        ``meta``. Needs specutils (``pip install specutils``).
        """
        try:
            import specutils
            from astropy import units as u
            from astropy.nddata import InverseVariance
        except ImportError as e:  # pragma: no cover - exercised only without specutils
            raise ImportError("Spectrum.to_specutils() needs specutils: pip install specutils") from e
        cls = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D
        unit = u.Unit(flux_unit or self.meta.get("flux_unit", u.dimensionless_unscaled))
        meta = {k: v for k, v in self.meta.items() if not isinstance(v, np.ndarray)}
        meta["vacuum"] = bool(self.vacuum)
        return cls(spectral_axis=np.asarray(self.wavelength, dtype=float) * u.AA,
                   flux=np.asarray(self.flux, dtype=float) * unit,
                   uncertainty=InverseVariance(np.asarray(self.ivar, dtype=float) / unit**2),
                   mask=np.asarray(self.mask, dtype=bool), meta=meta)
