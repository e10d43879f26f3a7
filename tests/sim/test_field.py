import dataclasses

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import run_cli

from skyvar.io.fits import read_frame
from skyvar.sim.field import FieldSimConfig, FieldSimulation, simulate_field_to_disk
from skyvar.sim.field_validation import (
    astrometric_crlb,
    background_var,
    monte_carlo_snr,
    recall_ceiling,
    snr_aperture,
    snr_psf,
)
from skyvar.sim.psf import PSFConfig, encircled_energy_radius, make_psf
from skyvar.sim.variability import VariabilityConfig

NOVAR = VariabilityConfig(frac_eb=0, frac_transit=0, frac_pulsator=0, frac_flare=0)


def _one_star(x, y, mag=20.0, size=48, **kw):
    cfg = FieldSimConfig(size=size, density=0.0, systematic_floor=0.0, variability=NOVAR, **kw)
    sim = FieldSimulation(cfg)
    # put a single star by hand (positions on the 1/64 lattice)
    from astropy.table import Table as T

    from skyvar.sim.field import StarRenderer

    sim.catalogue = T({"source_id": [0], "x": [x], "y": [y], "mag_input": [mag]})
    sim.flux_model = np.array([cfg.exptime * 10 ** (-0.4 * (mag - cfg.zp))])
    sim.renderer = StarRenderer(cfg, np.array([x]), np.array([y]), np.array([mag]))
    sim.unit_drawn = sim.renderer.unit_drawn
    sim._var_pos = np.array([-1])
    return cfg, sim


def test_default_psf_has_csst_encircled_energy():
    r80 = encircled_energy_radius(make_psf(PSFConfig()), 0.8)
    assert r80 == pytest.approx(0.145, rel=0.03)


@pytest.mark.parametrize("x,y", [(20.0, 21.0), (20.5, 21.25), (23.328125, 19.890625)])
def test_rendered_star_matches_galsim_exactly_and_conserves_flux(x, y):
    cfg, sim = _one_star(x, y)
    img = sim.renderer.render(sim.flux_model)
    # the same star drawn directly by GalSim (1-indexed image: pixel centre of 0-indexed x is x + 1)
    prof = galsim.Convolve(make_psf(cfg.psf), galsim.Pixel(cfg.pixel_scale)).withFlux(sim.flux_model[0])
    ref = galsim.ImageD(cfg.size, cfg.size, scale=cfg.pixel_scale)
    prof.drawImage(ref, method="no_pixel", center=galsim.PositionD(x + 1, y + 1))
    R = 10
    iy, ix = int(np.floor(y + 1 / 128)), int(np.floor(x + 1 / 128))
    win = (slice(iy - R, iy + R + 1), slice(ix - R, ix + R + 1))
    np.testing.assert_allclose(img[win], ref.array[win], rtol=0, atol=1e-5 * sim.flux_model[0])
    # truth flux = electrons actually drawn = image sum (no sky here)
    assert img.sum() == pytest.approx(sim.truth_table()["flux"][0], rel=1e-6)
    # the first-moment centroid within the stamp is the truth position (symmetric PSF)
    yy, xx = np.indices(img.shape)
    sub = img[win]
    assert (xx[win] * sub).sum() / sub.sum() == pytest.approx(x, abs=0.02)


def test_sky_noise_equals_sky_dark_read():
    cfg = FieldSimConfig(size=96, density=0.0, variability=NOVAR, seed=3)
    img, mask, hdr = FieldSimulation(cfg).render_epoch(0)
    expected = np.sqrt(cfg.sky_e_per_pixel + cfg.dark_e_s * cfg.exptime + hdr["RDNOISE"] ** 2)
    assert np.std(img) == pytest.approx(expected, rel=0.03)
    assert np.mean(img) == pytest.approx(cfg.sky_e_per_pixel + cfg.dark_e_s * cfg.exptime, rel=0.01)
    assert cfg.sky_e_per_pixel == pytest.approx(64, rel=0.03)  # DESIGN.md §4: ~64 e-/pix in 300 s


def test_snr_anchors_of_the_paper():
    cfg = FieldSimConfig()
    assert snr_psf(np.array([16.0]), cfg)[0] == pytest.approx(600, rel=0.1)
    assert 1.0857 / snr_psf(np.array([22.0]), cfg)[0] == pytest.approx(0.01, rel=0.3)
    m = np.linspace(24, 28, 801)
    assert np.interp(-5, -snr_aperture(m, cfg), m) == pytest.approx(25.9, abs=0.3)
    mc = monte_carlo_snr(cfg, mags=(22.0, 24.0), n_trials=300)
    for mag, s in mc.items():
        assert s == pytest.approx(snr_psf(np.array([mag]), cfg)[0], rel=0.12)
    assert background_var(cfg) > cfg.sky_e_per_pixel


