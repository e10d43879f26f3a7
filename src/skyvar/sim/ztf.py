"""ZTF-like labelled light curves: Kepler variables and SDSS standard stars in ZTF DR2, g and r.

``python -m skyvar.sim lightcurves survey=ztf out_dir=D [seed=0 n_variables=3752 standards_like=none ...]``
writes

* ``D/store/`` — the light-curve store (partitioned Parquet, ``source_id, band, time, mag, mag_err, flag``);
* ``D/labels.parquet`` — one row per source: ``source_id, label`` (1 variable, 0 standard star),
  ``var_type`` (rotation, pulsator, eb_detached, eb_contact, constant), ``period`` (d),
  ``amplitude`` (mag, r band; peak-to-peak for EBs, semi-amplitude otherwise), ``mag_g, mag_r`` (true
  mean magnitudes), ``n_visits_<band>`` and ``n_det_<band>`` (visits and detections per band);
* ``D/config.json`` — the configuration (same config + seed = same data).

What it imitates, and every choice (Xu et al. §2.2; the paper gives its sample only as histograms,
so each number below is ours, stated so it can be argued with; ``docs/results/variability.md``):

* **Who.** 3,752 Kepler variables that ZTF DR2 observed (of 12,151 spotted rotators of Nielsen et al.
  2013, 983 δ Sct/γ Dor pulsators of Bowman et al. 2016, 2,926 Kepler eclipsing binaries) and as
  many SDSS standard stars (Ivezić et al. 2007, Stripe 82). The paper does not say which variables
  survived the ZTF match, so they keep the catalogues' mix (76 % rotators).
* **Where, hence how often (paper Fig. 2: "the detection times of the standard stars are
  significantly less than that of the variable sources").** Not drawn per class but from the sky:
  ZTF DR2 is the public survey of 2018 Mar 17 – 2019 Jun 30 (470 d), each field visited every third
  night in g and r (``visit_prob`` 1/3) on clear nights (``clear_frac`` 0.75, Palomar); 30 % of
  sources lie in two overlapping fields. A source is observable for ``season_halfwidth`` days either
  side of its opposition: the Kepler field (δ ≈ +44°, RA ≈ 19h23m, opposition ≈ 2018 Jul 8) for
  ±130 d, so both 2018 and 2019 seasons fall in DR2; Stripe 82 (δ ≈ 0°, RA 20h40m–4h, oppositions
  Aug–Nov) for ±95 d, one season. This gives ~110 visits per band to a variable and ~60 to a
  standard star.
* **How bright (Fig. 2: "most of the standard stars are faint").** r-band counts rising as
  ``10^(slope·m)`` between limits: variables 13–17 mag, slope 0.2 (Kepler targets: mostly Kp < 16,
  ZTF saturates near 12.5–13); standard stars 14–21 mag, slope 0.25 (high-latitude star counts; the
  SDSS catalogue reaches r ≈ 22, ZTF DR2 single epochs ≈ 20.6, so only a quarter of it matched:
  263,670 of 1.01 million). g − r uniform in 0.2–1.2 for both classes.
* **Depth and errors.** Each visit has a 5σ depth ``m5`` ~ N(20.6, 0.3) in r, N(20.8, 0.3) in g
  (Bellm et al. 2019). A star of magnitude m is measured with
  ``σ² = floor² + σ5² [f 10^{0.4(m−m5)} + (1−f) 10^{0.8(m−m5)}]``, ``σ5 = 1.0857/5``, floor 0.01 mag
  (calibration), ``f = 0.2`` (source vs sky noise): 0.012 mag at 15, 0.065 at 19, 0.22 at the limit.
  The reported ``mag_err`` is this σ at the measured magnitude: errors describe the scatter, as the
  paper's Fig. 3 shows for its standards. A point exists only if detected (measured magnitude
  brighter than that visit's ``m5``), so faint stars lose visits; a band with fewer than
  ``min_detections`` (10) detections has no light curve, and standard stars without any light curve
  are replaced (as a catalogue match would not find them).
* **Bad data (Fig. 3: the standards' points lie within 3σ).** 1 % outliers (0.2–1.5 mag), 90 % of
  them flagged (``flag`` 8 — ZTF's catflags; masked by the pipeline) and 10 % not; 1 % of nights
  carry a zero-point error of σ = 0.03 mag for every star.
* **Variables.** Spotted rotators (periods 1–40 d, evolving spots; semi-amplitude log-normal with
  median 0.006 mag and σ_ln 0.8 — Kepler rotators vary by a few mmag (McQuillan et al. 2014); the
  median is the one number set to match the paper: with it the variables' r-band Iter-std after three
  clipping rounds peaks near 0.014 mag, the paper's Fig. 5; 0.012 put the peak at 0.017), δ Scuti pulsators (1–3 modes, 0.03–0.25 d, far below the cadence:
  excess scatter), eclipsing binaries (detached: two narrow Gaussian eclipses, depth 0.02–0.9 mag;
  contact: W UMa-like); amplitudes 1.2× larger in g.
* **Confound controls.** ``standards_like=mag`` draws the standard stars' magnitudes from the
  variables' law; ``epochs`` gives them the variables' sky position (the Kepler field's cadence);
  ``both`` does both. ``epochs_variable``/``epochs_constant`` ``[lo, hi]`` bypass the cadence model
  with log-uniform visit numbers (used by the excess-selection field).

Light curves are generated one source at a time (7,504 sources, a few seconds).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.flags import PointFlag
from skyvar.lightcurves.store import StoreWriter
from skyvar.utils.atomic import atomic_path, write_json_atomic
from skyvar.utils.config import config_from_dotlist
from skyvar.utils.log import get_logger

log = get_logger(__name__)

T_START = 58194.0  # 2018-03-17, first ZTF DR2 night
T_SPAN = 470.0  # days (ZTF DR2: 2018 March - 2019 June)
FLAG_UNRELIABLE = int(PointFlag.FIT_FAILED)  # masked by the light-curve pipeline by default
SIGMA_5 = 2.5 / np.log(10) / 5  # magnitude error of a 5-sigma detection
STANDARDS_LIKE = ("none", "mag", "epochs", "both")


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
    # r-band magnitudes: counts rising as 10^(slope m) between the limits (slope 0: uniform).
    mag_variable: tuple[float, float] = (13.0, 17.0)
    mag_slope_variable: float = 0.2
    mag_constant: tuple[float, float] = (14.0, 21.0)
    mag_slope_constant: float = 0.25
    color_g_minus_r: tuple[float, float] = (0.2, 1.2)
    # Cadence (MJD of opposition, half-range of its spread over the field, observable days either side).
    opposition_variable: float = 58307.0  # Kepler field, RA 19h23m: 2018 Jul 8
    opposition_spread_variable: float = 7.0
    season_halfwidth_variable: float = 130.0  # delta = +44 deg from Palomar
    opposition_constant: float = 58382.0  # Stripe 82, RA 20h40m-4h: 2018 Aug-Nov
    opposition_spread_constant: float = 55.0
    season_halfwidth_constant: float = 95.0  # delta = 0
    visit_prob: float = 1 / 3  # ZTF public survey: every third night, g and r
    clear_frac: float = 0.75
    two_field_frac: float = 0.3
    # Optional override of the cadence model: log-uniform visit numbers per band, [lo, hi] or null.
    epochs_variable: tuple[int, int] | None = None
    epochs_constant: tuple[int, int] | None = None
    # Depth and errors.
    depth: dict = dataclasses.field(default_factory=lambda: {"g": 20.8, "r": 20.6})
    depth_sigma: float = 0.3
    err_floor: float = 0.01
    err_src_frac: float = 0.2
    min_detections: int = 10
    # Bad data.
    bad_night_frac: float = 0.01
    bad_night_zp_sigma: float = 0.03
    outlier_frac: float = 0.01
    outlier_mag: tuple[float, float] = (0.2, 1.5)
    outlier_flagged: float = 0.9
    # Variable amplitudes (r band); g amplitudes are larger by g_amp_factor.
    rot_amp_median: float = 0.006  # set by the paper's Fig. 5 (see the module docstring)
    rot_amp_sigma_ln: float = 0.8
    puls_amp_median: float = 0.02
    puls_amp_sigma_ln: float = 0.9
    eb_depth: tuple[float, float] = (0.02, 0.9)
    g_amp_factor: float = 1.2
    # Confound control: give the standard stars the variables' magnitudes and/or cadence.
    standards_like: str = "none"
    n_partitions: int = 8


def error_model(mag, cfg: ZTFSimConfig, m5=None) -> np.ndarray:
    """1σ magnitude error at magnitude ``mag`` on a visit of 5σ depth ``m5`` (default: the r-band median)."""
    m5 = cfg.depth.get("r", 20.6) if m5 is None else m5
    x = np.asarray(mag, dtype=float) - np.asarray(m5, dtype=float)
    f = cfg.err_src_frac
    return np.sqrt(cfg.err_floor**2 + SIGMA_5**2 * (f * 10 ** (0.4 * x) + (1 - f) * 10 ** (0.8 * x)))


def draw_counts_law(rng: np.random.Generator, lo: float, hi: float, slope: float, n: int) -> np.ndarray:
    """``n`` magnitudes with density ∝ 10^(slope·m) on [lo, hi] (uniform for slope 0), by inversion."""
    u = rng.random(n)
    if abs(slope) < 1e-12:
        return lo + (hi - lo) * u
    a = np.log(10) * slope
    return lo + np.log1p(u * np.expm1(a * (hi - lo))) / a


def _visit_nights(rng, opposition: float, halfwidth: float, clear: np.ndarray, cfg: ZTFSimConfig) -> np.ndarray:
    """Nights (days since T_START) on which a source is visited, over all its fields."""
    days = np.arange(clear.size)
    phase = ((T_START + days - opposition + 182.625) % 365.25) - 182.625
    ok = (np.abs(phase) < halfwidth) & clear
    n_fields = 2 if rng.random() < cfg.two_field_frac else 1
    visits = [days[ok & (rng.random(days.size) < cfg.visit_prob)] for _ in range(n_fields)]
    return np.sort(np.concatenate(visits))


def _override_nights(rng, lohi, clear: np.ndarray) -> np.ndarray:
    """Visit nights for a log-uniform number of visits in ``[lo, hi]`` (cadence model bypassed)."""
    lo, hi = lohi
    n = int(np.exp(rng.uniform(np.log(lo), np.log(hi + 1))))
    nights = np.flatnonzero(clear)
    return np.sort(rng.choice(nights, size=n, replace=n > nights.size))


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


def _check(cfg: ZTFSimConfig) -> None:
    if cfg.standards_like not in STANDARDS_LIKE:
        raise ValueError(f"standards_like={cfg.standards_like!r}; use one of {STANDARDS_LIKE}")
    missing = [b for b in cfg.bands if b not in cfg.depth]
    if missing:
        raise ValueError(f"no 5-sigma depth for band(s) {missing}; give depth={{{missing[0]}: 20.5, ...}}")


def simulate(cfg: ZTFSimConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table of measurements, labels per source)."""
    _check(cfg)
    rng = np.random.default_rng(cfg.seed)
    n_var, n_con = int(cfg.n_variables), int(cfg.n_constant)
    fr = np.array([cfg.frac_rotation, cfg.frac_pulsator, cfg.frac_eb], dtype=float)
    fr = fr / fr.sum()
    n_days = int(T_SPAN) + 1
    # Weather and bad nights are the sky's, shared by every star.
    clear = rng.random(n_days) < cfg.clear_frac
    bad_night = rng.random(n_days) < cfg.bad_night_frac
    zp_off = np.where(bad_night, rng.normal(0, cfg.bad_night_zp_sigma, n_days), 0.0)
    like_mag = cfg.standards_like in ("mag", "both")
    like_epochs = cfg.standards_like in ("epochs", "both")

    rows, labels = [], []
    n_done = {1: 0, 0: 0}
    attempts = 0
    # Variables first, then standard stars until n_constant have a light curve; ids shuffled at the end.
    while n_done[1] < n_var or n_done[0] < n_con:
        attempts += 1
        if attempts > 20 * (n_var + n_con) + 100:
            raise RuntimeError("standard stars too faint to be detected: raise depth or lower mag_constant")
        is_var = n_done[1] < n_var
        if is_var:
            kind = str(rng.choice(["rotation", "pulsator", "eb"], p=fr))
            if kind == "eb":
                kind = "eb_detached" if rng.random() < cfg.eb_detached_share else "eb_contact"
        else:
            kind = "constant"
        src_var = is_var or like_mag
        lo, hi = cfg.mag_variable if src_var else cfg.mag_constant
        slope = cfg.mag_slope_variable if src_var else cfg.mag_slope_constant
        mag_r = float(draw_counts_law(rng, lo, hi, slope, 1)[0])
        color = float(rng.uniform(*cfg.color_g_minus_r))
        sky_var = is_var or like_epochs
        if sky_var:
            opp = cfg.opposition_variable + rng.uniform(-1, 1) * cfg.opposition_spread_variable
            half, override = cfg.season_halfwidth_variable, cfg.epochs_variable
        else:
            opp = cfg.opposition_constant + rng.uniform(-1, 1) * cfg.opposition_spread_constant
            half, override = cfg.season_halfwidth_constant, cfg.epochs_constant
        nights = _override_nights(rng, override, clear) if override else _visit_nights(rng, opp, half, clear, cfg)
        # Both bands on a visited night, minutes to an hour apart, within the night.
        t_night = T_START + nights + rng.uniform(0.15, 0.35, nights.size)

        period, amp = np.nan, 0.0
        if kind == "rotation":
            amp = float(cfg.rot_amp_median * np.exp(rng.normal(0, cfg.rot_amp_sigma_ln)))
        elif kind == "pulsator":
            amp = float(cfg.puls_amp_median * np.exp(rng.normal(0, cfg.puls_amp_sigma_ln)))
        elif kind.startswith("eb"):
            amp = float(np.exp(rng.uniform(np.log(cfg.eb_depth[0]), np.log(cfg.eb_depth[1]))))
        model_seed = int(rng.integers(2**63))  # one physical variation seen in both bands
        curves, n_vis, n_det = [], {}, {}
        for j, band in enumerate(cfg.bands):
            t = t_night + j * rng.uniform(0.01, 0.05, nights.size)
            n_ep = t.size
            m0 = mag_r + (color if band == "g" else 0.0)
            signal = 0.0
            if kind != "constant" and n_ep:
                mrng = np.random.default_rng(model_seed)
                if kind == "rotation":
                    f, period = _rotation(mrng, t)
                elif kind == "pulsator":
                    f, period = _pulsator(mrng, t)
                else:
                    f, period = _eclipsing(mrng, t, amp, kind == "eb_detached")
                signal = f(amp * (cfg.g_amp_factor if band == "g" else 1.0))
            true_mag = m0 + signal
            m5 = rng.normal(cfg.depth[band], cfg.depth_sigma, n_ep)
            sigma = error_model(true_mag, cfg, m5)
            mag = true_mag + rng.normal(0, 1, n_ep) * sigma + zp_off[np.clip(nights, 0, n_days - 1)]
            flag = np.zeros(n_ep, np.int32)
            out = rng.random(n_ep) < cfg.outlier_frac
            if out.any():
                k = int(out.sum())
                mag[out] += rng.choice([-1, 1], k, p=[0.3, 0.7]) * rng.uniform(*cfg.outlier_mag, k)
                flag[out] = np.where(rng.random(k) < cfg.outlier_flagged, FLAG_UNRELIABLE, 0)
            det = mag < m5  # a ZTF light curve holds detections only
            n_vis[band], n_det[band] = int(n_ep), int(det.sum())
            if det.sum() >= cfg.min_detections:
                curves.append(pd.DataFrame({"band": band, "time": t[det], "mag": mag[det],
                                            "mag_err": error_model(mag[det], cfg, m5[det]), "flag": flag[det]}))
        if not curves:
            continue  # not in the catalogue match: neither band has a light curve
        sid = len(labels)
        for c in curves:
            rows.append(c.assign(source_id=sid))
        labels.append({"source_id": sid, "label": int(is_var), "var_type": kind, "period": period, "amplitude": amp,
                       "mag_g": mag_r + color, "mag_r": mag_r,
                       **{f"n_visits_{b}": n_vis[b] for b in cfg.bands}, **{f"n_det_{b}": n_det[b] for b in cfg.bands}})
        n_done[int(is_var)] += 1
    lab = pd.DataFrame(labels)
    lc = pd.concat(rows, ignore_index=True)[["source_id", "band", "time", "mag", "mag_err", "flag"]]
    # Shuffle ids so that they do not reveal the class (variables were drawn first).
    new_id = rng.permutation(len(lab))
    lab["source_id"] = new_id[lab["source_id"].to_numpy()]
    lc["source_id"] = new_id[lc["source_id"].to_numpy()]
    lab = lab.sort_values("source_id", kind="stable").reset_index(drop=True)
    lc = lc.sort_values(["source_id", "band", "time"], kind="stable").reset_index(drop=True)
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
        _check(cfg)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    simulate_to_disk(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
