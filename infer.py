"""Run a pipeline: ``python infer.py pipeline=<detect|lightcurves|...> input=... out_dir=...``.

With no arguments it simulates a CSST-like dense field and runs detection and evaluation on it.
"""

import os
from pathlib import Path

os.environ.setdefault("SKYVAR_ROOT", str(Path(__file__).resolve().parent))
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    from skyvar.inference import run_inference

    run_inference(cfg)


if __name__ == "__main__":
    main()
