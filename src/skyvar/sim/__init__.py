"""Simulators: CSST-like dense-field frames and time series (:mod:`skyvar.sim.field`), survey light
curves (ZTF-, WFST-, CSST-like), LAMOST-like spectra and the relative-RV mock. Every simulator takes a
``seed``; the same configuration gives the same data. Command line: ``skyvar sim <kind> key=value``."""

from skyvar.utils.lazy import lazy_exports

_NAMES = {
    "FieldSimConfig": "skyvar.sim.field",
    "FieldSimulation": "skyvar.sim.field",
    "simulate_field": "skyvar.sim.field",
    "simulate_field_to_disk": "skyvar.sim.field",
    "ZTFSimConfig": "skyvar.sim.ztf",
    "WfstSimConfig": "skyvar.sim.wfst",
    "CSSTLightCurveConfig": "skyvar.sim.csst_lightcurves",
    "simulate_csst_lightcurves": "skyvar.sim.csst_lightcurves",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