def test_catalogue_density_and_target_fraction():
    cfg = FieldSimConfig(size=400, seed=5, variability=NOVAR)
    t = FieldSimulation(cfg).truth_table()
    assert len(t) / 400**2 == pytest.approx(0.02526, rel=0.05)
    assert np.mean(t["mag_input"] < 25) == pytest.approx(0.488, abs=0.03)
    assert t["x"].min() >= -0.5 and t["x"].max() < 399.5
    # positions on the 1/64 px lattice, ids unique
    assert np.allclose(np.asarray(t["x"]) * 64, np.round(np.asarray(t["x"]) * 64))
    assert len(np.unique(t["source_id"])) == len(t)


def test_same_seed_same_frame_other_seed_differs():
    a = FieldSimulation(FieldSimConfig(size=64, seed=7)).render_epoch(0)[0]
    b = FieldSimulation(FieldSimConfig(size=64, seed=7)).render_epoch(0)[0]
    c = FieldSimulation(FieldSimConfig(size=64, seed=8)).render_epoch(0)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_saturation_is_clipped_and_flagged():
    cfg, sim = _one_star(24.0, 24.0, mag=14.0)
    img, mask, hdr = sim.render_epoch(0)
    assert img.max() == hdr["SATURATE"] and mask.max() & 1 and mask.sum() >= 1


def test_variable_star_pixels_follow_truth_multiplier():
    var = VariabilityConfig(frac_eb=0.2, frac_transit=0.0, frac_pulsator=0.0, frac_flare=0.0, eb_period_max=0.3)
    cfg = FieldSimConfig(size=64, seed=11, n_epochs=30, systematic_floor=0.0, variability=var)
    sim = FieldSimulation(cfg)
    assert len(sim.variables.index) > 0
    e1, e2 = 0, 17
    diff = sim.expected_image(e2) - sim.expected_image(e1)
    f1, f2 = sim.flux_true(e1), sim.flux_true(e2)
    # the total change of light equals the change of the drawn truth fluxes (stars fully inside)
    inside = (sim.catalogue["x"] > 12) & (sim.catalogue["x"] < 51) & (sim.catalogue["y"] > 12) & (sim.catalogue["y"] < 51)
    outside_var = np.setdiff1d(sim.variables.index, np.flatnonzero(inside))
    if len(outside_var) == 0:
        assert diff.sum() == pytest.approx((f2 - f1).sum(), rel=1e-6, abs=1e-3)
    assert np.any(np.abs(f2 - f1) > 0)


def test_time_series_and_cli_writes_frames_truth_and_resumes(tmp_path):
    out = tmp_path / "f"
    r = run_cli(["-m", "skyvar.sim", "field", f"out_dir={out}", "seed=3", "size=64",
                 "n_epochs=3", "variability.frac_eb=0.1"])
    assert r.returncode == 0, r.stderr
    frames = sorted((out / "frames").glob("*.fits"))
    assert len(frames) == 3
    fr = read_frame(frames[1])
    assert fr.zp == 25.85 and fr.exptime == 300 and fr.wcs is not None and not fr.warnings
    assert fr.mjd == pytest.approx(60500.0 + 1.5 * 300 / 86400)
    truth = Table.read(out / "truth.ecsv")
    for c in ("source_id", "x", "y", "ra", "dec", "mag", "flux", "var_type", "period"):
        assert c in truth.colnames
    ra, dec = fr.pixel_to_world(np.asarray(truth["x"]), np.asarray(truth["y"]))
    np.testing.assert_allclose(ra, truth["ra"], atol=1e-9)
    import pandas as pd

    lc = pd.read_parquet(out / "lightcurves_truth.parquet")
    assert len(lc) == 3 * len(truth) and set(lc.epoch) == {0, 1, 2}
    # resume: frames with the same config hash are kept untouched
    mtime = frames[0].stat().st_mtime_ns
    cfg = FieldSimConfig(out_dir=str(out), seed=3, size=64, n_epochs=3,
                         variability=dataclasses.replace(VariabilityConfig(), frac_eb=0.1))
    simulate_field_to_disk(cfg, progress=False)
    assert frames[0].stat().st_mtime_ns == mtime
    assert fits.getheader(frames[0])["SIMSEED"] == 3


def test_cli_rejects_unknown_key(tmp_path):
    r = run_cli(["-m", "skyvar.sim", "field", f"out_dir={tmp_path}", "sizee=64"])
    assert r.returncode != 0 and "sizee" in r.stderr


def test_astrometric_crlb_and_recall_ceiling():
    cfg = FieldSimConfig()
    s = astrometric_crlb(np.array([20.0, 22.0, 24.0]), cfg)
    assert np.all(np.diff(s) > 0) and 0.03 < s[2] < 0.07  # i = 24: ~0.05 px per axis at CSST S/N
    # background-limited regime: the bound scales like 1/S/N
    ratio = s[2] / s[1]
    snr = snr_psf(np.array([22.0, 24.0]), cfg, systematic=False)
    assert ratio == pytest.approx(snr[0] / snr[1], rel=0.15)
    assert 0.6 < recall_ceiling(0.1, cfg) < 0.9 and recall_ceiling(1.0, cfg) > 0.999
