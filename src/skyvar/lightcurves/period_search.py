"""The minute-cadence periodicity search stage (Lin et al., WFST; §3.3): variance-scaled Lomb-Scargle
per light curve, eq. 5 FAP, FAP calibration (Figure 5) and the binned 10-sigma Pwr_max-f_max
selection (Figure 4). Grids: :mod:`skyvar.lightcurves.grids`; kernels: :mod:`skyvar.lightcurves.lombscargle`.

Spliced runs use a finer grid than the others (``spliced_oversample = 20``): two short runs a
baseline ``T`` apart give a comb of fringes of FWHM ~1/(2T) under a broad envelope of width ~1/T_run,
so n0 = 5 samples a fringe off its top by up to 10 % in power, more than the envelope changes between
neighbouring fringes, and the argmax lands on the wrong fringe (in our tests a 6.45 d^-1 signal at
S/N 15 per point was never recovered within 1 % at n0 = 5, always at n0 >= 20 for runs 3 days apart).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.calibration import binned_excess_threshold, fit_cdf_calibration
from skyvar.lightcurves.fap import fap_independent
from skyvar.lightcurves.grids import classify_sampling, frequency_grid
from skyvar.lightcurves.lombscargle import lomb_scargle
from skyvar.lightcurves.runs import (
    FLAG_DEGENERATE,
    FLAG_TOO_SHORT,
    StageLog,
    batch_key,
    clean_batch,
    group_runs,
    split_runs,
)
from skyvar.utils.log import get_logger

log = get_logger(__name__)


# ----------------------------------------------------------------------------- the pipeline stage
def _median_dt(seg_time: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import warnings

    d = np.where(mask[:, 1:] & mask[:, :-1], np.diff(seg_time, axis=1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (fewer than 2 points) give NaN
        out = np.nanmedian(d, axis=1) if d.shape[1] else np.full(len(d), np.nan)
    return out


class PeriodSearch:
    """Pipeline stage: variance-scaled Lomb-Scargle periodicity search with FAP calibration.

    Per light curve (one batch row) the sampling mode is chosen (:func:`classify_sampling`):

    * ``run`` - one uninterrupted minute-cadence run: LS from 2/T to the pseudo-Nyquist frequency.
    * ``spliced`` - several runs of the same field: LS over ``spliced_range`` (3-12 d^-1) on the whole
      light curve, and in addition the run-mode LS on each run separately (``*_run`` columns: the
      run with the lowest FAP).
    * ``survey`` - sparse multi-season sampling: the survey grid (module docstring).

    Columns: ``f_max`` (d^-1), ``period`` (= 1/f_max, days), ``pwr_max`` (variance-scaled), ``fap``,
    ``log10_fap`` (eq. 5 with ``N_eff = (f range) x T``), ``fap_cal``, ``log10_fap_cal``, ``n_eff``,
    ``ls_mode``, ``f_max_run``, ``pwr_max_run``, ``log10_fap_run``, ``period_candidate_fap``
    (``FAP_cal <= fap_threshold``, calibrated per observation/splice as the paper's Figure 5),
    ``period_candidate_binned`` (a run whose Pwr_max is above the 10 sigma excess of its frequency bin
    in the Pwr_max-f_max diagram of its observation, Figure 4), ``period_candidate`` (binned for run
    mode; binned or FAP for the others, as the paper uses them), ``period_flag``.
    ``finalize`` fits the calibrations and thresholds over all partitions, writes
    ``out_dir/period_runs.parquet`` and Figures 4 and 5 plus phase-folded plots of the top
    candidates under ``out_dir/plots/<name>/``.
    """

    def __init__(
        self,
        name: str = "periodogram",
        min_epochs: int = 50,
        run_gap: float = 0.25,
        cadence_limit: float = 0.02,
        oversample: float = 5.0,
        spliced_oversample: float = 20.0,
        spliced_range: tuple[float, float] = (3.0, 12.0),
        survey_fmin: float = 0.02,
        survey_fmax: float = 50.0,
        run_fmin_factor: float = 2.0,
        fit_mean: bool = True,
        use_errors: bool = False,
        backend: str = "auto",
        dtype: str = "float32",
        device: str = "auto",
        compile: bool | str = "auto",
        fap_threshold: float = 1e-3,
        calibrate: bool = True,
        calibration_bin: float = 1.0,
        log10_cdf_min: float = -1.0,
        min_calibration_runs: int = 100,
        n_freq_bins: int = 100,
        n_sigma: float = 10.0,
        min_per_bin: int = 10,
        runs_for_spliced: bool = True,
        plots: bool = True,
        n_plots: int = 12,
        plot_buffer: int = 64,
        min_levels: int = 4,
    ):
        self.name = name
        # A curve whose valid magnitudes take fewer than this many distinct values (exactly constant,
        # saturated, or rounded to a grid coarser than its scatter) has no usable periodogram: its power is
        # round-off or the rounding pattern. It gets NaN and FLAG_DEGENERATE instead of a period.
        self.min_levels = int(min_levels)
        self.min_epochs = int(min_epochs)
        self.run_gap = float(run_gap)
        self.cadence_limit = float(cadence_limit)
        self.oversample = float(oversample)
        self.spliced_oversample = float(spliced_oversample)
        self.spliced_range = tuple(float(v) for v in spliced_range)
        self.survey_fmin = float(survey_fmin)
        self.survey_fmax = float(survey_fmax)
        self.run_fmin_factor = float(run_fmin_factor)
        self.fit_mean = bool(fit_mean)
        self.use_errors = bool(use_errors)
        self.backend = backend
        self.dtype = dtype
        self.compile = compile
        from skyvar.device import resolve_device

        self.device = resolve_device(device)
        self.fap_threshold = float(fap_threshold)
        self.calibrate = bool(calibrate)
        self.calibration_bin = float(calibration_bin)
        self.log10_cdf_min = float(log10_cdf_min)
        self.min_calibration_runs = int(min_calibration_runs)
        self.n_freq_bins = int(n_freq_bins)
        self.n_sigma = float(n_sigma)
        self.min_per_bin = int(min_per_bin)
        self.runs_for_spliced = bool(runs_for_spliced)
        self.plots = bool(plots)
        self.n_plots = int(n_plots)
        self.plot_buffer = int(plot_buffer)
        self.reset()

    def reset(self) -> None:
        """Forget what was kept in memory (a new run without an ``out_dir``)."""
        self._log = StageLog(self.name)
        self._top: list[pd.DataFrame] = []
        self.calibrations: dict = {}
        self.thresholds: dict = {}

    def _ls(self, t, y, mask, dy, grid):
        return lomb_scargle(t, y, grid, mask=mask, dy=dy, use_errors=self.use_errors, fit_mean=self.fit_mean,
                            normalization="variance", backend=self.backend, dtype=self.dtype, device=self.device,
                            reduce="max", compile=self.compile)

    def _search_runs(self, segs, idx) -> pd.DataFrame:
        """Run-mode LS on the runs ``idx`` of ``segs``, grouped by observation (one grid per group)."""
        sb = segs.batch
        gid = group_runs(segs.t_start[idx], segs.t_end[idx], self.run_gap)
        res = {k: np.full(idx.size, np.nan) for k in ("f_max", "pwr_max", "log10_fap", "n_eff", "fmin", "fmax")}
        for g in np.unique(gid):
            sel = idx[gid == g]
            span = segs.span[sel]
            npts = segs.n_points[sel]
            T = float(np.max(span))
            # one grid per observation: the finest spacing (longest run) and the median sampling rate
            rate = float(np.median((npts - 1) / np.maximum(span, 1e-12)))
            lo = self.run_fmin_factor / float(np.median(span))
            hi = 0.5 * rate
            if not hi > lo:
                continue
            grid = frequency_grid("run", T, n_points=2, oversample=self.oversample, fmin=lo, fmax=hi)
            p, i = self._ls(sb.time[sel], sb.mag[sel], sb.mask[sel], sb.mag_err[sel], grid)
            f = np.where(i >= 0, grid.fmin + grid.df * np.maximum(i, 0), np.nan)
            n_eff = (grid.fmax - grid.fmin) * span
            _, lfap = fap_independent(p, n_eff)
            w = np.searchsorted(idx, sel)
            res["f_max"][w], res["pwr_max"][w], res["log10_fap"][w], res["n_eff"][w] = f, p, lfap, n_eff
            res["fmin"][w], res["fmax"][w] = grid.fmin, grid.fmax
        return pd.DataFrame(res)

    def search(self, batch: LightCurveBatch) -> tuple[pd.DataFrame, pd.DataFrame]:
        clean, row_flags = clean_batch(batch)
        n = len(clean)
        nvalid_all = clean.mask.sum(axis=1)
        degenerate = magnitude_levels(clean.mag, clean.mask) < self.min_levels
        if degenerate.any():  # searched as if empty; flagged degenerate below
            import dataclasses

            clean = dataclasses.replace(clean, mask=clean.mask & ~degenerate[:, None])
        segs_all = split_runs(clean, gap=self.run_gap, min_points=1, clean=False)
        n_runs = segs_all.n_segments
        nvalid = clean.mask.sum(axis=1)
        mdt = _median_dt(clean.time, clean.mask)
        mode = classify_sampling(n_runs, mdt, self.cadence_limit)
        out = pd.DataFrame({
            "f_max": np.full(n, np.nan), "period": np.full(n, np.nan), "pwr_max": np.full(n, np.nan),
            "fap": np.full(n, np.nan), "log10_fap": np.full(n, np.nan), "fap_cal": np.full(n, np.nan),
            "log10_fap_cal": np.full(n, np.nan), "n_eff": np.full(n, np.nan), "ls_mode": mode.astype(str),
            "f_max_run": np.full(n, np.nan), "pwr_max_run": np.full(n, np.nan),
            "log10_fap_run": np.full(n, np.nan),
            "period_candidate_fap": np.zeros(n, bool), "period_candidate_binned": np.zeros(n, bool),
            "period_candidate": np.zeros(n, bool),
        })
        # --- run mode, on every uninterrupted run long enough (single-run rows and runs of spliced rows)
        segs = split_runs(clean, gap=self.run_gap, min_points=self.min_epochs, clean=False)
        is_min_cad = mode[segs.parent] != "survey"
        if not self.runs_for_spliced:
            is_min_cad &= mode[segs.parent] == "run"
        ridx = np.flatnonzero(is_min_cad)
        runs = pd.DataFrame()
        if ridx.size:
            rr = self._search_runs(segs, ridx)
            runs = pd.DataFrame({
                "row": segs.parent[ridx], "source_id": segs.batch.source_id[ridx], "band": segs.batch.band[ridx],
                "run_index": segs.index[ridx], "t_start": segs.t_start[ridx], "t_end": segs.t_end[ridx],
                "n_points": segs.n_points[ridx], **{k: rr[k].to_numpy() for k in rr},
            })
            best = _best_per_row(runs["row"].to_numpy(), runs["log10_fap"].to_numpy())
            b = runs.iloc[best]
            r = b["row"].to_numpy()
            out.loc[r, "f_max_run"] = b["f_max"].to_numpy()
            out.loc[r, "pwr_max_run"] = b["pwr_max"].to_numpy()
            out.loc[r, "log10_fap_run"] = b["log10_fap"].to_numpy()
            single = mode[r] == "run"
            for c in ("f_max", "pwr_max", "log10_fap", "n_eff"):
                out.loc[r[single], c] = b[c].to_numpy()[single]
            self._top.append(self._top_runs(segs, ridx, runs))
        # --- spliced and survey modes on whole light curves
        for md in ("spliced", "survey"):
            rows = np.flatnonzero((mode == md) & (nvalid >= self.min_epochs))
            if rows.size == 0:
                continue
            span = np.where(clean.mask[rows], clean.time[rows], -np.inf).max(axis=1) - \
                np.where(clean.mask[rows], clean.time[rows], np.inf).min(axis=1)
            T = float(np.max(span))
            if md == "spliced":
                grid = frequency_grid("spliced", T, oversample=self.spliced_oversample,
                                      spliced_range=self.spliced_range)
            else:
                grid = frequency_grid("survey", T, oversample=self.oversample, survey_fmin=self.survey_fmin,
                                      survey_fmax=self.survey_fmax)
            p, i = self._ls(clean.time[rows], clean.mag[rows], clean.mask[rows], clean.mag_err[rows], grid)
            f = np.where(i >= 0, grid.fmin + grid.df * np.maximum(i, 0), np.nan)
            n_eff = (grid.fmax - grid.fmin) * span
            _, lfap = fap_independent(p, n_eff)
            out.loc[rows, "f_max"], out.loc[rows, "pwr_max"] = f, p
            out.loc[rows, "log10_fap"], out.loc[rows, "n_eff"] = lfap, n_eff
            self._top.append(self._top_rows(clean, rows, lfap, f, md))
        out["period"] = 1.0 / out["f_max"]
        out["fap"] = 10.0 ** out["log10_fap"]
        short = ~np.isfinite(out["pwr_max"].to_numpy())
        row_flags[short & (nvalid_all < self.min_epochs)] |= FLAG_TOO_SHORT
        row_flags[short & (nvalid_all >= self.min_epochs)] |= FLAG_DEGENERATE
        too_short_runs = short & (mode != "survey") & (nvalid >= self.min_epochs) & ~degenerate
        row_flags[too_short_runs] |= FLAG_TOO_SHORT
        out["period_flag"] = row_flags
        rows_tab = pd.DataFrame({
            "source_id": clean.source_id, "band": clean.band, "ls_mode": mode.astype(str),
            "t_start": np.where(clean.mask, clean.time, np.inf).min(axis=1, initial=np.inf),
            "t_end": np.where(clean.mask, clean.time, -np.inf).max(axis=1, initial=-np.inf),
            "f_max": out["f_max"].to_numpy(), "pwr_max": out["pwr_max"].to_numpy(),
            "log10_fap": out["log10_fap"].to_numpy(), "n_runs": n_runs,
        })
        return out, runs, rows_tab

    def __call__(self, batch: LightCurveBatch, out_dir: str | Path | None = None) -> pd.DataFrame:
        self._top = []
        out, runs, rows_tab = self.search(batch)
        key = batch_key(batch)
        if len(runs):
            self._log.add("runs", runs.drop(columns=["row"]), out_dir, key)
        self._log.add("rows", rows_tab, out_dir, key)
        top = [t for t in self._top if len(t)]
        if top:
            self._log.add("top", pd.concat(top, ignore_index=True), out_dir, key)
        self._top = []
        return out

    # -------------------------------------------------------------- candidate light curves for plots
    def _top_runs(self, segs, ridx, runs) -> pd.DataFrame:
        if not (self.plots and self.plot_buffer > 0):
            return pd.DataFrame()
        lf = runs["log10_fap"].to_numpy()
        # the lowest FAPs, and the highest powers in each decade of frequency (Figure 4 selects per bin)
        order = np.argsort(np.where(np.isfinite(lf), lf, np.inf))[: self.plot_buffer]
        logf = np.floor(np.log10(np.where(runs["f_max"].to_numpy() > 0, runs["f_max"].to_numpy(), np.nan)) * 4)
        pw = runs["pwr_max"].to_numpy()
        extra = pd.DataFrame({"b": logf, "p": pw}).dropna().sort_values("p").groupby("b").tail(2).index.to_numpy()
        order = np.union1d(order[np.isfinite(lf[order])], extra)
        sel = ridx[order]
        return _long_table(segs.batch, sel, segs.n_points[sel], {
            "kind": "run", "run_index": segs.index[sel], "log10_fap": lf[order],
            "f_max": runs["f_max"].to_numpy()[order], "fmin": runs["fmin"].to_numpy()[order],
            "fmax": runs["fmax"].to_numpy()[order]})

    def _top_rows(self, clean, rows, lfap, f, md) -> pd.DataFrame:
        if not (self.plots and self.plot_buffer > 0):
            return pd.DataFrame()
        order = np.argsort(np.where(np.isfinite(lfap), lfap, np.inf))[: self.plot_buffer]
        order = order[np.isfinite(lfap[order])]
        sel = rows[order]
        return _long_table(clean, sel, clean.mask[sel].sum(axis=1), {
            "kind": md, "run_index": np.full(order.size, -1), "log10_fap": lfap[order], "f_max": f[order],
            "fmin": np.full(order.size, np.nan), "fmax": np.full(order.size, np.nan)})

    # -------------------------------------------------------------- whole run set
    def calibrate_all(self, runs: pd.DataFrame, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Binned 10 sigma thresholds per observation (runs) and FAP calibration per observation/splice."""
        runs = runs.copy()
        rows = rows.copy()
        self.calibrations, self.thresholds = {}, {}
        if len(runs):
            runs["obs_group"] = group_runs(runs["t_start"].to_numpy(), runs["t_end"].to_numpy(), self.run_gap)
            runs["pwr_threshold"] = np.nan
            for g, idx in runs.groupby("obs_group").indices.items():
                sub = runs.iloc[idx]
                ok = np.isfinite(sub.f_max) & np.isfinite(sub.pwr_max)
                if ok.sum() == 0:
                    continue
                lo = np.nanmin(sub.fmin)
                hi = np.nanmax(sub.fmax)
                thr = binned_excess_threshold(sub.f_max[ok], sub.pwr_max[ok], n_bins=self.n_freq_bins,
                                              n_sigma=self.n_sigma, min_per_bin=self.min_per_bin, range=(lo, hi))
                self.thresholds[int(g)] = thr
                runs.iloc[idx, runs.columns.get_loc("pwr_threshold")] = thr(sub.f_max.to_numpy())
            runs["candidate_binned"] = runs["pwr_max"] > runs["pwr_threshold"]
        # FAP calibration: run-mode rows by observation, spliced rows by their set of observations,
        # survey rows together
        rows["cal_group"] = rows["ls_mode"].astype(str)
        if len(runs):
            single = runs.merge(rows[["source_id", "band", "ls_mode"]], on=["source_id", "band"], how="left")
            single = single[single.ls_mode == "run"]
            gmap = dict(zip(single.source_id.astype(str) + "\x1f" + single.band.astype(str),
                            "run:" + single.obs_group.astype(str)))
            key = rows.source_id.astype(str) + "\x1f" + rows.band.astype(str)
            rm = rows.ls_mode == "run"
            rows.loc[rm, "cal_group"] = key[rm].map(gmap).fillna("run:?").to_numpy()
        sp_ = rows.ls_mode == "spliced"
        if sp_.any():
            day0 = np.floor(rows.loc[sp_, "t_start"].to_numpy() - 0.25)
            day1 = np.floor(rows.loc[sp_, "t_end"].to_numpy() - 0.25)
            rows.loc[sp_, "cal_group"] = [f"spliced:{a:.0f}-{b:.0f}" for a, b in zip(day0, day1)]
        lf = rows["log10_fap"].to_numpy()
        k = np.ones(len(rows))
        for g, idx in rows.groupby("cal_group").indices.items():
            cal = fit_cdf_calibration(lf[idx], self.calibration_bin, self.log10_cdf_min, self.min_calibration_runs)
            self.calibrations[g] = cal
            if self.calibrate and cal.fitted:
                k[idx] = cal.k
            elif self.calibrate:
                log.warning("%s: FAP calibration group %s (%d light curves) not fitted (%s); k = 1",
                            self.name, g, len(idx), cal.reason)
        rows["k_fap"] = k
        rows["log10_fap_cal"] = k * lf
        rows["candidate_fap"] = rows["log10_fap_cal"] <= np.log10(self.fap_threshold)
        return runs, rows

    def finalize(self, features: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
        out_dir = Path(out_dir)
        keys = None
        if {"source_id", "band"} <= set(features.columns):
            keys = features[["source_id", "band"]]
        runs = self._log.collect("runs", out_dir, keys)
        rows = self._log.collect("rows", out_dir, keys, unique=("source_id", "band"))
        if not len(rows):
            log.warning("%s: nothing to calibrate (no partition computed)", self.name)
            return features
        runs, rows = self.calibrate_all(runs, rows)
        from skyvar.utils.atomic import atomic_path, write_json_atomic

        if len(runs):
            with atomic_path(out_dir / "period_runs.parquet") as tmp:
                runs.to_parquet(tmp, index=False)
        write_json_atomic(out_dir / "plots" / self.name / "calibration.json",
                          {str(g): c.as_dict() for g, c in self.calibrations.items()})
        if not {"source_id", "band"} <= set(features.columns):
            log.warning("%s: features have no source_id/band; calibrated columns not merged", self.name)
            return features
        features = features.copy()
        key_f, key_r, key_runs = (self._key(features), self._key(rows), self._key(runs) if len(runs) else None)
        rr = rows.set_index(key_r)
        rr = rr[~rr.index.duplicated()]
        features["log10_fap_cal"] = key_f.map(rr.log10_fap_cal).to_numpy()
        features["fap_cal"] = 10.0 ** features["log10_fap_cal"]
        features["period_candidate_fap"] = key_f.map(rr.candidate_fap).astype("boolean").fillna(False).to_numpy(bool)
        if len(runs):
            anyb = runs.groupby(key_runs).candidate_binned.any()
            features["period_candidate_binned"] = key_f.map(anyb).astype("boolean").fillna(False).to_numpy(bool)
        else:  # rows this stage did not search (a multi-band search's band="all" rows) hold NaN here
            features["period_candidate_binned"] = (
                features["period_candidate_binned"].astype("boolean").fillna(False).to_numpy(bool))
        is_run = features.get("ls_mode", pd.Series("run", index=features.index)).astype(str) == "run"
        features["period_candidate"] = features["period_candidate_binned"] | (
            features["period_candidate_fap"] & ~is_run.to_numpy())
        log.info("%s: %d periodic candidates (%d binned %g-sigma, %d FAP_cal <= %g)", self.name,
                 int(features.period_candidate.sum()), int(features.period_candidate_binned.sum()), self.n_sigma,
                 int(features.period_candidate_fap.sum()), self.fap_threshold)
        if self.plots:
            try:
                top = self._log.collect("top", out_dir, keys, unique=("source_id", "band", "kind", "run_index", "point"))
                self._plot(runs, rows, features, top, out_dir / "plots" / self.name)
            except Exception as e:  # never lose the table for a plot
                log.error("%s: plotting failed: %s", self.name, e)
        return features

    def _join(self, k: tuple) -> str:
        return f"{k[0]}\x1f{k[1]}"

    def _key(self, df: pd.DataFrame) -> pd.Series:
        """Row key: source and band."""
        return df.source_id.astype(str) + "\x1f" + df.band.astype(str)

    def _plot(self, runs, rows, features, top, pdir: Path) -> None:
        from skyvar.lightcurves import plots
        from skyvar.utils.atomic import savefig_atomic

        if len(runs) and self.thresholds:
            fig = plots.plot_pwr_fmax(runs, self.thresholds)
            savefig_atomic(fig, pdir / "pwr_fmax.png")
        if self.calibrations:
            fig = plots.plot_fap_calibration(self.calibrations)
            savefig_atomic(fig, pdir / "fap_cdf.png")
        cand = features[features.period_candidate]
        if not len(cand) or not len(top):
            return
        keys = set(self._key(cand))
        tk = self._key(top)
        top = top[tk.isin(keys).to_numpy()]
        if not len(top):
            return
        order = top.groupby([top.source_id.astype(str), top.band.astype(str), top.kind, top.run_index],
                            sort=False).log10_fap.first().sort_values()
        groups = top.groupby([top.source_id.astype(str), top.band.astype(str), top.kind, top.run_index], sort=False)
        # half of the figures for short-period (run-mode, binned 10-sigma) candidates, as the paper's Fig. 10
        binned = set(self._key(features[features.period_candidate_binned]))
        is_run = np.array([k[2] == "run" and self._join(k) in binned for k in order.index], dtype=bool)
        n_run = min(int(is_run.sum()), max(self.n_plots // 2, self.n_plots - int((~is_run).sum())))
        picks = list(order.index[is_run][:n_run]) + list(order.index[~is_run][: self.n_plots - n_run])
        for gkey in picks:  # at most n_plots figures
            p = groups.get_group(gkey).sort_values("point")
            f_max = float(p.f_max.iloc[0])
            if not np.isfinite(f_max):
                continue
            t, m, e = p.time.to_numpy(), p.mag.to_numpy(), p.mag_err.to_numpy()
            kind = p.kind.iloc[0]
            if kind == "run":
                grid = frequency_grid("run", t[-1] - t[0], 2, self.oversample, fmin=float(p.fmin.iloc[0]),
                                      fmax=float(p.fmax.iloc[0]))
            elif kind == "spliced":
                grid = frequency_grid("spliced", t[-1] - t[0], oversample=self.spliced_oversample,
                                      spliced_range=self.spliced_range)
            else:
                grid = frequency_grid("survey", t[-1] - t[0], oversample=self.oversample,
                                      survey_fmin=self.survey_fmin, survey_fmax=self.survey_fmax)
            pw = lomb_scargle(t, m, grid, normalization="variance", fit_mean=self.fit_mean, backend="nifty")
            title = (f"{gkey[0]} {gkey[1]} ({kind if gkey[3] < 0 else f'run {gkey[3]}'}) "
                     f"log10 FAP={p.log10_fap.iloc[0]:.1f}")
            # spliced/survey: fringes of the run separation, zoom on the peak
            fig = plots.plot_period_candidate(t, m, e, grid.freq, pw, f_max, title,
                                              zoom=kind != "run" and grid.nf > 2000)
            sid = str(gkey[0]).replace("/", "_")
            savefig_atomic(fig, pdir / "candidates" / f"{sid}_{gkey[1]}_{kind}{max(int(gkey[3]), 0)}.png")

def _long_table(batch: LightCurveBatch, sel: np.ndarray, npts: np.ndarray, per_lc: dict) -> pd.DataFrame:
    """Long (one row per point) table of the light curves ``sel`` of ``batch`` plus per-curve values."""
    if len(sel) == 0:
        return pd.DataFrame()
    k = np.repeat(np.arange(len(sel)), npts)
    i = sel[k]
    j = np.arange(npts.sum()) - np.repeat(np.cumsum(npts) - npts, npts)
    df = pd.DataFrame({"source_id": batch.source_id[i], "band": batch.band[i], "point": j,
                       "time": batch.time[i, j], "mag": batch.mag[i, j], "mag_err": batch.mag_err[i, j]})
    for c, v in per_lc.items():
        df[c] = v if np.ndim(v) == 0 else np.asarray(v)[k]
    return df


def _best_per_row(rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    s = np.where(np.isfinite(score), score, np.inf)
    order = np.lexsort((s, rows))
    first = np.ones(order.size, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    return order[first]


def magnitude_levels(mag: np.ndarray, mask: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Number of distinct valid magnitudes per row of a padded batch (0 for an empty row)."""
    m = np.sort(np.where(mask, mag, np.inf), axis=1)
    if m.shape[1] == 0:
        return np.zeros(m.shape[0], int)
    with np.errstate(invalid="ignore"):  # inf - inf in the padding
        d = np.diff(m, axis=1)
    new = (d > tol) & np.isfinite(m[:, 1:])
    return np.where(mask.any(axis=1), 1 + new.sum(axis=1), 0)

