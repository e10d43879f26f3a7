"""Validation of the field simulator against the paper's anchors (dense-field paper §2, DESIGN.md §4).

- S/N versus magnitude: ≈ 600 at i = 16 (with the systematic "jitter noise"), 1 % precision at i = 22,
  5σ depth ≈ 25.9 for 300 s;
- sky-pixel noise = sqrt(sky + dark·t + RDNOISE²);
- the summed flux of an isolated star equals its truth flux;
- the Cramér–Rao bound on astrometry and the recall ceiling it implies at a 0.1 px match radius.

``python -m skyvar.sim.field_validation out_dir=docs/figures/sim`` writes ``snr_vs_mag.png`` and
``validation.json`` (analytic and Monte-Carlo S/N, depths, noise checks).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from skyvar.sim.field import FieldSimConfig, FieldSimulation
from skyvar.sim.psf import bank_for
from skyvar.utils.atomic import savefig_atomic, write_json_atomic


def unit_psf(cfg: FieldSimConfig, radius: int = 10) -> np.ndarray:
    """Unit-flux pixel-integrated PSF of a star centred on a pixel, (2R+1)² (its sum is the drawn fraction)."""
    return bank_for(cfg.psf, cfg.pixel_scale, max(radius, 10), cfg.oversample).stamps(radius)[0, 0].double().numpy()


def background_var(cfg: FieldSimConfig) -> float:
    """Per-pixel variance without the star: sky + dark + read noise + quantisation (1/12 ADU²)."""
    q = cfg.gain**2 / 12.0 if cfg.quantize else 0.0
    return cfg.sky_e_per_pixel + cfg.dark_e_s * cfg.exptime + cfg.read_var + q


def snr_psf(mag: np.ndarray, cfg: FieldSimConfig, systematic: bool = True) -> np.ndarray:
    """S/N of an optimally weighted (PSF-fit, known position) flux of an isolated star."""
    p = unit_psf(cfg).ravel()
    f = cfg.exptime * 10 ** (-0.4 * (np.atleast_1d(mag)[:, None] - cfg.zp))
    s = f * p[None, :]
    snr2 = (s**2 / (s + background_var(cfg))).sum(1)
    inv = 1.0 / snr2
    if systematic:
        inv = inv + cfg.systematic_floor**2
    return 1.0 / np.sqrt(inv)


def snr_aperture(mag: np.ndarray, cfg: FieldSimConfig, radius_arcsec: float = 0.145) -> np.ndarray:
    """S/N of a circular-aperture flux (default radius: the 80 % encircled-energy radius)."""
    p = unit_psf(cfg, 10)
    n = p.shape[0]
    c = (n - 1) / 2
    yy, xx = np.indices(p.shape)
    inside = np.hypot(xx - c, yy - c) <= radius_arcsec / cfg.pixel_scale
    ee, npix = p[inside].sum(), inside.sum()
    f = cfg.exptime * 10 ** (-0.4 * (np.atleast_1d(mag) - cfg.zp)) * ee
    return f / np.sqrt(f + npix * background_var(cfg))


def astrometric_crlb(mag: np.ndarray, cfg: FieldSimConfig, radius: int = 10) -> np.ndarray:
    """Cramér–Rao lower bound on the x-position error [px] of an isolated star (flux and background
    known), from the pixel-integrated PSF and the per-pixel Poisson + read noise, averaged over
    sub-pixel phases. No unbiased estimator can do better on this simulator's frames."""
    st = bank_for(cfg.psf, cfg.pixel_scale, max(radius, 10), cfg.oversample).stamps(radius).double().numpy()
    q = cfg.oversample
    # d(image)/dx by central differences between neighbouring 1/q-px phases (wrapping one pixel over)
    dpdx = (np.roll(st, -1, axis=1) - np.roll(st, 1, axis=1)) * q / 2.0
    dpdx = dpdx[:, 1:-1]  # drop the phases whose neighbour wrapped to the next pixel
    p = st[:, 1:-1]
    out = []
    for m in np.atleast_1d(mag):
        f = cfg.exptime * 10 ** (-0.4 * (m - cfg.zp))
        fisher = (f * dpdx) ** 2 / (f * p + background_var(cfg))
        out.append(np.sqrt(np.mean(1.0 / fisher.sum((-1, -2)))))
    return np.asarray(out)


def recall_ceiling(radius: float, cfg: FieldSimConfig, mag_max: float | None = None) -> float:
    """Upper bound on the recall at match ``radius`` [px] of any unbiased position estimator on
    isolated stars: each target's position error is at least Gaussian with the CRLB σ per axis, so it
    lands within ``radius`` with probability 1 − exp(−r²/2σ²); averaged over the targets' luminosity
    function. Crowding only lowers it."""
    hi = cfg.target_mag_max if mag_max is None else mag_max
    m = np.linspace(cfg.mag_min, hi, 441)
    w = 10 ** (cfg.lf_slope * m)
    w /= w.sum()
    sig = astrometric_crlb(m, cfg)
    return float((w * (1 - np.exp(-(radius**2) / (2 * sig**2)))).sum())


