"""Light curves against truth: scatter versus magnitude, example light curves, classification.

For a simulated time series (``skyvar.sim.field``: ``truth.ecsv``, ``frames.ecsv``,
``lightcurves_truth.parquet``) and the output of a light-curve pipeline (a store plus
``sources.parquet`` from ``pipeline=associate``), :func:`evaluate_lightcurves` writes

- ``sources_vs_truth.parquet``: one row per measured source: the matched truth star (``truth_id``,
  the nearest truth star within ``match_radius`` px of the source's anchor, one-to-one, closest wins),
  its true mean magnitude and variability, and the light-curve statistics ``n_epochs``, ``bias``
  (median of m_meas − m_true over epochs), ``scatter`` (1.4826 x MAD of m_meas − m_true, i.e. the
  photometric noise after the true variability is removed), ``rms_meas`` (robust scatter of m_meas
  itself) and ``rms_true``;
- ``metrics.json``: per truth-magnitude bin the median ``scatter`` and ``bias``, the expected noise
  (photon + sky + read noise through the PSF's effective area, plus the simulator's systematic
  floor; :func:`expected_scatter`) and the fraction of targets with a light curve; the overall
  completeness of light curves for targets (i < ``target_mag_max``);
- ``scatter_vs_mag.png`` (the light-curve scatter against true magnitude, the paper's photometric
  precision view of Figure 13).

:func:`classification_report` turns a candidate table with ``p_periodic`` (or another score) plus
the truth match into the paper's confusion matrix (§4: a periodic truth star that was not detected
or not classified periodic is a false negative; a spurious source classified periodic is a false
positive). :func:`compare_runs` puts several pipelines side by side (Figures 11 and 13):
``python -m skyvar.evaluate.lightcurves compare pnet=D1 classical=D2 truth=<sim dir> out_dir=C``.

Magnitudes: m_true per epoch is ``mag_true`` of ``lightcurves_truth.parquet`` (the signal in the
simulator's drawing convention, without the per-epoch systematic factor, which is part of the noise
every pipeline faces). Times are matched to epochs through ``frames.ecsv`` (nearest MJD).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from skyvar.utils.atomic import atomic_path, savefig_atomic, write_json_atomic, write_text_atomic
from skyvar.utils.log import get_logger

log = get_logger(__name__)

MAG_BINS = np.arange(14.0, 26.01, 0.5)
ROBUST = 1.4826


# ------------------------------------------------------------------------------------------- truth
class TimeSeriesTruth:
    """Truth of a simulated time series: the star table, epochs and a dense (star, epoch) mag array."""

    def __init__(self, sim_dir: str | Path, load_lightcurves: bool = True):
        from astropy.table import Table

        sim_dir = Path(sim_dir)
        if sim_dir.is_file():  # truth.ecsv given
            sim_dir = sim_dir.parent
        self.dir = sim_dir
        tpath = sim_dir / "truth.ecsv"
        if not tpath.exists():
            raise FileNotFoundError(f"truth table not found: {tpath}")
        t = Table.read(tpath)
        self.meta = dict(t.meta)
        keep = [c for c in t.colnames if t[c].ndim == 1]
        self.table = t[keep].to_pandas()
        fpath = sim_dir / "frames.ecsv"
        self.frames = Table.read(fpath).to_pandas() if fpath.exists() else None
        self.ids = self.table["source_id"].to_numpy()
        self._row = pd.Series(np.arange(len(self.ids)), index=self.ids)
        self.mag_epoch: np.ndarray | None = None
        lc = sim_dir / "lightcurves_truth.parquet"
        if load_lightcurves and lc.exists() and self.frames is not None:
            self._load_lightcurves(lc)

    def _load_lightcurves(self, path: Path) -> None:
        tab = pq.read_table(path, columns=["source_id", "epoch", "mag_true"])
        sid = tab.column("source_id").to_numpy()
        ep = tab.column("epoch").to_numpy()
        mag = tab.column("mag_true").to_numpy()
        n_ep = len(self.frames)
        arr = np.full((len(self.ids), n_ep), np.nan, dtype=np.float32)
        rows = self._row.reindex(sid).to_numpy()
        ok = np.isfinite(rows) & (ep >= 0) & (ep < n_ep)
        arr[rows[ok].astype(np.int64), ep[ok]] = mag[ok]
        # stars without a truth light curve (truth_lightcurves=variables) are constant at their mag
        missing = ~np.isfinite(arr).any(1)
        arr[missing] = self.table["mag"].to_numpy(np.float32)[missing, None]
        self.mag_epoch = arr

    def epoch_of(self, mjd: np.ndarray) -> np.ndarray:
        """Epoch index of each time (nearest frame MJD; -1 where none is within half a cadence)."""
        fm = self.frames["mjd"].to_numpy(float)
        order = np.argsort(fm)
        fs = fm[order]
        i = np.clip(np.searchsorted(fs, mjd), 1, len(fs) - 1) if len(fs) > 1 else np.zeros(len(mjd), int)
        if len(fs) > 1:
            i = np.where(np.abs(fs[i - 1] - mjd) < np.abs(fs[i] - mjd), i - 1, i)
        tol = 0.5 * (np.median(np.diff(fs)) if len(fs) > 1 else 1.0)
        ep = self.frames["epoch"].to_numpy()[order][i]
        return np.where(np.abs(fs[i] - mjd) <= tol, ep, -1)

    def _truth_xy(self, sources: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Source anchors in the truth frame (first frame's pointing offset removed)."""
        x = sources["x"].to_numpy(float).copy()
        y = sources["y"].to_numpy(float).copy()
        if self.frames is not None and "first_frame" in sources:
            off = self.frames.set_index("frame_id")[["dx", "dy"]]
            d = off.reindex(sources["first_frame"].astype(str)).fillna(0.0).to_numpy(float)
            x -= d[:, 0]
            y -= d[:, 1]
        return x, y

    def signal_rematch(self, match: pd.DataFrame, sources: pd.DataFrame, period: np.ndarray, radius: float = 1.0,
                       rtol: float = 0.02) -> pd.DataFrame:
        """The one-to-one match with unresolved blends resolved by the signal: a source whose nearest
        truth star is constant (or none) but which has, within ``radius`` px, a variable whose true
        period agrees with the source's BLS ``period`` (ratio 1, 2 or 1/2 within ``rtol``) and that no
        other source is matched to, is matched to that variable instead. ``sources`` and ``period`` are
        aligned with ``match`` rows. Returns a copy of ``match`` (``truth_row``, ``rematched``)."""
        from scipy.spatial import cKDTree

        out = match[["source_id", "truth_row"]].copy()
        out["rematched"] = False
        t = self.table
        isvar = (t["var_type"].astype(str) != "constant").to_numpy() & np.isfinite(t["period"].to_numpy(float))
        if not isvar.any():
            return out
        vrows = np.flatnonzero(isvar)
        tree = cKDTree(np.c_[t["x"].to_numpy(float)[vrows], t["y"].to_numpy(float)[vrows]])
        x, y = self._truth_xy(sources)
        tr = out["truth_row"].to_numpy().copy()
        taken = set(tr[tr >= 0].tolist())
        P = np.asarray(period, float)
        cur_const = (tr < 0) | ~isvar[np.maximum(tr, 0)]
        for i in np.flatnonzero(cur_const & np.isfinite(P) & np.isfinite(x) & np.isfinite(y)):
            best, bd = -1, np.inf
            for k in tree.query_ball_point([x[i], y[i]], radius):
                r = vrows[k]
                ratio = P[i] / t["period"].to_numpy(float)[r]
                if r in taken or not any(abs(ratio - h) < rtol * h for h in (1.0, 2.0, 0.5)):
                    continue
                d = np.hypot(x[i] - t["x"].to_numpy(float)[r], y[i] - t["y"].to_numpy(float)[r])
                if d < bd:
                    best, bd = r, d
            if best >= 0:
                taken.discard(tr[i])
                tr[i] = best
                taken.add(best)
                out.iloc[i, out.columns.get_loc("rematched")] = True
        out["truth_row"] = tr
        return out

    def match_sources(self, sources: pd.DataFrame, radius: float = 1.0) -> pd.DataFrame:
        """One-to-one nearest-truth match of source anchors (x, y; first frame's pointing removed)."""
        from scipy.spatial import cKDTree

        x, y = self._truth_xy(sources)
        tx, ty = self.table["x"].to_numpy(float), self.table["y"].to_numpy(float)
        tree = cKDTree(np.c_[tx, ty])
        ok = np.isfinite(x) & np.isfinite(y)
        dist = np.full(len(x), np.inf)
        idx = np.full(len(x), -1)
        if ok.any():
            d, i = tree.query(np.c_[x[ok], y[ok]], k=1, distance_upper_bound=radius)
            dist[ok], idx[ok] = d, np.where(np.isfinite(d), i, -1)
        # one-to-one: per truth star the closest source wins
        has = idx >= 0
        order = np.lexsort((dist[has], idx[has]))
        cand = np.flatnonzero(has)[order]
        first = np.ones(len(cand), bool)
        first[1:] = idx[cand][1:] != idx[cand][:-1]
        winner = np.zeros(len(x), bool)
        winner[cand[first]] = True
        idx = np.where(winner, idx, -1)
        out = pd.DataFrame({"source_id": sources["source_id"].to_numpy(), "truth_row": idx,
                            "match_dist": np.where(idx >= 0, dist, np.nan)})
        tt = self.table
        for c in ("source_id", "mag", "var_type", "periodic", "amplitude", "period", "is_target"):
            if c in tt:
                v = tt[c].to_numpy()
                col = "truth_id" if c == "source_id" else f"truth_{c}"
                if v.dtype.kind in "fiu":
                    out[col] = np.where(idx >= 0, v[np.maximum(idx, 0)].astype(float), np.nan)
                else:
                    out[col] = np.where(idx >= 0, v[np.maximum(idx, 0)].astype(object), None)
        return out

    def lightcurve_snr_total(self, noise: dict | None) -> np.ndarray:
        """Per truth star: the paper's eq. 5 light-curve S/N accumulated over the series,
        sqrt(N) x rms(F/F0 − mean) / σ_rel, with σ_rel the expected relative flux error at the star's
        magnitude (:func:`expected_scatter`); the same definition as
        :func:`skyvar.sim.csst_lightcurves.light_curve_snr`. Zero for constant stars; NaN without truth
        light curves or a noise model."""
        if self.mag_epoch is None or noise is None:
            return np.full(len(self.table), np.nan)
        m0 = self.table["mag"].to_numpy(float)
        rel = 10 ** (-0.4 * (self.mag_epoch.astype(float) - m0[:, None]))
        ok = np.isfinite(rel)
        n = ok.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = np.where(ok, rel, 0).sum(1) / n
            ps = np.sqrt(np.where(ok, (rel - mu[:, None]) ** 2, 0).sum(1) / n)
            sig = expected_scatter(m0, **noise) / (2.5 / np.log(10))
            return np.where(n > 0, ps / sig * np.sqrt(n), np.nan)

    def neighbour_variable_distance(self, min_amplitude: float = 0.05) -> np.ndarray:
        """Per truth star: distance [px] to the nearest *other* variable with amplitude ≥ min_amplitude."""
        from scipy.spatial import cKDTree

        t = self.table
        isvar = (t["var_type"].astype(str) != "constant").to_numpy() & (t["amplitude"].to_numpy(float) >= min_amplitude)
        out = np.full(len(t), np.inf)
        if isvar.sum() == 0:
            return out
        vx, vy = t["x"].to_numpy(float)[isvar], t["y"].to_numpy(float)[isvar]
        tree = cKDTree(np.c_[vx, vy])
        k = min(2, int(isvar.sum()))
        d, _ = tree.query(np.c_[t["x"].to_numpy(float), t["y"].to_numpy(float)], k=k)
        d = d.reshape(len(t), -1)
        out = np.where(isvar, d[:, 1] if k > 1 else np.inf, d[:, 0])
        return out


