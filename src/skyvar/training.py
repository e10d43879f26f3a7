"""Training driver used by ``train.py``: compose objects from a config and run Lightning.

The config is passed in explicitly (library code never reads Hydra globals). Every object is built
from its ``_target_``: the DataModule (``cfg.data``), the LightningModule (``cfg.model``), callbacks,
loggers and the Trainer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from skyvar.utils.log import get_logger

log = get_logger(__name__)


def instantiate_collection(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` in a mapping (callbacks, loggers)."""
    from hydra.utils import instantiate

    out: list[Any] = []
    if not cfg:
        return out
    for _, sub in cfg.items():
        if isinstance(sub, DictConfig) and "_target_" in sub:
            out.append(instantiate(sub))
    return out


def run_training(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test) ``cfg.model`` on ``cfg.data``; return the final callback metrics."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    if cfg.get("model") is None:
        raise ValueError("no model chosen: run e.g. `python train.py model=pnet`")
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    torch.set_float32_matmul_precision("high")

    log.info("data: %s", cfg.data.get("_target_") if cfg.get("data") else None)
    datamodule = instantiate(cfg.data) if cfg.get("data") else None
    model = instantiate(cfg.model)
    loggers = instantiate_collection(cfg.get("logger"))
    callbacks = instantiate_collection(cfg.get("callbacks"))
    if not loggers:  # Lightning refuses an LR monitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        # resuming our own checkpoints: their hparams may hold OmegaConf containers
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    best = None
    ckpt_cb = getattr(trainer, "checkpoint_callback", None)
    if ckpt_cb is not None and getattr(ckpt_cb, "best_model_path", ""):
        best = ckpt_cb.best_model_path
        log.info("best checkpoint: %s", best)
    if cfg.get("test", False) and datamodule is not None and hasattr(datamodule, "test_dataloader"):
        # without training, test the checkpoint that was given (never a freshly initialised model)
        test_ckpt = best or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        trainer.test(model=model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("export_to") and best and trainer.is_global_zero:
        export_checkpoint(best, cfg.export_to)
    return metrics


def export_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint to ``dst`` atomically (a reader never sees half a file); rank zero only."""
    from skyvar.utils.atomic import atomic_path

    dst = Path(dst)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    log.info("exported %s -> %s", src, dst)
    return dst


def run_evaluation(cfg: DictConfig) -> dict[str, float]:
    """``skyvar eval``: test the checkpoint ``cfg.ckpt_path`` (a Lightning checkpoint or a release name)
    on ``cfg.data``'s test split with ``cfg.model``'s LightningModule; returns the test metrics."""
    from skyvar.models.registry import checkpoint_path

    if not cfg.get("ckpt_path"):
        raise ValueError("skyvar eval needs ckpt_path=<Lightning checkpoint of the model>")
    path = checkpoint_path(cfg.ckpt_path)
    with open_dict(cfg):
        cfg.ckpt_path = str(path)
        cfg.train = False
        cfg.test = True
    return run_training(cfg)
