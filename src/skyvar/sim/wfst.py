"""``python -m skyvar.sim lightcurves survey=wfst key=value ...``: WFST-like minute-cadence light curves.

Simulates the staring Galactic-plane runs of the WFST minute-cadence paper (Lin et al., Tables 1-2):
uninterrupted runs of 3-4 hours at ~50 s cadence (20 s exposures + ~30 s overhead) or ~60 s (30 s
exposures), 130-260 epochs, in g or r, for sources of 12-22 mag whose photometric precision follows
Table 2 (0.009 mag at 15, 0.015 at 18, 0.05 at 20 by default; the noise model
``sigma^2 = a + b x + c x^2``, ``x = 10^(0.4 (m - 18))`` - floor, source and sky terms - is solved
exactly through the three table values). A field is observed in several runs (default two, 59 days
apart, as GP-20230918 + GP-20231116) so light curves can be spliced.

Signals (per source, with truth): constants; flares (Davenport et al. 2014 template, FWHM minutes to
an hour, classic / multi-peak / peak-bump shapes, integrated over the exposure); delta Scuti stars,
ultracompact binaries (ellipsoidal, photometric period = P_orb / 2), ZZ Ceti pulsators (1-3 modes,
2-23 min), EW contact binaries and RR Lyrae (ab and c). Systematics: residual differential
extinction along the run's airmass curve, single-point outliers, small step offsets when a star moves
between detector regions, correlated (red) noise with a 10-minute correlation time at 0.3 of the
white noise (seeing and transparency residuals), artificial multi-epoch brightenings from bleeding trails of saturated
neighbours (the paper's main source of false flares), missing epochs (more for faint stars), and
misestimated reported errors.

Writes ``<out_dir>/store.parquet`` (long format, DESIGN.md Sect. 3: ``source_id, band, time, mag,
mag_err, flag``; time = MJD mid-exposure), ``<out_dir>/truth.parquet`` (one row per source; columns
documented in :func:`simulate_wfst`) and ``<out_dir>/config.json``. Same config + seed = same data.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.utils.log import get_logger

log = get_logger(__name__)

VAR_TYPES = ("constant", "flare", "dsct", "ucb", "zzceti", "ew", "rrlyr")


@dataclasses.dataclass
class WfstSimConfig:
    out_dir: str = "datasets/wfst_sim"
    seed: int = 2024
    n_sources: int = 5000
    band: str = "g"
    # --- cadence and runs (paper Table 1)
    exposure_s: float = 20.0
    overhead_s: float = 30.0
    cadence_jitter_s: float = 0.0  # rms jitter of the exposure start (GP-20230918 was taken by hand)
    run_hours: list[float] = dataclasses.field(default_factory=lambda: [3.0, 3.3])
    run_offsets_days: list[float] = dataclasses.field(default_factory=lambda: [0.0, 59.0])
    mjd0: float = 60205.7640  # 2023-09-18 18:20 UTC
    # --- sources and noise (paper Table 2 / Fig. 2)
    mag_min: float = 12.0
    mag_max: float = 22.0
    mag_slope: float = 0.25  # dN/dm ~ 10^(slope m)
    sigma_15: float = 0.009
    sigma_18: float = 0.015
    sigma_20: float = 0.05
    err_scatter: float = 0.1  # reported errors = true sigma x lognormal(0, err_scatter) per source
    dropout: float = 0.02
    faint_dropout_mag: float = 21.8  # half of the epochs are lost at this magnitude
    # --- systematics
    airmass_coeff_sigma: float = 0.01  # residual extinction (mag per unit airmass) per source
    red_noise_frac: float = 0.3  # correlated (AR(1)) noise, rms as a fraction of the white noise
    red_noise_tau_min: float = 10.0  # its correlation time (seeing / transparency residuals)
    outlier_rate: float = 3e-4  # residual single-point outliers after the pipeline's flagging
    outlier_min: float = 0.1
    outlier_max: float = 1.0
    region_shift_frac: float = 0.03
    region_shift_min: float = 0.005
    region_shift_max: float = 0.02
    bleed_frac: float = 0.002
    bleed_min: float = 0.05
    bleed_max: float = 0.5
    # --- variable populations (fractions of all sources)
    frac_flare: float = 0.01
    frac_dsct: float = 0.005
    frac_ucb: float = 0.001
    frac_zzceti: float = 0.001
    frac_ew: float = 0.01
    frac_rrlyr: float = 0.002
    flare_amp_min: float = 0.02  # peak relative flux increase dF/F
    flare_amp_max: float = 3.0
    flare_fwhm_min_min: float = 1.0  # minutes
    flare_fwhm_max_min: float = 60.0
    flare_frac_multi: float = 0.2
    flare_frac_peak_bump: float = 0.2
    periodic_amp_scale: float = 1.0  # multiplies every periodic amplitude (injection tests)
    chunk: int = 20000  # sources simulated at once


def noise_coefficients(s15: float, s18: float, s20: float) -> np.ndarray:
    """Solve ``sigma^2 = a + b x + c x^2`` (``x = 10^(0.4 (m - 18))``) through the three table values."""
    xs = 10 ** (0.4 * (np.array([15.0, 18.0, 20.0]) - 18))
    A = np.stack([np.ones(3), xs, xs**2], axis=1)
    coef = np.linalg.solve(A, np.array([s15, s18, s20]) ** 2)
    if np.any(coef < 0):
        # keep the model physical (no negative variance terms): least squares with non-negativity
        from scipy.optimize import nnls

        coef = nnls(A, np.array([s15, s18, s20]) ** 2)[0]
    return coef


def sigma_of_mag(mag: np.ndarray, coef: np.ndarray) -> np.ndarray:
    x = 10 ** (0.4 * (np.asarray(mag) - 18))
    return np.sqrt(coef[0] + coef[1] * x + coef[2] * x * x)


def davenport_flare(x: np.ndarray) -> np.ndarray:
    """Davenport et al. (2014) flare template in units of the peak flux; ``x = (t - t_peak)/t_1/2``."""
    x = np.asarray(x, dtype=np.float64)
    rise = 1 + 1.941 * x - 0.175 * x**2 - 2.246 * x**3 - 1.125 * x**4
    xp = np.maximum(x, 0.0)
    decay = 0.6890 * np.exp(-1.600 * xp) + 0.3030 * np.exp(-0.2783 * xp)
    out = np.where(x > 0, decay, np.where(x >= -1, rise, 0.0))
    return np.clip(out, 0.0, None)


def run_times(cfg: WfstSimConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mid-exposure times (MJD) of all epochs and the run index of each."""
    cadence = (cfg.exposure_s + cfg.overhead_s) / 86400.0
    ts, rid = [], []
    if len(cfg.run_hours) != len(cfg.run_offsets_days):
        raise ValueError("run_hours and run_offsets_days must have the same length")
    for r, (h, off) in enumerate(zip(cfg.run_hours, cfg.run_offsets_days)):
        n = int(np.floor(h / 24.0 / cadence + 1e-9)) + 1
        t = cfg.mjd0 + off + np.arange(n) * cadence + 0.5 * cfg.exposure_s / 86400.0
        if cfg.cadence_jitter_s > 0:
            t = t + rng.normal(0, cfg.cadence_jitter_s / 86400.0, n)
            t = np.sort(t)
        ts.append(t)
        rid.append(np.full(n, r))
    return np.concatenate(ts), np.concatenate(rid)