# ------------------------------------------------------------------------------------------ noise model
def expected_scatter(mag: np.ndarray, zp: float, exptime: float, sky_e: float, read_e: float, n_eff: float,
                     floor: float = 0.0) -> np.ndarray:
    """Expected 1σ magnitude scatter of PSF photometry: source Poisson noise plus sky+dark and read noise
    over the PSF's effective area ``n_eff`` = 1/Σ P² [px], plus a relative ``floor`` in quadrature."""
    f = exptime * 10 ** (-0.4 * (np.asarray(mag, float) - zp))
    var = f + n_eff * (sky_e + read_e**2)
    rel = np.sqrt(var) / f
    return 2.5 / np.log(10) * np.sqrt(rel**2 + floor**2)


def noise_params(truth: TimeSeriesTruth) -> dict | None:
    """Noise-model inputs from the first frame's header and the simulator's config, when available."""
    fdir = truth.dir / "frames"
    files = sorted(fdir.glob("*.fits")) if fdir.exists() else []
    if not files:
        return None
    from astropy.io import fits

    try:
        h = fits.getheader(files[0])
    except OSError:
        return None
    n_eff = None
    try:
        from skyvar.detect.psf_models import psf_from_header

        psf = psf_from_header(h)
        if psf is not None:
            u = np.arange(-10, 11, dtype=float)
            xx, yy = np.meshgrid(u, u)
            p = psf.evaluate(xx, yy)
            n_eff = float(1.0 / np.sum(p**2))
    except Exception as e:  # psf_models comes with the classical baselines; a Gaussian stands in
        log.debug("no PSF model for the noise curve (%s); Gaussian approximation", e)
    if n_eff is None:
        fwhm = 2.3  # px, the default CSST-like PSF (skyvar.sim.psf)
        n_eff = 4 * np.pi * (fwhm / 2.3548) ** 2
    floor = 0.0
    cfg = truth.dir / "sim_config.yaml"
    if cfg.exists():
        try:
            from omegaconf import OmegaConf

            floor = float(OmegaConf.load(cfg).get("systematic_floor", 0.0) or 0.0)
        except Exception:
            floor = 0.0
    sky = float(h.get("SKYLEVEL", 0.0)) + float(h.get("DARKCUR", 0.0)) * float(h.get("EXPTIME", 1.0))
    return {"zp": float(h.get("ZP", 25.85)), "exptime": float(h.get("EXPTIME", 1.0)), "sky_e": sky,
            "read_e": float(h.get("RDNOISE", 0.0)), "n_eff": n_eff, "floor": floor}


