"""The pipelines ``skyvar infer pipeline=<name>`` runs (each a class with ``run()``, built from
``conf/pipeline/<name>.yaml``), and what they share: resume (:mod:`.resume`), tracking
(:mod:`.tracking`), component building (:mod:`.components`)."""

from skyvar.utils.lazy import lazy_exports

_NAMES = {
    "run": "skyvar.pipeline.api",
    "DetectPipeline": "skyvar.pipeline.detect",
    "FieldPipeline": "skyvar.pipeline.field",
    "AssociatePipeline": "skyvar.pipeline.associate",
    "LightCurvePipeline": "skyvar.pipeline.lightcurves",
    "BinarySpectraPipeline": "skyvar.pipeline.binary_spectra",
    "RVPipeline": "skyvar.pipeline.rv",
    "StageRunner": "skyvar.pipeline.resume",
    "Manifest": "skyvar.pipeline.resume",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
