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

``mode=fits`` writes LAMOST-MRS-layout FITS files instead (one per star and night, both arms, known
velocities and exposure zero points; :func:`simulate_mrs_files`) for end-to-end tests of the pipeline.
The spectrum-level mock of the precision study (a template shifted by known velocities with noise at a
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


def band_limited_model(wave, flux, good=None, upsample: int = 8, max_freq: float | None = None):
    """A callable rest-frame model f(wavelength) from a spectrum sampled uniformly in log wavelength.

    Cubic splines through a spectrum sampled at only 2–6 pixels per resolution element (LAMOST MRS
    co-adds, R = 2000 BOSZ models) make errors that depend on the sub-pixel phase, i.e. on the velocity;
    for a *noisy* template (the real MRS co-add) the interpolated noise also changes with phase. Here the
    spectrum is first upsampled ``upsample`` times by Fourier (band-limited, Whittaker–Shannon)
    interpolation — mirrored to avoid an edge jump — and the cubic spline runs on that fine grid.
    Masked pixels (``good`` False) are filled linearly first. ``max_freq`` [cycles/pixel] removes
    Fourier components above it: a real spectrum used as a noiseless template carries its own noise up
    to the Nyquist frequency, which no two grids can shift consistently; above the instrument's line
    spread function (~0.2 cycles/pixel for MRS) it is noise only.
    """
    from scipy.interpolate import CubicSpline
    from scipy.signal import resample

    wave = np.asarray(wave, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ll = np.log10(wave)
    step = np.diff(ll)
    if not np.allclose(step, step.mean(), rtol=0.05):
        raise ValueError("band_limited_model needs a spectrum sampled uniformly in log wavelength")
    if good is not None:
        good = np.asarray(good, dtype=bool)
        flux = np.interp(ll, ll[good], flux[good])
    n = len(flux)
    ext = np.concatenate([flux, flux[::-1]])
    if max_freq is not None:
        X = np.fft.rfft(ext)
        f = np.fft.rfftfreq(2 * n)
        X[f > max_freq] = 0
        ext = np.fft.irfft(X, 2 * n)
    fine = resample(ext, 2 * n * upsample)[: n * upsample]
    ll_fine = ll[0] + (ll[-1] - ll[0]) / (n - 1) * np.arange(n * upsample) / upsample
    cs = CubicSpline(ll_fine, fine)
    return lambda w: cs(np.log10(w))


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


# ----------------------------------------------------------------------------- MRS-like FITS files
@dataclasses.dataclass
class MRSFilesConfig:
    """Multi-epoch LAMOST-MRS-like FITS files with known velocities and exposure zero points."""

    out_dir: str = "datasets/rv_mrs_files"
    seed: int = 7
    n_stars: int = 12
    n_nights: int = 3
    exposures_per_night: int = 3
    n_spectrographs: int = 1
    snr_min: float = 20.0  # per-pixel SNR of the red arm, uniform per exposure; blue gets 0.6x
    snr_max: float = 80.0
    zp_scatter: float = 2.0  # km/s, Gaussian zero point per spectrograph, arm and exposure
    binary_fraction: float = 0.25
    binary_k_max: float = 30.0  # km/s
    n_lines: int = 120  # absorption lines per arm of the synthetic star
    resolution: float = 7500.0


def _synthetic_star(rng: np.random.Generator, n_lines: int, resolution: float):
    """A random absorption-line spectrum per arm (Gaussian lines of the instrumental width)."""
    from skyvar.spectra.mrs import ARMS

    out = {}
    for arm, (lo, hi) in ARMS.items():
        centres = rng.uniform(lo - 100, hi + 100, n_lines)
        depth = rng.uniform(0.05, 0.5, n_lines) * rng.choice([0.3, 1.0], n_lines, p=[0.6, 0.4])
        width = centres / resolution / 2.3548 * rng.uniform(1.0, 1.3, n_lines)

        def model(w, c=centres, d=depth, s=width):
            w = np.asarray(w, dtype=np.float64)
            f = np.ones_like(w)
            for k in range(len(c)):
                f -= d[k] * np.exp(-0.5 * ((w - c[k]) / s[k]) ** 2)
            return np.clip(f, 0.05, None)

        out[arm] = model
    return out


def write_mrs_fits(path, header: dict, exposures: list[dict], coadds: list[dict] | None = None) -> Path:
    """Write a LAMOST-MRS-layout FITS file (see :mod:`skyvar.spectra.mrs`).

    ``header``: primary keys (OBSID, RA, DEC, OBJNAME, SPID, FIBERID, LMJD, PLANID …); ``exposures``:
    dicts with arm ('B'/'R'), lmjm, wave, flux, ivar, snr and optional pixmask, exptime; ``coadds``: dicts
    with arm, wave, flux, ivar, snr, lmjms. Written atomically.
    """
    from astropy.io import fits

    from skyvar.utils.atomic import atomic_path

    h0 = fits.Header()
    h0["EXTNAME"] = "Information"
    for k, v in header.items():
        h0[k] = v
    hdus = [fits.PrimaryHDU(header=h0)]
    for c in coadds or []:
        cols = [fits.Column(name="FLUX", format="E", array=c["flux"]), fits.Column(name="IVAR", format="E", array=c["ivar"]),
                fits.Column(name="LOGLAM", format="E", array=np.log10(c["wave"])),
                fits.Column(name="ANDMASK", format="I", array=np.zeros(len(c["wave"]), np.int16)),
                fits.Column(name="ORMASK", format="I", array=np.zeros(len(c["wave"]), np.int16))]
        hdu = fits.BinTableHDU.from_columns(cols, name=f"COADD_{c['arm']}")
        for j, i in enumerate(range(0, len(c["lmjms"]), 3)):
            hdu.header[f"LMJMLIS{j}"] = "-".join(str(x) for x in c["lmjms"][i:i + 3])
        hdu.header["SNR"] = c["snr"]
        hdus.append(hdu)
    for e in exposures:
        pm = e.get("pixmask", np.zeros(len(e["wave"]), np.int16))
        cols = [fits.Column(name="FLUX", format="E", array=e["flux"]), fits.Column(name="IVAR", format="E", array=e["ivar"]),
                fits.Column(name="LOGLAM", format="E", array=np.log10(e["wave"])),
                fits.Column(name="PIXMASK", format="I", array=pm)]
        hdu = fits.BinTableHDU.from_columns(cols, name=f"{e['arm']}-{e['lmjm']}")
        hdu.header["LMJM"] = str(e["lmjm"])
        hdu.header["EXPTIME"] = e.get("exptime", 1200)
        hdu.header["SNR"] = e["snr"]
        hdus.append(hdu)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, overwrite=True)
    return Path(path)


def simulate_mrs_files(cfg: MRSFilesConfig) -> Table:
    """Write one MRS file per star and night under ``cfg.out_dir`` and return the truth table.

    Every exposure of spectrograph s and arm a has a zero point zp ~ N(0, zp_scatter): all its spectra are
    shifted by the star's velocity plus zp (a wavelength-calibration error acts as a common velocity
    shift). Constant stars have a fixed velocity; a ``binary_fraction`` of stars move sinusoidally.
    Single-exposure grids are log-uniform with a random sub-pixel start (the resampling is exercised),
    the red arm stored in descending wavelength like the real files. Truth columns: source, arm,
    exposure, spectrograph, true_v (absolute km/s), true_zp (km/s), star_type.
    """
    from skyvar.spectra.mrs import LAMOST_SITE
    from skyvar.spectra.rv import C_KMS

    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lmjd0 = 58400
    lmjm = {}  # (night, k) -> local modified Julian minute
    for n in range(cfg.n_nights):
        for k in range(cfg.exposures_per_night):
            lmjm[(n, k)] = (lmjd0 + 3 * n) * 1440 + 20 * 60 + 30 + 25 * k
    zp = {(s, a, key): rng.normal(0, cfg.zp_scatter) for s in range(1, cfg.n_spectrographs + 1)
          for a in "BR" for key in lmjm}
    rows = []
    for i in range(cfg.n_stars):
        model = _synthetic_star(rng, cfg.n_lines, cfg.resolution)
        spid = 1 + i % cfg.n_spectrographs
        v0 = rng.uniform(-60, 60)
        binary = rng.random() < cfg.binary_fraction
        k_amp, period, t0 = rng.uniform(5, cfg.binary_k_max), rng.uniform(0.5, 5), rng.uniform(0, 5)
        ra, dec = rng.uniform(0, 360), rng.uniform(-10, 60)
        for n in range(cfg.n_nights):
            exps, coadds = [], []
            for k in range(cfg.exposures_per_night):
                m = lmjm[(n, k)]
                t_mjd = m / 1440.0 - 8 / 24
                v = v0 + (k_amp * np.sin(2 * np.pi * (t_mjd - t0) / period) if binary else 0.0)
                snr_r = rng.uniform(cfg.snr_min, cfg.snr_max)
                for arm, (lo, hi) in (("B", (4893.9, 5374.7)), ("R", (6292.4, 6846.0))):
                    z = zp[(spid, arm, (n, k))]
                    snr = snr_r * (0.6 if arm == "B" else 1.0)
                    npix = int(np.log10(hi / lo) / 1e-5)
                    wave = 10 ** (np.log10(lo) + (np.arange(npix) + rng.uniform(0, 1)) * 1e-5)
                    vt = v + z
                    b = vt / C_KMS
                    cont = 1000 * (1 - 0.5 * ((wave - wave.mean()) / (np.ptp(wave) / 2)) ** 2)
                    f = model[arm](wave / np.sqrt((1 + b) / (1 - b))) * cont
                    sig = np.sqrt(f * np.median(f)) / snr
                    flux = f + rng.normal(0, 1, npix) * sig
                    ivar = 1 / sig**2
                    if arm == "R":
                        wave, flux, ivar = wave[::-1], flux[::-1], ivar[::-1]
                    exps.append({"arm": arm, "lmjm": m, "wave": wave, "flux": flux, "ivar": ivar, "snr": round(snr, 2)})
                    rows.append({"source": f"star{i:04d}", "arm": arm, "exposure": str(m), "spectrograph": spid,
                                 "true_v": v, "true_zp": z, "star_type": "binary" if binary else "constant"})
            header = {"OBSID": 1000 * i + n, "RA": ra, "DEC": dec, "OBJNAME": f"star{i:04d}",
                      "DESIG": f"SIM J{i:04d}", "PLANID": f"SIMPLATE{n:02d}", "LMJD": lmjd0 + 3 * n, "SPID": spid,
                      "FIBERID": 1 + i, "LONGITUD": LAMOST_SITE["lon"], "LATITUDE": LAMOST_SITE["lat"], "HELIO": True,
                      "HELIO_RV": 0.0, "VACUUM": True, "DATA_V": "skyvar sim"}
            write_mrs_fits(out / f"med-{lmjd0 + 3 * n}-SIMPLATE{n:02d}_sp{spid:02d}-{i + 1:03d}.fits", header, exps, coadds)
    truth = Table(rows=rows)
    truth.meta["config"] = dataclasses.asdict(cfg)
    write_table_atomic(truth, out / "truth.ecsv")
    return truth


def main(overrides: list[str]) -> int:
    mode = "velocities"
    rest = []
    for o in overrides:
        if o.startswith("mode="):
            mode = o.split("=", 1)[1]
        else:
            rest.append(o)
    cls = {"velocities": RVMockConfig, "fits": MRSFilesConfig}.get(mode)
    if cls is None:
        print(f"rv_mock: mode must be 'velocities' (the paper's mock) or 'fits' (MRS files), got {mode!r}",
              file=sys.stderr)
        return 2
    if rest and rest[0] in ("-h", "--help"):
        print(__doc__)
        print(f"keys ({mode}):", ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls)))
        return 0
    try:
        cfg = config_from_dotlist(cls, rest)
        if mode == "fits":
            truth = simulate_mrs_files(cfg)
            log.info("rv_mock fits: %d spectra of %d stars -> %s", len(truth), cfg.n_stars, cfg.out_dir)
            return 0
        rows, stars = simulate_rv_mock(cfg)
    except ValueError as e:
        print(f"rv_mock: {e}", file=sys.stderr)
        return 2
    out = Path(cfg.out_dir)
    write_table_atomic(rows, out / "rv.ecsv")
    write_table_atomic(stars, out / "stars.ecsv")
    log.info("rv_mock: %d stars x %d exposures -> %s", len(stars), cfg.n_exposures, out / "rv.ecsv")
    return 0


