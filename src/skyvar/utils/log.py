"""Library logging: one named logger per module under ``skyvar``.

The library never installs handlers or changes propagation (a ``NullHandler`` on the package logger
keeps Python's last-resort handler quiet); the command-line programs configure output
(:func:`skyvar.cli.configure_logging`, or Hydra's logging for ``train``/``infer``/``eval``). In a
notebook, ``logging.basicConfig(level=logging.INFO)`` shows skyvar's progress messages.
"""

from __future__ import annotations

import logging


def get_logger(name: str = "skyvar") -> logging.Logger:
    return logging.getLogger(name if name.startswith("skyvar") else f"skyvar.{name}")
