"""Train a model: ``python train.py model=<name> [data=...] [trainer=gpu|ddp] [logger=...]``."""

import os
from pathlib import Path

os.environ.setdefault("SKYVAR_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from skyvar.training import run_training

    metrics = run_training(cfg)
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


if __name__ == "__main__":
    main()
