"""End to end: the released Astronet as a stage of ``python infer.py pipeline=lightcurves``."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightcurves"))
from test_views import make_box_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "src" / "skyvar" / "models" / "released" / "astronet-csst" / "astronet.pt"
CONF = ROOT / "src" / "skyvar" / "conf"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _store(tmp_path):
    # 3.5-day CSST-like curves: deep eclipses (periodic), a 1 % transit at high S/N, two constants
    b, _ = make_box_batch([0.83, 1.37, 2.1, 1.0, 1.0], [0.2, 0.15, 0.01, 0.0, 0.0], n_epochs=1000, sigma=0.002,
                          durations=[0.12, 0.15, 0.1, 0.1, 0.1], seed=7, mag=19.0)
    b.source_id = np.array([11, 12, 13, 14, 15])
    path = tmp_path / "store.parquet"
    b.to_long().to_parquet(path)
    return path


def _run(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("infer", overrides=overrides)
    return instantiate(cfg.pipeline, _convert_="partial").run()


@pytest.mark.skipif(not RELEASE.exists(), reason="released checkpoint not present")
def test_lightcurves_pipeline_with_astronet_stage(tmp_path):
    from skyvar.pipeline.lightcurves import read_features

    store = _store(tmp_path)
    _run(["pipeline=lightcurves_astronet", f"input={store}", f"out_dir={tmp_path / 'out'}", "device=cpu",
          "pipeline.progress=false"])
    f = read_features(tmp_path / "out").set_index("source_id")
    assert list(f.index) == [11, 12, 13, 14, 15]
    assert {"p_periodic", "p_periodic_adjusted", "astronet_class", "astronet_period"} <= set(f.columns)
    assert (f.loc[[11, 12, 13], "p_periodic"] > 0.9).all()  # eclipses and a high-S/N transit
    # constants: the release has no BLS gate, so the network scores them itself, far below the threshold
    assert (f.loc[[14, 15], "p_periodic"] < 0.25).all()
    assert f.loc[[14, 15], "astronet_class"].isin(["constant", "no_period", "unusable"]).all()
    assert f.loc[11, "astronet_class"] == "eb" and f.loc[13, "astronet_class"] == "transit"
    np.testing.assert_allclose(f.loc[13, "astronet_period"], 2.1, rtol=0.02)
    assert (tmp_path / "out" / "plots" / "astronet" / "candidates.png").exists()


@pytest.mark.slow
@pytest.mark.skipif(not RELEASE.exists(), reason="released checkpoint not present")
def test_infer_cli_subprocess(tmp_path):
    """The documented command line in a fresh interpreter."""
    from skyvar.pipeline.lightcurves import read_features
    from tests.conftest import run_cli

    store = _store(tmp_path)
    r = run_cli(["infer.py", "pipeline=lightcurves_astronet", f"input={store}", f"out_dir={tmp_path / 'out'}",
                 f"hydra.run.dir={tmp_path / 'h'}"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_features(tmp_path / "out")["p_periodic"].notna().all()
