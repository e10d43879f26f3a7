"""Small helpers for command-line ``key=value`` overrides of dataclass configs and for config hashing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")


def config_from_dotlist(cls: type[T], overrides: list[str] | None = None, base: dict | None = None) -> T:
    """Build dataclass ``cls`` from its defaults, a base dict, then ``key=value`` overrides.

    Unknown keys raise a clear error listing the valid ones (a typo must not be silently ignored).
    """
    schema = OmegaConf.structured(cls)
    if base:
        schema = OmegaConf.merge(schema, base)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must look like key=value, got {bad}")
        try:
            schema = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(overrides)))
        except Exception as e:  # omegaconf raises several types; unify them
            valid = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ValueError(f"invalid override for {cls.__name__}: {e}\nvalid keys: {valid}") from e
    return OmegaConf.to_object(schema)  # type: ignore[return-value]


def stable_hash(obj: Any, n: int = 12) -> str:
    """Content hash of a JSON-able object (dataclasses and OmegaConf allowed), order-independent for dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    elif OmegaConf.is_config(obj):
        obj = OmegaConf.to_container(obj, resolve=True)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def build_dataclass(_cls_: str, **kwargs: Any):
    """Hydra target that builds a (nested) config dataclass named by its import path, e.g.
    ``{_target_: skyvar.utils.config.build_dataclass, _cls_: skyvar.sim.field.FieldSimConfig, size: 256}``;
    nested dataclass fields accept dicts."""
    import importlib

    mod, _, name = _cls_.rpartition(".")
    cls = getattr(importlib.import_module(mod), name)
    return config_from_dotlist(cls, base=kwargs)


def compose_config(config_name: str = "train", overrides: list[str] | None = None):
    """Compose one of skyvar's shipped configs (``train``, ``infer``, ``eval``) outside a Hydra app,
    e.g. to build a DataModule from ``data=<name>`` in library code or a notebook.

    ``${hydra:...}`` interpolations are not available here; pass ``paths.output_dir=...`` when a
    config needs it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import skyvar.paths  # noqa: F401  (registers ${skyvar_path:...})

    gh = GlobalHydra.instance()
    was = gh.is_initialized()
    if was:
        gh.clear()
    with initialize_config_module("skyvar.conf", version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides or []))
    return cfg
