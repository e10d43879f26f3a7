"""CSST-like 1000-epoch light curves from the field simulator's truth fluxes and noise model.

``python -m skyvar.sim lightcurves survey=csst out_dir=D seed=S n_stars=N [field.<key>=...]
[field.variability.frac_transit=0.1 ...]`` writes

- ``D/lightcurves.parquet``: the light-curve store's long format (DESIGN.md §3) ``source_id, band,
  time, mag, mag_err, flag`` (time = mid-exposure MJD, AB magnitudes, band ``i``), one row group per
  chunk of whole light curves;
- ``D/labels.parquet``: one row per star: the field truth (``source_id, x, y, ra, dec, mag, var_type,
  period, t0, amplitude, periodic``) plus ``label`` (1 = periodic: eclipsing binary, transit or
  pulsator with period <= baseline), ``class_name``/``class_id`` (:data:`CLASSES`), ``n_points`` and
  the light-curve S/N of the dense-field paper's eq. 5 (``snr_lc``, ``snr_lc_total``, see
  :func:`light_curve_snr`);
- ``D/config.yaml`` (this config, resolved) and ``D/done.json`` (row counts, config hash).

The stars are those of :class:`skyvar.sim.field.FieldSimulation` for ``field`` (same seed and keys
as ``python -m skyvar.sim field``, so the frames of that field contain exactly these stars and the
detect + associate light curves of option (b) can be matched to these labels). Only detection
targets (``mag_min <= mag < mag_max``, default i < 25 as in the paper) get light curves.

Per epoch ``e`` the signal is the truth flux (electrons drawn at the quiescent level) times the
variability multiplier; the measurement adds Gaussian noise of the simulator's S/N for an isolated
star at the instantaneous magnitude (:func:`skyvar.sim.field_validation.snr_psf`: PSF-fit photon,
sky, dark and read noise plus the per-epoch systematic "jitter" floor). Measured fluxes <= 0 are
non-detections (no row). ``mag_err = 1.0857 / S/N`` at the measured magnitude. Same config + seed =
identical files.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from skyvar.sim.field import FieldSimConfig, FieldSimulation
from skyvar.sim.field_validation import snr_psf
from skyvar.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from skyvar.utils.config import config_from_dotlist, stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)

#: Multi-class labels: var_type -> class name (and class_id = position in CLASSES).
CLASSES = ("constant", "eb", "transit", "pulsator", "flare")
CLASS_OF_TYPE = {"constant": "constant", "eb_detached": "eb", "eb_contact": "eb", "transit": "transit",
                 "rrlyrae": "pulsator", "cepheid": "pulsator", "flare": "flare"}

STORE_SCHEMA = pa.schema([("source_id", pa.int64()), ("band", pa.string()), ("time", pa.float64()),
                          ("mag", pa.float32()), ("mag_err", pa.float32()), ("flag", pa.int32())])


def _default_field() -> FieldSimConfig:
    return FieldSimConfig(n_epochs=1000, truth_lightcurves="none")


@dataclasses.dataclass
class CSSTLightCurveConfig:
    out_dir: str = "datasets/csst_lightcurves"
    seed: int = 0
    # number of target stars wanted: sets the field size from the star density (field.size if null)
    n_stars: int | None = 20000
    mag_min: float = 0.0
    mag_max: float = 25.0
    band: str = "i"
    chunk_stars: int = 5000
    field: FieldSimConfig = dataclasses.field(default_factory=_default_field)
    overwrite: bool = False


def field_config(cfg: CSSTLightCurveConfig) -> FieldSimConfig:
    """The field config actually simulated: seed from ``cfg.seed``, size from ``cfg.n_stars``."""
    f = dataclasses.replace(cfg.field, seed=cfg.seed)
    if cfg.n_stars:
        # fraction of catalogue stars in [mag_min, mag_max) under the field's luminosity function
        a, lo, hi = f.lf_slope, f.mag_min, f.mag_max
        cdf = lambda m: (10 ** (a * (np.clip(m, lo, hi) - lo)) - 1) / (10 ** (a * (hi - lo)) - 1)  # noqa: E731
        frac = max(cdf(cfg.mag_max) - cdf(cfg.mag_min), 1e-6)
        size = int(np.ceil(np.sqrt(cfg.n_stars / (f.density * frac))))
        f = dataclasses.replace(f, size=size, nx=None, ny=None)
    return f


def light_curve_snr(signal: np.ndarray, sigma: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The light-curve S/N of the dense-field paper's eq. 5, S/N = power of signal / power of noise.

    Power is the root mean square over the observed epochs: signal power = rms of the noiseless flux
    about its mean, ``sqrt(mean_t (F(t) − mean_t F)²)``; noise power = rms of the per-epoch flux
    error, ``sqrt(mean_t σ(t)²)``. Returns (per-point ratio ``snr_lc``, and ``snr_lc_total =
    sqrt(N) · snr_lc``, the S/N accumulated over the ``N`` observed epochs, which is what a matched
    filter can reach). Constant stars have S/N 0.
    """
    n = valid.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(valid, signal, 0).sum(1) / n
        ps = np.sqrt(np.where(valid, (signal - mu[:, None]) ** 2, 0).sum(1) / n)
        pn = np.sqrt(np.where(valid, sigma**2, 0).sum(1) / n)
        r = ps / pn
    r = np.where(n > 0, r, np.nan)
    return r, r * np.sqrt(n)


