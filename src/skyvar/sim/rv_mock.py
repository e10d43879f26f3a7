"""``python -m skyvar.sim rv_mock key=value ...``: the relative-RV self-calibration mock (Xiong et al. §3.3).

One spectrograph, ``n_exposures`` exposures spread over ``n_nights`` nights; every night has a
systematic velocity shift du drawn from U(-nightly_shift, nightly_shift) km/s shared by all its
exposures. Stars:

- ``n_constant`` constant stars: true relative velocity U(-constant_rv, constant_rv) per exposure;
- ``n_nonconstant`` irregular variables: velocity A * U(-1/2, 1/2) per exposure, A ~ U(nonconstant_range);
- ``n_binary`` circular binaries: K sin(2 pi (t - T0) / P), K ~ U(binary_k), P ~ U(binary_period) days.

Each star has a measurement uncertainty e_i ~ U(meas_err_min, meas_err_max) km/s and every velocity gets
Gaussian noise N(0, e_i) plus N(0, exposure_noise) (0.5 km/s): the "measured" velocity is
rv = true_rv + true_zp + noise with true_zp = -du of the exposure's night (eq. 1), and rv_err =
sqrt(e_i^2 + exposure_noise^2). ``meas_err_max=0`` leaves only the 0.5 km/s noise, the case whose
zero-point floor is 0.5 / sqrt(n) km/s.

Writes ``out_dir/rv.ecsv`` (one row per star and exposure, the columns of the rv pipeline's output plus
truth: star_type, true_rv, true_zp, meas_err) and ``out_dir/stars.ecsv`` (one row per star: type and
orbit). Same config and seed give the same data.

The spectrum-level mock for the precision study (a template shifted by known velocities with noise at a
given SNR) is :func:`noisy_shifted_spectra`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
from astropy.table import Table

from skyvar.utils.atomic import write_table_atomic
from skyvar.utils.config import config_from_dotlist, stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)


@dataclasses.dataclass
class RVMockConfig:
    out_dir: str = "datasets/rv_mock"
    seed: int = 2021
    n_constant: int = 200
    n_nonconstant: int = 10
    n_binary: int = 40
    n_exposures: int = 30
    n_nights: int = 7
    night_span_days: int = 28  # nights are distinct days drawn from this span (one lunation)
    exposure_gap_min: float = 25.0  # minutes between consecutive exposures of a night (1200 s + overheads)
    constant_rv: float = 0.1  # km/s, |true velocity| of constant stars
    meas_err_min: float = 0.0  # km/s
    meas_err_max: float = 2.0  # km/s
    exposure_noise: float = 0.5  # km/s, Gaussian error of every star in every exposure
    nightly_shift: float = 7.0  # km/s, systematic shift per night ~ U(-x, x)
    nonconstant_min: float = 2.0  # km/s
    nonconstant_max: float = 10.0
    binary_k_min: float = 3.0  # km/s
    binary_k_max: float = 15.0
    binary_p_min: float = 0.5  # days
    binary_p_max: float = 3.0
    spectrograph: int = 1
    arm: str = "R"
    mjd0: float = 58400.0


def simulate_rv_mock(cfg: RVMockConfig) -> tuple[Table, Table]:
    """Return (velocity table, star table) for the mock; see the module docstring."""
    if cfg.n_nights < 1 or cfg.n_exposures < cfg.n_nights:
        raise ValueError("need n_nights >= 1 and n_exposures >= n_nights")
    if cfg.night_span_days < cfg.n_nights:
        raise ValueError("night_span_days must be >= n_nights (one night per day)")
    rng = np.random.default_rng(cfg.seed)
    nights = np.sort(rng.choice(cfg.night_span_days, size=cfg.n_nights, replace=False))
    per_night = [len(a) for a in np.array_split(np.arange(cfg.n_exposures), cfg.n_nights)]
    exp_night = np.repeat(np.arange(cfg.n_nights), per_night)
    exp_index = np.concatenate([np.arange(k) for k in per_night])
    # first exposure ~20:30 Beijing time = 12:30 UT
    t_exp = cfg.mjd0 + nights[exp_night] + 0.52 + exp_index * cfg.exposure_gap_min / 1440.0
    shift_night = rng.uniform(-cfg.nightly_shift, cfg.nightly_shift, cfg.n_nights)
    true_zp = -shift_night[exp_night]  # rv = v_true - du + e

    types = np.array(["constant"] * cfg.n_constant + ["nonconstant"] * cfg.n_nonconstant + ["binary"] * cfg.n_binary)
    n_star = len(types)
    meas_err = rng.uniform(cfg.meas_err_min, cfg.meas_err_max, n_star)
    amp = np.full(n_star, np.nan)
    period = np.full(n_star, np.nan)
    t0 = np.full(n_star, np.nan)
    nc = types == "nonconstant"
    bi = types == "binary"
    amp[nc] = rng.uniform(cfg.nonconstant_min, cfg.nonconstant_max, nc.sum())
    amp[bi] = rng.uniform(cfg.binary_k_min, cfg.binary_k_max, bi.sum())
    period[bi] = rng.uniform(cfg.binary_p_min, cfg.binary_p_max, bi.sum())
    t0[bi] = cfg.mjd0 + rng.uniform(0, 1, bi.sum()) * period[bi]

    n_exp = cfg.n_exposures
    true_rv = np.empty((n_star, n_exp))
    cs = types == "constant"
    true_rv[cs] = rng.uniform(-cfg.constant_rv, cfg.constant_rv, (cs.sum(), n_exp))
    true_rv[nc] = amp[nc, None] * rng.uniform(-0.5, 0.5, (nc.sum(), n_exp))
    true_rv[bi] = binary_velocity(t_exp[None, :], amp[bi, None], period[bi, None], t0[bi, None])
    noise = rng.normal(0, 1, (n_star, n_exp)) * meas_err[:, None] + rng.normal(0, cfg.exposure_noise, (n_star, n_exp))
    rv = true_rv + true_zp[None, :] + noise
    err = np.sqrt(meas_err**2 + cfg.exposure_noise**2)

    names = np.array([f"mock{i:04d}" for i in range(n_star)])
    exp_names = np.array([f"E{j:03d}" for j in range(n_exp)])
    S, E = np.meshgrid(np.arange(n_star), np.arange(n_exp), indexing="ij")
    S, E = S.ravel(), E.ravel()
    rows = Table({
        "source": names[S], "star_type": types[S], "exposure": exp_names[E], "night": exp_night[E],
        "time": t_exp[E], "spectrograph": np.full(S.size, cfg.spectrograph), "arm": np.full(S.size, cfg.arm),
        "snr": np.full(S.size, np.nan), "rv": rv.ravel(), "rv_err": err[S], "true_rv": true_rv.ravel(),
        "true_zp": true_zp[E], "meas_err": meas_err[S],
    })
    rows["time"].unit = "d"
    for c in ("rv", "rv_err", "true_rv", "true_zp", "meas_err"):
        rows[c].unit = "km/s"
    rows.meta.update({"simulator": "skyvar.sim.rv_mock", "config": dataclasses.asdict(cfg),
                      "config_hash": stable_hash(cfg), "time_scale": "MJD (UTC), mid-exposure",
                      "convention": "rv = true_rv + true_zp + noise; true_zp = -(nightly shift)"})
    stars = Table({"source": names, "star_type": types, "meas_err": meas_err, "amplitude": amp,
                   "period": period, "t0": t0})
    return rows, stars


def binary_velocity(t, k, period, t0):
    """Circular-orbit velocity K sin(2 pi (t - t0) / P) [km/s] (t, t0 and P in days)."""
    return k * np.sin(2 * np.pi * (np.asarray(t) - t0) / period)


def noisy_shifted_spectra(model, wave: np.ndarray, velocities: np.ndarray, snr: float,
                          rng: np.random.Generator, continuum: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Spectra of a noiseless model Doppler-shifted by ``velocities`` [km/s] on ``wave`` [Å] with noise.

    ``model(wavelength) -> flux`` evaluates the rest-frame spectrum (e.g. a spline through a template);
    the shifted spectrum at observed wavelength w is model(w / D(v)) with the relativistic Doppler factor
    D. Noise is Gaussian with photon-like variance: sigma = sqrt(F * median(F)) / snr, so the per-pixel
    SNR at the median flux is ``snr``. ``continuum`` multiplies the model (an instrument response) before
    the noise. Returns ``(flux (n, G), ivar (n, G))``.
    """
    from skyvar.spectra.rv import C_KMS

    v = np.atleast_1d(np.asarray(velocities, dtype=np.float64))
    b = v[:, None] / C_KMS
    rest = wave[None, :] / np.sqrt((1 + b) / (1 - b))
    f = np.asarray(model(rest), dtype=np.float64)
    if continuum is not None:
        f = f * continuum[None, :]
    f = np.clip(f, 1e-3 * np.median(f), None)
    med = np.median(f, axis=1, keepdims=True)
    sigma = np.sqrt(f * med) / snr
    flux = f + rng.normal(0, 1, f.shape) * sigma
    return flux, 1.0 / sigma**2


def main(overrides: list[str]) -> int:
    if overrides and overrides[0] in ("-h", "--help"):
        print(__doc__)
        print("keys:", ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(RVMockConfig)))
        return 0
    try:
        cfg = config_from_dotlist(RVMockConfig, overrides)
        rows, stars = simulate_rv_mock(cfg)
    except ValueError as e:
        print(f"rv_mock: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out_dir)
    write_table_atomic(rows, out / "rv.ecsv")
    write_table_atomic(stars, out / "stars.ecsv")
    log.info("rv_mock: %d stars x %d exposures -> %s", len(stars), cfg.n_exposures, out / "rv.ecsv")
    return 0