# ----------------------------------------------------------------------------- real spectra, shifted
def shift_and_degrade(spectrum, v_kms: float, snr: float | None, rng: np.random.Generator):
    """A copy of a real spectrum Doppler-shifted by ``v_kms`` [km/s] and, if ``snr`` is given and below the
    spectrum's own, degraded with Gaussian noise to a per-pixel S/N of ``snr`` at the median flux.

    The flux is re-sampled with a cubic spline in log λ through the good pixels (the MRS line spread
    function spans ~6 pixels, so the spline is accurate to well below the noise); the inverse variance is
    moved with the same shift and, after degradation, 1 / (1/ivar + sigma_added²). ``meta['snr']`` becomes
    ``snr``; ``meta['v_injected']`` records the shift. For injection tests of the relative-RV errors.
    """
    from scipy.interpolate import CubicSpline

    from skyvar.spectra.resample import resample_linear
    from skyvar.spectra.rv import C_KMS
    from skyvar.spectra.spectrum import Spectrum

    b = v_kms / C_KMS
    D = np.sqrt((1 + b) / (1 - b))
    ll = np.log10(spectrum.wavelength)
    good = spectrum.good
    cs = CubicSpline(ll[good], spectrum.flux[good])
    src = ll - np.log10(D)  # the shifted spectrum at λ shows the original at λ / D
    flux = cs(src)
    _, ivar, bad = resample_linear(src, ll, spectrum.flux, spectrum.ivar, spectrum.mask)
    bad = bad | (src < ll[good][0]) | (src > ll[good][-1])
    meta = dict(spectrum.meta)
    meta["v_injected"] = float(v_kms)
    if snr is not None:
        med = float(np.median(flux[~bad]))
        sig_t = med / snr
        add = np.sqrt(np.clip(sig_t**2 - 1.0 / np.where(ivar > 0, ivar, np.inf), 0.0, None))
        flux = flux + add * rng.standard_normal(len(flux))
        ivar = np.where(bad, 0.0, 1.0 / (1.0 / np.where(ivar > 0, ivar, 1.0) + add**2))
        meta["snr"] = float(snr)
    return Spectrum(wavelength=spectrum.wavelength.copy(), flux=flux, ivar=np.where(bad, 0.0, ivar), mask=bad,
                    vacuum=spectrum.vacuum, meta=meta)


