"""One period per source from all its bands: the multi-band survey period search and its pipeline stage.

Sparse survey light curves (SDSS Stripe 82, ZTF, LSST: tens of epochs per band over years, one visit
a night) leave the true frequency ``f`` and its daily aliases ``f +- 1, f +- 2 d^-1`` (and yearly ones,
``+- 1/365 d^-1``) nearly equally strong in any one-harmonic periodogram. The search
(:func:`search_multiband`) therefore runs in two steps:

1. **Scan**: the shared-phase multi-band Lomb-Scargle periodogram (VanderPlas & Ivezic 2015,
   ``nterms_base = 1, nterms_band = 0``: one sinusoid of common phase plus an offset per band; see
   :mod:`skyvar.lightcurves.multiband`) over the survey grid of :func:`~skyvar.lightcurves.grids.
   survey_grid` (spacing ``1/(5T)`` from the baseline, ends from the cadence or given; by default
   from ``2/T``, so that a trend or a period longer than the survey's seasons is found as what it is
   instead of as its 1 d^-1 alias near 1 d), evaluated with non-uniform FFTs. Its ``n_candidates``
   highest distinct peaks are the candidates: on the Stripe 82 RR Lyrae (default grid 2/T-50 d^-1)
   the published period is among the top 10 peaks for 99 % of the stars, but the highest for only
   67 % (a daily alias wins the others).
2. **Alias re-ranking**: each candidate is refined on a finer local grid and scored with a richer
   model, ``nterms_band`` harmonics free in every band (``(nterms_base, nterms_band) = (0, 4)`` by
   default) on the candidate's refined frequency; the candidate with the largest power (the smallest
   chi2, all candidates having the same number of parameters) wins. Pulsators, eclipsing binaries and rotators are not sinusoids: their
   harmonics fall on the true frequency's harmonics only, while an alias's harmonics land on aliases
   of the harmonics, so the harmonic fit separates what the one-harmonic scan cannot. The defaults
   (number of candidates and of harmonics, the model) were chosen on one half of the Stripe 82
   stars (split by a hash of the ID) and checked on the other half (``docs/results/survey_periods.md``).

Per source the result holds the period, the scan power at it (standard normalisation, ``0..1``) and
its false-alarm probability (:func:`~skyvar.lightcurves.fap.fap_standard`: the Beta null of the
shared-phase model, ``N_eff = (fmax - fmin) T`` independent frequencies, as eq. 5 of the
minute-cadence paper), the re-ranking model's power, the number of bands, and the peak-to-peak
amplitude of each band's harmonic fit at the period (mag).

Units: days, cycles per day, magnitudes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.flags import SearchFlag
from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.fap import fap_standard
from skyvar.lightcurves.grids import FrequencyGrid, survey_grid
from skyvar.lightcurves.multiband import (
    BandData,
    fit_bands,
    power_from_sums,
    prepare_bands,
    scan,
    scan_power,
    sums_direct,
    top_peaks,
)
from skyvar.lightcurves.runs import StageLog, batch_key
from skyvar.utils.log import get_logger

log = get_logger(__name__)

RESULT_COLUMNS = ("f_max", "period", "pwr_max", "fap", "log10_fap", "n_eff", "pwr_model", "n_bands",
                  "alias_rank", "daily_alias", "ls_mode", "period_flag")
SIDEREAL_DAY_FREQ = 1.0027379093  # d^-1


def is_daily_alias(f: float, span: float, k_max: int = 3) -> bool:
    """True when ``f`` (d^-1) lies within ``2/span`` of a multiple ``k <= k_max`` of the solar or sidereal
    day frequency: where a trend or a period longer than the baseline shows up in nightly sampling
    (its own frequency is below the grid's ``2/T``), and where every other period is ambiguous."""
    if not (np.isfinite(f) and span > 0):
        return False
    k = np.arange(1, k_max + 1)
    return bool(np.any(np.abs(f - np.r_[k, k * SIDEREAL_DAY_FREQ]) < 2.0 / span))


def band_cadence(d: BandData) -> float:
    """Median time (d) between consecutive epochs of one band, the smallest over the bands."""
    best = np.inf
    for k in range(d.n_bands):
        tk = np.sort(d.t[d.band == k])
        if tk.size > 1:
            best = min(best, float(np.median(np.diff(tk))))
    return best


def search_multiband(t, y, band, dy=None, *, fmin: float | None = None, fmax: float | None = None,
                     oversample: float = 5.0, survey_fmin: float = 0.0, survey_fmax: float = 50.0,
                     cadence_limit: float = 0.02, scan_model: str = "shared", n_candidates: int = 10,
                     nterms_base: int = 0, nterms_band: int = 4, refine: int = 9, amp_nterms: int = 4,
                     min_band_points: int = 5, min_points: int = 20, nthreads: int = 1,
                     keep_periodogram: bool = False) -> dict:
    """The two-step multi-band period search of one source (module docstring).

    ``t`` (d), ``y`` (mag), ``band`` (labels) and ``dy`` (mag; None: unweighted) are 1-D arrays of
    all the source's points. Bands with fewer than ``min_band_points`` usable points are left out;
    fewer than ``min_points`` points in all gives NaN and ``SearchFlag.TOO_SHORT``. Returns a dict
    with the columns of :data:`RESULT_COLUMNS`, ``amplitude`` ({band: mag}), ``candidates``
    (frequencies, scan powers, re-ranking powers), the grid, and with ``keep_periodogram`` the scan.
    """
    d = prepare_bands(t, y, band, dy, min_points=min_band_points)
    out = {c: np.nan for c in RESULT_COLUMNS}
    out.update(ls_mode="multiband", period_flag=0, n_bands=d.n_bands, n_points=int(d.t.size), amplitude={},
               alias_rank=-1, daily_alias=False, candidates=None, grid=None)
    if d.t.size < max(min_points, 3) or d.n_bands == 0:
        out["period_flag"] = int(SearchFlag.TOO_SHORT)
        return out
    # a constant light curve (or one constant within round-off) has no period, only float noise
    if not (np.sqrt(d.yy) > 1e-9 * max(1.0, float(np.max(np.abs(d.mean))))) or d.span <= 0:
        out["period_flag"] = int(SearchFlag.DEGENERATE)
        return out
    grid = survey_grid(d.span, band_cadence(d), oversample, fmin, fmax, survey_fmin, survey_fmax, cadence_limit)
    p = scan(d, grid, scan_model, nthreads=nthreads)
    idx = top_peaks(p, n_candidates, half_width=max(1, int(round(oversample / 2))))
    if idx.size == 0:
        out["period_flag"] = int(SearchFlag.DEGENERATE)
        return out
    # refine every candidate on a local grid +-1 scan step and score it with the harmonic model
    steps = np.linspace(-1.0, 1.0, max(int(refine), 1)) if refine > 1 else np.zeros(1)
    fine = (grid.freq[idx][:, None] + steps[None, :] * grid.df).ravel()
    H = max(nterms_base, nterms_band, 1)
    S, Y = sums_direct(d, fine, H)
    pm = power_from_sums(S, Y, d.yy, nterms_base, nterms_band).reshape(idx.size, steps.size)
    pm = np.where(np.isfinite(pm), pm, -np.inf)
    j = pm.argmax(axis=1)
    f_c = fine.reshape(idx.size, steps.size)[np.arange(idx.size), j]
    score = pm[np.arange(idx.size), j]
    best = int(np.argmax(score))
    if not np.isfinite(score[best]):
        out["period_flag"] = int(SearchFlag.DEGENERATE)
        return out
    f = float(f_c[best])
    # scan power at the chosen frequency (the statistic the FAP refers to)
    S1, Y1 = sums_direct(d, np.array([f]), 1)
    pwr = float(scan_power(S1, Y1, d.yy, scan_model)[0])
    n_params = 2 if scan_model == "shared" else 2 * d.n_bands
    n_eff = (grid.fmax - grid.fmin) * d.span
    fap, lfap = fap_standard(pwr, d.t.size, n_params, d.n_bands, n_eff)
    amps = fit_bands(d, f, amp_nterms)
    out.update(f_max=f, period=1.0 / f, pwr_max=pwr, fap=float(fap), log10_fap=float(lfap), n_eff=float(n_eff),
               pwr_model=float(score[best]), alias_rank=best, daily_alias=is_daily_alias(f, d.span),
               amplitude={str(b): float(a) for b, a in zip(d.bands, amps["amplitude"])},
               candidates={"f": f_c, "scan_power": p[idx].astype(float), "model_power": score}, grid=grid)
    if keep_periodogram:
        out["periodogram"] = p
    return out


def _source_arrays(batch: LightCurveBatch, rows: np.ndarray):
    m = batch.mask[rows]
    t = batch.time[rows][m]
    y = batch.mag[rows][m]
    dy = batch.mag_err[rows][m]
    band = np.repeat(batch.band[rows].astype(str), m.sum(axis=1))
    return t, y, dy, band


class MultibandPeriodSearch:
    """Light-curve pipeline stage ``multiband``: one period per source from all its bands.

    For every source with at least ``min_bands`` bands of ``min_band_points`` usable points each,
    :func:`search_multiband` runs on all its points; the result is one row per source with
    ``band = "all"`` (the pipeline's ``source_rows`` hook) holding ``f_max`` (d^-1), ``period`` (d),
    ``pwr_max`` (shared-phase power, standard normalisation), ``fap``/``log10_fap``, ``n_eff``,
    ``pwr_model`` (power of the re-ranking model), ``n_bands``, ``alias_rank`` (rank of the chosen peak
    in the scan, 0 = highest), ``daily_alias`` (the frequency within 2/T of 1, 2 or 3 cycles per solar
    or sidereal day: typically a trend longer than the baseline seen through nightly sampling, see
    :func:`is_daily_alias`), ``ls_mode = "multiband"``, ``period_flag`` (:class:`skyvar.flags.
    SearchFlag`), ``period_candidate_multiband`` (``fap <= fap_threshold`` and not a daily alias) and
    ``amp_<band>``
    (peak-to-peak of each band's ``amp_nterms``-harmonic fit at the period, mag). Per-band rows get
    no columns. Errors weight the fit (``1/mag_err^2``) when every point of the source has a usable
    one (``use_errors``), else the source is fitted unweighted and flagged ``BAD_ERRORS``.

    ``finalize`` writes ``plots/<name>/`` (with ``plots``): the ``n_plots`` lowest-FAP sources folded
    at their period, every band, beside the scan around the chosen peak.
    """

    def __init__(self, name: str = "multiband", min_bands: int = 2, min_band_points: int = 5,
                 min_points: int = 20, fmin: float | None = None, fmax: float | None = None,
                 oversample: float = 5.0, survey_fmin: float = 0.0, survey_fmax: float = 50.0,
                 cadence_limit: float = 0.02, scan_model: str = "shared", n_candidates: int = 10,
                 nterms_base: int = 0, nterms_band: int = 4, refine: int = 9, amp_nterms: int = 4,
                 use_errors: bool = True, fap_threshold: float = 1e-3, plots: bool = True, n_plots: int = 12,
                 nthreads: int = 1):
        if scan_model not in ("shared", "independent"):
            raise ValueError(f"scan_model must be shared or independent, got {scan_model!r}")
        if nterms_base + nterms_band < 1:
            raise ValueError("nterms_base + nterms_band must be at least 1")
        self.name = name
        self.min_bands = int(min_bands)
        self.min_band_points = int(min_band_points)
        self.min_points = int(min_points)
        self.fmin = None if fmin is None else float(fmin)
        self.fmax = None if fmax is None else float(fmax)
        self.oversample = float(oversample)
        self.survey_fmin = float(survey_fmin)
        self.survey_fmax = float(survey_fmax)
        self.cadence_limit = float(cadence_limit)
        self.scan_model = scan_model
        self.n_candidates = int(n_candidates)
        self.nterms_base = int(nterms_base)
        self.nterms_band = int(nterms_band)
        self.refine = int(refine)
        self.amp_nterms = int(amp_nterms)
        self.use_errors = bool(use_errors)
        self.fap_threshold = float(fap_threshold)
        self.plots = bool(plots)
        self.n_plots = int(n_plots)
        self.nthreads = int(nthreads)
        self._log = StageLog(self.name)

    def search_kwargs(self) -> dict:
        return dict(fmin=self.fmin, fmax=self.fmax, oversample=self.oversample, survey_fmin=self.survey_fmin,
                    survey_fmax=self.survey_fmax, cadence_limit=self.cadence_limit, scan_model=self.scan_model,
                    n_candidates=self.n_candidates, nterms_base=self.nterms_base, nterms_band=self.nterms_band,
                    refine=self.refine, amp_nterms=self.amp_nterms, min_band_points=self.min_band_points,
                    min_points=self.min_points, nthreads=self.nthreads)

    def __call__(self, batch: LightCurveBatch, out_dir=None) -> pd.DataFrame:
        return pd.DataFrame(index=range(len(batch)))  # per-band rows: nothing; see source_rows

    def search_source(self, t, y, dy, band) -> dict:
        flag = 0
        good_err = np.isfinite(dy) & (dy > 0)
        use = self.use_errors and bool(good_err.all())
        if self.use_errors and not use:
            flag |= int(SearchFlag.BAD_ERRORS)
        res = search_multiband(t, y, band, dy if use else None, **self.search_kwargs())
        res["period_flag"] = int(res["period_flag"]) | flag
        return res

    def source_rows(self, batch: LightCurveBatch, out_dir=None) -> pd.DataFrame:
        """One row per source with at least ``min_bands`` usable bands (class docstring)."""
        cols = list(RESULT_COLUMNS) + ["period_candidate_multiband"]
        if not len(batch):
            return pd.DataFrame(columns=["source_id", *cols])
        sid = pd.Series(batch.source_id)
        codes, uniq = pd.factorize(sid)
        usable = batch.mask.sum(axis=1) >= self.min_band_points
        n_usable = np.bincount(codes, weights=usable.astype(float), minlength=len(uniq))
        records, top = [], []
        for g in np.flatnonzero(n_usable >= self.min_bands):
            rows = np.flatnonzero(codes == g)
            t, y, dy, band = _source_arrays(batch, rows)
            res = self.search_source(t, y, dy, band)
            rec = {"source_id": uniq[g], **{c: res[c] for c in RESULT_COLUMNS}}
            rec["period_candidate_multiband"] = bool(np.isfinite(res["fap"]) and res["fap"] <= self.fap_threshold
                                                     and not res["daily_alias"])
            rec.update({f"amp_{b}": a for b, a in res["amplitude"].items()})
            records.append(rec)
            if self.plots and np.isfinite(res["log10_fap"]):
                top.append((res["log10_fap"], uniq[g], t, y, dy, band, res))
        df = pd.DataFrame.from_records(records, columns=None) if records else pd.DataFrame(columns=["source_id", *cols])
        if self.plots and top and self.n_plots > 0:
            top.sort(key=lambda r: r[0])
            long = [pd.DataFrame({"source_id": str(s), "time": t, "mag": y, "mag_err": dy, "band": b,
                                  "period": r["period"], "log10_fap": lf, "fmin": r["grid"].fmin,
                                  "df": r["grid"].df, "nf": r["grid"].nf})
                    for lf, s, t, y, dy, b, r in top[: self.n_plots]]
            self._log.add("top", pd.concat(long, ignore_index=True), out_dir, batch_key(batch))
        return df

    def finalize(self, features: pd.DataFrame, out_dir) -> pd.DataFrame:
        if "ls_mode" in features.columns:
            n = int((features.ls_mode == "multiband").sum())
            good = features.get("period_candidate_multiband", pd.Series(False, index=features.index))
            log.info("%s: %d sources searched over all bands, %d with FAP <= %g", self.name, n,
                     int(good.fillna(False).astype(bool).sum()), self.fap_threshold)
        if not self.plots or out_dir is None:
            return features
        try:
            top = self._log.collect("top", out_dir, unique=("source_id", "time", "band"))
            if len(top):
                self._plot(top, Path(out_dir) / "plots" / self.name)
        except Exception as e:  # never lose the table for a plot
            log.error("%s: plotting failed: %s", self.name, e)
        return features

    def _plot(self, top: pd.DataFrame, pdir: Path) -> None:
        from skyvar.lightcurves import plots
        from skyvar.utils.atomic import savefig_atomic

        order = top.groupby("source_id").log10_fap.first().sort_values().index[: self.n_plots]
        for sid in order:
            p = top[top.source_id == sid]
            d = prepare_bands(p.time, p.mag, p.band, p.mag_err if self.use_errors else None, self.min_band_points)
            P = float(p.period.iloc[0])
            f0 = 1.0 / P
            # the scan near the chosen peak (+-3 d^-1: the daily aliases) on the search's own grid
            i0 = int(max(0, np.floor((f0 - 3.0 - p.fmin.iloc[0]) / p.df.iloc[0])))
            i1 = int(min(p.nf.iloc[0], np.ceil((f0 + 3.0 - p.fmin.iloc[0]) / p.df.iloc[0])))
            grid = FrequencyGrid(float(p.fmin.iloc[0] + i0 * p.df.iloc[0]), float(p.df.iloc[0]), max(i1 - i0, 2))
            pw = scan(d, grid, self.scan_model)
            fig = plots.plot_multiband_candidate(p.time.to_numpy(), p.mag.to_numpy(), p.mag_err.to_numpy(),
                                                 p.band.to_numpy().astype(str), grid.freq, pw, f0,
                                                 f"{sid}: P = {P:.6f} d, log10 FAP = {p.log10_fap.iloc[0]:.1f}")
            savefig_atomic(fig, pdir / "candidates" / f"{str(sid).replace('/', '_')}.png")
