from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from skyvar.sim.field import FieldSimConfig

CONF = Path(__file__).resolve().parents[2] / "src" / "skyvar" / "conf"


def test_sim_field_yaml_matches_dataclass_defaults():
    cfg = OmegaConf.load(CONF / "sim" / "field.yaml")
    obj = instantiate(cfg, _convert_="all")
    assert obj == FieldSimConfig()
    obj2 = instantiate(OmegaConf.merge(cfg, {"size": 99, "psf": {"dilate": 1.2}}), _convert_="all")
    assert obj2.size == 99 and obj2.psf.dilate == 1.2 and obj2.psf.model == "airy"
