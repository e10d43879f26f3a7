"""PSF models (GalSim) and the oversampled, pixel-integrated stamp bank used to render stars.

Default: the CSST i-band PSF of DESIGN.md §4: an Airy pattern (770 nm, 2 m aperture) convolved with a
Gaussian pointing jitter of σ = 0.06″, giving 80 % encircled energy inside 0.146″ (target ≈ 0.145″).
Options: Moffat, a Gaussian, and GalSim ``OpticalPSF`` with aberrations (in waves), all convolved with
the jitter, plus a ``dilate`` factor to broaden any of them (robustness tests).

Rendering (see :class:`PSFBank`): the PSF convolved with the 0.074″ pixel is drawn once on a grid
``oversample`` times finer than the pixels. Star positions are put on a lattice of 1/oversample px, so
every pixel value of every star is an exact sample of that fine image: no interpolation error, no
position bias. With the default 1/64 px lattice (0.0012″) the quantisation is physically irrelevant and
the truth positions are exactly the rendered ones.
"""

from __future__ import annotations

import dataclasses
import functools

import galsim
import numpy as np
import torch


@dataclasses.dataclass
class PSFConfig:
    model: str = "airy"  # airy | moffat | gaussian | optical
    lam_nm: float = 770.0
    diam_m: float = 2.0
    obscuration: float = 0.0
    jitter_sigma_arcsec: float = 0.06
    moffat_beta: float = 3.0
    moffat_fwhm_arcsec: float = 0.15
    gaussian_fwhm_arcsec: float = 0.15
    # OpticalPSF aberrations in waves (Noll indices 4-11)
    defocus: float = 0.0
    astig1: float = 0.0
    astig2: float = 0.0
    coma1: float = 0.0
    coma2: float = 0.0
    spher: float = 0.0
    dilate: float = 1.0  # broaden the whole PSF by this factor (flux conserved)


def make_psf(cfg: PSFConfig, jitter_scale: float = 1.0) -> galsim.GSObject:
    """The GalSim PSF profile (without the pixel) for ``cfg``; sizes in arcsec."""
    m = cfg.model.lower()
    if m == "airy":
        core = galsim.Airy(lam=cfg.lam_nm, diam=cfg.diam_m, obscuration=cfg.obscuration, scale_unit=galsim.arcsec)
    elif m == "optical":
        core = galsim.OpticalPSF(
            lam=cfg.lam_nm, diam=cfg.diam_m, obscuration=cfg.obscuration, defocus=cfg.defocus,
            astig1=cfg.astig1, astig2=cfg.astig2, coma1=cfg.coma1, coma2=cfg.coma2, spher=cfg.spher,
            scale_unit=galsim.arcsec,
        )
    elif m == "moffat":
        core = galsim.Moffat(beta=cfg.moffat_beta, fwhm=cfg.moffat_fwhm_arcsec)
    elif m == "gaussian":
        core = galsim.Gaussian(fwhm=cfg.gaussian_fwhm_arcsec)
    else:
        raise ValueError(f"unknown PSF model {cfg.model!r}; choose airy, optical, moffat or gaussian")
    prof = core
    if cfg.jitter_sigma_arcsec > 0:
        prof = galsim.Convolve(core, galsim.Gaussian(sigma=cfg.jitter_sigma_arcsec * jitter_scale))
    if cfg.dilate != 1.0:
        prof = prof.dilate(cfg.dilate)
    return prof


def encircled_energy_radius(psf: galsim.GSObject, fraction: float = 0.8, pixel_scale: float = 0.074,
                            oversample: int = 8, half_size_px: int = 40) -> float:
    """Radius in arcsec enclosing ``fraction`` of the flux of ``psf`` (no pixel convolution)."""
    n = 2 * half_size_px * oversample + 1
    a = psf.drawImage(nx=n, ny=n, scale=pixel_scale / oversample, method="no_pixel").array.astype(float)
    c = (n - 1) / 2
    yy, xx = np.indices(a.shape)
    r = np.hypot(xx - c, yy - c).ravel() * pixel_scale / oversample
    order = np.argsort(r)
    cum = np.cumsum(a.ravel()[order]) / psf.flux
    return float(np.interp(fraction, cum, r[order]))


class PSFBank:
    """Pixel-integrated PSF sampled at all 1/oversample sub-pixel phases.

    ``stamps(R)`` is a tensor (os, os, 2R+1, 2R+1): entry [py, px] is the image of a unit-flux star at
    (iy + py/os, ix + px/os) over pixels iy−R…iy+R, ix−R…ix+R (0-indexed pixel centres). Its sum is the
    flux actually drawn inside the stamp (≈ 0.98 for R = 10 px for the default PSF).
    """

    def __init__(self, psf: galsim.GSObject, pixel_scale: float = 0.074, radius_max: int = 20, oversample: int = 64):
        if oversample % 2:
            raise ValueError("oversample must be even")
        self.psf = psf
        self.pixel_scale = pixel_scale
        self.os = oversample
        self.radius_max = radius_max
        nf = oversample * 2 * (radius_max + 1) + 1
        prof = galsim.Convolve(psf, galsim.Pixel(pixel_scale))
        # no_pixel: the pixel is already in the profile; x os² turns fine-grid values into pixel integrals
        fine = prof.drawImage(nx=nf, ny=nf, scale=pixel_scale / oversample, method="no_pixel").array
        self.fine = torch.from_numpy(fine.astype(np.float64) * oversample**2)
        self._cache: dict[int, torch.Tensor] = {}

    def stamps(self, radius: int) -> torch.Tensor:
        if radius > self.radius_max:
            raise ValueError(f"radius {radius} > bank radius_max {self.radius_max}")
        if radius not in self._cache:
            os, rm = self.os, self.radius_max
            a = torch.arange(2 * radius + 1)
            p = torch.arange(os)
            k = os * (rm + 1 - radius) + os * a[None, :] - p[:, None]  # (os, 2R+1) fine indices per phase
            st = self.fine[k[:, None, :, None], k[None, :, None, :]]  # (os_y, os_x, S, S)
            self._cache[radius] = st.to(torch.float32).contiguous()
        return self._cache[radius]


@functools.lru_cache(maxsize=8)
def cached_bank(cfg_key: tuple, pixel_scale: float, radius_max: int, oversample: int, jitter_scale: float = 1.0) -> PSFBank:
    cfg = PSFConfig(**dict(cfg_key))
    return PSFBank(make_psf(cfg, jitter_scale), pixel_scale, radius_max, oversample)


def bank_for(cfg: PSFConfig, pixel_scale: float = 0.074, radius_max: int = 20, oversample: int = 64,
             jitter_scale: float = 1.0) -> PSFBank:
    key = tuple(sorted(dataclasses.asdict(cfg).items()))
    return cached_bank(key, pixel_scale, radius_max, oversample, round(jitter_scale, 6))
