from hydra.utils import instantiate
from omegaconf import OmegaConf

from skyvar.sim.field import FieldSimConfig


def test_simulator_config_builds_from_a_hydra_node_with_nested_overrides():
    # the dataclass is the single source of the defaults; configs only name what they change
    cfg = OmegaConf.create({"_target_": "skyvar.utils.config.build_dataclass",
                            "_cls_": "skyvar.sim.field.FieldSimConfig"})
    assert instantiate(cfg, _convert_="all") == FieldSimConfig()
    obj2 = instantiate(OmegaConf.merge(cfg, {"size": 99, "psf": {"dilate": 1.2}}), _convert_="all")
    assert obj2.size == 99 and obj2.psf.dilate == 1.2 and obj2.psf.model == "airy"