# ------------------------------------------------------------------------------------------ statistics
def lightcurve_statistics(store, sources: pd.DataFrame, truth: TimeSeriesTruth, radius: float = 1.0,
                          mask_flags: int = 0) -> pd.DataFrame:
    """Per-source residual statistics against truth (see the module docstring), one row per source."""
    from skyvar.lightcurves.store import open_store

    match = truth.match_sources(sources, radius)
    match = match.set_index("source_id")
    n_ep = len(truth.frames)
    parts = []
    handle = open_store(store) if not hasattr(store, "partitions") else store
    for p in handle.partitions:
        df = p.load(["source_id", "time", "mag", "flag"])
        if mask_flags and "flag" in df:
            df = df[(df["flag"].to_numpy() & int(mask_flags)) == 0]
        df = df[np.isfinite(df["mag"].to_numpy(float))]
        if not len(df):
            continue
        ids, inv = np.unique(df["source_id"].to_numpy(), return_inverse=True)
        ep = truth.epoch_of(df["time"].to_numpy(float))
        okep = ep >= 0
        meas = np.full((len(ids), n_ep), np.nan, dtype=np.float64)
        meas[inv[okep], ep[okep]] = df["mag"].to_numpy(float)[okep]
        m = match.reindex(ids)
        trow = m["truth_row"].to_numpy()
        has = np.isfinite(trow) & (trow >= 0)
        tru = np.full((len(ids), n_ep), np.nan)
        if truth.mag_epoch is not None and has.any():
            tru[has] = truth.mag_epoch[trow[has].astype(np.int64)]
        res = meas - tru
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                bias = np.nanmedian(res, 1)
                scatter = ROBUST * np.nanmedian(np.abs(res - bias[:, None]), 1)
                med = np.nanmedian(meas, 1)
                rms_meas = ROBUST * np.nanmedian(np.abs(meas - med[:, None]), 1)
                tmed = np.nanmedian(tru, 1)
                rms_true = ROBUST * np.nanmedian(np.abs(tru - tmed[:, None]), 1)
        parts.append(pd.DataFrame({"source_id": ids, "n_epochs": np.isfinite(meas).sum(1), "mag_median": med,
                                   "bias": bias, "scatter": scatter, "rms_meas": rms_meas, "rms_true": rms_true}))
    stats = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["source_id", "n_epochs", "mag_median", "bias", "scatter", "rms_meas", "rms_true"])
    out = match.reset_index().merge(stats, on="source_id", how="left")
    nv = truth.neighbour_variable_distance()
    tr = out["truth_row"].to_numpy()
    out["truth_neighbour_var_dist"] = np.where(tr >= 0, nv[np.maximum(tr, 0).astype(int)], np.nan)
    return out


