"""Building a pipeline's components (detectors, light-curve stages, loggers) from config, with a
clear message when one is not available, and fingerprints that make resume notice changed inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ComponentMissing", "plain", "instantiate_component", "files_fingerprint", "model_fingerprint"]


class ComponentMissing(RuntimeError):
    """A configured component (detector, stage, model) is not available in this installation."""


def plain(cfg: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (resolved); anything else unchanged."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return cfg


def instantiate_component(cfg: Any, what: str) -> Any:
    """Build ``cfg`` (a dict with ``_target_``, or an object already) with a clear message when its
    code, or a model it names (``checkpoint``: a release name or a file), is missing."""
    cfg = plain(cfg)
    if not isinstance(cfg, dict):
        return cfg
    target = cfg.get("_target_", "?")
    ckpt = cfg.get("checkpoint")
    if ckpt:
        from skyvar.models.registry import checkpoint_path

        try:
            checkpoint_path(ckpt)
        except FileNotFoundError as e:
            raise ComponentMissing(f"{what}: model {ckpt} not found (train or install the released checkpoint; "
                                   f"see its MODEL_CARD.md): {e}") from None
    from hydra.utils import instantiate

    try:
        return instantiate(cfg, _convert_="partial")
    except Exception as e:
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (ImportError, ModuleNotFoundError)) or "Error locating target" in str(e):
            raise ComponentMissing(f"{what}: {target} is not available in this installation ({cause})") from e
        raise


def files_fingerprint(files: list[Path]) -> list:
    """Name, size and modification time of each file (what resume compares)."""
    out = []
    for f in files:
        try:
            s = Path(f).stat()
            out.append([str(f), s.st_size, s.st_mtime_ns])
        except OSError:
            out.append([str(f), None, None])
    return out


def model_fingerprint(cfg: Any) -> list | None:
    """Fingerprint of the model file a component config names (``checkpoint``), so a retrained model
    at the same path (or a new release) invalidates what was computed with the old one."""
    cfg = plain(cfg)
    if not isinstance(cfg, dict) or not cfg.get("checkpoint"):
        return None
    from skyvar.models.registry import checkpoint_path

    try:
        p = checkpoint_path(cfg["checkpoint"])
    except FileNotFoundError:
        return [[str(cfg["checkpoint"]), None, None]]
    return files_fingerprint([p])
