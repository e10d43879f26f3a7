"""Detection and photometry: one interface (:class:`Detector`: ``detect(frame) -> Table`` with the
catalogue contract of DESIGN.md §3), the classical baselines (sep/SExtractor, photutils PSF
photometry), forced PSF photometry and PNet; :func:`detect_files` runs any of them over many frames."""

from skyvar.utils.lazy import lazy_exports

_NAMES = {
    "Detector": "skyvar.detect.base",
    "CATALOG_COLUMNS": "skyvar.detect.base",
    "finalize_catalog": "skyvar.detect.base",
    "SepDetector": "skyvar.detect.sep_baseline",
    "PhotutilsPSFDetector": "skyvar.detect.photutils_psf",
    "ForcedPSFDetector": "skyvar.detect.forced_psf",
    "build_reference": "skyvar.detect.forced_psf",
    "PNetDetector": "skyvar.detect.pnet",
    "load_pnet": "skyvar.detect.pnet",
    "detect_files": "skyvar.detect.batch",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
