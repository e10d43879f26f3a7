"""LAMOST-like spectrum simulator: reproducibility, labels and splits, S/N, physics of the binaries."""

import numpy as np
import pandas as pd
import pytest

from skyvar.sim.spectra import (
    SpectraSimConfig,
    _bin_to_native,
    _shift_rows,
    ccm89_extinction,
    fine_loglam,
    lamost_wavelength,
    main,
    resolve_paths,
    simulate_to_disk,
)
from tests.conftest import shared_data
from tests.spectra.lrs_helpers import TINY_SIM


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    shared_data("spectra", "redrock")
    out = tmp_path_factory.mktemp("sim")
    cfg = resolve_paths(SpectraSimConfig(out_dir=str(out), write_fits=2, **TINY_SIM))
    simulate_to_disk(cfg)
    return out


def test_outputs_labels_and_splits(sim_dir):
    meta = pd.read_parquet(sim_dir / "meta.parquet")
    flux = np.load(sim_dir / "flux.npy")
    assert flux.shape == (100, 3909) and np.isfinite(flux).all()
    assert (meta.subset == "single").sum() == 60 and (meta.label == 1).sum() == 20
    mid = meta[meta.subset == "binary_mid"]
    assert mid.q.between(0.71, 0.93).all()
    ev = meta[meta.subset == "binary_eval"]
    assert ev.q.between(0.3, 1.0).all() and (ev.split == "eval").all() and (ev.label == 0).all()
    s = meta[meta.subset == "single"].split.value_counts()
    assert (s["train"], s["val"], s["test"]) == (48, 6, 6)
    assert meta.teff1.between(3800, 6500).all()
    assert len(list((sim_dir / "fits").glob("*.fits"))) == 4


def test_binary_physics(sim_dir):
    meta = pd.read_parquet(sim_dir / "meta.parquet")
    b = meta[meta.subset != "single"]
    np.testing.assert_allclose(b.mass2 / b.mass1, b.q, rtol=1e-6)
    assert (np.abs(b.rv1 - b.rv2) <= 150 + 1e-9).all()
    # momentum conservation about the systemic velocity: M1 (v1 - v0) + M2 (v2 - v0) = 0
    v0 = (b.mass1 * b.rv1 + b.mass2 * b.rv2) / (b.mass1 + b.mass2)
    np.testing.assert_allclose((b.rv1 - v0) * b.mass1, -(b.rv2 - v0) * b.mass2, atol=1e-6)
    assert (b.teff2 <= b.teff1 + 1).all()  # the less massive star is the cooler one


def test_snr_matches_request(sim_dir):
    meta = pd.read_parquet(sim_dir / "meta.parquet")
    f = np.load(sim_dir / "flux.npy")
    iv = np.load(sim_dir / "ivar.npy")
    w = lamost_wavelength()
    am = np.load(sim_dir / "andmask.npy")
    g = (w > 4000) & (w < 5300)
    snr = [np.median((f[k] * np.sqrt(iv[k]))[g & (am[k] == 0)]) for k in range(len(f))]
    np.testing.assert_allclose(snr, meta.snr_g, rtol=0.1)


def test_variance_floor(sim_dir):
    """With the sky/read-noise floor no pixel is more precise than the g-band flux level allows."""
    f = np.load(sim_dir / "flux.npy")
    iv = np.load(sim_dir / "ivar.npy")
    meta = pd.read_parquet(sim_dir / "meta.parquet")
    w = lamost_wavelength()
    g = (w > 4000) & (w < 5300)
    fg = np.median(f[:, g], axis=1)
    # sigma >= sqrt(b / (K G_max)) = a fixed fraction of fg / snr_g
    sig_min = np.min(np.where(iv > 0, 1 / np.sqrt(np.where(iv > 0, iv, 1)), np.inf), axis=1)
    assert np.all(sig_min > 0.02 * fg / meta.snr_g.to_numpy())


def test_reproducible(tmp_path, sim_dir):
    cfg = resolve_paths(SpectraSimConfig(out_dir=str(tmp_path / "again"), **TINY_SIM))
    simulate_to_disk(cfg)
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "flux.npy"), np.load(sim_dir / "flux.npy"))


def test_ccm89_against_dust_extinction():
    w = np.array([3800.0, 4400.0, 5494.5, 7000.0, 9000.0, 9999.0])
    a = ccm89_extinction(w, np.array([1.0 / 3.1, 0.5 / 3.1]))
    assert a[0, 2] == pytest.approx(1.0, abs=1e-4)  # A_V / A_V at x = 1.82 by construction
    np.testing.assert_allclose(a[1], 0.5 * a[0])
    dx = pytest.importorskip("dust_extinction.parameter_averages")
    import astropy.units as u

    np.testing.assert_allclose(a[0], dx.CCM89(Rv=3.1)(w * u.AA), rtol=1e-6)


def test_doppler_shift_and_binning():
    loglam = fine_loglam()
    line = 6564.6
    spec = (1 - 0.5 * np.exp(-0.5 * ((10**loglam - line) / 3.0) ** 2))[None, :].astype(np.float32)
    v = 100.0
    shifted = _shift_rows(spec, np.array([np.log10(1 + v / 299792.458) / 1e-5]))
    native = _bin_to_native(shifted)[0]
    w = lamost_wavelength()
    sel = (w > 6500) & (w < 6650)
    centre = np.sum(w[sel] * (1 - native[sel])) / np.sum(1 - native[sel])
    assert centre == pytest.approx(line * (1 + v / 299792.458), abs=0.1)


def test_cli(tmp_path, capsys):
    assert main(["bogus_key=1"]) == 2
    assert main(["survey=sdss"]) == 2
    assert main(["--help"]) == 0
