"""CSST-like light curves from truth fluxes + the simulator's noise model (skyvar.sim.csst_lightcurves)."""

import numpy as np
import pandas as pd
import pytest

from skyvar.sim.csst_lightcurves import (
    CSSTLightCurveConfig,
    field_config,
    light_curve_snr,
    simulate_csst_lightcurves,
)
from skyvar.sim.field_validation import snr_psf
from skyvar.utils.config import config_from_dotlist

TINY = ["n_stars=150", "field.n_epochs=120", "field.variability.frac_transit=0.2", "field.variability.frac_eb=0.1",
        "chunk_stars=60"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("csst_lc")
    cfg = config_from_dotlist(CSSTLightCurveConfig, [f"out_dir={out}", "seed=3", *TINY])
    simulate_csst_lightcurves(cfg)
    return cfg, out


def test_store_format_labels_and_noise(tiny):
    cfg, out = tiny
    lc = pd.read_parquet(out / "lightcurves.parquet")
    lab = pd.read_parquet(out / "labels.parquet")
    assert list(lc.columns) == ["source_id", "band", "time", "mag", "mag_err", "flag"]
    assert set(lc["source_id"]) <= set(lab["source_id"]) and (lab["mag"] < 25).all()
    assert 100 < len(lab) < 220  # ~150 targets requested
    assert lc.groupby("source_id")["time"].apply(lambda s: s.is_monotonic_increasing).all()
    assert (lab["label"] == lab["periodic"].astype(int)).all()
    assert set(lab.loc[lab["label"] == 1, "class_name"]) <= {"eb", "transit", "pulsator"}
    assert (lab.loc[lab["var_type"] == "constant", "snr_lc"] < 1e-6).all()
    # the scatter of constant stars equals the simulator's PSF-fit S/N
    const = lab.loc[(lab["var_type"] == "constant") & (lab["mag"] < 23), "source_id"]
    g = lc[lc["source_id"].isin(const)].groupby("source_id")["mag"]
    std = g.std()
    model = 1.0857 / snr_psf(lab.set_index("source_id").loc[std.index, "mag"].to_numpy(), field_config(cfg))
    ratio = std.to_numpy() / model
    assert 0.85 < np.median(ratio) < 1.15
    # errors are the model errors at the measured magnitude
    np.testing.assert_allclose(lc["mag_err"], 1.0857 / snr_psf(lc["mag"].to_numpy(), field_config(cfg)), rtol=2e-3)


def test_same_config_same_data_and_reuse(tiny, tmp_path):
    cfg, out = tiny
    import dataclasses

    cfg2 = dataclasses.replace(cfg, out_dir=str(tmp_path / "again"))
    simulate_csst_lightcurves(cfg2)
    a = pd.read_parquet(out / "lightcurves.parquet")
    b = pd.read_parquet(tmp_path / "again" / "lightcurves.parquet")
    pd.testing.assert_frame_equal(a, b)
    mtime = (tmp_path / "again" / "lightcurves.parquet").stat().st_mtime_ns
    simulate_csst_lightcurves(cfg2)  # complete output of the same config: reused
    assert (tmp_path / "again" / "lightcurves.parquet").stat().st_mtime_ns == mtime


def test_light_curve_snr_hand_values():
    # a box dip of depth 0.1 on 2 of 8 epochs, flux 1, noise 0.05 per epoch
    sig = np.array([[1, 1, 0.9, 0.9, 1, 1, 1, 1.0]])
    r, tot = light_curve_snr(sig, np.full((1, 8), 0.05), np.ones((1, 8), bool))
    rms = np.sqrt(np.mean((sig - sig.mean()) ** 2))
    assert r[0] == pytest.approx(rms / 0.05)
    assert tot[0] == pytest.approx(np.sqrt(8) * rms / 0.05)
    r, _ = light_curve_snr(sig, np.full((1, 8), 0.05), np.zeros((1, 8), bool))
    assert np.isnan(r[0])


def test_cli_through_dispatcher(tmp_path):
    from tests.conftest import run_cli

    r = run_cli(["-m", "skyvar.sim", "lightcurves", "survey=csst", f"out_dir={tmp_path}", "n_stars=20",
                 "field.n_epochs=30"])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "lightcurves.parquet").exists() and (tmp_path / "done.json").exists()



def test_cli_rejects_unknown_keys(capsys):
    from skyvar.sim.lightcurves import main

    assert main(["survey=csst", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
