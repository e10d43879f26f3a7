"""The ZTF-like labelled light-curve simulator."""


import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from skyvar.lightcurves.store import read_store
from skyvar.sim.ztf import T_SPAN, T_START, ZTFSimConfig, error_model, main, simulate


@pytest.fixture(scope="module")
def small():
    return simulate(ZTFSimConfig(n_variables=150, n_constant=150, seed=3))


def test_error_model_matches_ztf_figures():
    cfg = ZTFSimConfig()
    assert error_model(15.0, cfg) == pytest.approx(0.0106, abs=0.001)  # issue: ~0.01 mag at 15
    assert error_model(20.5, cfg) == pytest.approx(0.100, abs=0.002)  # ~0.1 mag at 20.5
    m = np.linspace(13, 21, 50)
    assert np.all(np.diff(error_model(m, cfg)) > 0)


def test_cadence_and_epochs(small):
    lc, lab = small
    n = lc.groupby(["source_id", "band"]).size()
    assert n.min() >= 20 and n.max() <= 500 and set(lc.band) == {"g", "r"}
    assert lc.time.min() >= T_START and lc.time.max() <= T_START + T_SPAN + 1
    gaps = lc.sort_values("time").groupby(["source_id", "band"]).time.apply(lambda t: np.diff(t.to_numpy()))
    # Seasonal gaps: the longest gap of most curves exceeds two months; typical spacing ~1-3 d.
    assert np.mean([g.max() > 60 for g in gaps]) > 0.8
    med = np.median([np.median(g[g > 0.5]) for g in gaps if (g > 0.5).sum() > 5])
    assert 1.0 <= med <= 4.0
    # Variables (Kepler field) have more epochs and are brighter than standard stars (paper Fig. 2).
    per = n.groupby(level=0).mean()
    lab = lab.set_index("source_id")
    assert per[lab.label == 1].median() > per[lab.label == 0].median()
    assert lab.mag_r[lab.label == 1].median() < lab.mag_r[lab.label == 0].median()


def test_labels_balance_and_mix(small):
    _, lab = small
    assert (lab.label == 1).sum() == (lab.label == 0).sum() == 150
    frac = lab[lab.label == 1].var_type.value_counts(normalize=True)
    assert frac["rotation"] == pytest.approx(12151 / 16060, abs=0.1)
    assert set(frac.index) <= {"rotation", "pulsator", "eb_detached", "eb_contact"}
    assert (lab[lab.label == 0].var_type == "constant").all() and lab[lab.label == 0].amplitude.eq(0).all()


def test_constant_stars_scatter_as_their_errors(small):
    lc, lab = small
    const = lc[lc.source_id.isin(lab.source_id[lab.label == 0]) & (lc.flag == 0)]
    z = (const.mag - const.groupby(["source_id", "band"]).mag.transform("median")) / const.mag_err
    robust = 1.4826 * np.median(np.abs(z))  # outliers and bad nights excluded by the median
    assert robust == pytest.approx(1.0, abs=0.08)
    var = lc[lc.source_id.isin(lab.source_id[lab.var_type == "eb_contact"])]
    assert var.groupby(["source_id", "band"]).mag.std().median() > 0.05


def test_deterministic_and_seeded():
    a, la = simulate(ZTFSimConfig(n_variables=10, n_constant=10, seed=1))
    b, lb = simulate(ZTFSimConfig(n_variables=10, n_constant=10, seed=1))
    c, _ = simulate(ZTFSimConfig(n_variables=10, n_constant=10, seed=2))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(la, lb)
    assert len(a) != len(c) or not np.allclose(a.mag, c.mag)


def test_cli_writes_store_and_labels(tmp_path, capsys):
    assert main([f"out_dir={tmp_path}", "n_variables=8", "n_constant=8", "n_partitions=2"]) == 0
    store = read_store(tmp_path / "store")
    lab = pd.read_parquet(tmp_path / "labels.parquet")
    assert set(store.source_id) == set(lab.source_id) and len(lab) == 16
    assert (tmp_path / "config.json").exists()
    assert main(["--help"]) == 0 and "n_variables" in capsys.readouterr().out
    assert main(["nonsense_key=1"]) == 2


def test_dispatcher_reaches_the_simulator(tmp_path, root):
    r = run_cli(["-m", "skyvar.sim", "lightcurves", "survey=ztf", f"out_dir={tmp_path}",
                 "n_variables=3", "n_constant=3"], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "labels.parquet").exists()
