"""skyvar: GPU-first deep learning for time-domain astronomy.

Conventions used everywhere (see DESIGN.md):
- pixel coordinates are 0-indexed, the centre of the first pixel is (0.0, 0.0), x runs along columns;
- magnitudes are AB with the frame's zero point ``ZP`` (the magnitude that gives 1 e-/s);
- fluxes are electrons integrated over the exposure unless a name says otherwise;
- times are MJD at mid-exposure unless a name says otherwise (FITS ``MJD-OBS`` is the exposure start).

Subpackages (each with its public names in ``__all__``): :mod:`skyvar.sim` (simulators),
:mod:`skyvar.io` (frames and catalogues), :mod:`skyvar.detect` (detectors and photometry),
:mod:`skyvar.evaluate` (the evaluation harness), :mod:`skyvar.lightcurves` (association, indices,
searches, classification), :mod:`skyvar.spectra` (spectra, radial velocities), :mod:`skyvar.models`
(networks and released checkpoints), :mod:`skyvar.pipeline` (the pipelines ``skyvar infer`` runs).
Importing ``skyvar`` is cheap: subpackages load on first use.
"""

import importlib
import logging

__version__ = "0.1.0"

# Library etiquette: no output unless the application configures logging.
logging.getLogger("skyvar").addHandler(logging.NullHandler())

_SUBPACKAGES = ("sim", "io", "detect", "evaluate", "lightcurves", "spectra", "models", "pipeline", "data",
                "paths", "flags", "utils")
__all__ = ["__version__", *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"skyvar.{name}")
    raise AttributeError(f"module 'skyvar' has no attribute {name!r}")
