"""Reading and writing frames (FITS, ``CCDData``) and per-frame catalogues (ECSV, Parquet, FITS)."""

from skyvar.utils.lazy import lazy_exports

_NAMES = {
    "Frame": "skyvar.io.fits",
    "FrameError": "skyvar.io.fits",
    "read_frame": "skyvar.io.fits",
    "write_frame": "skyvar.io.fits",
    "mid_exposure_mjd": "skyvar.io.fits",
    "write_catalog": "skyvar.io.catalog",
    "read_catalog_table": "skyvar.io.catalog",
    "catalog_meta": "skyvar.io.catalog",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