def _airmass(t: np.ndarray, rid: np.ndarray, rng: np.random.Generator, lat_deg: float = 38.6,
             dec_deg: float = 59.6) -> np.ndarray:
    """Airmass along each run: the field crosses the meridian at a random time of the run."""
    X = np.empty_like(t)
    phi, dec = np.radians(lat_deg), np.radians(dec_deg)
    for r in np.unique(rid):
        m = rid == r
        tr = t[m]
        t_transit = tr[0] + rng.uniform(-0.1, 1.1) * (tr[-1] - tr[0])
        H = 2 * np.pi * (tr - t_transit) * 1.0027379
        cosz = np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.cos(H)
        X[m] = 1.0 / np.clip(cosz, 0.2, 1.0)
    return X


def _periodic(kind: str, n: int, rng: np.random.Generator, scale: float) -> dict:
    """Draw parameters of ``n`` periodic variables of one kind. Periods in days, amplitudes in mag."""
    lu = lambda lo, hi: np.exp(rng.uniform(np.log(lo), np.log(hi), n))  # noqa: E731
    phase0 = rng.uniform(0, 1, n)
    if kind == "dsct":
        P = lu(0.02, 0.2)
        A = lu(0.003, 0.15) * scale
        r2 = np.where(A > 0.05, rng.uniform(0.1, 0.4, n), rng.uniform(0, 0.1, n))
        return dict(period=P, phot_period=P, amplitude=A, phase0=phase0, r2=r2, r3=r2 * rng.uniform(0.2, 0.6, n),
                    psi2=rng.uniform(0, 2 * np.pi, n), psi3=rng.uniform(0, 2 * np.pi, n))
    if kind == "ucb":
        P = lu(5.0, 70.0) / 1440.0
        A = lu(0.01, 0.2) * scale
        return dict(period=P, phot_period=P / 2, amplitude=A, phase0=phase0, r2=rng.uniform(0.05, 0.3, n))
    if kind == "zzceti":
        P = rng.uniform(100.0, 1400.0, n) / 86400.0
        A = lu(0.005, 0.1) * scale
        n_modes = rng.integers(1, 4, n)
        P2 = rng.uniform(100.0, 1400.0, n) / 86400.0
        P3 = rng.uniform(100.0, 1400.0, n) / 86400.0
        return dict(period=P, phot_period=P, amplitude=A, phase0=phase0, n_modes=n_modes, P2=P2, P3=P3,
                    A2=A * rng.uniform(0.2, 0.7, n), A3=A * rng.uniform(0.1, 0.5, n),
                    ph2=rng.uniform(0, 1, n), ph3=rng.uniform(0, 1, n))
    if kind == "ew":
        P = rng.uniform(0.22, 0.6, n)
        A = rng.uniform(0.05, 0.3, n) * scale
        return dict(period=P, phot_period=P / 2, amplitude=A, phase0=phase0, r2=rng.uniform(0.0, 0.2, n))
    if kind == "rrlyr":
        ab = rng.uniform(size=n) < 0.7
        P = np.where(ab, rng.uniform(0.45, 0.8, n), rng.uniform(0.25, 0.4, n))
        A = np.where(ab, rng.uniform(0.25, 0.5, n), rng.uniform(0.12, 0.25, n)) * scale
        return dict(period=P, phot_period=P, amplitude=A, phase0=phase0, ab=ab)
    raise ValueError(kind)