def simulate_csst_lightcurves(cfg: CSSTLightCurveConfig) -> Path:
    """Write the light curves and labels (see module docstring); returns ``cfg.out_dir``. An existing
    complete output of the same config is reused."""
    out = Path(cfg.out_dir)
    h = stable_hash(cfg)
    done = out / "done.json"
    if done.exists() and not cfg.overwrite:
        import json

        try:
            if json.loads(done.read_text()).get("config_hash") == h:
                log.info("csst light curves up to date in %s", out)
                return out
        except (OSError, ValueError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    fcfg = field_config(cfg)
    sim = FieldSimulation(fcfg)
    truth = sim.truth_table()
    mag = np.asarray(truth["mag"], float)
    sel = np.flatnonzero((mag >= cfg.mag_min) & (mag < cfg.mag_max))
    ids = np.asarray(truth["source_id"])[sel]
    base = np.asarray(truth["flux"], float)[sel]
    var_pos = np.full(len(sim.catalogue), -1)
    var_pos[sim.variables.index] = np.arange(len(sim.variables.index))
    vpos = var_pos[ids]
    mjd = sim.mjd
    T = len(mjd)
    baseline = T * (fcfg.cadence_s or fcfg.exptime) / 86400.0
    # S/N of the simulator on a fine magnitude grid, interpolated per epoch (snr_psf costs a PSF sum)
    mgrid = np.arange(8.0, 32.0, 0.005)
    sgrid = snr_psf(mgrid, fcfg)
    zp, exptime = fcfg.zp, fcfg.exptime

    def snr_at(m):
        return np.interp(m, mgrid, sgrid)

    log.info("csst light curves: %d target stars (%d variables) x %d epochs, field %dx%d seed %d", len(ids),
             int((vpos >= 0).sum()), T, *fcfg.shape[::-1], cfg.seed)
    n_points = np.zeros(len(ids), np.int64)
    snr_lc = np.zeros(len(ids))
    snr_tot = np.zeros(len(ids))
    n_rows = 0
    with atomic_path(out / "lightcurves.parquet") as tmp:
        writer = pq.ParquetWriter(tmp, STORE_SCHEMA, compression="zstd")
        for c, c0 in enumerate(range(0, len(ids), cfg.chunk_stars)):
            s = slice(c0, min(c0 + cfg.chunk_stars, len(ids)))
            rng = np.random.default_rng([cfg.seed, 7, c])
            mult = np.ones((s.stop - s.start, T))
            isv = vpos[s] >= 0
            if isv.any():
                mult[isv] = _multipliers(sim, vpos[s][isv], mjd)
            f_true = base[s, None] * mult
            m_true = zp - 2.5 * np.log10(np.clip(f_true, 1e-30, None) / exptime)
            sigma = f_true / snr_at(m_true)
            f_obs = f_true + rng.standard_normal(f_true.shape) * sigma
            det = f_obs > 0
            m_obs = zp - 2.5 * np.log10(np.where(det, f_obs, 1.0) / exptime)
            err = 1.0857 / snr_at(m_obs)
            n_points[s] = det.sum(1)
            snr_lc[s], snr_tot[s] = light_curve_snr(f_true, sigma, det)
            r, k = np.nonzero(det)
            tbl = pa.table({
                "source_id": pa.array(ids[s][r], pa.int64()),
                "band": pa.array(np.full(len(r), cfg.band), pa.string()),
                "time": pa.array(mjd[k], pa.float64()),
                "mag": pa.array(m_obs[r, k].astype(np.float32)),
                "mag_err": pa.array(err[r, k].astype(np.float32)),
                "flag": pa.array(np.zeros(len(r), np.int32)),
            }, schema=STORE_SCHEMA)
            writer.write_table(tbl, row_group_size=len(r) + 1)
            n_rows += len(r)
        writer.close()
    lab = truth[sel].to_pandas()
    keep_cols = ["source_id", "x", "y", "ra", "dec", "mag", "var_type", "period", "t0", "amplitude", "periodic"]
    lab = lab[keep_cols].copy()
    lab["label"] = lab["periodic"].astype(np.int64)
    lab["class_name"] = lab["var_type"].map(CLASS_OF_TYPE)
    lab["class_id"] = lab["class_name"].map({c: i for i, c in enumerate(CLASSES)}).astype(np.int64)
    lab["n_points"] = n_points
    lab["snr_lc"] = snr_lc
    lab["snr_lc_total"] = snr_tot
    lab["baseline_d"] = baseline
    with atomic_path(out / "labels.parquet") as tmp:
        pq.write_table(pa.Table.from_pandas(lab, preserve_index=False), tmp)
    from omegaconf import OmegaConf

    write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    summary = {"config_hash": h, "n_stars": int(len(ids)), "n_rows": int(n_rows), "n_epochs": int(T),
               "field_size": list(fcfg.shape), "counts": lab["var_type"].value_counts().to_dict(),
               "n_periodic": int(lab["label"].sum()), "wall_s": round(time.perf_counter() - t_start, 1)}
    write_json_atomic(done, summary)
    log.info("wrote %d light curves (%d rows, %d periodic) to %s in %.1f s", len(ids), n_rows,
             summary["n_periodic"], out, summary["wall_s"])
    return out


def _multipliers(sim: FieldSimulation, pos: np.ndarray, mjd: np.ndarray) -> np.ndarray:
    """Flux multipliers (len(pos), T) of the variables at positions ``pos`` of ``sim.variables``."""
    v = sim.variables
    sub = type(v)(index=v.index[pos], var_type=v.var_type[pos], period=v.period[pos], t0=v.t0[pos],
                  amplitude=v.amplitude[pos], params={k: a[pos] for k, a in v.params.items()})
    return sub.multiplier(mjd)


def read_labels(out_dir: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(out_dir) / "labels.parquet")


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        from omegaconf import OmegaConf

        print(__doc__)
        print("keys and defaults:\n" + OmegaConf.to_yaml(OmegaConf.structured(CSSTLightCurveConfig)))
        return 0
    try:
        cfg = config_from_dotlist(CSSTLightCurveConfig, argv)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    simulate_csst_lightcurves(cfg)
    return 0
