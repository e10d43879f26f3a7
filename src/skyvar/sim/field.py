"""CSST-like dense star field simulator (dense-field paper §2, DESIGN.md §4).

``python -m skyvar.sim field out_dir=D seed=S size=N n_epochs=E [key=value ...]`` writes

- ``D/frames/frame_0000.fits`` … one FITS per epoch: float32 image in ADU (GAIN e-/ADU) including sky
  and dark, header EXPTIME, GAIN, RDNOISE (effective for the co-add), MJD-OBS/DATE-OBS (exposure start) and
  MJD-AVG/DATE-AVG (mid-exposure), ZP
  (mag for 1 e-/s), FILTER, SATURATE, a TAN WCS centred on the paper's field, and a ``MASK``
  extension (1 = saturated);
- ``D/truth.ecsv``: one row per star whose centre lies in the frame: ``source_id x y ra dec mag flux``
  (``flux`` = electrons actually drawn at the reference epoch, i.e. the star's stamp sum, which loses
  the PSF wings beyond the stamp; ``mag`` its magnitude; ``mag_input`` the catalogue magnitude),
  ``is_target`` (mag < 25), ``var_type``, ``period`` [d], ``t0`` [MJD], ``amplitude``, ``periodic``;
- ``D/frames.ecsv``: epoch, frame_id, mjd, pointing offsets;
- ``D/lightcurves_truth.parquet`` (time series): per star and epoch ``flux_true`` (the signal, e-),
  ``mag_true`` and ``flux_drawn`` (the signal times the per-epoch systematic "jitter noise" factor).

Speed: stars sit on a 1/64-px lattice so every stamp is an exact slice of a pre-drawn pixel-integrated
PSF (:class:`skyvar.sim.psf.PSFBank`); stamps are scatter-added with ``index_add_`` (CPU or GPU).
Star positions are fixed, so every epoch is a linear map of the star fluxes: the sparse star operator
(pixel indices and values of every stamp) is built once and each epoch only re-weights it.

Reproducibility: the catalogue uses ``default_rng([seed, 0])``, epoch ``e`` its noise from
``default_rng([seed, 1, e])`` and its systematic factors from ``default_rng([seed, 2, e])``, so a
resumed run produces byte-identical frames.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from skyvar.io.fits import MASK_SATURATED, write_frame
from skyvar.sim.psf import PSFBank, PSFConfig, bank_for, make_psf
from skyvar.sim.variability import PERIODIC_TYPES, VariabilityConfig, VariableStars, draw_variables
from skyvar.utils.atomic import atomic_path, write_table_atomic, write_text_atomic
from skyvar.utils.config import config_from_dotlist, stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)

FIELD_RA_DEG = 269.2125  # 17h56m51s
FIELD_DEC_DEG = -29.579166666666666  # -29d34m45s


@dataclasses.dataclass
class FieldSimConfig:
    out_dir: str = "datasets/field"
    seed: int = 0
    size: int = 512  # frame side [px]; nx / ny override it
    nx: int | None = None
    ny: int | None = None
    n_epochs: int = 1
    # Sky position: region k is centred k frame heights north of the paper's field (disjoint fields).
    ra_deg: float = FIELD_RA_DEG
    dec_deg: float = FIELD_DEC_DEG
    region: int = 0
    pixel_scale: float = 0.074  # arcsec/px
    # Star catalogue: dN/dm ∝ 10^(lf_slope m) between mag_min and mag_max. The defaults give the paper's
    # 631,475 stars per 5000² px (0.02526 /px) to i = 26, 48.8 % of them brighter than i = 25.
    density: float = 0.02526
    mag_min: float = 14.0
    mag_max: float = 26.0
    lf_slope: float = 0.311
    target_mag_max: float = 25.0
    clustering: float = 0.0  # fraction of stars in Gaussian clumps (0 = uniform)
    cluster_size_px: float = 40.0
    cluster_members: float = 30.0
    # Instrument: CSST i band (DESIGN.md §4)
    exptime: float = 300.0
    n_exposures: int = 2  # 2 x 150 s: read noise enters twice
    zp: float = 25.85
    sky_mag_arcsec2: float = 21.87
    sky_scale: float = 1.0  # multiply the sky level (robustness tests)
    dark_e_s: float = 0.02
    read_noise_e: float = 5.0  # per read
    gain: float = 1.0
    full_well_e: float = 90000.0  # per exposure
    systematic_floor: float = 0.0015  # per-star, per-epoch relative flux scatter ("jitter noise")
    quantize: bool = True  # integer ADU
    filter: str = "i"
    # PSF
    psf: PSFConfig = dataclasses.field(default_factory=PSFConfig)
    psf_variation: float = 0.0  # total fractional change of the jitter sigma across the frame diagonal
    psf_levels: int = 5  # number of discrete PSF widths used to represent the variation
    oversample: int = 64  # sub-pixel lattice of star positions (1/oversample px)
    stamp_radii: list[int] = dataclasses.field(default_factory=lambda: [10, 20, 40])
    stamp_mag_breaks: list[float] = dataclasses.field(default_factory=lambda: [20.0, 16.5])
    margin: int = 12  # stars up to this far outside the frame still shed light into it
    # Time series
    mjd_start: float = 60500.0
    cadence_s: float | None = None  # default: exptime (back-to-back exposures)
    pointing_jitter_px: float = 0.0  # rms per-epoch pointing offset [px]
    variability: VariabilityConfig = dataclasses.field(default_factory=VariabilityConfig)
    truth_lightcurves: str = "all"  # all | variables | none (time series only)
    device: str = "cpu"
    overwrite: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny or self.size, self.nx or self.size)

    @property
    def sky_e_per_pixel(self) -> float:
        """Sky electrons per pixel in one frame."""
        rate = 10 ** (-0.4 * (self.sky_mag_arcsec2 - self.zp)) * self.pixel_scale**2
        return rate * self.exptime * self.sky_scale

    @property
    def read_var(self) -> float:
        return self.n_exposures * self.read_noise_e**2

    @property
    def saturation_e(self) -> float:
        return self.n_exposures * self.full_well_e


# ----------------------------------------------------------------------------------------------------
def draw_catalogue(cfg: FieldSimConfig, rng: np.random.Generator) -> Table:
    """Star positions (0-indexed px, on the 1/oversample lattice) and catalogue magnitudes."""
    ny, nx = cfg.shape
    m = cfg.margin
    area = (nx + 2 * m) * (ny + 2 * m)
    n = int(rng.poisson(cfg.density * area))
    a, d = cfg.lf_slope, cfg.mag_max - cfg.mag_min
    u = rng.random(n)
    mag = cfg.mag_min + np.log10(1.0 + u * (10 ** (a * d) - 1.0)) / a
    n_cl = int(round(cfg.clustering * n))
    x = rng.uniform(-m - 0.5, nx + m - 0.5, n)
    y = rng.uniform(-m - 0.5, ny + m - 0.5, n)
    if n_cl > 0:
        n_centres = max(1, int(n_cl / cfg.cluster_members))
        cx = rng.uniform(-m, nx + m, n_centres)
        cy = rng.uniform(-m, ny + m, n_centres)
        k = rng.integers(0, n_centres, n_cl)
        x[:n_cl] = cx[k] + rng.normal(0, cfg.cluster_size_px, n_cl)
        y[:n_cl] = cy[k] + rng.normal(0, cfg.cluster_size_px, n_cl)
        x[:n_cl] = np.clip(x[:n_cl], -m - 0.5, nx + m - 0.5 - 1e-6)
        y[:n_cl] = np.clip(y[:n_cl], -m - 0.5, ny + m - 0.5 - 1e-6)
    q = cfg.oversample
    x = np.round(x * q) / q
    y = np.round(y * q) / q
    t = Table()
    t["source_id"] = np.arange(n, dtype=np.int64)
    t["x"], t["y"], t["mag_input"] = x, y, mag
    return t


def make_wcs(cfg: FieldSimConfig, dx: float = 0.0, dy: float = 0.0) -> WCS:
    """TAN WCS, north up, east left; (dx, dy) is the pointing offset of the stars in pixels."""
    ny, nx = cfg.shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    dec = cfg.dec_deg + cfg.region * ny * cfg.pixel_scale / 3600.0
    w.wcs.crval = [cfg.ra_deg, dec]
    w.wcs.crpix = [(nx + 1) / 2.0 + dx, (ny + 1) / 2.0 + dy]
    s = cfg.pixel_scale / 3600.0
    w.wcs.cd = np.array([[-s, 0.0], [0.0, s]])
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


class StarRenderer:
    """Noise-free star images from stamps: the linear operator flux -> pixels.

    Stars fainter than ``stamp_mag_breaks[0]`` use the smallest stamp radius, and so on; the brightest
    class is drawn star by star with GalSim (few stars, large exact stamps). With ``psf_variation`` the
    jitter width changes linearly along the frame diagonal, represented by ``psf_levels`` banks.

    With ``cache=True`` the operator (per star chunk: flat pixel indices and unit-flux values) is kept
    after the first render, so later epochs only re-weight it (time series); a single big frame streams
    through it chunk by chunk instead (a 5000² frame has ~3e8 operator entries).
    """

    CHUNK = 65_536

    def __init__(self, cfg: FieldSimConfig, x: np.ndarray, y: np.ndarray, mag_ref: np.ndarray, device: str = "cpu",
                 cache: bool = False):
        self.cfg = cfg
        self.device = torch.device(device)
        ny, nx = cfg.shape
        self.pad = cfg.margin + max(cfg.stamp_radii) + 2
        self.H, self.W = ny + 2 * self.pad, nx + 2 * self.pad
        radii = sorted(cfg.stamp_radii)
        breaks = sorted(cfg.stamp_mag_breaks, reverse=True)  # faint -> bright
        if len(breaks) != len(radii) - 1:
            raise ValueError("stamp_mag_breaks needs one entry fewer than stamp_radii")
        cls = np.zeros(len(mag_ref), dtype=int)
        for i, b in enumerate(breaks):
            cls[mag_ref < b] = i + 1
        self.radius = np.asarray(radii)[cls]
        # the largest class is drawn per star with GalSim; the others come from the bank
        self.bank_radius = radii[-2] if len(radii) > 1 else radii[0]
        if cfg.psf_variation and cfg.psf_levels > 1:
            s = ((x / max(nx - 1, 1)) + (y / max(ny - 1, 1))) / 2.0  # 0 at (0,0), 1 at the far corner
            self.level = np.clip(np.round(s * (cfg.psf_levels - 1)), 0, cfg.psf_levels - 1).astype(int)
            self.jitter_scales = 1.0 + cfg.psf_variation * (np.arange(cfg.psf_levels) / (cfg.psf_levels - 1) - 0.5)
        else:
            self.level = np.zeros(len(x), dtype=int)
            self.jitter_scales = np.array([1.0])
        self.x = np.asarray(x, float)
        self.y = np.asarray(y, float)
        self._banks: dict[int, PSFBank] = {}
        self.cache = cache
        self._operator: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self.unit_drawn = self._unit_drawn()

    def bank(self, level: int) -> PSFBank:
        if level not in self._banks:
            self._banks[level] = bank_for(self.cfg.psf, self.cfg.pixel_scale, self.bank_radius, self.cfg.oversample,
                                          float(self.jitter_scales[level]))
        return self._banks[level]

    def _phases(self, sel, x, y):
        q = self.cfg.oversample
        xs = x[sel] + self.pad
        ys = y[sel] + self.pad
        ix = np.floor(xs + 0.5 / q).astype(np.int64)
        iy = np.floor(ys + 0.5 / q).astype(np.int64)
        px = np.clip(np.round((xs - ix) * q).astype(np.int64), 0, q - 1)
        py = np.clip(np.round((ys - iy) * q).astype(np.int64), 0, q - 1)
        return ix, iy, px, py

    def _groups(self):
        for level in np.unique(self.level):
            for R in np.unique(self.radius):
                sel = np.flatnonzero((self.radius == R) & (self.level == level))
                for c0 in range(0, len(sel), self.CHUNK):
                    yield int(level), int(R), sel[c0 : c0 + self.CHUNK]

    def _unit_drawn(self) -> np.ndarray:
        """Stamp sum of a unit-flux star (the fraction of its light drawn), from the bank's phase sums."""
        out = np.zeros(len(self.x))
        for level, R, sel in self._groups():
            if R <= self.bank_radius:
                sums = self.bank(level).stamps(R).double().sum((-1, -2)).numpy()
                _, _, px, py = self._phases(sel, self.x, self.y)
                out[sel] = sums[py, px]
            else:
                _, v = self._stamps(sel, R, level, self.x, self.y)
                out[sel] = v.double().sum(1).numpy()
        return out

    def _stamps(self, sel: np.ndarray, R: int, level: int, x: np.ndarray, y: np.ndarray):
        """Flat pixel indices (n, S²) into the padded image and unit-flux values (n, S²) for stars ``sel``."""
        q = self.cfg.oversample
        S = 2 * R + 1
        ix, iy, px, py = self._phases(sel, x, y)
        offs = (torch.arange(S)[:, None] * self.W + torch.arange(S)[None, :]).reshape(-1)
        base = torch.from_numpy((iy - R) * self.W + (ix - R))
        idx = base[:, None] + offs[None, :]
        if R <= self.bank_radius:
            st = self.bank(level).stamps(R)
            vals = st[torch.from_numpy(py), torch.from_numpy(px)].reshape(len(px), S * S)
        else:  # bright stars: exact GalSim stamps, one by one
            import galsim

            prof = galsim.Convolve(make_psf(self.cfg.psf, float(self.jitter_scales[level])),
                                   galsim.Pixel(self.cfg.pixel_scale))
            img = galsim.ImageD(S, S, scale=self.cfg.pixel_scale)
            vals = torch.empty(len(px), S * S, dtype=torch.float32)
            for i in range(len(px)):
                prof.drawImage(img, method="no_pixel", offset=(px[i] / q, py[i] / q))
                vals[i] = torch.from_numpy(img.array.astype(np.float32).reshape(-1))
        return idx, vals

    def _operator_chunks(self, x, y, use_cache: bool):
        if use_cache and self._operator is not None:
            yield from self._operator
            return
        keep = [] if (use_cache and self.cache) else None
        for level, R, sel in self._groups():
            idx, v = self._stamps(sel, R, level, x, y)
            item = (torch.from_numpy(sel).to(self.device), idx.to(self.device), v.to(self.device))
            if keep is not None:
                keep.append(item)
            yield item
        if keep is not None:
            self._operator = keep

    def render(self, flux: np.ndarray, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
        """Noise-free star image (ny, nx) in electrons for per-star fluxes ``flux`` [e-, before the stamp
        truncation], stars shifted by (dx, dy) px (pointing offsets; multiples of 1/oversample)."""
        shifted = bool(dx or dy)
        x, y = (self.x + dx, self.y + dy) if shifted else (self.x, self.y)
        f = torch.as_tensor(flux, dtype=torch.float64, device=self.device)
        img = torch.zeros(self.H * self.W, dtype=torch.float64, device=self.device)
        for sel, idx, v in self._operator_chunks(x, y, use_cache=not shifted):
            img.index_add_(0, idx.reshape(-1), (v.double() * f[sel][:, None]).reshape(-1))
        p = self.pad
        ny, nx = self.cfg.shape
        return img.view(self.H, self.W)[p : p + ny, p : p + nx].cpu().numpy()


class FieldSimulation:
    """A simulated field: catalogue, variables and a renderer for any epoch."""

    def __init__(self, cfg: FieldSimConfig):
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        cat = draw_catalogue(cfg, rng)
        self.flux_model = cfg.exptime * 10 ** (-0.4 * (np.asarray(cat["mag_input"]) - cfg.zp))
        ny, nx = cfg.shape
        cadence = (cfg.cadence_s or cfg.exptime) / 86400.0
        self.mjd = cfg.mjd_start + (np.arange(cfg.n_epochs) + 0.5) * cadence
        t_end = cfg.mjd_start + cfg.n_epochs * cadence
        self.variables: VariableStars = draw_variables(rng, len(cat), cfg.variability, cfg.mjd_start, t_end)
        self.pointing = np.zeros((cfg.n_epochs, 2))
        if cfg.pointing_jitter_px > 0:
            prng = np.random.default_rng([cfg.seed, 3])
            off = prng.normal(0, cfg.pointing_jitter_px, (cfg.n_epochs, 2))
            self.pointing = np.round(off * cfg.oversample) / cfg.oversample
        # keep the operator for time series when it fits comfortably in memory (~12 bytes per entry)
        n_entries = len(cat) * (2 * min(cfg.stamp_radii) + 1) ** 2
        self.renderer = StarRenderer(cfg, np.asarray(cat["x"]), np.asarray(cat["y"]), np.asarray(cat["mag_input"]),
                                     device=cfg.device, cache=cfg.n_epochs > 1 and n_entries < 150_000_000)
        self.unit_drawn = self.renderer.unit_drawn
        self.catalogue = cat
        self.wcs = make_wcs(cfg)
        self._var_pos = np.full(len(cat), -1)
        self._var_pos[self.variables.index] = np.arange(len(self.variables.index))

    # -------------------------------------------------------------------- truth
    def multipliers(self, epochs: np.ndarray | None = None) -> np.ndarray:
        """Variable-star flux multipliers (n_variables, n_epochs)."""
        t = self.mjd if epochs is None else self.mjd[np.atleast_1d(epochs)]
        return self.variables.multiplier(t)

    def flux_true(self, epoch: int) -> np.ndarray:
        """Per-star signal in electrons drawn within the stamp (no systematic scatter) at ``epoch``."""
        f = self.flux_model * self.unit_drawn
        if len(self.variables.index):
            f = f.copy()
            f[self.variables.index] *= self.variables.multiplier(self.mjd[epoch : epoch + 1])[:, 0]
        return f

    def systematic_factor(self, epoch: int) -> np.ndarray:
        if self.cfg.systematic_floor <= 0:
            return np.ones(len(self.flux_model))
        return 1.0 + np.random.default_rng([self.cfg.seed, 2, epoch]).normal(0, self.cfg.systematic_floor,
                                                                            len(self.flux_model))

    def truth_table(self) -> Table:
        cfg = self.cfg
        cat = self.catalogue
        ny, nx = cfg.shape
        x, y = np.asarray(cat["x"]), np.asarray(cat["y"])
        inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
        flux = self.flux_model * self.unit_drawn
        t = Table()
        t["source_id"] = cat["source_id"][inside]
        t["x"], t["y"] = x[inside], y[inside]
        ra, dec = self.wcs.all_pix2world(t["x"], t["y"], 0)
        t["ra"], t["dec"] = ra, dec
        t["mag"] = cfg.zp - 2.5 * np.log10(flux[inside] / cfg.exptime)
        t["flux"] = flux[inside]
        t["mag_input"] = np.asarray(cat["mag_input"])[inside]
        t["is_target"] = t["mag"] < cfg.target_mag_max
        vt = np.full(len(cat), "constant", dtype="U12")
        per = np.full(len(cat), np.nan)
        t0 = np.full(len(cat), np.nan)
        amp = np.zeros(len(cat))
        v = self.variables
        vt[v.index], per[v.index], t0[v.index], amp[v.index] = v.var_type, v.period, v.t0, v.amplitude
        t["var_type"], t["period"], t["t0"], t["amplitude"] = vt[inside], per[inside], t0[inside], amp[inside]
        baseline = cfg.n_epochs * (cfg.cadence_s or cfg.exptime) / 86400.0
        t["periodic"] = np.isin(t["var_type"], PERIODIC_TYPES) & (t["period"] <= baseline)
        t["stamp_radius"] = self.renderer.radius[inside]
        t["psf_scale"] = self.renderer.jitter_scales[self.renderer.level[inside]]
        for c, u in (("x", "pix"), ("y", "pix"), ("ra", "deg"), ("dec", "deg"), ("mag", "mag"), ("flux", "electron"),
                     ("mag_input", "mag"), ("period", "d"), ("t0", "d")):
            t[c].unit = u
        t.meta.update(
            description="skyvar CSST-like dense field truth; x, y 0-indexed pixel centres; flux = electrons "
            "drawn (stamp sum) at the reference (quiescent) level; mag = ZP - 2.5 log10(flux/EXPTIME)",
            zp=cfg.zp, exptime=cfg.exptime, seed=cfg.seed, shape=list(cfg.shape), config_hash=sim_hash(cfg),
        )
        return t

    # -------------------------------------------------------------------- images
    def expected_image(self, epoch: int = 0) -> np.ndarray:
        """Noise-free image in electrons (stars + sky + dark) at ``epoch``."""
        cfg = self.cfg
        f = self.flux_model * self.systematic_factor(epoch)
        if len(self.variables.index):
            f[self.variables.index] *= self.variables.multiplier(self.mjd[epoch : epoch + 1])[:, 0]
        dx, dy = self.pointing[epoch]
        img = self.renderer.render(f, dx, dy)
        return img + cfg.sky_e_per_pixel + cfg.dark_e_s * cfg.exptime

    def render_epoch(self, epoch: int = 0) -> tuple[np.ndarray, np.ndarray, fits.Header]:
        """(image in ADU float32, mask uint8, header) of ``epoch`` with Poisson, read noise and saturation."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 1, epoch])
        expected = self.expected_image(epoch)
        img = rng.poisson(expected).astype(np.float64)
        img += rng.normal(0.0, np.sqrt(cfg.read_var), img.shape)
        sat = cfg.saturation_e
        mask = np.zeros(img.shape, np.uint8)
        over = (img >= sat) | (expected >= sat)
        mask[over] |= MASK_SATURATED
        img[over] = sat
        img /= cfg.gain
        if cfg.quantize:
            img = np.round(img)
        return img.astype(np.float32), mask, self.header(epoch)

    def header(self, epoch: int) -> fits.Header:
        cfg = self.cfg
        dx, dy = self.pointing[epoch]
        h = make_wcs(cfg, dx, dy).to_header()
        h["EXPTIME"] = (cfg.exptime, "[s] total exposure time")
        h["NCOMBINE"] = (cfg.n_exposures, "number of co-added exposures")
        h["GAIN"] = (cfg.gain, "[e-/ADU]")
        h["RDNOISE"] = (float(np.sqrt(cfg.read_var)), "[e-] effective read noise of the co-add")
        # FITS: MJD-OBS/DATE-OBS is the start of the exposure, MJD-AVG/DATE-AVG its middle
        mid = float(self.mjd[epoch])
        start = mid - 0.5 * cfg.exptime / 86400.0
        h["MJD-OBS"] = (start, "[d] exposure start (UTC)")
        h["MJD-AVG"] = (mid, "[d] mid-exposure MJD (UTC)")
        h["DATE-OBS"] = (Time(start, format="mjd", scale="utc").isot, "exposure start (UTC)")
        h["DATE-AVG"] = (Time(mid, format="mjd", scale="utc").isot, "mid-exposure (UTC)")
        h["TIMESYS"] = "UTC"
        h["ZP"] = (cfg.zp, "[mag] AB magnitude giving 1 e-/s")
        h["FILTER"] = cfg.filter
        h["SATURATE"] = (cfg.saturation_e / cfg.gain, "[ADU] saturation level")
        h["SKYLEVEL"] = (cfg.sky_e_per_pixel, "[e-/pix] sky level")
        h["DARKCUR"] = (cfg.dark_e_s, "[e-/s/pix]")
        h["PIXSCALE"] = (cfg.pixel_scale, "[arcsec/pix]")
        h["PSFMODEL"] = cfg.psf.model
        h["PSFJITTR"] = (cfg.psf.jitter_sigma_arcsec, "[arcsec] Gaussian jitter sigma")
        h["PSFDIL"] = (cfg.psf.dilate, "PSF dilation factor")
        h["PSFVAR"] = (cfg.psf_variation, "fractional PSF width change across frame")
        h["EPOCH"] = (int(epoch), "epoch index")
        h["POINTDX"] = (float(dx), "[pix] pointing offset x")
        h["POINTDY"] = (float(dy), "[pix] pointing offset y")
        h["SIMSEED"] = (cfg.seed, "skyvar.sim.field seed")
        h["SIMHASH"] = (sim_hash(cfg), "skyvar.sim.field config hash")
        h["ORIGIN"] = "skyvar.sim.field"
        return h

    def frames_table(self) -> Table:
        t = Table()
        t["epoch"] = np.arange(self.cfg.n_epochs)
        t["frame_id"] = [f"frame_{e:04d}" for e in t["epoch"]]
        t["mjd"] = self.mjd
        t["dx"], t["dy"] = self.pointing[:, 0], self.pointing[:, 1]
        return t


def simulate_field(cfg: FieldSimConfig | None = None, **overrides) -> FieldSimulation:
    """A CSST-like dense field (catalogue, PSF, variables) ready to render epochs in memory:
    ``sim = simulate_field(size=256, seed=1); img, mask, header = sim.render_epoch(0)`` (electrons, the
    header as written to FITS). Keys of :class:`FieldSimConfig` may be given as keyword arguments;
    :func:`simulate_field_to_disk` writes frames and truth instead."""
    if cfg is None:
        cfg = FieldSimConfig()
    if overrides:
        from skyvar.utils.config import config_from_dotlist

        cfg = config_from_dotlist(FieldSimConfig, base={**dataclasses.asdict(cfg), **overrides})
    return FieldSimulation(cfg)


def _write_truth_lightcurves(sim: FieldSimulation, path: Path, which: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cfg = sim.cfg
    truth = sim.truth_table()
    ids = np.asarray(truth["source_id"])
    if which == "variables":
        ids = ids[sim._var_pos[ids] >= 0]
    base = sim.flux_model[ids] * sim.unit_drawn[ids]
    vpos = sim._var_pos[ids]
    isvar = vpos >= 0
    schema = pa.schema([("source_id", pa.int64()), ("epoch", pa.int32()), ("mjd", pa.float64()),
                        ("flux_true", pa.float32()), ("mag_true", pa.float32()), ("flux_drawn", pa.float32())])
    chunk = max(1, 4_000_000 // max(len(ids), 1))
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        for e0 in range(0, cfg.n_epochs, chunk):
            ep = np.arange(e0, min(e0 + chunk, cfg.n_epochs))
            mult = np.ones((len(ids), len(ep)))
            if isvar.any():
                mult[isvar] = sim.multipliers(ep)[vpos[isvar]]
            ft = base[:, None] * mult
            sysf = np.stack([sim.systematic_factor(int(e))[ids] for e in ep], axis=1)
            tbl = pa.table({
                "source_id": np.repeat(ids[:, None], len(ep), 1).T.reshape(-1),
                "epoch": np.repeat(ep[:, None], len(ids), 1).reshape(-1).astype(np.int32),
                "mjd": np.repeat(sim.mjd[ep][:, None], len(ids), 1).reshape(-1),
                "flux_true": ft.T.reshape(-1).astype(np.float32),
                "mag_true": (cfg.zp - 2.5 * np.log10(np.clip(ft.T, 1e-30, None) / cfg.exptime)).reshape(-1).astype(np.float32),
                "flux_drawn": (ft * sysf).T.reshape(-1).astype(np.float32),
            }, schema=schema)
            writer.write_table(tbl)
        writer.close()


def sim_hash(cfg: FieldSimConfig) -> str:
    """Content hash of what a config simulates: where it is written (``out_dir``) and ``overwrite`` do
    not change the data, so a moved or shared series is still recognised as complete."""
    return stable_hash(dataclasses.replace(cfg, out_dir="", overwrite=False))


def _frame_done(path: Path, h: str, overwrite: bool) -> bool:
    if path.exists() and not overwrite:
        try:
            return fits.getheader(path).get("SIMHASH") == h
        except OSError:
            pass  # truncated by an interruption: rewrite
    return False


def render_epoch_task(epoch: int, cfg: FieldSimConfig, out_dir: str, sim_file: str | None = None) -> dict:
    """Task: render and write one epoch on a Dask worker. The worker loads the field the client built
    (``sim_file``: catalogue, variables, PSF banks; or builds it from ``cfg``) once and keeps it, with
    its star operator, for its later epochs; epoch ``e`` draws its noise from
    ``default_rng([seed, 1, e])``, so the frame is byte-identical to the serial run's."""
    import pickle

    from skyvar.pipeline.distributed import task_stats, worker_cached

    c0, w0 = time.thread_time(), time.perf_counter()
    sim = worker_cached(f"field-sim:{stable_hash(cfg)}",
                        lambda: pickle.loads(Path(sim_file).read_bytes()) if sim_file else FieldSimulation(cfg))
    path = Path(out_dir) / "frames" / f"frame_{epoch:04d}.fits"
    img, mask, hdr = sim.render_epoch(epoch)
    write_frame(path, img, hdr, mask)
    return {"epoch": epoch, "path": str(path), "stats": task_stats(c0, w0)}


def simulate_field_to_disk(cfg: FieldSimConfig, progress: bool = True, client=None) -> Path:
    """Write frames, truth and metadata under ``cfg.out_dir``; resumes an interrupted run.

    Frames whose header carries the same config hash are kept; the truth files are rewritten only if
    missing or from another config. With a Dask ``client`` (:mod:`skyvar.pipeline.distributed`) the
    epochs still to write are one task each (:func:`render_epoch_task`), with the same bytes as here.
    """
    out = Path(cfg.out_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    h = sim_hash(cfg)
    t0 = time.perf_counter()
    sim = FieldSimulation(cfg)
    log.info("field %dx%d seed %d: %d stars (%d in frame), %d variables, built in %.1f s", *cfg.shape[::-1], cfg.seed,
             len(sim.catalogue), int(_inside(sim).sum()), len(sim.variables.index), time.perf_counter() - t0)
    truth_path = out / "truth.ecsv"
    if cfg.overwrite or not truth_path.exists() or Table.read(truth_path).meta.get("config_hash") != h:
        write_table_atomic(sim.truth_table(), truth_path)
        write_table_atomic(sim.frames_table(), out / "frames.ecsv")
        if cfg.n_epochs > 1 and cfg.truth_lightcurves != "none":
            _write_truth_lightcurves(sim, out / "lightcurves_truth.parquet", cfg.truth_lightcurves)
        from omegaconf import OmegaConf

        write_text_atomic(out / "sim_config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    if client is not None:
        import pickle

        from skyvar.pipeline.distributed import TaskFailed, run_tasks

        todo = [e for e in range(cfg.n_epochs) if not _frame_done(out / "frames" / f"frame_{e:04d}.fits", h,
                                                                   cfg.overwrite)]
        # the field built here, before any epoch is rendered (no star operator yet), goes to the workers
        # as a file each reads once: building it again on every worker costs ~15 epochs' worth
        sim_file = out / f".field-{h}.pkl"
        with atomic_path(sim_file) as tmp:
            tmp.write_bytes(pickle.dumps(sim, protocol=5))
        try:
            res = run_tasks(render_epoch_task, todo, cfg, str(out), str(sim_file), client=client, desc="simulate",
                            progress=progress)
        finally:
            sim_file.unlink(missing_ok=True)
            from skyvar.pipeline.distributed import drop_cached

            client.run(drop_cached, "field-sim:")
        bad = [(e, r) for e, r in zip(todo, res) if isinstance(r, TaskFailed)]
        if bad:
            raise RuntimeError(f"simulating {len(bad)} epoch(s) failed, e.g. epoch {bad[0][0]}: {bad[0][1].error} "
                               "(a rerun resumes: the frames written are kept)")
        log.info("wrote %d frames to %s in %.1f s (%d on Dask)", cfg.n_epochs, out / "frames",
                 time.perf_counter() - t0, len(todo))
        return out
    epochs = range(cfg.n_epochs)
    if progress and cfg.n_epochs > 1:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="frames", unit="frame")
    for e in epochs:
        path = out / "frames" / f"frame_{e:04d}.fits"
        if _frame_done(path, h, cfg.overwrite):
            continue
        img, mask, hdr = sim.render_epoch(e)
        write_frame(path, img, hdr, mask)
    log.info("wrote %d frames to %s in %.1f s", cfg.n_epochs, out / "frames", time.perf_counter() - t0)
    return out


def _inside(sim: FieldSimulation) -> np.ndarray:
    ny, nx = sim.cfg.shape
    x, y = np.asarray(sim.catalogue["x"]), np.asarray(sim.catalogue["y"])
    return (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("keys and defaults:\n" + OmegaConf.to_yaml(OmegaConf.structured(FieldSimConfig)))
        return 0
    # dask.<key>=... (skyvar.pipeline.distributed.DaskConfig) writes the epochs in parallel; it is not
    # part of FieldSimConfig, so it cannot change the frames or their SIMHASH
    dask_args = [a[len("dask."):] for a in argv if a.startswith("dask.")]
    try:
        cfg = config_from_dotlist(FieldSimConfig, [a for a in argv if not a.startswith("dask.")])
        from skyvar.pipeline.distributed import DaskConfig

        dcfg = DaskConfig.from_any(OmegaConf.to_container(OmegaConf.from_dotlist(dask_args)) if dask_args else None)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if dcfg.enabled:
        from skyvar.pipeline.distributed import dask_client

        with dask_client(dcfg) as client:
            simulate_field_to_disk(cfg, client=client)
    else:
        simulate_field_to_disk(cfg)
    return 0
