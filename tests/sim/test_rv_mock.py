import numpy as np
import pytest
from astropy.table import Table

from skyvar.sim import __main__ as sim_main
from skyvar.sim.rv_mock import (
    MRSFilesConfig,
    RVMockConfig,
    noisy_shifted_spectra,
    simulate_mrs_files,
    simulate_rv_mock,
)
from skyvar.spectra.mrs import read_mrs


def test_paper_mock_structure_and_determinism():
    cfg = RVMockConfig(seed=3)
    rows, stars = simulate_rv_mock(cfg)
    assert len(stars) == 250 and len(rows) == 250 * 30
    assert len(np.unique(rows["exposure"])) == 30 and len(np.unique(rows["night"])) == 7
    c = rows[rows["star_type"] == "constant"]
    assert np.abs(c["true_rv"]).max() <= 0.1
    # one systematic shift per night, within +-7 km/s
    for n in np.unique(rows["night"]):
        z = np.unique(rows["true_zp"][rows["night"] == n])
        assert len(z) == 1 and abs(z[0]) <= 7
    b = stars[stars["star_type"] == "binary"]
    assert len(b) == 40 and b["amplitude"].min() >= 3 and b["amplitude"].max() <= 15
    assert b["period"].min() >= 0.5 and b["period"].max() <= 3
    nc = stars[stars["star_type"] == "nonconstant"]
    assert len(nc) == 10 and nc["amplitude"].min() >= 2
    # noise: rv - true_rv - true_zp has the stated per-star sigma
    resid = rows["rv"] - rows["true_rv"] - rows["true_zp"]
    assert np.std(resid / rows["rv_err"]) == pytest.approx(1.0, abs=0.05)
    rows2, _ = simulate_rv_mock(RVMockConfig(seed=3))
    np.testing.assert_array_equal(rows["rv"], rows2["rv"])
    rows3, _ = simulate_rv_mock(RVMockConfig(seed=4))
    assert not np.allclose(rows["rv"], rows3["rv"])


def test_cli_writes_tables_and_rejects_bad_config(tmp_path, capsys):
    assert sim_main.main(["rv_mock", f"out_dir={tmp_path}", "n_constant=20", "n_binary=4", "n_nonconstant=2"]) == 0
    t = Table.read(tmp_path / "rv.ecsv")
    assert len(t) == 26 * 30 and {"rv", "true_rv", "true_zp", "star_type"} <= set(t.colnames)
    assert sim_main.main(["rv_mock", f"out_dir={tmp_path}", "n_nights=40"]) == 2
    assert sim_main.main(["rv_mock", "nonsense_key=1"]) == 2
    assert sim_main.main(["rv_mock", "mode=bad"]) == 2
    assert sim_main.main(["rv_mock", "--help"]) == 0


def test_noisy_shifted_spectra_snr_and_shift():
    wave = np.linspace(6000, 6100, 2001)

    def model(w):
        return 1 - 0.5 * np.exp(-0.5 * ((w - 6050) / 0.5) ** 2)

    rng = np.random.default_rng(0)
    f, iv = noisy_shifted_spectra(model, wave, [0.0, 100.0], 50.0, rng)
    assert np.median(np.sqrt(iv[0]) * model(wave)) == pytest.approx(50.0, rel=0.02)
    # the line centre moves by 6050 * 100 / c Å
    f0, _ = noisy_shifted_spectra(model, wave, [0.0, 100.0], 1e9, rng)
    shift = wave[np.argmin(f0[1])] - wave[np.argmin(f0[0])]
    assert shift == pytest.approx(6050 * 100 / 299792.458, abs=0.06)


def test_fits_mode_round_trip(tmp_path):
    cfg = MRSFilesConfig(out_dir=str(tmp_path), n_stars=2, n_nights=2, exposures_per_night=2)
    truth = simulate_mrs_files(cfg)
    files = sorted(tmp_path.glob("med-*.fits"))
    assert len(files) == 4 and len(truth) == 2 * 2 * 2 * 2
    ss = read_mrs(files[0])
    assert len(ss) == 4 and {s.meta["arm"] for s in ss} == {"B", "R"}
    assert all(np.all(np.diff(s.wavelength) > 0) and s.meta["flag"] == "" for s in ss)