def _binned(x: np.ndarray, y: np.ndarray, edges: np.ndarray, fn=np.nanmedian) -> list:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = (x >= lo) & (x < hi) & np.isfinite(y)
        out.append(float(fn(y[s])) if s.sum() >= 3 else None)
    return out


def evaluate_lightcurves(store, sources, truth, out_dir: str | Path, name: str = "",
                         radius: float = 1.0, target_mag_max: float = 25.0, mask_flags: int = 0,
                         plots: bool = True, min_epochs: int = 10) -> dict:
    """Light curves of one pipeline run against truth; writes the files listed in the module docstring."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    truth = truth if isinstance(truth, TimeSeriesTruth) else TimeSeriesTruth(truth)
    sources = pd.read_parquet(sources) if not isinstance(sources, pd.DataFrame) else sources
    st = lightcurve_statistics(store, sources, truth, radius, mask_flags)
    with atomic_path(out / "sources_vs_truth.parquet") as tmp:
        st.to_parquet(tmp, index=False)
    edges = MAG_BINS
    good = (st["truth_row"] >= 0) & (st["n_epochs"].fillna(0) >= min_epochs)
    m = st.loc[good, "truth_mag"].to_numpy(float)
    const = good & (st["truth_var_type"].astype(str) == "constant")
    mc = st.loc[const, "truth_mag"].to_numpy(float)
    noise = noise_params(truth)
    centres = 0.5 * (edges[:-1] + edges[1:])
    tmag = truth.table["mag"].to_numpy(float)
    targets = tmag < target_mag_max
    n_targets_bin = np.histogram(tmag[targets], edges)[0]
    matched_rows = st.loc[good, "truth_row"].to_numpy(int)
    with_lc = np.zeros(len(tmag), bool)
    with_lc[matched_rows] = True
    frac_bin = [float(a / b) if b else None for a, b in
                zip(np.histogram(tmag[targets & with_lc], edges)[0], n_targets_bin)]
    metrics: dict[str, Any] = {
        "name": name, "match_radius_px": radius, "target_mag_max": target_mag_max, "min_epochs": min_epochs,
        "n_sources": int(len(st)), "n_matched": int((st["truth_row"] >= 0).sum()),
        "n_spurious": int((st["truth_row"] < 0).sum()), "n_targets": int(targets.sum()),
        "target_lightcurve_completeness": float((targets & with_lc).sum() / max(targets.sum(), 1)),
        "n_epochs": int(len(truth.frames)),
        "mag_bins": edges.tolist(),
        "per_bin": {
            "scatter_median": _binned(m, st.loc[good, "scatter"].to_numpy(float), edges),
            "scatter_median_constant": _binned(mc, st.loc[const, "scatter"].to_numpy(float), edges),
            "bias_median": _binned(m, st.loc[good, "bias"].to_numpy(float), edges),
            "n_sources": np.histogram(m, edges)[0].tolist(),
            "target_fraction_with_lightcurve": frac_bin,
            "expected_scatter": (expected_scatter(centres, **noise).tolist() if noise else None),
        },
        "noise_model": noise,
    }
    for ref in (20.0, 22.0, 24.0):
        s = good & (np.abs(st["truth_mag"] - ref) < 0.25)
        metrics[f"scatter_at_{ref:g}"] = float(np.nanmedian(st.loc[s, "scatter"])) if s.sum() >= 3 else None
    write_json_atomic(out / "metrics.json", metrics)
    if plots:
        try:
            plot_scatter_vs_mag({name or "pipeline": st}, out / "scatter_vs_mag.png", noise, min_epochs=min_epochs)
        except Exception as e:  # a plotting failure must not lose the metrics
            log.error("scatter plot failed: %s", e)
    log.info("light curves %s: %d sources, %d matched to truth; target completeness %.3f; scatter at i=22: %s",
             name, metrics["n_sources"], metrics["n_matched"], metrics["target_lightcurve_completeness"],
             metrics["scatter_at_22"])
    return metrics


# ------------------------------------------------------------------------------------------ classification
def classification_report(candidates: pd.DataFrame, match: pd.DataFrame, truth: TimeSeriesTruth,
                          score: str = "p_periodic", threshold: float = 0.5, target_mag_max: float = 25.0,
                          snr_total: np.ndarray | None = None, snr_cuts=(5.0, 7.0, 10.0),
                          mag_edges=(-np.inf, 22.0, 23.0, 24.0, 25.0),
                          snr_edges=(0.0, 3.0, 5.0, 7.0, 10.0, 20.0, np.inf)) -> dict:
    """The paper's confusion matrix (§4) for periodic-variable classification of one pipeline run.

    ``candidates``: one row per source with ``source_id`` and ``score``; ``match``: the truth match
    (``source_id, truth_row``, from :meth:`TimeSeriesTruth.match_sources`). Truth positives are the
    periodic truth stars (``periodic``: eclipsing binary, transit, pulsator with a period within the
    baseline) brighter than ``target_mag_max``. Two matrices:

    - ``pipeline`` (the paper's): TP = detected and classified periodic; FN = periodic but not
      detected or not classified periodic; FP = a constant star or a spurious source classified
      periodic; TN = the rest of the sources matched to non-periodic targets (undetected non-periodic
      stars are not counted);
    - ``detected``: restricted to sources matched to targets (the classifier's own confusion matrix).
    Rows without a score (the classifier could not run: too few points) count as not periodic.
    Sources matched to stars fainter than ``target_mag_max`` are in neither matrix (they are real
    stars, so not spurious, but not targets either).

    With ``snr_total`` (per truth row, :meth:`TimeSeriesTruth.lightcurve_snr_total`) the pipeline
    recall is also given for the periodic targets whose signal is detectable at all
    (``recall_snr_ge<cut>``): the paper notes that below S/N ≈ 1.7 per point nothing classifies.
    ``recall_by_mag`` (host i magnitude bins ``mag_edges``) and ``recall_by_snr`` (``snr_edges``) give
    the pipeline recall per regime: ``n`` periodic targets, ``n_found``, ``recall``.
    """
    c = candidates[["source_id", score]].merge(match[["source_id", "truth_row"]], on="source_id", how="left")
    pred = (c[score].to_numpy(float) >= threshold)
    tr = c["truth_row"].fillna(-1).to_numpy(int)
    t = truth.table
    tmag = t["mag"].to_numpy(float)
    is_per = t["periodic"].to_numpy(bool) if "periodic" in t else np.zeros(len(t), bool)
    target = tmag < target_mag_max
    matched = tr >= 0
    mt = matched & target[np.maximum(tr, 0)]
    y = np.where(mt, is_per[np.maximum(tr, 0)], False)
    det = {"tp": int((mt & y & pred).sum()), "fn": int((mt & y & ~pred).sum()),
           "fp": int((mt & ~y & pred).sum()), "tn": int((mt & ~y & ~pred).sum())}
    detected_periodic = np.zeros(len(t), bool)
    detected_periodic[tr[mt & y & pred]] = True
    pipe = {"tp": int(detected_periodic.sum()),
            "fn": int((is_per & target).sum() - detected_periodic.sum()),
            "fp": int(((mt & ~y) | ~matched).__and__(pred).sum()),
            "tn": det["tn"]}

    def rates(d):
        p = d["tp"] / (d["tp"] + d["fp"]) if d["tp"] + d["fp"] else None
        r = d["tp"] / (d["tp"] + d["fn"]) if d["tp"] + d["fn"] else None
        f1 = 2 * p * r / (p + r) if p and r else None
        n = sum(d.values())
        acc = (d["tp"] + d["tn"]) / n if n else None
        return {**d, "precision": p, "recall": r, "f1": f1, "accuracy": acc}

    out = {"score": score, "threshold": threshold, "target_mag_max": target_mag_max,
           "n_truth_periodic_targets": int((is_per & target).sum()),
           "pipeline": rates(pipe), "detected": rates(det)}
    if snr_total is not None:
        snr = np.asarray(snr_total, float)
        for cut in snr_cuts:
            pos = is_per & target & (snr >= cut)
            out[f"recall_snr_ge{cut:g}"] = float(detected_periodic[pos].mean()) if pos.any() else None
            out[f"n_periodic_snr_ge{cut:g}"] = int(pos.sum())
        out["recall_by_snr"] = recall_bins(snr, is_per & target, detected_periodic, snr_edges)
    out["recall_by_mag"] = recall_bins(tmag, is_per & target, detected_periodic, mag_edges)
    return out


def recall_bins(v: np.ndarray, pos: np.ndarray, found: np.ndarray, edges) -> list[dict]:
    """Recall of the positives ``pos`` per bin ``[lo, hi)`` of ``v`` (host magnitude, accumulated S/N):
    rows ``{lo, hi, n, n_found, recall}`` (open ends as None, recall None for empty bins)."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = pos & (v >= lo) & (v < hi)
        n = int(s.sum())
        rows.append({"lo": float(lo) if np.isfinite(lo) else None, "hi": float(hi) if np.isfinite(hi) else None, "n": n, "n_found": int(found[s].sum()),
                     "recall": float(found[s].mean()) if n else None})
    return rows


# ------------------------------------------------------------------------------------------ figures
def plot_scatter_vs_mag(runs: dict[str, pd.DataFrame], path: Path, noise: dict | None = None,
                        min_epochs: int = 10, ylim: tuple[float, float] = (3e-4, 2.0)) -> Path:
    from skyvar.utils.plotting import subplots

    fig, ax = subplots(figsize=(6.4, 4.6))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for k, (name, st) in enumerate(runs.items()):
        g = (st["truth_row"] >= 0) & (st["n_epochs"].fillna(0) >= min_epochs)
        x, y = st.loc[g, "truth_mag"].to_numpy(float), st.loc[g, "scatter"].to_numpy(float)
        col = colors[k % len(colors)]
        ax.scatter(x, np.clip(y, ylim[0], ylim[1]), s=1.5, alpha=0.25, color=col, rasterized=True)
        med = _binned(x, y, MAG_BINS)
        cx = 0.5 * (MAG_BINS[:-1] + MAG_BINS[1:])
        ok = [v is not None for v in med]
        ax.plot(cx[ok], [v for v in med if v is not None], "-o", ms=3, color=col, label=f"{name} (median)")
    if noise:
        xx = np.linspace(14, 26, 200)
        ax.plot(xx, expected_scatter(xx, **noise), "k--", lw=1, label="photon + sky + read noise")
    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    ax.set_xlabel("true i magnitude")
    ax.set_ylabel("light-curve scatter: 1.4826 MAD(m − m_true) [mag]")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    savefig_atomic(fig, path)
    return path


def plot_confusion(reports: dict[str, dict], path: Path, which: str = "pipeline") -> Path:
    from skyvar.utils.plotting import subplots

    n = len(reports)
    fig, axes = subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    for ax, (name, rep) in zip(axes[0], reports.items()):
        d = rep[which]
        mat = np.array([[d["tn"], d["fp"]], [d["fn"], d["tp"]]], float)
        norm = mat / np.maximum(mat.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(mat[i, j])}\n{norm[i, j]:.3f}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
        ax.set_xticks([0, 1], ["non-periodic", "periodic"])
        ax.set_yticks([0, 1], ["non-periodic", "periodic"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        p, r = d.get("precision"), d.get("recall")
        ax.set_title(f"{name}\nP={p:.3f} R={r:.3f}" if p is not None and r is not None else name, fontsize=9)
    fig.tight_layout()
    savefig_atomic(fig, path)
    return path


def pick_examples(runs: dict[str, pd.DataFrame], truth: TimeSeriesTruth, mag_target: float = 21.5,
                  min_epochs: int | None = None) -> dict[str, int]:
    """Truth rows for the three Figure 13 cases, chosen by a neutral rule (closest to ``mag_target``
    among the stars every run measured): a periodic variable of amplitude ≥ 0.05, a constant star
    within 1.5–4 px of a variable of amplitude ≥ 0.1, and an isolated constant star."""
    t = truth.table
    if min_epochs is None:  # half the series, at most 50 epochs
        min_epochs = min(50, len(truth.frames) // 2) if truth.frames is not None else 10
    common = None
    for st in runs.values():
        rows = set(st.loc[(st["truth_row"] >= 0) & (st["n_epochs"].fillna(0) >= min_epochs), "truth_row"].astype(int))
        common = rows if common is None else common & rows
    common = np.array(sorted(common or []), dtype=int)
    if not len(common):
        return {}
    mag = t["mag"].to_numpy(float)[common]
    vt = t["var_type"].astype(str).to_numpy()[common]
    amp = t["amplitude"].to_numpy(float)[common]
    per = t["periodic"].to_numpy(bool)[common] if "periodic" in t else np.zeros(len(common), bool)
    nv = truth.neighbour_variable_distance(min_amplitude=0.1)[common]
    nv_any = truth.neighbour_variable_distance(min_amplitude=0.0)[common]
    out = {}
    sel = {"variable": per & (amp >= 0.05),
           "next_to_variable": (vt == "constant") & (nv >= 1.5) & (nv <= 4.0),
           "constant": (vt == "constant") & (nv_any > 8.0)}
    for k, s in sel.items():
        if s.any():
            i = np.flatnonzero(s)[np.argmin(np.abs(mag[s] - mag_target))]
            out[k] = int(common[i])
    return out


def plot_examples(runs: dict[str, tuple[Any, pd.DataFrame]], truth: TimeSeriesTruth, examples: dict[str, int],
                  path: Path) -> Path | None:
    """Figure 13: measured light curves of the example stars from every run, with the truth."""
    from skyvar.utils.plotting import subplots

    if not examples:
        return None
    t = truth.table
    fm = truth.frames["mjd"].to_numpy(float)
    curves = {name: load_curves(store, st.loc[st["truth_row"].isin(list(examples.values())), "source_id"])
              for name, (store, st) in runs.items()}
    fig, axes = subplots(len(examples), 1, figsize=(8, 2.6 * len(examples)), squeeze=False)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for ax, (case, row) in zip(axes[:, 0], examples.items()):
        if truth.mag_epoch is not None:
            ax.plot(fm - fm[0], truth.mag_epoch[row], "k-", lw=1, label="truth", zorder=5)
        for k, (name, (_, st)) in enumerate(runs.items()):
            sid = st.loc[st["truth_row"] == row, "source_id"]
            if not len(sid):
                continue
            lc = curves[name].get(int(sid.iloc[0]))
            if lc is None:
                continue
            ax.plot(lc["time"] - fm[0], lc["mag"], ".", ms=2, color=colors[k % 4], alpha=0.6, label=name)
        r = t.iloc[row]
        ax.invert_yaxis()
        ax.set_title(f"{case}: truth id {int(r['source_id'])}, i = {r['mag']:.2f}, {r['var_type']}"
                     + (f", P = {r['period']:.3f} d" if np.isfinite(r.get("period", np.nan)) else ""), fontsize=9)
        ax.set_ylabel("i [mag]")
        ax.legend(fontsize=7, loc="upper right", markerscale=4)
    axes[-1, 0].set_xlabel("time since first epoch [d]")
    fig.tight_layout()
    savefig_atomic(fig, path)
    return path


def load_curves(store, source_ids) -> dict[int, pd.DataFrame]:
    """Light curves of ``source_ids`` from a partitioned store in one scan: {source_id: (time, mag) sorted}."""
    import pyarrow.dataset as ds

    ids = [int(i) for i in source_ids]
    if not ids:
        return {}
    d = ds.dataset(str(store), format="parquet", partitioning="hive")
    t = d.to_table(columns=["source_id", "time", "mag"], filter=ds.field("source_id").isin(ids)).to_pandas()
    return {int(k): g.sort_values("time") for k, g in t.groupby("source_id")}


def _load_curve(store, source_id: int) -> pd.DataFrame:
    return load_curves(store, [source_id]).get(int(source_id), pd.DataFrame({"time": [], "mag": []}))


# ------------------------------------------------------------------------------------------ comparison
def compare_runs(runs: dict[str, str | Path], truth: str | Path, out_dir: str | Path, score: str = "auto",
                 threshold: float | None = None) -> dict:
    """Side-by-side light-curve evaluation of field-pipeline runs (``D`` of ``pipeline=field``): the
    scatter-versus-magnitude figure, confusion matrices (Figure 11) and example light curves with the
    truth (Figure 13); ``comparison.md`` and ``comparison.json`` hold the numbers. ``score="auto"``
    scores each run on its periodic decision (``p_periodic_final``: prior-adjusted, blend-attributed)
    where the candidate table has it, else on ``p_periodic``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr = TimeSeriesTruth(truth)
    snr_tot = tr.lightcurve_snr_total(noise_params(tr))
    stats, stores, reports, metrics = {}, {}, {}, {}
    for name, d in runs.items():
        d = Path(d)
        p = d / "eval_lightcurves" / "sources_vs_truth.parquet"
        store = d / "associate" / "store"
        if p.exists():
            stats[name] = pd.read_parquet(p)
        else:
            stats[name] = lightcurve_statistics(store, pd.read_parquet(d / "associate" / "sources.parquet"), tr)
        stores[name] = store
        mpath = d / "eval_lightcurves" / "metrics.json"
        metrics[name] = json.loads(mpath.read_text()) if mpath.exists() else {}
        cand = d / "candidates.ecsv"
        if cand.exists():
            from astropy.table import Table

            c = Table.read(cand).to_pandas()
            sc = score
            if sc == "auto":
                sc = "p_periodic_final" if "p_periodic_final" in c else "p_periodic"
            if sc in c and np.isfinite(c[sc].to_numpy(float)).any():
                thr = threshold if threshold is not None else float(Table.read(cand).meta.get("p_periodic_threshold", 0.5))
                reports[name] = classification_report(c, stats[name], tr, score=sc, threshold=thr,
                                                      snr_total=snr_tot)
    noise = noise_params(tr)
    plot_scatter_vs_mag(stats, out / "scatter_vs_mag.png", noise)
    if reports:
        plot_confusion(reports, out / "confusion_pipeline.png", "pipeline")
        plot_confusion(reports, out / "confusion_detected.png", "detected")
    ex = pick_examples(stats, tr)
    plot_examples({n: (stores[n], stats[n]) for n in runs}, tr, ex, out / "examples.png")
    res = {"runs": {n: str(d) for n, d in runs.items()}, "truth": str(truth), "examples": ex,
           "lightcurves": {n: {k: metrics[n].get(k) for k in ("n_sources", "n_matched", "target_lightcurve_completeness",
                                                             "scatter_at_20", "scatter_at_22", "scatter_at_24")}
                           for n in runs},
           "classification": reports}
    write_json_atomic(out / "comparison.json", res)
    write_text_atomic(out / "comparison.md", _comparison_md(res, metrics))
    return res


def _f(v, nd=4):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def _comparison_md(res: dict, metrics: dict) -> str:
    lines = ["# Light curves: pipelines side by side", "", "| pipeline | sources | matched to truth | "
             "target completeness | scatter i=20 | scatter i=22 | scatter i=24 |", "|---|---|---|---|---|---|---|"]
    for n, m in res["lightcurves"].items():
        lines.append(f"| {n} | {m['n_sources']} | {m['n_matched']} | {_f(m['target_lightcurve_completeness'], 3)} | "
                     f"{_f(m['scatter_at_20'])} | {_f(m['scatter_at_22'])} | {_f(m['scatter_at_24'])} |")
    if res["classification"]:
        lines += ["", "| pipeline | matrix | TP | FN | FP | TN | precision | recall | recall, S/N_tot ≥ 7 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for n, rep in res["classification"].items():
            for w in ("pipeline", "detected"):
                d = rep[w]
                r7 = _f(rep.get("recall_snr_ge7"), 3) if w == "pipeline" else ""
                lines.append(f"| {n} | {w} | {d['tp']} | {d['fn']} | {d['fp']} | {d['tn']} | {_f(d['precision'], 3)} | "
                             f"{_f(d['recall'], 3)} | {r7} |")
    return "\n".join(lines) + "\n"


def cli(argv: list[str]) -> int:
    """``skyvar compare-lightcurves NAME=<field run dir> ... truth=<sim dir> out_dir=C``."""
    return main(["compare", *argv])


def main(argv: list[str] | None = None) -> int:
    from skyvar.utils.cli import parse_args

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "compare":
        print(__doc__)
        return 2
    kv = parse_args(argv, positionals=["compare"], what="skyvar compare-lightcurves").kv
    out = kv.pop("out_dir", "comparison")
    truth = kv.pop("truth", None)
    if truth is None or not kv:
        print("usage: python -m skyvar.evaluate.lightcurves compare name=<field run dir> ... truth=<sim dir> out_dir=C")
        return 2
    res = compare_runs(kv, truth, out)
    print(json.dumps(res["lightcurves"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
