"""Experiment tracking for pipelines (W&B offline by default): the run's config, each stage's metrics,
tables and figures. Logging must never stop a run: every call degrades to a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from skyvar.utils.log import get_logger

log = get_logger(__name__)

__all__ = ["RunTracker"]


class RunTracker:
    """Wraps a Lightning logger (``WandbLogger``, ``CSVLogger`` …) built from the pipeline's ``logger``
    config; a tracker without a logger does nothing."""

    def __init__(self, logger: Any = None):
        self.logger = logger

    @classmethod
    def from_config(cls, cfg: Any) -> RunTracker:
        from skyvar.pipeline.components import instantiate_component, plain

        cfg = plain(cfg)
        if not cfg:
            return cls(None)
        if not isinstance(cfg, dict):  # a logger object passed in directly
            return cls(cfg)
        items = cfg.values() if "_target_" not in cfg else [cfg]
        for c in items:
            if not c:
                continue
            try:
                lg = instantiate_component(c, "logger")
                log.info("logging to %s", type(lg).__name__)
                return cls(lg)
            except Exception as e:
                log.warning("logger %s unavailable: %s", c.get("_target_") if isinstance(c, dict) else c, e)
        return cls(None)

    def hyperparams(self, params: dict) -> None:
        if self.logger is not None and hasattr(self.logger, "log_hyperparams"):
            try:
                self.logger.log_hyperparams(params)
            except Exception as e:
                log.warning("could not log the config: %s", e)

    def metrics(self, stage: str, metrics: Any) -> None:
        """Log a (nested) metrics dict under ``stage/…``; non-numeric and non-finite leaves are skipped."""
        if self.logger is None or not metrics:
            return
        flat: dict[str, float] = {}

        def walk(prefix, v):
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}/{k}", x)
            elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v):
                flat[prefix] = float(v)

        walk(stage, metrics)
        try:
            if flat and hasattr(self.logger, "log_metrics"):
                self.logger.log_metrics(flat)
        except Exception as e:
            log.warning("could not log %s metrics: %s", stage, e)

    def table(self, key: str, table_path: Path | None, sort: list[str] | None = None, n: int = 500) -> None:
        if self.logger is None or table_path is None or not Path(table_path).exists() \
                or not hasattr(self.logger, "log_table"):
            return
        try:
            from astropy.table import Table

            df = Table.read(table_path).to_pandas()
            col = next((c for c in (sort or []) if c in df), None)
            if col:
                df = df.sort_values(col, ascending=False, na_position="last")
            self.logger.log_table(key=key, dataframe=df.head(n))
        except Exception as e:
            log.warning("could not log table %s: %s", key, e)

    def images(self, key: str, images: list[Path]) -> None:
        if self.logger is None or not hasattr(self.logger, "log_image"):
            return
        imgs = [str(p) for p in images if Path(p).exists()]
        if not imgs:
            return
        try:
            self.logger.log_image(key=key, images=imgs)
        except Exception as e:
            log.warning("could not log images: %s", e)

    def finish(self) -> None:
        if self.logger is None:
            return
        try:
            exp = getattr(self.logger, "experiment", None)
            if exp is not None and hasattr(exp, "finish"):
                exp.finish()
        except Exception as e:
            log.warning("could not close the logger: %s", e)
