"""The torch device a stage runs on: one rule for every pipeline, detector and model."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(name: str | None = "auto") -> str:
    """``"auto"``/None: ``"cuda"`` when a CUDA device is visible, else ``"cpu"``; anything else
    (``"cpu"``, ``"cuda:1"``, ``"mps"``) is returned unchanged. A CUDA device asked for on a machine
    without one is an error naming the problem (rather than a crash deep inside a model)."""
    import torch

    if name in (None, "auto", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    name = str(name)
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but torch sees no CUDA device (use device=auto or cpu)")
    return name
