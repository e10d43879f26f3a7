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
from tests.spectra.lrs_helpers import TINY_SIM


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")  # packaged templates: no ../shared needed
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
    assert ev.q.between(0.1, 1.0).all() and (ev.split == "eval").all() and (ev.label == 0).all()
    assert (ev.template_split == "test").all()
    s = meta[meta.subset == "single"].split.value_counts()
    assert (s["train"], s["val"], s["test"]) == (48, 6, 6)
    assert meta.teff1.between(3800, 6500).all()
    assert len(list((sim_dir / "fits").glob("*.fits"))) == 4


def test_split_by_template(sim_dir):
    """No template of a test (or eval) spectrum appears in a training spectrum, as primary or secondary."""
    meta = pd.read_parquet(sim_dir / "meta.parquet")

    def templates(split):
        m = meta[meta.template_split == split]
        return set(m.template1) | set(m.template2[m.template2 >= 0])

    assert not templates("train") & templates("test")
    assert not templates("train") & templates("val")


def test_binary_physics(sim_dir):
    meta = pd.read_parquet(sim_dir / "meta.parquet")
    b = meta[meta.subset != "single"]
    np.testing.assert_allclose(b.mass2 / b.mass1, b.q, rtol=1e-6)
    np.testing.assert_allclose(np.abs(b.rv1 - b.rv2), b.dv_abs, rtol=1e-9, atol=1e-9)
    assert (b.period > 0.1).all() and (b.a_au < 1000).all() and b.ecc.between(0, 0.6).all()
    assert ((b.light_ratio > 0) & (b.light_ratio <= 1.0 + 1e-9)).all()
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


def test_orbit_population_statistics():
    """Raghavan et al. (2010) periods, isotropic inclinations: most |Δv| are small (the issue's ~88 %)."""
    from skyvar.sim.spectra import draw_orbits, solve_kepler

    rng = np.random.default_rng(0)
    n = 20000
    m1 = np.full(n, 1.0)
    o = draw_orbits(rng, m1, rng.uniform(0.1, 1.0, n), SpectraSimConfig())
    frac = np.mean(np.abs(o["dv"]) < 20)
    assert 0.8 < frac < 0.95
    assert np.median(np.cos(np.radians(o["incl"]))) == pytest.approx(0.5, abs=0.02)
    # circular orbit: |Δv| never exceeds the relative semi-amplitude; Kepler's equation is solved
    circ = o["ecc"] == 0
    assert np.all(np.abs(o["dv"][circ]) <= o["k_rel"][circ] + 1e-9)
    M = rng.uniform(0, 2 * np.pi, 100)
    e = rng.uniform(0, 0.9, 100)
    E = solve_kepler(M, e)
    np.testing.assert_allclose(E - e * np.sin(E), M, atol=1e-9)
    # a Sun-Sun pair at 1 AU: K1 + K2 = 2 pi a / P = 42.1 km/s edge-on
    cfg = SpectraSimConfig(logp_mean=np.log10(365.25 / np.sqrt(2)), logp_sigma=1e-6, e_max=0.0, p_circ_days=1e9)
    o = draw_orbits(np.random.default_rng(1), np.ones(2000), np.ones(2000), cfg)
    assert o["a_au"][0] == pytest.approx(1.0, rel=1e-3)
    assert np.max(o["k_rel"]) == pytest.approx(2 * np.pi * 1.495978707e8 / (365.25 / np.sqrt(2) * 86400), rel=1e-3)


def test_cmd_offsets_and_labels():
    """Equal-mass twins sit 0.75 mag above the single-star sequence at the same colour; tiny companions ~0."""
    from skyvar.sim.spectra import cmd_label, cmd_offset

    assert cmd_offset([1.0], [1.0])[0] == pytest.approx(-2.5 * np.log10(2), abs=1e-6)
    assert cmd_offset([1.0], [np.nan])[0] == pytest.approx(0.0, abs=1e-9)
    assert -0.1 < cmd_offset([1.0], [0.2])[0] < 0.0
    assert cmd_label([0.1, -0.3, -0.6, 0.3]).tolist() == [0, 1, -1, -1]


def test_cmd_label_mode(tmp_path):
    cfg = SpectraSimConfig(out_dir=str(tmp_path), n_single=30, n_binary=60, n_eval_binary=10, seed=3, chunk=50,
                           label_mode="cmd")
    simulate_to_disk(cfg)
    meta = pd.read_parquet(tmp_path / "meta.parquet")
    pop = meta[meta.subset == "binary_pop"]
    assert (pop.split[pop.label_cmd < 0] == "excluded").all()
    kept = pop[pop.split != "excluded"]
    assert (kept.label == kept.label_cmd).all() and (kept.label == 0).any()  # low-q binaries count as single


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
