"""Logging helpers: one named logger per module, rich output when available."""

from __future__ import annotations

import logging

_CONFIGURED = False


def get_logger(name: str = "skyvar") -> logging.Logger:
    global _CONFIGURED
    if not _CONFIGURED:
        root = logging.getLogger("skyvar")
        # Under Hydra (or any app that configured logging) the root handlers already print our records.
        if not root.handlers and not logging.getLogger().handlers:
            try:
                from rich.logging import RichHandler

                handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
                fmt = "%(message)s"
            except ImportError:  # pragma: no cover
                handler = logging.StreamHandler()
                fmt = "%(levelname)s %(name)s: %(message)s"
            handler.setFormatter(logging.Formatter(fmt))
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("skyvar") else f"skyvar.{name}")
