"""Every config composes; every object it names instantiates (DESIGN.md §6).

Groups added later (model/, data/, detector/, pipeline/) get their own instantiation tests next to the
code; here every option of every group must at least compose.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "src" / "skyvar" / "conf"
TRAIN_GROUPS = ["trainer", "logger", "callbacks", "model", "data", "experiment"]
INFER_GROUPS = ["pipeline", "detector", "infer_experiment"]


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if p.stem != "default")


def _compose(name, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.mark.parametrize(
    "config,group,option",
    [("train", g, o) for g in TRAIN_GROUPS for o in _options(g)]
    + [("infer", g, o) for g in INFER_GROUPS for o in _options(g)],
)
def test_every_option_composes(config, group, option, tmp_path):
    # train.yaml lists `experiment: null`, so `experiment=x` (not `+experiment=x`) selects one
    cfg = _compose(config, [f"{group}={option}", f"paths.output_dir={tmp_path}", "paths.root_dir=."])
    assert cfg is not None


@pytest.mark.parametrize("name", _options("trainer"))
def test_trainer_configs_instantiate(name, tmp_path):
    cfg = _compose("train", [f"trainer={name}", f"paths.output_dir={tmp_path}"])
    tr = OmegaConf.to_container(cfg.trainer, resolve=True)
    # Composition is what is tested without accelerators; DDP itself has its own test.
    tr.update(accelerator="cpu", devices=1)
    tr.pop("strategy", None)
    tr.pop("num_nodes", None)
    trainer = instantiate(OmegaConf.create(tr), logger=False, enable_progress_bar=False)
    assert trainer.max_epochs >= 1


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callback_configs_instantiate(group, tmp_path):
    for name in _options(group):
        cfg = _compose("train", [f"{group}={name}", f"paths.output_dir={tmp_path}", "paths.root_dir=."])
        for _, sub in (cfg.get(group) or {}).items():
            assert instantiate(sub) is not None
