"""Lazy public names for subpackages: ``skyvar.detect.PNetDetector`` works, but ``import skyvar.detect``
does not import torch or photutils until a name that needs them is used."""

from __future__ import annotations

import importlib
from typing import Any


def lazy_exports(package: str, names: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a package whose public ``names`` live in submodules
    (``{"PNetDetector": "skyvar.detect.pnet"}``)."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