def _periodic_signal(kind: str, p: dict, t: np.ndarray) -> np.ndarray:
    """Magnitude offsets (n, T) for ``n`` variables at times ``t`` (positive = fainter)."""
    ph = 2 * np.pi * ((t[None, :] / p["period"][:, None]) + p["phase0"][:, None])
    A = p["amplitude"][:, None]
    if kind == "dsct":
        return -A * (np.sin(ph) + p["r2"][:, None] * np.sin(2 * ph + p["psi2"][:, None])
                     + p["r3"][:, None] * np.sin(3 * ph + p["psi3"][:, None]))
    if kind == "ucb":
        # ellipsoidal: two maxima per orbit, unequal minima (gravity darkening) - photometric P = P_orb/2
        return A * (np.cos(2 * ph) + p["r2"][:, None] * np.cos(ph))
    if kind == "zzceti":
        out = -A * np.sin(ph)
        for j, (Pk, Ak, phk) in enumerate((("P2", "A2", "ph2"), ("P3", "A3", "ph3")), start=2):
            on = (p["n_modes"] >= j)[:, None]
            out = out - on * p[Ak][:, None] * np.sin(2 * np.pi * (t[None, :] / p[Pk][:, None] + p[phk][:, None]))
        return out
    if kind == "ew":
        return A * (np.cos(2 * ph) + p["r2"][:, None] * np.cos(ph))
    if kind == "rrlyr":
        saw = sum(np.sin(k * ph) / k for k in range(1, 5))  # steep rise, slow decline
        sin1 = np.sin(ph) + 0.1 * np.sin(2 * ph)
        return -A * np.where(p["ab"][:, None], saw / 1.3, sin1)
    raise ValueError(kind)


