"""Inference driver used by ``skyvar infer`` / ``infer.py``: instantiate the configured pipeline and run it."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from skyvar.device import resolve_device  # noqa: F401  (kept importable from here)
from skyvar.utils.log import get_logger

log = get_logger(__name__)


def run_inference(cfg: DictConfig) -> Any:
    """``cfg.pipeline`` is an object with a ``run()`` method built from its ``_target_``; it receives
    the inputs and output folder through interpolations in its own config file."""
    from hydra.utils import instantiate

    if cfg.get("seed") is not None:
        import lightning as L

        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    pipeline = instantiate(cfg.pipeline, _convert_="partial")
    return pipeline.run()