def depth(snr_fn, cfg: FieldSimConfig, level: float = 5.0) -> float:
    m = np.linspace(20, 30, 2001)
    s = snr_fn(m, cfg)
    return float(np.interp(-level, -s, m))


def monte_carlo_snr(cfg: FieldSimConfig, mags=(16.0, 20.0, 22.0, 24.0, 25.0), n_trials: int = 400,
                    seed: int = 0) -> dict[float, float]:
    """Measured S/N of PSF-weighted fluxes of isolated stars in simulated noisy stamps (known positions)."""
    rng = np.random.default_rng(seed)
    p = unit_psf(cfg)
    bvar = background_var(cfg)
    bkg = cfg.sky_e_per_pixel + cfg.dark_e_s * cfg.exptime
    out = {}
    for m in mags:
        f = cfg.exptime * 10 ** (-0.4 * (m - cfg.zp))
        scale = 1.0 + rng.normal(0, cfg.systematic_floor, n_trials)
        expected = bkg + f * scale[:, None, None] * p[None]
        img = rng.poisson(expected) + rng.normal(0, np.sqrt(cfg.read_var), expected.shape)
        if cfg.quantize:
            img = np.round(img)
        w = p / (f * p + bvar)  # inverse-variance weights of the optimal linear estimator
        est = ((img - bkg) * w).sum((1, 2)) / (p * w).sum()
        out[float(m)] = float(f * p.sum() / np.std(est, ddof=1))
    return out


def validate(cfg: FieldSimConfig | None = None, out_dir: str | None = None) -> dict:
    cfg = cfg or FieldSimConfig()
    mags = np.array([16.0, 18.0, 20.0, 22.0, 24.0, 25.0, 25.9])
    res = {
        "psf_snr": dict(zip(mags.tolist(), snr_psf(mags, cfg).round(2).tolist())),
        "aperture_snr_r_ee80": dict(zip(mags.tolist(), snr_aperture(mags, cfg).round(2).tolist())),
        "precision_at_22_mag": float(1.0857 / snr_psf(np.array([22.0]), cfg)[0]),
        "depth_5sigma_psf": depth(lambda m, c: snr_psf(m, c), cfg),
        "depth_5sigma_aperture_r_ee80": depth(snr_aperture, cfg),
        "monte_carlo_psf_snr": monte_carlo_snr(cfg),
        "astrometric_crlb_px": dict(zip(mags.tolist(), astrometric_crlb(mags, cfg).round(4).tolist())),
        "recall_ceiling_isolated_crlb": {"0.1": recall_ceiling(0.1, cfg), "1.0": recall_ceiling(1.0, cfg)},
        "paper": {"snr_at_16": 600, "precision_at_22": 0.01, "depth_5sigma": 25.9},
    }
    # sky noise and flux conservation on a small star-free / single-star simulation
    c0 = dataclasses.replace(cfg, size=128, density=0.0, n_epochs=1)
    img, _, _ = FieldSimulation(c0).render_epoch(0)
    res["sky_noise_measured"] = float(np.std(img) * cfg.gain)
    res["sky_noise_expected"] = float(np.sqrt(background_var(cfg)))
    if out_dir:
        from skyvar.utils.plotting import subplots

        m = np.linspace(14, 27, 200)
        fig, ax = subplots(figsize=(6, 4))
        ax.semilogy(m, snr_psf(m, cfg), label="PSF fit (optimal), with systematic floor")
        ax.semilogy(m, snr_psf(m, cfg, systematic=False), ls=":", label="PSF fit, photon + read noise only")
        ax.semilogy(m, snr_aperture(m, cfg), ls="--", label="aperture r = R_EE80")
        mc = res["monte_carlo_psf_snr"]
        ax.semilogy(list(mc), list(mc.values()), "ko", label="Monte Carlo (simulated stamps)")
        ax.plot([16], [600], "r*", ms=12, label="paper: S/N≈600 at i=16")
        ax.plot([22], [100], "rs", label="paper: 1% at i=22")
        ax.axhline(5, color="gray", lw=0.8)
        ax.axvline(25.9, color="r", lw=0.8, ls="--", label="paper: 5σ depth 25.9")
        ax.set_xlabel("i [mag]")
        ax.set_ylabel("S/N (300 s)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        savefig_atomic(fig, Path(out_dir) / "snr_vs_mag.png")
        write_json_atomic(Path(out_dir) / "validation.json", res)
    return res


def main(argv: list[str] | None = None) -> int:
    from skyvar.utils.cli import parse_args

    argv = sys.argv[1:] if argv is None else argv
    out = parse_args(argv, allowed=["out_dir"], what="skyvar validate-sim").kv.get("out_dir", "docs/figures/sim")
    res = validate(out_dir=out)
    import json

    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
