"""Running a configured pipeline from Python, exactly as ``skyvar infer`` does from the shell."""

from __future__ import annotations

from typing import Any

__all__ = ["run"]


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def run(pipeline: str, *overrides: str, **kwargs: Any) -> Any:
    """Compose ``conf/infer.yaml`` with ``pipeline=<pipeline>``, the Hydra ``overrides`` given as strings
    (``"detector=sep"``, ``"pipeline.simulate.size=128"``) and top-level keys as keyword arguments
    (``input=``, ``truth=``, ``out_dir=``, ``device=``), then build the pipeline and return what its
    ``run()`` returns (a summary dict)::

        from skyvar.pipeline import run
        summary = run("field", "detector=pnet", input="frames/", out_dir="out/field")
    """
    import lightning as L
    from hydra.utils import instantiate

    from skyvar.utils.config import compose_config

    ov = [f"pipeline={pipeline}", *overrides, *(f"{k}={_fmt(v)}" for k, v in kwargs.items())]
    cfg = compose_config("infer", ov)
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return instantiate(cfg.pipeline, _convert_="partial").run()
