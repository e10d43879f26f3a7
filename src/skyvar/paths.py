"""Where skyvar finds its files: one rule, used by every command and pipeline.

Three kinds of location:

* **package files** ship inside the installed package and are found relative to it, never to the
  working directory: the Hydra configs (:func:`conf_dir`, also ``pkg://skyvar.conf``), the released
  checkpoints (:func:`released_dir`, see :mod:`skyvar.models.registry`) and reference data such as
  stellar templates (:func:`resource`).
* **the work root** (:func:`root`), under which runs write ``logs/`` and cached ``datasets/``:
  ``$SKYVAR_ROOT`` when set; else the source checkout the package was installed from (an editable
  install, e.g. ``make demo``); else the current directory (a wheel install: outputs go where the
  user runs the command, as with Hydra's ``outputs/``).
* **outside reference data** (:func:`shared_dir`): the project's ``../shared`` folder, used only by
  tests and by ``reproduce`` for checks against real files. Nothing a command needs lives there.

Relative paths given by a user are resolved against the current directory first, then the work root
(:func:`resolve`), so ``input=frames/`` means what the user sees in their shell.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["package_dir", "conf_dir", "released_dir", "resource", "root", "data_dir", "log_dir",
           "shared_dir", "resolve", "source_checkout"]

_PKG = Path(__file__).resolve().parent


def package_dir() -> Path:
    """The installed ``skyvar`` package folder."""
    return _PKG


def conf_dir() -> Path:
    """The Hydra config tree shipped with the package (``pkg://skyvar.conf``)."""
    return _PKG / "conf"


def released_dir() -> Path:
    """Released checkpoints, one folder per model with its ``MODEL_CARD.md``."""
    return _PKG / "models" / "released"


def resource(*parts: str) -> Path:
    """A reference-data file shipped in ``skyvar/resources`` (raises if it is not installed)."""
    p = _PKG.joinpath("resources", *parts)
    if not p.exists():
        raise FileNotFoundError(f"skyvar resource {'/'.join(parts)} is missing from this installation ({p})")
    return p


def source_checkout() -> Path | None:
    """The source checkout this package runs from (``src/skyvar`` inside a tree with the project's
    ``pyproject.toml``), or None for an installed wheel."""
    cand = _PKG.parent.parent
    pp = cand / "pyproject.toml"
    if _PKG.parent.name == "src" and pp.is_file():
        try:
            if 'name = "skyvar"' in pp.read_text(encoding="utf-8"):
                return cand
        except OSError:
            return None
    return None


def root() -> Path:
    """The work root: ``$SKYVAR_ROOT``, else the source checkout, else the current directory."""
    env = os.environ.get("SKYVAR_ROOT")
    if env:
        return Path(env).expanduser()
    return source_checkout() or Path.cwd()


def data_dir() -> Path:
    """Generated and cached data sets (``<root>/datasets``)."""
    return root() / "datasets"


def log_dir() -> Path:
    """Run outputs (``<root>/logs``)."""
    return root() / "logs"


def shared_dir() -> Path | None:
    """The project's outside reference data (``$SKYVAR_SHARED``, else ``../shared`` next to the work
    root or the checkout), or None when absent. Only tests and ``reproduce`` use it."""
    env = os.environ.get("SKYVAR_SHARED")
    cands = [Path(env).expanduser()] if env else []
    for base in (root(), source_checkout()):
        if base is not None:
            cands.append(base.parent / "shared")
    for c in cands:
        if c.is_dir():
            return c.resolve()
    return None


def resolve(path: str | os.PathLike, must_exist: bool = False) -> Path:
    """A user-given path: as given (absolute, or relative to the current directory) when it exists,
    else relative to the work root when that exists; else as given (or FileNotFoundError)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.exists():
        return p.absolute()
    q = root() / p
    if q.exists():
        return q
    if must_exist:
        raise FileNotFoundError(f"{path}: not found in {Path.cwd()} or {root()}")
    return p


def _register_resolver() -> None:
    """``${skyvar_path:root}``, ``${skyvar_path:released}`` … in configs (conf/paths/default.yaml)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover
        return
    where = {"root": root, "released": released_dir, "conf": conf_dir, "data": data_dir, "logs": log_dir,
             "package": package_dir}

    def _resolve(kind: str) -> str:
        if kind not in where:
            raise ValueError(f"${{skyvar_path:{kind}}}: choose one of {', '.join(where)}")
        return str(where[kind]())

    if not OmegaConf.has_resolver("skyvar_path"):
        OmegaConf.register_new_resolver("skyvar_path", _resolve)


_register_resolver()
