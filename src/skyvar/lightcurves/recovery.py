"""``python -m skyvar.lightcurves.recovery key=value ...``: injection-recovery of the minute-cadence searches.

Simulates WFST-like fields (:mod:`skyvar.sim.wfst`) with a known population and runs the flare and
periodicity stages exactly as the pipeline does (per-observation calibration over all light
curves of a field), then measures:

* **flares** - completeness at ``FDR_cal <= 1e-6`` against the peak amplitude over the noise
  (``dF/F`` at the sampled peak divided by the flux noise ``sigma_m ln10 / 2.5``) and against the
  FWHM, for the paper's single least-squares detrending and for the clipped variant
  (``clip_iterations=2``); a flare counts as recovered only if the flagged pair lies within the flare
  (``t_peak - FWHM`` to ``t_peak + 5 FWHM``). The false-positive rate is measured on the constant
  stars of the same field, separately for clean ones and for those with injected systematics
  (bleeding trails, region offsets, outliers).
* **periods** - for short-period variables (delta Scuti below 2 h, ultracompact binaries, ZZ Ceti;
  run mode, 10-sigma binned detection) and general ones (EW, RR Lyrae, longer delta Scuti; spliced
  mode, ``FAP_cal <= 0.1 %``): the fraction with ``f_max`` within 1 % of the true photometric
  frequency, at a harmonic (x2, x3, /2, /3) or at an alias (``f +- k/Delta`` for the run separation
  ``Delta`` and for 1 d^-1, k = 1, 2), against amplitude over noise (semi-amplitude / sigma per
  point) and against period.

Writes ``<out_dir>/recovery.md`` (the tables), ``recovery_*.csv``, figures
``flare_completeness.png``, ``period_recovery.png`` and the stages' own diagnostic plots
(Figures 3-5 analogues) under ``<out_dir>/<field>/plots/``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.flares import FlareSearch
from skyvar.lightcurves.periodogram import PeriodSearch
from skyvar.sim.wfst import WfstSimConfig, simulate_wfst
from skyvar.utils.log import get_logger

log = get_logger(__name__)


@dataclasses.dataclass
class RecoveryConfig:
    out_dir: str = "results/minute_cadence"
    seed: int = 7
    n_flare_field: int = 20000  # sources in the flare field (10 % flaring)
    n_periodic_field: int = 20000  # sources per periodic field (10 % periodic)
    splice_offsets: list[float] = dataclasses.field(default_factory=lambda: [59.0, 3.0])  # SO1-, SO2-like
    fdr_threshold: float = 1e-6
    fap_threshold: float = 1e-3
    dtype: str = "float32"
    plots: bool = True


# ----------------------------------------------------------------------------- helpers
def _features(batch: LightCurveBatch, stages, out_dir: Path) -> pd.DataFrame:
    parts = [pd.DataFrame({"source_id": batch.source_id, "band": batch.band})]
    for st in stages:
        t0 = time.perf_counter()
        parts.append(st(batch, out_dir))
        log.info("%s: %d light curves in %.1f s", st.name, len(batch), time.perf_counter() - t0)
    feats = pd.concat(parts, axis=1)
    for st in stages:
        feats = st.finalize(feats, out_dir)
    return feats


def _bin_table(df: pd.DataFrame, col: str, edges, value: str, label: str) -> pd.DataFrame:
    cut = pd.cut(df[col], edges, right=False)
    g = df.groupby(cut, observed=False)[value]
    return pd.DataFrame({label: [str(i) for i in g.mean().index], "n": g.size().to_numpy(),
                         "fraction": g.mean().to_numpy()})


def _md(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, (float, np.floating)):
                cells.append("" if np.isnan(v) else format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- flares
AMP_EDGES = [0, 3, 5, 10, 20, 50, np.inf]  # peak dF/F over the flux noise
FWHM_EDGES = [0, 2, 5, 10, 20, 40, np.inf]  # minutes


def flare_recovery(cfg: RecoveryConfig, out_dir: Path) -> dict:
    sim = WfstSimConfig(n_sources=cfg.n_flare_field, seed=cfg.seed, frac_flare=0.10, frac_dsct=0.0, frac_ucb=0.0,
                        frac_zzceti=0.0, frac_ew=0.0, frac_rrlyr=0.0)
    store, truth = simulate_wfst(sim)
    batch = LightCurveBatch.from_long(store)
    res = {}
    for tag, clip in (("paper", 0), ("clipped", 2)):
        stage = FlareSearch(fdr_threshold=cfg.fdr_threshold, clip_iterations=clip, plots=cfg.plots and clip == 0)
        feats = _features(batch, [stage], out_dir / "flare_field")
        m = feats.merge(truth, on=["source_id", "band"])
        fl = m[m.var_type == "flare"].copy()
        snr = fl.flare_peak_flux / (fl.sigma * np.log(10) / 2.5)
        fl["amp_snr"] = snr
        fl["fwhm_min"] = fl.fwhm * 1440
        in_window = (fl.t_flare >= fl.t_peak - fl.fwhm - 60 / 86400) & (fl.t_flare <= fl.t_peak + 5 * fl.fwhm + 120 / 86400)
        fl["recovered"] = fl.flare_candidate & in_window
        fl["recovered_any"] = (fl.flare_candidate & in_window) | fl.flare_long_candidate
        const = m[m.var_type == "constant"]
        clean = ~const.bleed & ~const.region_shift & (const.n_outliers == 0)
        res[tag] = {
            "flares": fl, "const": const, "clean": clean,
            "k": {str(g): round(c.k, 3) for g, c in stage.calibrations.items()},
            "fp_clean": float(const.flare_candidate[clean].mean()),
            "fp_sys": float(const.flare_candidate[~clean].mean()),
            "fp_bleed": float(const.flare_candidate[const.bleed].mean()) if const.bleed.any() else np.nan,
            "fp_all": float(const.flare_candidate.mean()),
            "n_clean": int(clean.sum()), "n_sys": int((~clean).sum()),
            "n_candidates": int(m.flare_candidate.sum()), "n": len(m),
            "long_on_constants": int(const.flare_long_candidate.sum()),
            "long_on_flares": int(fl.flare_long_candidate.sum()),
        }
    return res


def _completeness_grid(fl: pd.DataFrame, col: str = "recovered") -> pd.DataFrame:
    a = pd.cut(fl.amp_snr, AMP_EDGES, right=False)
    w = pd.cut(fl.fwhm_min, FWHM_EDGES, right=False)
    tab = fl.groupby([a, w], observed=False)[col].mean().unstack()
    cnt = fl.groupby([a, w], observed=False)[col].size().unstack()
    out = tab.copy()
    out.index = [f"{i.left:g}-{i.right:g}" for i in tab.index]
    out.columns = [f"{c.left:g}-{c.right:g} min" for c in tab.columns]
    out[cnt.to_numpy() < 5] = np.nan  # too few flares for a fraction
    out.insert(0, "peak dF/F / sigma_F", out.index)
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- periods
SHORT = ("ucb", "zzceti", "dsct")


SIDEREAL = 1.0027379  # d^-1: the daily alias


def _classify_period(f_max, f_true, delta_days: float | None) -> np.ndarray:
    """Outcome per variable: ``correct`` (within 1 %), ``harmonic`` (within 1 % of 2, 3, 1/2 or 1/3 times
    the true frequency), ``alias`` (on the fringe comb ``f + k/Delta`` of two runs ``Delta`` days
    apart, k != 0, within 0.2 fringe, or at ``f +- k`` sidereal days^-1, k = 1, 2), ``wrong`` or
    ``none`` (no periodogram)."""
    f_max = np.asarray(f_max, dtype=float)
    f_true = np.asarray(f_true, dtype=float)
    out = np.full(f_max.shape, "wrong", dtype=object)
    out[~np.isfinite(f_max)] = "none"
    tol = 0.01 * f_true
    alias = np.zeros(f_max.shape, bool)
    for k in (1, 2):
        for sgn in (-1, 1):
            alias |= np.abs(f_max - np.abs(f_true + sgn * k * SIDEREAL)) < tol
    if delta_days:
        kf = (f_max - f_true) * delta_days
        alias |= (np.abs(kf - np.round(kf)) < 0.2) & (np.abs(f_max - f_true) < 2.0)
    harm = np.zeros(f_max.shape, bool)
    for h in (2.0, 3.0, 0.5, 1 / 3):
        harm |= np.abs(f_max - h * f_true) < tol * h
    out[alias] = "alias"
    out[harm] = "harmonic"
    out[np.abs(f_max - f_true) < tol] = "correct"
    return out


A_EDGES = [0, 0.25, 0.5, 1, 2, 4, np.inf]


def period_recovery(cfg: RecoveryConfig, out_dir: Path, delta: float, seed: int) -> dict:
    sim = WfstSimConfig(n_sources=cfg.n_periodic_field, seed=seed, run_offsets_days=[0.0, delta],
                        frac_flare=0.0, frac_dsct=0.04, frac_ucb=0.015, frac_zzceti=0.015, frac_ew=0.025,
                        frac_rrlyr=0.005)
    store, truth = simulate_wfst(sim)
    batch = LightCurveBatch.from_long(store)
    stage = PeriodSearch(fap_threshold=cfg.fap_threshold, dtype=cfg.dtype, plots=cfg.plots)
    cfg_range = stage.spliced_range
    fdir = out_dir / f"periodic_field_{delta:g}d"
    feats = _features(batch, [stage], fdir)
    m = feats.merge(truth, on=["source_id", "band"])
    var = m[m.var_type != "constant"].copy()
    var["f_true"] = 1.0 / var.phot_period
    var["a_snr"] = var.amplitude / var.sigma
    # which search is meant to find it: runs cover < 0.15 d, so 2/T ~ 14 d^-1 bounds the run search
    short = var.var_type.isin(SHORT) & (var.f_true > 2 / 0.13)
    var["search"] = np.where(short, "run", "spliced")
    f_found = np.where(short, var.f_max_run, var.f_max)
    var["f_found"] = f_found
    outcome = _classify_period(f_found, var.f_true, delta)
    outcome[short] = _classify_period(f_found[short], var.f_true[short], None)  # one night: no run comb
    var["outcome"] = outcome
    # the spliced grid is 3-12 d^-1: a fundamental outside it (RRab) can only be found at a harmonic
    var["in_range"] = short | ((var.f_true >= cfg_range[0]) & (var.f_true <= cfg_range[1]))
    var["detected"] = np.where(short, var.period_candidate_binned, var.period_candidate_fap)
    const = m[m.var_type == "constant"]
    return {
        "var": var, "delta": delta,
        "fp_binned": float(const.period_candidate_binned.mean()),
        "fp_fap": float(const.period_candidate_fap.mean()),
        "n_const": len(const),
        "k": {g: round(c.k, 3) for g, c in stage.calibrations.items()},
    }


def _period_tables(var: pd.DataFrame) -> dict[str, pd.DataFrame]:
    out = {}
    for search in ("run", "spliced"):
        v = var[(var.search == search) & var.in_range]
        if v.empty:
            continue
        for by, edges, label in (("a_snr", A_EDGES, "A / sigma"),
                                 ("period_min", None, "period")):
            if by == "period_min":
                v = v.assign(period_min=v.phot_period * 1440)
                edges = [0, 5, 10, 20, 40, 90, 180, 400, 1e5] if search == "run" else [0, 90, 150, 240, 360, 600, 1e5]
                label = "phot. period (min)"
            cut = pd.cut(v[by], edges, right=False)
            rows = []
            for iv, d in v.groupby(cut, observed=False):
                if len(d) == 0:
                    continue
                det = d[d.detected]
                rows.append({
                    label: f"{iv.left:g}-{iv.right:g}", "n": len(d),
                    "detected": d.detected.mean(),
                    "correct (all)": (d.outcome == "correct").mean(),
                    "detected: correct": (det.outcome == "correct").mean() if len(det) else np.nan,
                    "harmonic": (det.outcome == "harmonic").mean() if len(det) else np.nan,
                    "alias": (det.outcome == "alias").mean() if len(det) else np.nan,
                    "wrong": (det.outcome == "wrong").mean() if len(det) else np.nan,
                })
            out[f"{search}:{by}"] = pd.DataFrame(rows)
    return out


# ----------------------------------------------------------------------------- figures
def _figures(flares: dict, periods: list[dict], out_dir: Path) -> None:
    from skyvar.utils.atomic import savefig_atomic
    from skyvar.utils.plotting import subplots

    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    for ax, tag in zip(axes, ("paper", "clipped")):
        g = _completeness_grid(flares[tag]["flares"]).set_index("peak dF/F / sigma_F")
        im = ax.imshow(g.to_numpy(float), origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(g.shape[1]), [c.replace(" min", "") for c in g.columns], rotation=30, fontsize=7)
        ax.set_yticks(range(g.shape[0]), g.index, fontsize=7)
        for (i, j), v in np.ndenumerate(g.to_numpy(float)):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 else "k")
        ax.set_xlabel("FWHM (min)")
        ax.set_ylabel("peak dF/F / sigma_F")
        ax.set_title({"paper": "one LSQ detrending (paper)", "clipped": "detrending with 2 clip iterations"}[tag],
                     fontsize=9)
    fig.colorbar(im, ax=axes, label=f"completeness at FDR_cal <= {1e-6:g}")
    savefig_atomic(fig, out_dir / "flare_completeness.png")

    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    for pr in periods:
        var = pr["var"]
        for ax, search in zip(axes, ("run", "spliced")):
            v = var[(var.search == search) & var.in_range]
            if v.empty:
                continue
            cut = pd.cut(v.a_snr, A_EDGES, right=False)
            x = [0.5 * (i.left + min(i.right, 8)) for i in cut.cat.categories]
            for outcome, ls in (("correct", "-"), ("alias", ":"), ("harmonic", "--")):
                y = v.assign(o=(v.outcome == outcome) & v.detected).groupby(cut, observed=False).o.mean()
                ax.plot(x, y.to_numpy(), ls, marker="o", ms=3, label=f"{outcome} (runs {pr['delta']:g} d apart)")
            ax.set_xscale("log")
            ax.set_xticks([0.1, 0.3, 1, 3, 10], ["0.1", "0.3", "1", "3", "10"])
            ax.minorticks_off()
            ax.set_xlabel("semi-amplitude / sigma per point")
            ax.set_ylabel("fraction detected and ...")
            ax.set_title({"run": "short periods: run mode, 10-sigma binned", "spliced": "spliced: FAP_cal <= 0.1 %"}[search],
                         fontsize=9)
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6)
    savefig_atomic(fig, out_dir / "period_recovery.png")


# ----------------------------------------------------------------------------- main
def run_recovery(cfg: RecoveryConfig) -> Path:
    from skyvar.utils.atomic import write_json_atomic, write_text_atomic

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    flares = flare_recovery(cfg, out_dir)
    periods = [period_recovery(cfg, out_dir, d, cfg.seed + 100 + i) for i, d in enumerate(cfg.splice_offsets)]
    md = [f"# Minute-cadence injection-recovery (seed {cfg.seed})", ""]
    summary = {"config": dataclasses.asdict(cfg), "flares": {}, "periods": []}
    for tag in ("paper", "clipped"):
        r = flares[tag]
        g = _completeness_grid(r["flares"])
        g.to_csv(out_dir / f"recovery_flares_{tag}.csv", index=False)
        md += [f"## Flare completeness at FDR_cal <= {cfg.fdr_threshold:g}, detrending: {tag}", "",
               f"{len(r['flares'])} injected flares in a field of {r['n']} light curves; k per observation "
               f"{r['k']}.", "", _md(g), "",
               f"False positives on constant stars: {100 * r['fp_clean']:.3f} % of {r['n_clean']} clean ones, "
               f"{100 * r['fp_sys']:.2f} % of {r['n_sys']} with injected systematics "
               f"(bleeding trails alone: {100 * r['fp_bleed']:.0f} %); all constants: {100 * r['fp_all']:.3f} %. "
               f"Long-flare (1/eta) flags: {r['long_on_flares']} flares, {r['long_on_constants']} constants.",
               ""]
        summary["flares"][tag] = {k: v for k, v in r.items() if k not in ("flares", "const", "clean")}
        summary["flares"][tag]["completeness_overall"] = float(r["flares"].recovered.mean())
    for pr in periods:
        tabs = _period_tables(pr["var"])
        md += [f"## Period recovery, runs {pr['delta']:g} days apart", "",
               f"False positives on {pr['n_const']} constants: binned 10-sigma {100 * pr['fp_binned']:.3f} %, "
               f"FAP_cal <= {cfg.fap_threshold:g}: {100 * pr['fp_fap']:.3f} %. FAP calibration k: {pr['k']}.", ""]
        for key, tab in tabs.items():
            tab.to_csv(out_dir / f"recovery_periods_{pr['delta']:g}d_{key.replace(':', '_')}.csv", index=False)
            md += [f"### {key.split(':')[0]} search, by {key.split(':')[1]} (columns after 'detected': "
                   "fractions of the detected ones)", "", _md(tab), ""]
        v = pr["var"]
        oor = v[(v.search == "spliced") & ~v.in_range]
        if len(oor):
            md += [f"Fundamental outside the spliced range (RRab, {len(oor)}): detected "
                   f"{100 * oor.detected.mean():.0f} %, of which at a harmonic "
                   f"{100 * (oor.outcome[oor.detected] == 'harmonic').mean():.0f} %.", ""]
        v = pr["var"]
        summary["periods"].append({
            "delta": pr["delta"], "fp_binned": pr["fp_binned"], "fp_fap": pr["fp_fap"], "k": pr["k"],
            **{f"{s}_{o}": float(((v.search == s) & v.in_range & v.detected & (v.outcome == o)).sum()
                                 / max(((v.search == s) & v.in_range).sum(), 1))
               for s in ("run", "spliced") for o in ("correct", "harmonic", "alias", "wrong")},
            **{f"{s}_detected": float(v.detected[v.search == s].mean()) for s in ("run", "spliced")},
        })
    md += [f"Wall time {time.perf_counter() - t0:.0f} s."]
    write_text_atomic(out_dir / "recovery.md", "\n".join(md) + "\n")
    write_json_atomic(out_dir / "recovery.json", summary)
    if cfg.plots:
        _figures(flares, periods, out_dir)
    log.info("injection-recovery written to %s", out_dir)
    return out_dir


def main(overrides: list[str] | None = None) -> int:
    from skyvar.utils.config import config_from_dotlist

    overrides = list(sys.argv[1:] if overrides is None else overrides)
    if any(o in ("-h", "--help") for o in overrides):
        print(__doc__)
        return 0
    try:
        cfg = config_from_dotlist(RecoveryConfig, overrides)
    except ValueError as e:
        print(f"recovery: {e}", file=sys.stderr)
        return 2
    run_recovery(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
