"""Forced PSF photometry (skyvar.detect.forced_psf) against photutils PSFPhotometry with fixed positions."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from astropy.table import Table

from skyvar.detect.forced_psf import ForcedPSFPhotometry, _TileSystem, fit_radii, stack_frames


def _gaussian_psf(fwhm=2.3, oversampling=4, radius=10):
    from photutils.psf import CircularGaussianPRF, ImagePSF

    half = radius * oversampling
    u = np.arange(-half, half + 1) / oversampling
    xx, yy = np.meshgrid(u, u)
    data = np.asarray(CircularGaussianPRF(flux=1.0, x_0=0.0, y_0=0.0, fwhm=fwhm)(xx, yy), float)
    return ImagePSF(data, oversampling=oversampling, origin=(half, half))


def _frame(psf, positions, fluxes, shape=(96, 96), sky=70.0, read=7.0, seed=0):
    """Stars drawn with the PSF model itself (so any difference is the fitting), sky, Poisson + read noise."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    img = np.full(shape, sky)
    for (x, y), f in zip(positions, fluxes):
        r = 12
        sl = (slice(max(int(y) - r, 0), min(int(y) + r + 1, ny)), slice(max(int(x) - r, 0), min(int(x) + r + 1, nx)))
        img[sl] += f * psf.evaluate(xx[sl] - x, yy[sl] - y, 1.0, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    return rng.poisson(img).astype(float) + rng.normal(0, read, shape), img


def _photutils_fixed(psf, data, positions, fluxes, error, group=None):
    from photutils.psf import PSFPhotometry, SourceGrouper

    model = psf.copy()
    model.x_0.fixed = True
    model.y_0.fixed = True
    init = Table({"x": positions[:, 0], "y": positions[:, 1], "flux": fluxes})
    phot = PSFPhotometry(model, fit_shape=(9, 9), aperture_radius=3,
                         grouper=SourceGrouper(min_separation=group) if group else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = phot(data, error=error, init_params=init)
    return np.asarray(res["flux_fit"], float), np.asarray(res["flux_err"], float)


def test_fit_radii_grow_with_flux():
    psf = _gaussian_psf()
    r = fit_radii(psf, np.array([0.0, 1e3, 1e5, 1e8]), sky_sigma=10.0, radius_min=3, radius_max=10)
    assert r[0] == 3 and r[-1] > r[1] and r.max() <= 10
    assert np.all(np.diff(r) >= 0)


def test_isolated_stars_agree_with_photutils_fixed_positions():
    psf = _gaussian_psf()
    rng = np.random.default_rng(1)
    g = np.arange(12, 90, 16.0)
    pos = np.array([(x, y) for y in g for x in g]) + rng.uniform(-0.5, 0.5, (len(g) ** 2, 2))
    flux = 10 ** rng.uniform(3.0, 5.0, len(pos))
    data, expected = _frame(psf, pos, flux, sky=70.0, read=7.0)
    fp = ForcedPSFPhotometry(psf, data.shape, pos[:, 0], pos[:, 1], flux_ref=flux, sky_sigma=np.sqrt(70 + 49),
                             bkg_box=32, tile=128)
    res = fp.fit(data, read_var=49.0)
    # photutils on the sky-subtracted image (sky known exactly), same PSF, positions fixed
    f_pu, e_pu = _photutils_fixed(psf, data - 70.0, pos, flux, np.sqrt(expected + 49.0))
    diff = (res["flux"] - f_pu) / res["flux_err"]
    assert np.median(np.abs(diff)) < 0.15  # the same fluxes, up to the fit box and the background term
    assert np.median(res["flux_err"] / e_pu) == pytest.approx(1.0, abs=0.05)
    pull = (res["flux"] - flux) / res["flux_err"]
    assert 0.6 < np.std(pull) < 1.4 and abs(np.mean(pull)) < 0.5  # honest errors, no bias
    assert np.allclose(res["background"], 70.0, atol=3.0)
    assert np.nanmedian(res["chi2"]) == pytest.approx(1.0, abs=0.3)


def test_blended_pair_matches_grouped_photutils_fit():
    """Two stars 1.5 px apart: only a simultaneous fit separates them; photutils with grouping agrees."""
    psf = _gaussian_psf()
    pos = np.array([[40.2, 40.1], [41.7, 40.3], [60.0, 55.5], [20.3, 70.8]])
    flux = np.array([2e4, 1e4, 5e3, 8e3])
    data, expected = _frame(psf, pos, flux, shape=(96, 96), seed=3)
    fp = ForcedPSFPhotometry(psf, data.shape, pos[:, 0], pos[:, 1], flux_ref=flux, sky_sigma=11.0, tile=128)
    res = fp.fit(data, read_var=49.0)
    f_pu, _ = _photutils_fixed(psf, data - 70.0, pos, flux, np.sqrt(expected + 49.0), group=5.0)
    assert np.all(np.abs(res["flux"] - flux) < 4 * res["flux_err"])
    assert np.all(np.abs(res["flux"] - f_pu) < 0.5 * res["flux_err"])
    # the blend inflates the errors of both members (marginal, not conditional, variances)
    sysk = next(iter(fp._systems[0].values()))
    A = sysk.A[:, :4].toarray()
    iso = 1.0 / np.sqrt((sysk.w[:, None] * A**2).sum(0))  # conditional errors: neighbours held fixed
    assert res["flux_err"][0] > 1.1 * iso[0] and res["flux_err"][1] > 1.1 * iso[1]


def test_local_marginal_errors_match_the_exact_inverse():
    psf = _gaussian_psf()
    rng = np.random.default_rng(5)
    pos = rng.uniform(5, 59, (40, 2))  # crowded: ~0.01 stars/px
    flux = 10 ** rng.uniform(3, 4.5, len(pos))
    data, _ = _frame(psf, pos, flux, shape=(64, 64), seed=2)
    fp = ForcedPSFPhotometry(psf, data.shape, pos[:, 0], pos[:, 1], flux_ref=flux, sky_sigma=11.0, tile=128)
    res = fp.fit(data, read_var=49.0)
    s = next(iter(fp._systems[0].values()))
    M = (s.A.T @ sp.diags(s.w) @ s.A).toarray()
    exact = np.sqrt(np.diag(np.linalg.inv(M))[: len(pos)])
    ratio = res["flux_err"] / exact
    assert np.median(ratio) > 0.93 and np.min(ratio) > 0.8 and np.max(ratio) < 1.01


def test_time_series_reuses_the_factorisation_and_tracks_variability():
    psf = _gaussian_psf()
    pos = np.array([[20.0, 20.0], [45.3, 30.7], [30.2, 50.1]])
    base = np.array([1e4, 2e4, 5e3])
    fp = ForcedPSFPhotometry(psf, (64, 64), pos[:, 0], pos[:, 1], flux_ref=base, sky_sigma=11.0, tile=128)
    got = []
    for e in range(4):
        f = base * np.array([1.0, 1.0 + 0.2 * np.sin(e), 1.0])
        data, _ = _frame(psf, pos, f, shape=(64, 64), seed=10 + e)
        got.append(fp.fit(data, read_var=49.0)["flux"])
        assert len(fp._systems[0]) == 1  # one factorisation for the whole series
    got = np.array(got)
    truth = base[1] * (1.0 + 0.2 * np.sin(np.arange(4)))
    assert np.allclose(got[:, 1], truth, rtol=0.02)


def test_masked_and_saturated_pixels():
    psf = _gaussian_psf()
    pos = np.array([[20.0, 20.0], [45.0, 40.0]])
    flux = np.array([2e4, 1e4])
    data, _ = _frame(psf, pos, flux, shape=(64, 64), seed=4)
    fp = ForcedPSFPhotometry(psf, data.shape, pos[:, 0], pos[:, 1], flux_ref=flux, sky_sigma=11.0, tile=128)
    sat = np.zeros(data.shape, bool)
    sat[19:22, 19:22] = True  # the core of star 0 "saturated": the wings still measure it
    bad = np.zeros(data.shape, bool)
    bad[35:46, 40:51] = True  # star 1 entirely masked: no measurement
    data2 = data.copy()
    data2[19:22, 19:22] = 1e6
    data2[bad] = np.nan
    res = fp.fit(data2, bad=bad, read_var=49.0, saturated=sat)
    assert abs(res["flux"][0] - flux[0]) < 4 * res["flux_err"][0]
    assert not res["ok"][1] and np.isnan(res["flux"][1])
    # the saturation mask is sticky: a later clean frame still leaves those pixels out
    res2 = fp.fit(data, read_var=49.0)
    assert res2["flux_err"][0] == pytest.approx(res["flux_err"][0], rel=1e-6)


def test_singular_tile_system_is_guarded():
    A = sp.csr_matrix(np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    s = _TileSystem(A, np.ones(2), n_star=2, ridge=1e-10, max_neighbours=8)
    f, _ = s.solve(np.array([3.0, 1.0]))
    assert np.isfinite(f[0]) and np.isnan(f[1])


def test_stack_frames_median_and_noise():
    from astropy.io import fits

    from skyvar.io.fits import Frame

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(5):
        d = rng.normal(100, 10, (32, 32)).astype(np.float32)
        frames.append(Frame(data=d, mask=np.zeros((32, 32), np.uint8), header=fits.Header(), exptime=1.0, gain=1.0,
                            rdnoise=10.0, zp=25.0, mjd=0.0, filter="i", wcs=None))
    st = stack_frames(frames)
    assert st.data.std() < 0.75 * 10 and st.rdnoise == pytest.approx(10 * 1.2533 / np.sqrt(5))


def test_region_engines_equal_the_whole_frame_engine():
    """A frame cut into 2 x 2 regions (each engine: its tiles + one ring, its section's pixels only) gives
    the whole-frame engine's fluxes, errors, chi2, backgrounds and blend flags bit for bit, seams included."""
    from skyvar.detect.forced_psf import forced_regions

    psf = _gaussian_psf()
    shape, tile, overlap = (150, 140), 48, 16
    rng = np.random.default_rng(11)
    pos = rng.uniform(-2, [141, 151], (220, 2))
    regions = forced_regions(shape, tile, overlap, region_px=75)
    assert len(regions) == 4
    # stars on and around the region cores' boundaries (and a blended pair across one), bright ones included
    cy, cx = regions[0].core[1], regions[0].core[3]
    seam = np.array([[cx, 40.0], [cx - 0.5, 60.2], [cx + 0.49, 61.0], [cx + 1.2, 61.5], [70.3, cy], [90.0, cy - 0.51],
                     [cx, cy], [cx - 3.0, cy + 2.0], [20.0, cy + 6.0], [cx + 9.0, 100.0]])
    pos = np.vstack([pos, seam])
    flux = 10 ** rng.uniform(2.5, 4.5, len(pos))
    flux[-10:] = [3e5, 2e4, 1e4, 8e3, 2e5, 5e3, 1e6, 4e4, 2e3, 9e4]
    data, _ = _frame(psf, pos, flux, shape=shape, seed=7)
    bad = np.zeros(shape, bool)
    bad[70:80, 60:75] = True  # a bad patch across both seams
    sat = np.zeros(shape, bool)
    sat[int(cy) - 1 : int(cy) + 2, int(cx) - 1 : int(cx) + 2] = True  # saturated core on the corner
    kw = dict(flux_ref=flux, sky_sigma=11.0, tile=tile, overlap=overlap, blend_radius=2.0)

    def run(eng, img, b, s):
        eng._sticky |= s
        eng.init_weights(img, eng._sticky | b, read_var=49.0)
        eng._sticky = s.copy()
        return [eng.fit(img2, bad=b2, read_var=49.0, saturated=s2) for img2, b2, s2 in
                ((img, b, s), (img * 1.01 + 3.0, b, s))]  # the series frame, then another epoch

    whole = ForcedPSFPhotometry(psf, shape, pos[:, 0], pos[:, 1], **kw)
    ref = run(whole, data, bad, sat)
    seen = np.zeros(len(pos), int)
    for r in regions:
        sel = r.stars(pos[:, 0], pos[:, 1], margin=10)
        y0, y1, x0, x1 = r.section
        eng = ForcedPSFPhotometry(psf, shape, pos[sel, 0], pos[sel, 1], region=r, **{**kw, "flux_ref": flux[sel]})
        assert eng.shape == (y1 - y0, x1 - x0) and eng.shape != shape
        cut = (slice(y0, y1), slice(x0, x1))
        got = run(eng, data[cut], bad[cut], sat[cut])
        own = eng.owned
        idx = sel[own]
        seen[idx] += 1
        assert all(d is not None for d, o in zip(eng._designs, eng._own) if o)
        assert sum(d is not None for d in eng._designs) == sum(eng._own)  # the ring was released
        for g, w in zip(got, ref):
            for k in ("flux", "flux_err", "chi2", "background", "ok"):
                assert np.array_equal(g[k][own], w[k][idx], equal_nan=k != "ok"), (r.index, k)
        assert np.array_equal(eng.blended[own], whole.blended[idx])
    assert np.all(seen == 1)  # every star measured by exactly one region
    assert np.isfinite(ref[0]["flux"]).mean() > 0.9


def test_forced_regions_partition_the_frame():
    from skyvar.detect.forced_psf import forced_regions

    assert len(forced_regions((2048, 2048), 256, 32, 2048)) == 1
    assert len(forced_regions((5000, 5000), 256, 32, None)) == 1
    regs = forced_regions((5000, 4100), 256, 32, 2048)
    assert len(regs) == 3 * 3
    cover = np.zeros((5000, 4100), np.int8)
    for r in regs:
        y0, y1, x0, x1 = r.pixel_core
        cover[y0:y1, x0:x1] += 1
        s = r.section
        assert s[0] <= y0 and s[1] >= y1 and s[2] <= x0 and s[3] >= x1
        # the section holds the own tiles plus one ring of neighbours (less at the frame's edges)
        assert (r.active[1] - r.active[0]) - (r.own[1] - r.own[0]) in (1, 2)
    assert np.all(cover == 1)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_frame_sections_read_as_read_frame(tmp_path):
    """A frame's sections (memory-mapped) hold read_frame's pixels and mask; the regions' statistics give
    read_frame's notes (NaN, fill values, missing keys) and its errors (a constant frame)."""
    from astropy.io import fits

    from skyvar.detect.forced_psf import forced_regions, frame_notes_from_parts, read_frame_section
    from skyvar.io.fits import FrameError, read_frame

    rng = np.random.default_rng(3)
    img = rng.normal(100, 5, (90, 70)).astype(np.float32)
    img[5, 60] = np.nan
    img[80:82, 3] = np.inf
    img[44, 40] = -1e30
    img[70, 10] = 5e13
    img[20:23, 30:33] = 6e4  # saturated
    mask = np.zeros(img.shape, np.uint8)
    mask[50:52, 50:60] = 2
    h = fits.Header({"EXPTIME": 10.0, "GAIN": 1.5, "SATURATE": 3.5e4, "MJD-OBS": 60000.0})
    p = tmp_path / "f.fits"
    fits.HDUList([fits.PrimaryHDU(img, header=h), fits.ImageHDU(mask, name="MASK")]).writeto(p)
    whole = read_frame(p, zp=25.0)
    regs = forced_regions(img.shape, 32, 8, 40)
    assert len(regs) > 2
    parts = []
    for r in regs:
        sec = read_frame_section(p, r.section, r.pixel_core, zp=25.0)
        y0, y1, x0, x1 = r.section
        assert np.array_equal(sec.data, whole.data[y0:y1, x0:x1]) and np.array_equal(sec.mask, whole.mask[y0:y1, x0:x1])
        assert sec.frame_shape == whole.shape and sec.rdnoise == whole.rdnoise and sec.mjd == whole.mjd
        parts.append({"stats": sec.stats, "notes_head": sec.notes_head, "notes_wcs": sec.notes_wcs})
    assert len(whole.warnings) >= 4
    assert frame_notes_from_parts(p, parts, {"zp": 25.0}) == whole.warnings
    c = tmp_path / "const.fits"
    fits.PrimaryHDU(np.full((40, 40), 7.0, np.float32), header=h).writeto(c)
    r = forced_regions((40, 40), 16, 4, 20)
    cparts = [{"stats": read_frame_section(c, q.section, q.pixel_core).stats} for q in r]
    with pytest.raises(FrameError, match="same value") as e:
        frame_notes_from_parts(c, cparts)
    with pytest.raises(FrameError) as e2:
        read_frame(c)
    assert str(e.value) == str(e2.value)