def _flares(n: int, t: np.ndarray, rid: np.ndarray, cfg: WfstSimConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Relative flux increase (n, T) of ``n`` flaring stars (one flare event each) and their truth."""
    n_runs = int(rid.max()) + 1
    run = rng.integers(0, n_runs, n)
    fwhm = np.exp(rng.uniform(np.log(cfg.flare_fwhm_min_min), np.log(cfg.flare_fwhm_max_min), n)) / 1440.0
    amp = np.exp(rng.uniform(np.log(cfg.flare_amp_min), np.log(cfg.flare_amp_max), n))
    u = rng.uniform(size=n)
    shape = np.where(u < cfg.flare_frac_multi, "multi",
                     np.where(u < cfg.flare_frac_multi + cfg.flare_frac_peak_bump, "peak_bump", "classic"))
    t_lo = np.array([t[rid == r].min() for r in range(n_runs)])
    t_hi = np.array([t[rid == r].max() for r in range(n_runs)])
    t_peak = t_lo[run] + rng.uniform(0.05, 0.85, n) * (t_hi[run] - t_lo[run])
    exp_d = cfg.exposure_s / 86400.0
    # integrate over the exposure with 7 sub-samples (a 1-minute flare changes within 20-30 s)
    sub = (np.arange(7) - 3) / 7.0 * exp_d
    flux = np.zeros((n, t.size))
    comps = [(np.ones(n), np.zeros(n), np.ones(n))]  # (amplitude ratio, offset in fwhm, width ratio)
    multi = shape == "multi"
    pb = shape == "peak_bump"
    r2 = np.where(multi, rng.uniform(0.3, 1.0, n), np.where(pb, rng.uniform(0.1, 0.3, n), 0.0))
    o2 = np.where(multi, rng.uniform(1.0, 4.0, n), np.where(pb, rng.uniform(1.0, 3.0, n), 0.0))
    w2 = np.where(pb, rng.uniform(3.0, 6.0, n), 1.0)
    comps.append((r2, o2, w2))
    r3 = np.where(multi & (rng.uniform(size=n) < 0.5), rng.uniform(0.2, 0.7, n), 0.0)
    comps.append((r3, o2 + rng.uniform(1.0, 3.0, n), np.ones(n)))
    for ratio, off, wr in comps:
        on = ratio > 0
        if not on.any():
            continue
        tp = t_peak[on] + off[on] * fwhm[on]
        w = fwhm[on] * wr[on]
        x = (t[None, :, None] + sub[None, None, :] - tp[:, None, None]) / w[:, None, None]
        flux[on] += (amp[on] * ratio[on])[:, None] * davenport_flare(x).mean(axis=2)
    truth = dict(t_peak=t_peak, fwhm=fwhm, flare_amp=amp, flare_shape=shape, flare_run=run,
                 flare_peak_flux=flux.max(axis=1))
    return flux, truth


def _ar1(n: int, t: np.ndarray, tau: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance AR(1) (Ornstein-Uhlenbeck sampled at ``t``) series for ``n`` sources; a loop over
    epochs (hundreds), vectorised over sources."""
    out = np.empty((n, t.size))
    out[:, 0] = rng.normal(size=n)
    phi = np.exp(-np.diff(t) / tau)
    innov = rng.normal(size=(n, t.size - 1)) * np.sqrt(1 - phi**2)
    for j in range(1, t.size):
        out[:, j] = phi[j - 1] * out[:, j - 1] + innov[:, j - 1]
    return out


def simulate_wfst(cfg: WfstSimConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate ``cfg.n_sources`` light curves. Returns ``(store, truth)``.

    ``store``: long format ``source_id, band, time, mag, mag_err, flag`` (flag 0; MJD).
    ``truth``: ``source_id, band, mag0`` (quiescent magnitude), ``var_type`` (one of
    :data:`VAR_TYPES`), ``period`` (physical, days), ``phot_period`` (dominant photometric period,
    days; P_orb/2 for UCBs and EW), ``amplitude`` (mag; semi-amplitude of the fundamental for periodic
    variables), ``t_peak, fwhm`` (days), ``flare_amp`` (peak dF/F of the main component),
    ``flare_peak_flux`` (max dF/F sampled), ``flare_shape``, ``flare_run``, ``sigma`` (noise at mag0),
    ``bleed`` (artificial brightening injected), ``region_shift``, ``n_outliers``, ``airmass_coeff``, ``n_epochs``.
    """
    if cfg.n_sources <= 0:
        raise ValueError("n_sources must be positive")
    ss = np.random.SeedSequence(cfg.seed)
    rng_t, rng_pop = (np.random.default_rng(s) for s in ss.spawn(2))
    t, rid = run_times(cfg, rng_t)
    X = _airmass(t, rid, rng_t)
    coef = noise_coefficients(cfg.sigma_15, cfg.sigma_18, cfg.sigma_20)
    stores, truths = [], []
    chunk_seeds = np.random.SeedSequence(cfg.seed + 1).spawn(int(np.ceil(cfg.n_sources / cfg.chunk)))
    fracs = np.array([cfg.frac_flare, cfg.frac_dsct, cfg.frac_ucb, cfg.frac_zzceti, cfg.frac_ew, cfg.frac_rrlyr])
    if fracs.sum() > 1:
        raise ValueError(f"variable fractions sum to {fracs.sum():.3f} > 1")
    probs = np.concatenate([[1 - fracs.sum()], fracs])
    for ci, a in enumerate(range(0, cfg.n_sources, cfg.chunk)):
        n = min(cfg.chunk, cfg.n_sources - a)
        rng = np.random.default_rng(chunk_seeds[ci])
        sid = np.arange(a, a + n, dtype=np.int64)
        # magnitudes: dN/dm ~ 10^(slope m) on [mag_min, mag_max] by inverse CDF
        u = rng.uniform(size=n)
        k = cfg.mag_slope * np.log(10)
        lo, hi = np.exp(k * cfg.mag_min), np.exp(k * cfg.mag_max)
        mag0 = np.log(lo + u * (hi - lo)) / k if k > 0 else cfg.mag_min + u * (cfg.mag_max - cfg.mag_min)
        vt_idx = rng.choice(len(VAR_TYPES), size=n, p=probs)
        vtype = np.asarray(VAR_TYPES, dtype=object)[vt_idx]
        dm = np.zeros((n, t.size))
        truth = pd.DataFrame({"source_id": sid, "band": cfg.band, "mag0": mag0, "var_type": vtype.astype(str)})
        for col in ("period", "phot_period", "amplitude", "t_peak", "fwhm", "flare_amp", "flare_peak_flux"):
            truth[col] = np.nan
        truth["flare_shape"] = ""
        truth["flare_run"] = -1
        for kind in ("dsct", "ucb", "zzceti", "ew", "rrlyr"):
            sel = np.flatnonzero(vtype == kind)
            if sel.size == 0:
                continue
            p = _periodic(kind, sel.size, rng, cfg.periodic_amp_scale)
            dm[sel] += _periodic_signal(kind, p, t)
            truth.loc[sel, "period"] = p["period"]
            truth.loc[sel, "phot_period"] = p["phot_period"]
            truth.loc[sel, "amplitude"] = p["amplitude"]
        sel = np.flatnonzero(vtype == "flare")
        if sel.size:
            flux, ft = _flares(sel.size, t, rid, cfg, rng)
            dm[sel] += -2.5 * np.log10(1 + flux)
            truth.loc[sel, "t_peak"] = ft["t_peak"]
            truth.loc[sel, "fwhm"] = ft["fwhm"]
            truth.loc[sel, "flare_amp"] = ft["flare_amp"]
            truth.loc[sel, "flare_peak_flux"] = ft["flare_peak_flux"]
            truth.loc[sel, "flare_shape"] = ft["flare_shape"]
            truth.loc[sel, "flare_run"] = ft["flare_run"]
        # --- systematics
        kx = rng.normal(0, cfg.airmass_coeff_sigma, n)
        sysm = kx[:, None] * (X - X.mean())[None, :]
        shift = rng.uniform(size=n) < cfg.region_shift_frac
        if shift.any():
            ns = int(shift.sum())
            ta = rng.uniform(t.min(), t.max(), ns)
            tb = ta + rng.uniform(0.01, 0.1, ns)
            amp = rng.uniform(cfg.region_shift_min, cfg.region_shift_max, ns) * rng.choice([-1, 1], ns)
            sysm[shift] += amp[:, None] * ((t[None, :] >= ta[:, None]) & (t[None, :] < tb[:, None]))
        bleed = rng.uniform(size=n) < cfg.bleed_frac
        if bleed.any():
            nb = int(bleed.sum())
            start = rng.integers(0, t.size - 6, nb)
            length = rng.integers(2, 6, nb)
            amp = rng.uniform(cfg.bleed_min, cfg.bleed_max, nb)
            idx = np.arange(t.size)[None, :]
            on = (idx >= start[:, None]) & (idx < (start + length)[:, None])
            sysm[bleed] -= amp[:, None] * on
        if cfg.red_noise_frac > 0:
            sysm += cfg.red_noise_frac * sigma_of_mag(mag0, coef)[:, None] * _ar1(n, t, cfg.red_noise_tau_min / 1440.0, rng)
        mtrue = mag0[:, None] + dm + sysm
        sig = sigma_of_mag(mtrue, coef)
        mobs = mtrue + rng.normal(size=mtrue.shape) * sig
        out = rng.uniform(size=mtrue.shape) < cfg.outlier_rate
        if out.any():
            mobs[out] += rng.uniform(cfg.outlier_min, cfg.outlier_max, int(out.sum())) * rng.choice([-1, 1], int(out.sum()))
        n_out = out.sum(axis=1)
        err = sig * np.exp(rng.normal(0, cfg.err_scatter, n))[:, None]
        p_drop = cfg.dropout + (1 - cfg.dropout) / (1 + np.exp(-(mtrue - cfg.faint_dropout_mag) / 0.15))
        keep = rng.uniform(size=mtrue.shape) >= p_drop
        r, c = np.nonzero(keep)
        stores.append(pd.DataFrame({
            "source_id": sid[r], "band": cfg.band, "time": t[c], "mag": mobs[r, c], "mag_err": err[r, c],
            "flag": np.zeros(r.size, dtype=np.int32)}))
        truth["sigma"] = sigma_of_mag(mag0, coef)
        truth["bleed"] = bleed
        truth["region_shift"] = shift
        truth["n_outliers"] = n_out
        truth["airmass_coeff"] = kx
        truth["n_epochs"] = keep.sum(axis=1)
        truths.append(truth)
    return pd.concat(stores, ignore_index=True), pd.concat(truths, ignore_index=True)


def simulate_wfst_to_disk(cfg: WfstSimConfig) -> Path:
    from skyvar.utils.atomic import atomic_path, write_json_atomic

    out = Path(cfg.out_dir)
    store, truth = simulate_wfst(cfg)
    with atomic_path(out / "store.parquet") as tmp:
        store.to_parquet(tmp, index=False)
    with atomic_path(out / "truth.parquet") as tmp:
        truth.to_parquet(tmp, index=False)
    write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
    counts = truth.var_type.value_counts().to_dict()
    log.info("wrote %d measurements of %d sources (%s) to %s", len(store), len(truth), counts, out)
    return out


def main(overrides: list[str] | None = None) -> int:
    from skyvar.utils.config import config_from_dotlist

    overrides = list(sys.argv[1:] if overrides is None else overrides)
    if any(o in ("-h", "--help") for o in overrides):
        print(__doc__)
        for f in dataclasses.fields(WfstSimConfig):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            print(f"  {f.name} = {default}")
        return 0
    try:
        cfg = config_from_dotlist(WfstSimConfig, overrides)
        simulate_wfst_to_disk(cfg)
    except (ValueError, OSError) as e:
        print(f"wfst simulator: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
