"""The evaluation harness: one-to-one matching against truth, detection/photometry/astrometry metrics
per magnitude bin, light-curve scatter and classification reports, the papers' figures."""

from skyvar.utils.lazy import lazy_exports

_NAMES = {
    "match_catalogs": "skyvar.evaluate.matching",
    "evaluate_detections": "skyvar.evaluate.report",
    "compare": "skyvar.evaluate.compare",
    "evaluate_lightcurves": "skyvar.evaluate.lightcurves",
    "TimeSeriesTruth": "skyvar.evaluate.lightcurves",
    "classification_report": "skyvar.evaluate.lightcurves",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