# Three plans of one star, rebuilt from the single real MRS file: (plan id, days after the real night,
# catalogue id written as OBJNAME, designation, spectrograph, fibre, exposures (indices of the real
# single exposures), offset of the written position [arcsec] (real files of one star differ by < 1")).
CROSS_PLANS = (
    ("TD230151N343645T01", 0, "1886955093649969280", "LAMOST J230311.44+321335.5", 1, 15, (0, 1, 2), (0.0, 0.0)),
    ("HD230117N321507B01", 31, "PM230311+3213", "LAMOST J230311.45+321335.4", 7, 112, (3, 4), (0.3, -0.4)),
    ("NT230311N321335M02", 367, "2MASS J23031144+3213355", "LAMOST J230311.43+321335.6", 12, 233, (5, 6),
     (-0.5, 0.2)),
)


def cross_plan_binary_files(mrs_file, out_dir, k_kms: float = 25.0, period_days: float = 17.3, t0_mjd: float = 58400.0,
                            plans=CROSS_PLANS, arms=("B", "R")) -> Table:
    """The multi-plan spectroscopic binary of issue 17, rebuilt from one real LAMOST MRS file.

    The real file holds one star (Gaia DR2 1886955093649969280) observed 7 times on one night. Its 7 single
    exposures (both arms) are split over three "plans" and written as three MRS-layout files, each with
    the plan's own PLANID, catalogue id (OBJNAME), designation, OBSID, spectrograph and fibre, LMJD and
    exposure times (LMJM) moved by the plan's day offset, and RA/Dec offset by under 0.6 arcsec. Every
    exposure is Doppler-shifted (:func:`shift_and_degrade`, no added noise) by a circular orbit
    ``k_kms sin(2 pi (t - t0) / period_days)`` evaluated at its new mid-exposure time. Returns the truth
    table (file, plan, catalogue_id, arm, exposure, v_injected [km/s]); the real exposures' own relative
    velocities (±0.7 km/s within the night) come on top.
    """
    from skyvar.spectra.mrs import lmjm_to_mjd_mid, read_mrs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    singles = read_mrs(mrs_file, kind="single", arms=arms, times=False)
    lmjms = sorted({s.meta["lmjm"] for s in singles})
    rng = np.random.default_rng(0)
    m0 = singles[0].meta
    rows = []
    for plan, days, objname, desig, spid, fiber, idx, (dra, ddec) in plans:
        exps = []
        for s in singles:
            j = lmjms.index(s.meta["lmjm"])
            if j not in idx:
                continue
            lmjm = int(s.meta["lmjm"]) + int(days) * 1440
            t = lmjm_to_mjd_mid(lmjm, s.meta["exptime"])
            v = k_kms * np.sin(2 * np.pi * (t - t0_mjd) / period_days)
            sh = shift_and_degrade(s, v, None, rng)
            exps.append({"arm": s.meta["arm"], "lmjm": lmjm, "wave": sh.wavelength, "flux": sh.flux,
                         "ivar": np.where(sh.mask, 0.0, sh.ivar), "snr": s.meta["snr"],
                         "pixmask": sh.mask.astype(np.int16), "exptime": s.meta["exptime"]})
            rows.append({"plan": plan, "catalogue_id": objname, "arm": s.meta["arm"], "exposure": str(lmjm),
                         "real_exposure": str(s.meta["lmjm"]), "v_injected": v})
        dec = m0["dec"] + ddec / 3600.0
        header = {"OBSID": 681001015 + 1000 * spid + fiber, "RA": m0["ra"] + dra / 3600.0 / np.cos(np.radians(dec)),
                  "DEC": dec, "OBJNAME": objname, "DESIG": desig, "PLANID": plan, "LMJD": int(m0["lmjd"]) + int(days),
                  "SPID": spid, "FIBERID": fiber, "LONGITUD": m0["site"]["lon"], "LATITUDE": m0["site"]["lat"],
                  "HELIO": True, "VACUUM": True, "DATA_V": "LAMOST DR7 (skyvar cross-plan rebuild)"}
        name = f"med-{int(m0['lmjd']) + int(days)}-{plan}_sp{spid:02d}-{fiber:03d}.fits"
        write_mrs_fits(out_dir / name, header, exps)
        for r in rows:
            r.setdefault("file", name)
    return Table(rows=rows)
