"""Detection and photometry: the shared interface, classical baselines and neural detectors."""

from skyvar.detect.base import CATALOG_COLUMNS, Detector, finalize_catalog

__all__ = ["CATALOG_COLUMNS", "Detector", "finalize_catalog"]
