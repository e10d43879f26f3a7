"""Light curves: association of per-frame catalogues, the partitioned store, variability indices and
the statistical probability model, excess selection, flare and period searches, Astronet
classification; :class:`LightCurve` for looking at one star."""

from skyvar.utils.lazy import lazy_exports

_NAMES = {
    "LightCurve": "skyvar.lightcurves.lightcurve",
    "LightCurveBatch": "skyvar.lightcurves.batch",
    "associate_catalogs": "skyvar.lightcurves.associate",
    "read_catalog": "skyvar.lightcurves.associate",
    "open_store": "skyvar.lightcurves.store",
    "read_store": "skyvar.lightcurves.store",
    "write_store": "skyvar.lightcurves.store",
    "variability_indices": "skyvar.lightcurves.indices",
    "lomb_scargle": "skyvar.lightcurves.periodogram",
    "PeriodSearch": "skyvar.lightcurves.periodogram",
    "FlareSearch": "skyvar.lightcurves.flares",
    "ExcessStage": "skyvar.lightcurves.excess",
    "IndicesStage": "skyvar.lightcurves.indices",
    "AstronetStage": "skyvar.lightcurves.classify",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
