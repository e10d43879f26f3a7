"""Spectra: LAMOST readers, preprocessing for the binary-star CNN, relative radial velocities and the
zero-point self-calibration.

Units and conventions: wavelengths in Å (air or vacuum stated by ``Spectrum.vacuum``; LAMOST writes
vacuum), flux in the file's units, inverse variance in 1/flux², masks True = bad, velocities in km/s
(positive = redshift), times MJD (UTC, mid-exposure) / BJD_TDB as named in ``meta``.

>>> from skyvar.spectra import read_lrs, preprocess_spectra
>>> s = read_lrs("spec-55859-F5902_sp05-172.fits.gz")     # doctest: +SKIP
>>> batch = preprocess_spectra([s])                           # doctest: +SKIP
>>> s.to_specutils()                                     # doctest: +SKIP

Objects are imported lazily (``import skyvar.spectra`` does not import torch).
"""

from __future__ import annotations

from skyvar.utils.lazy import lazy_exports

_API = {
    # reading and writing
    "Spectrum": "skyvar.spectra.spectrum",
    "SpectrumError": "skyvar.spectra.io",
    "SpectrumReadError": "skyvar.spectra.io",
    "read_lrs": "skyvar.spectra.io",
    "read_lamost_lrs": "skyvar.spectra.io",
    "read_spectra": "skyvar.spectra.io",
    "write_lamost_lrs": "skyvar.spectra.io",
    "read_mrs": "skyvar.spectra.mrs",
    "MRSReadError": "skyvar.spectra.mrs",
    # preprocessing for the binary CNN
    "preprocess_spectra": "skyvar.spectra.preprocess",
    "Preprocessor": "skyvar.spectra.preprocess",
    "PreprocessConfig": "skyvar.spectra.preprocess",
    "PreprocessedBatch": "skyvar.spectra.preprocess",
    "air_to_vacuum": "skyvar.spectra.preprocess",
    "vacuum_to_air": "skyvar.spectra.preprocess",
    "resample_linear": "skyvar.spectra.resample",
    "normalize": "skyvar.spectra.continuum",
    # relative radial velocities and zero points
    "RelativeRV": "skyvar.spectra.rv",
    "RVResult": "skyvar.spectra.rv",
    "relative_velocities": "skyvar.spectra.rv",
    "prepare_arm": "skyvar.spectra.rv",
    "reference_indices": "skyvar.spectra.rv",
    "velocity_from_shift": "skyvar.spectra.rv",
    "shift_from_velocity": "skyvar.spectra.rv",
    "self_calibrate": "skyvar.spectra.zeropoint",
    "calibrate_catalog": "skyvar.spectra.zeropoint",
    "CalibrationResult": "skyvar.spectra.zeropoint",
    # templates
    "build_stellar_library": "skyvar.spectra.templates",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
