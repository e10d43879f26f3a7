"""ZTF-like labelled light curves: Kepler-like variables and SDSS-like standard stars, g and r.

``python -m skyvar.sim lightcurves survey=ztf out_dir=D [seed=0 n_variables=3752 ...]`` writes

* ``D/store/`` — the light-curve store (partitioned Parquet, ``source_id, band, time, mag, mag_err, flag``);
* ``D/labels.parquet`` — one row per source: ``source_id, label`` (1 variable, 0 standard star),
  ``var_type`` (rotation, pulsator, eb_detached, eb_contact, constant), ``period`` (d),
  ``amplitude`` (mag, r band; peak-to-peak for EBs, semi-amplitude otherwise), ``mag_g, mag_r``;
* ``D/config.json`` — the configuration (same config + seed = same data).

What it imitates (Xu et al., §2.2): the paper's training set pairs Kepler variables (12,151 spotted
rotators of Nielsen et al. 2013, 983 δ Scuti/γ Dor pulsators of Bowman et al. 2016, 2,926 eclipsing
binaries of the Kepler EB catalogue; 3,752 of them in ZTF DR2) with as many SDSS standard stars, all
observed by ZTF DR2 (≈ 470 days, 2018 March – 2019 June). Here:

* cadence: each source is visible ~240 nights a year around its opposition (seasonal gaps), observed on
  a random subset of nights (1–3 day typical spacing), several visits per night when its epoch count
  needs them; g and r are visited independently; 20–500 epochs per band. Variables (Kepler field,
  ZTF's high-cadence area) get more epochs than standard stars (the paper's Figure 2);
* magnitudes: variables mostly bright (Kepler targets), standard stars mostly faint (paper's Figure 2);
* errors: ``σ² = 0.01² + 0.002·10^{0.4(m−20.5)} + 0.0079·10^{0.8(m−20.5)}`` (0.0106 mag at 15,
  0.100 at 20.5: a systematic floor, source photon noise and sky noise), reported as ``mag_err``;
  the actual scatter also varies per epoch (seeing, ~10 %);
* bad data: per-epoch zero-point offsets for all stars on a few bad nights, single-point outliers
  (cosmic rays, blends), half of them flagged (``flag`` 8, "photometry unreliable") as pipelines do;
* variables: spotted rotators (periods 1–40 d, small evolving amplitudes ~1–5 %), δ Scuti pulsators
  (1–3 modes, 0.03–0.25 d, far below the cadence, so they show as excess scatter), eclipsing binaries
  (detached: two narrow Gaussian eclipses; contact: W UMa-like continuous variation), in the Kepler
  catalogues' proportions; amplitudes a little larger in g.

Light curves are generated one source at a time (a few thousand sources, seconds in all).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.lightcurves.store import StoreWriter
from skyvar.utils.atomic import atomic_path, write_json_atomic
from skyvar.utils.config import config_from_dotlist
from skyvar.utils.log import get_logger

log = get_logger(__name__)

T_START = 58194.0  # 2018-03-17, first ZTF DR2 night
T_SPAN = 470.0  # days (ZTF DR2)
FLAG_UNRELIABLE = 8  # skyvar.detect.base.FLAG_FIT_FAILED: masked by the light-curve pipeline by default


@dataclasses.dataclass
class ZTFSimConfig:
    out_dir: str = "datasets/ztf_sim"
    seed: int = 0
    # Sample sizes: the paper's 3,752 Kepler variables in ZTF and as many standard stars (7,504).
    n_variables: int = 3752
    n_constant: int = 3752
    # Kepler catalogues' mix: rotators 12151, pulsators 983, eclipsing binaries 2926 (detached share below).
    frac_rotation: float = 12151 / 16060
    frac_pulsator: float = 983 / 16060
    frac_eb: float = 2926 / 16060
    eb_detached_share: float = 0.6
    bands: tuple[str, ...] = ("g", "r")
    # Epochs per band, log-uniform in [min, max] per class.
    epochs_variable: tuple[int, int] = (40, 500)
    epochs_constant: tuple[int, int] = (20, 200)
    # r-band magnitude ranges; standard stars are drawn with a faint-skewed (triangular) distribution.
    mag_variable: tuple[float, float] = (13.0, 18.5)
    mag_constant: tuple[float, float] = (14.5, 20.5)
    color_g_minus_r: tuple[float, float] = (0.2, 1.2)
    # Error model and bad data.
    err_floor: float = 0.01
    err_src: float = 0.002
    err_sky: float = 0.0079
    err_mag0: float = 20.5
    seeing_scatter: float = 0.10
    bad_night_frac: float = 0.02
    bad_night_zp_sigma: float = 0.05
    outlier_frac: float = 0.01
    outlier_mag: tuple[float, float] = (0.2, 1.5)
    outlier_flagged: float = 0.5
    # Variable amplitudes (r band); g amplitudes are larger by g_amp_factor.
    rot_amp_median: float = 0.012
    rot_amp_sigma_ln: float = 0.8
    puls_amp_median: float = 0.02
    puls_amp_sigma_ln: float = 0.9
    eb_depth: tuple[float, float] = (0.02, 0.9)
    g_amp_factor: float = 1.2
    n_partitions: int = 8


def error_model(mag: np.ndarray, cfg: ZTFSimConfig) -> np.ndarray:
    """ZTF-like 1σ magnitude error at magnitude ``mag`` (floor + photon + sky terms)."""
    x = np.asarray(mag, dtype=float) - cfg.err_mag0
    return np.sqrt(cfg.err_floor**2 + cfg.err_src * 10 ** (0.4 * x) + cfg.err_sky * 10 ** (0.8 * x))


def _times(rng: np.random.Generator, n: int, season_centre: float) -> np.ndarray:
    """``n`` observation times (MJD) over the DR2 span with seasonal gaps and 1-3 day spacing."""
    days = np.arange(int(T_SPAN))
    phase = ((T_START + days - season_centre + 182.6) % 365.25) - 182.6
    visible = days[np.abs(phase) < 120]  # ~240 observable nights a year
    spacing = rng.uniform(1.0, 3.0)
    nights = visible[rng.random(len(visible)) < 1.0 / spacing]
    if len(nights) == 0:
        nights = visible[:1]
    # Enough nights for n visits; more visits than nights means several per night.
    pick = rng.choice(nights, size=n, replace=n > len(nights))
    return np.sort(T_START + pick + rng.uniform(0.15, 0.4, n))  # within the night (fraction of a day)


def _rotation(rng, t):
    p = np.exp(rng.uniform(np.log(1.0), np.log(40.0)))
    t_evol = rng.uniform(30, 200)
    ph = rng.uniform(0, 2 * np.pi, 3)
    env = 1 + 0.5 * np.sin(2 * np.pi * t / t_evol + ph[0])  # spot evolution
    drift = 0.3 * np.sin(2 * np.pi * t / (1.7 * t_evol) + ph[1])  # phase wander of the spot pattern
    shape = np.sin(2 * np.pi * t / p + ph[2] + drift) + 0.3 * np.sin(4 * np.pi * t / p + 2 * ph[2])
    return lambda a: a * env * shape, p


def _pulsator(rng, t):
    k = rng.integers(1, 4)
    ps = np.exp(rng.uniform(np.log(0.03), np.log(0.25), k))
    ws = rng.dirichlet(np.ones(k)) ** 0.5
    ph = rng.uniform(0, 2 * np.pi, k)
    sig = sum(w * np.sin(2 * np.pi * t / p + f) for w, p, f in zip(ws, ps, ph)) / np.sqrt((ws**2).sum())
    return lambda a: a * sig, float(ps[np.argmax(ws)])


def _eclipsing(rng, t, depth, detached: bool):
    if detached:
        p = np.exp(rng.uniform(np.log(0.8), np.log(50.0)))
        phase = ((t - rng.uniform(0, p)) / p) % 1.0
        w = rng.uniform(0.01, 0.06)  # eclipse width (Gaussian σ) in phase
        ratio = rng.uniform(0.0, 0.8)  # secondary / primary depth
        e = rng.uniform(-0.05, 0.05)  # small offset of the secondary (eccentricity)

        def shape(d):
            dist1 = np.minimum(phase, 1 - phase)
            dist2 = np.abs(phase - 0.5 - e)
            return d * (np.exp(-0.5 * (dist1 / w) ** 2) + ratio * np.exp(-0.5 * (dist2 / w) ** 2))
    else:
        p = np.exp(rng.uniform(np.log(0.25), np.log(1.0)))
        phase = ((t - rng.uniform(0, p)) / p) % 1.0
        ratio = rng.uniform(0.7, 1.0)

        def shape(d):
            c = 0.5 * (1 - np.cos(4 * np.pi * phase))  # two minima per orbit
            unequal = np.where(np.cos(2 * np.pi * phase) > 0, 1.0, ratio)
            return d * c * unequal
    return shape, p


def simulate(cfg: ZTFSimConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table of measurements, labels per source)."""
    rng = np.random.default_rng(cfg.seed)
    n_var, n_con = int(cfg.n_variables), int(cfg.n_constant)
    fr = np.array([cfg.frac_rotation, cfg.frac_pulsator, cfg.frac_eb], dtype=float)
    fr = fr / fr.sum()
    kinds = rng.choice(["rotation", "pulsator", "eb"], size=n_var, p=fr)
    kinds = np.where(kinds == "eb", np.where(rng.random(n_var) < cfg.eb_detached_share, "eb_detached", "eb_contact"),
                     kinds)
    var_type = np.concatenate([kinds, np.full(n_con, "constant")])
    order = rng.permutation(n_var + n_con)  # ids do not reveal the class
    var_type = var_type[order]
    n = len(var_type)
    is_var = var_type != "constant"

    mag_r = np.where(is_var, rng.uniform(*cfg.mag_variable, n),
                     rng.triangular(cfg.mag_constant[0], cfg.mag_constant[1], cfg.mag_constant[1], n))
    color = rng.uniform(*cfg.color_g_minus_r, n)
    season = rng.uniform(0, 365.25, n) + T_START

    # Bad nights hit every star observed then (zero-point error), like a bad calibration of a field.
    n_days = int(T_SPAN) + 1
    bad_night = rng.random(n_days) < cfg.bad_night_frac
    zp_off = np.where(bad_night, rng.normal(0, cfg.bad_night_zp_sigma, n_days), 0.0)

    rows, labels = [], []
    for i in range(n):
        lo, hi = cfg.epochs_variable if is_var[i] else cfg.epochs_constant
        kind = var_type[i]
        period, amp = np.nan, 0.0
        if kind == "rotation":
            amp = float(cfg.rot_amp_median * np.exp(rng.normal(0, cfg.rot_amp_sigma_ln)))
        elif kind == "pulsator":
            amp = float(cfg.puls_amp_median * np.exp(rng.normal(0, cfg.puls_amp_sigma_ln)))
        elif kind.startswith("eb"):
            amp = float(np.exp(rng.uniform(np.log(cfg.eb_depth[0]), np.log(cfg.eb_depth[1]))))
        # One physical variation seen in both bands: its parameters come from a per-source seed.
        model_seed = int(rng.integers(2**63))
        for band in cfg.bands:
            n_ep = int(np.exp(rng.uniform(np.log(lo), np.log(hi + 1))))
            t = _times(rng, n_ep, season[i])
            m0 = mag_r[i] + (color[i] if band == "g" else 0.0)
            signal = 0.0
            if kind != "constant":
                mrng = np.random.default_rng(model_seed)
                if kind == "rotation":
                    f, period = _rotation(mrng, t)
                elif kind == "pulsator":
                    f, period = _pulsator(mrng, t)
                else:
                    f, period = _eclipsing(mrng, t, amp, kind == "eb_detached")
                signal = f(amp * (cfg.g_amp_factor if band == "g" else 1.0))
            true_mag = m0 + signal
            err = error_model(true_mag, cfg)
            scatter = err * np.exp(rng.normal(0, cfg.seeing_scatter, n_ep))
            day = np.clip((t - T_START).astype(int), 0, n_days - 1)
            mag = true_mag + rng.normal(0, 1, n_ep) * scatter + zp_off[day]
            flag = np.zeros(n_ep, np.int32)
            out = rng.random(n_ep) < cfg.outlier_frac
            if out.any():
                k = int(out.sum())
                mag[out] += rng.choice([-1, 1], k, p=[0.3, 0.7]) * rng.uniform(*cfg.outlier_mag, k)
                flag[out] = np.where(rng.random(k) < cfg.outlier_flagged, FLAG_UNRELIABLE, 0)
            rows.append(pd.DataFrame({"source_id": i, "band": band, "time": t, "mag": mag,
                                      "mag_err": error_model(mag, cfg), "flag": flag}))
        labels.append((i, int(is_var[i]), kind, period, amp, mag_r[i] + color[i], mag_r[i]))
    lc = pd.concat(rows, ignore_index=True)
    lab = pd.DataFrame(labels, columns=["source_id", "label", "var_type", "period", "amplitude", "mag_g", "mag_r"])
    return lc, lab


def simulate_to_disk(cfg: ZTFSimConfig) -> Path:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lc, lab = simulate(cfg)
    with StoreWriter(out / "store", n_partitions=cfg.n_partitions, flush_rows=max(len(lc), 1)) as w:
        w.append(lc)
    with atomic_path(out / "labels.parquet") as tmp:
        lab.to_parquet(tmp, index=False)
    write_json_atomic(out / "config.json", dataclasses.asdict(cfg))
    counts = lab.var_type.value_counts().to_dict()
    log.info("ZTF-like simulation: %d sources (%s), %d measurements -> %s", len(lab), counts, len(lc), out)
    return out


def main(overrides: list[str]) -> int:
    if any(o in ("-h", "--help") for o in overrides):
        print(__doc__)
        print("keys (key=value):")
        for f in dataclasses.fields(ZTFSimConfig):
            print(f"  {f.name} = {json.dumps(getattr(ZTFSimConfig(), f.name))}")
        return 0
    try:
        cfg = config_from_dotlist(ZTFSimConfig, overrides)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    simulate_to_disk(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
