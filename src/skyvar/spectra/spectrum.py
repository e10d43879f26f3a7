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
