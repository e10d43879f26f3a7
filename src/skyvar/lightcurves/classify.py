"""Periodic-variable classification of light curves with a trained Astronet, and its evaluation.

**Pipeline stage.** :class:`AstronetStage` is a ``pipeline=lightcurves`` stage: called as
``stage(batch, out_dir)`` on a :class:`~skyvar.lightcurves.batch.LightCurveBatch`, it builds the
views with the settings stored in the checkpoint (:mod:`skyvar.lightcurves.views`), runs the network
(GPU when present) and returns one row per light curve (same order) with

- ``p_periodic``: probability of a periodic variable (eclipsing binary, transit, pulsator with a
  period within the baseline); 0 where the BLS found no significant dip (the gate the network was
  trained behind), NaN where the light curve is unusable (too few points / bad view);
- ``<name>_periodic``: ``p_periodic >= threshold``;
- ``<name>_class``: arg-max of the multi-class head (constant / eb / transit / pulsator / flare),
  ``no_period`` behind the BLS gate, ``unusable`` for unusable light curves;
- ``p_periodic_adjusted`` (``finalize``, with ``prior_adjust``): ``p_periodic`` adapted to the
  population's own periodic fraction (the network is trained at a balanced prior); the field
  pipeline's periodic decision uses it.

**BLS gate** (``bls_gate``): a pre-filter, not part of the paper. Light curves whose best BLS box has
a depth S/N below it get no views and ``p_periodic = 0`` without the network seeing them. ``null``
uses the value the checkpoint was trained with (``views.min_depth_snr`` in the file); ``0`` turns the
gate off (every usable curve reaches the network); ``docs/results/astronet.md`` measures both.
- ``<name>_flag`` (:data:`~skyvar.lightcurves.views.FLAG_NAMES` bits) and the BLS numbers
  ``<name>_period, _duration, _t0, _depth, _depth_snr, _sde`` (``<name>`` = ``astronet``).

The points used are those of ``batch.mask``: the pipeline's ``mask_flags`` policy decides which
flagged points count, the stage drops nothing more. Light curves spanning more than ``max_baseline``
days (default 10: the released model saw 3.5-day CSST series) are not classified (flag
``out_of_range``, NaN). Curves are processed in blocks of ``chunk_curves``; a block whose curves do
not share one time grid (e.g. different seasons) falls back to one curve at a time. It keeps the views of the best candidates and,
in ``finalize``, writes ``out_dir/plots/<name>/candidates.png`` and ``p_periodic_hist.png``.

In ``conf/pipeline/lightcurves.yaml`` (``stages:``)::

    - _target_: skyvar.lightcurves.classify.AstronetStage
      checkpoint: astronet-csst
      device: ${device}

**Evaluation.** ``python -m skyvar.lightcurves.classify evaluate checkpoint=<ckpt>
data=csst_lightcurves,csst_lightcurves_paper out_dir=docs/figures/astronet`` composes each named
``conf/data`` config (views built with the checkpoint's own view settings; ``views_from_checkpoint=false``
keeps the data config's), predicts every light curve of its test split (rows behind the BLS gate count as
predicted non-periodic, as in a real pipeline), evaluates beside it a peer without views (gradient
boosted trees on the same BLS/auxiliary features, trained on ``baseline=csst_lightcurves``'s training
split; ``baseline=none`` skips it) and writes per data set ``metrics_<data>.json``,
``confusion_<data>.png``, ``roc_<data>.png``, ``transit_accuracy_vs_snr_<data>.png`` (accuracy of
transits versus the light-curve S/N of the paper's eq. 5, see
:func:`skyvar.sim.csst_lightcurves.light_curve_snr`) and ``multiclass_<data>.png``.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.views import (
    FLAG_NO_PERIOD,
    FLAG_OUT_OF_RANGE,
    FLAG_TOO_FEW_POINTS,
    ViewConfig,
    Views,
    compute_views,
    concat_views,
)
from skyvar.utils.log import get_logger

log = get_logger(__name__)

DEFAULT_CHECKPOINT = "astronet-csst"  # a release name (skyvar.models.registry)


def _take(b: LightCurveBatch, idx: np.ndarray) -> LightCurveBatch:
    return LightCurveBatch(source_id=b.source_id[idx], band=b.band[idx], time=b.time[idx], mag=b.mag[idx],
                           mag_err=b.mag_err[idx], mask=b.mask[idx], flag=b.flag[idx] if b.flag is not None else None)


def decisions(p_net: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """Pipeline-level p_periodic: the network's probability where the views exist, 0 behind the BLS
    gate (no significant dip), NaN for unusable light curves."""
    p = np.asarray(p_net, float).copy()
    flag = np.asarray(flag)
    gated = (flag & FLAG_NO_PERIOD) != 0
    p[gated] = 0.0
    unusable = (flag != 0) & ~gated
    p[unusable] = np.nan
    return p


class AstronetStage:
    """``pipeline=lightcurves`` stage adding ``p_periodic`` and a class per light curve."""

    def __init__(self, checkpoint: str = DEFAULT_CHECKPOINT, device: str = "auto", threshold: float | None = None,
                 batch_size: int = 4096, views: dict | None = None, name: str = "astronet", n_examples: int = 12,
                 plots: bool = True, prior_adjust: bool = True, chunk_curves: int = 5000,
                 max_baseline: float | None = 10.0, bls_gate: float | None = None):
        self.checkpoint = checkpoint
        self.device = device
        self.threshold = threshold
        self.batch_size = batch_size
        self.view_overrides = dict(views or {})
        self.name = name
        self.n_examples = n_examples
        self.plots = plots
        self.prior_adjust = prior_adjust
        self.chunk_curves = int(chunk_curves)
        self.max_baseline = max_baseline
        self.bls_gate = bls_gate
        self._predictor = None
        self._examples: list[dict] = []

    @property
    def predictor(self):
        if self._predictor is None:
            from skyvar.device import resolve_device
            from skyvar.models.astronet_module import load_astronet

            path = self.checkpoint
            self._predictor = load_astronet(path, device=resolve_device(self.device))
            log.info("astronet: loaded %s on %s", path, self._predictor.device)
        return self._predictor

    def view_config(self) -> ViewConfig:
        from skyvar.utils.config import config_from_dotlist

        base = {**self.predictor.views, **self.view_overrides}
        if self.bls_gate is not None:
            base["min_depth_snr"] = float(self.bls_gate)
        base["device"] = str(self.predictor.device)
        return config_from_dotlist(ViewConfig, base=base)

    def __call__(self, batch: LightCurveBatch, out_dir: Path | None = None) -> pd.DataFrame:
        pred = self.predictor
        # the batch mask already encodes the caller's flag policy: do not drop flagged points again
        batch = dataclasses.replace(batch, flag=None)
        cfg = self.view_config()
        n = len(batch)
        out_of_range = np.zeros(n, bool)
        if self.max_baseline and n:
            tv = np.where(batch.mask, batch.time, np.nan)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                span = np.nanmax(tv, axis=1) - np.nanmin(tv, axis=1)
            out_of_range = span > self.max_baseline
            if out_of_range.any():
                log.warning("%s: %d light curves span more than max_baseline=%g d; not classified", self.name,
                            int(out_of_range.sum()), self.max_baseline)
                batch = dataclasses.replace(batch, mask=batch.mask & ~out_of_range[:, None])
        v = concat_views([self._views(_take(batch, np.arange(c0, min(c0 + self.chunk_curves, n))), cfg)
                          for c0 in range(0, max(n, 1), self.chunk_curves)]) if n else compute_views(batch, cfg)
        v.flag[out_of_range] = FLAG_OUT_OF_RANGE
        out = pred.predict(v.global_view, v.local_view, v.aux, batch_size=self.batch_size)
        p = decisions(out["p_periodic"], v.flag)
        thr = pred.threshold if self.threshold is None else float(self.threshold)
        nm = self.name
        df = pd.DataFrame({"p_periodic": p, f"{nm}_periodic": p >= thr})
        cls = np.full(len(v), "unusable", dtype=object)
        cls[(v.flag & FLAG_NO_PERIOD) != 0] = "no_period"
        ok = v.flag == 0
        if "class_proba" in out and pred.classes:
            names = np.asarray(pred.classes, dtype=object)
            cls[ok] = names[np.argmax(out["class_proba"][ok], axis=1)]
        else:
            cls[ok] = np.where(df[f"{nm}_periodic"].to_numpy()[ok], "periodic", "non_periodic")
        df[f"{nm}_class"] = cls
        df[f"{nm}_flag"] = v.flag
        for k in ("period", "duration", "t0", "depth", "depth_snr", "sde"):
            df[f"{nm}_{k}"] = getattr(v.bls, k)
        if self.plots and self.n_examples:
            self._keep_examples(batch, v, p)
        return df

    def _views(self, batch: LightCurveBatch, cfg: ViewConfig) -> Views:
        """Views of a block of curves; curves that do not share one time grid (e.g. different seasons in
        one batch) fall back to one curve at a time, and a curve that cannot be gridded is unusable."""
        try:
            return compute_views(batch, cfg)
        except ValueError as e:
            log.warning("%s: %d light curves do not share a regular time grid (%s); processing them one by one",
                        self.name, len(batch), e)
        parts = []
        for i in range(len(batch)):
            one = _take(batch, np.array([i]))
            try:
                parts.append(compute_views(one, cfg))
            except ValueError:
                empty = dataclasses.replace(one, mask=np.zeros_like(one.mask))
                parts.append(compute_views(empty, cfg))  # flagged too_few_points, NaN views
        return concat_views(parts)

    def _keep_examples(self, batch, v, p):
        order = np.argsort(-np.nan_to_num(p, nan=-1.0))[: self.n_examples]
        for i in order:
            if not np.isfinite(p[i]) or v.flag[i] != 0:
                continue
            self._examples.append({"source_id": batch.source_id[i], "p": float(p[i]), "period": float(v.bls.period[i]),
                                   "global": v.global_view[i], "local": v.local_view[i]})
        self._examples = sorted(self._examples, key=lambda e: -e["p"])[: self.n_examples]

    def finalize(self, features: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
        """Population step: with ``prior_adjust``, add ``p_periodic_adjusted`` (the probabilities adapted
        by EM to this population's unknown fraction of periodic variables, :func:`prior_adjust`; the
        network was trained at a balanced prior); plots. Returns the feature table."""
        flag_col = f"{self.name}_flag"
        if self.prior_adjust and "p_periodic" in features.columns and flag_col in features.columns:
            p = features["p_periodic"].to_numpy(float)
            adj = p.copy()
            ok = (features[flag_col].to_numpy() == 0) & np.isfinite(p)
            if ok.any() and np.isfinite(self.predictor.train_prior):
                adj[ok], pi = prior_adjust(p[ok], self.predictor.train_prior)
                log.info("%s: estimated fraction of periodic variables behind the BLS gate %.4f", self.name, pi)
            features = features.assign(p_periodic_adjusted=adj)
        if self.plots:
            self._plots(features, out_dir)
        return features

    def _plots(self, features: pd.DataFrame, out_dir: Path) -> None:
        from skyvar.utils.atomic import savefig_atomic
        from skyvar.utils.plotting import subplots

        pdir = Path(out_dir) / "plots" / self.name
        if "p_periodic" in features.columns:
            fig, ax = subplots(figsize=(5, 3.5))
            p = features["p_periodic"].to_numpy(float)
            ax.hist(p[np.isfinite(p)], bins=50, log=True)
            ax.set_xlabel("p_periodic")
            ax.set_ylabel("light curves")
            savefig_atomic(fig, pdir / "p_periodic_hist.png")
        if self._examples:
            n = len(self._examples)
            fig, axes = subplots(n, 2, figsize=(8, 1.4 * n), squeeze=False)
            for ax, e in zip(axes, self._examples):
                ax[0].plot(e["global"], lw=0.8)
                ax[0].set_ylabel(f"{e['source_id']}", fontsize=6)
                ax[0].set_title(f"p={e['p']:.3f}  P={e['period']:.4f} d", fontsize=7)
                ax[1].plot(np.atleast_2d(e["local"]).T, lw=0.8)  # vetting views: one line per channel
            axes[-1][0].set_xlabel("global view bin")
            axes[-1][1].set_xlabel("local view bin")
            fig.tight_layout()
            savefig_atomic(fig, pdir / "candidates.png")


def prior_adjust(p: np.ndarray, train_prior: float = 0.5, n_iter: int = 200, tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """Adapt probabilities trained under class prior ``train_prior`` to the unknown prior of the
    population they are applied to, by expectation-maximisation on the unlabelled predictions
    (Saerens, Latinne & Decaestecker 2002). Returns (adjusted probabilities, estimated prior).
    NaN inputs stay NaN."""
    p = np.asarray(p, float)
    ok = np.isfinite(p)
    q = np.clip(p[ok], 1e-12, 1 - 1e-12)
    if not ok.any():
        return p.copy(), float("nan")
    pi = float(q.mean())
    r1, r0 = 1.0 / train_prior, 1.0 / (1.0 - train_prior)
    for _ in range(n_iter):
        a = pi * r1 * q
        adj = a / (a + (1 - pi) * r0 * (1 - q))
        new = float(adj.mean())
        if abs(new - pi) < tol:
            pi = new
            break
        pi = new
    a = pi * r1 * q
    out = p.copy()
    out[ok] = a / (a + (1 - pi) * r0 * (1 - q))
    return out, pi


# ------------------------------------------------------------------------------------- evaluation
def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    """Precision, recall, accuracy, F1, confusion matrix [[TN, FP], [FN, TP]], ROC AUC (NaN p → 0)."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    y = np.asarray(y).astype(int)
    p = np.nan_to_num(np.asarray(p, float), nan=0.0)
    yhat = (p >= threshold).astype(int)
    cm = confusion_matrix(y, yhat, labels=[0, 1])
    tn, fp, fn, tp = (int(x) for x in cm.ravel())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    return {"n": int(len(y)), "n_pos": int(y.sum()), "threshold": threshold, "precision": prec, "recall": rec,
            "accuracy": (tp + tn) / max(len(y), 1), "f1": 2 * prec * rec / (prec + rec) if tp else 0.0,
            "confusion": [[tn, fp], [fn, tp]],
            "auc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")}


def paired_auc_difference(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, n_resamples: int = 300,
                          seed: int = 0) -> dict:
    """AUC of two scores on the same light curves and a paired bootstrap 95 % interval of AUC(a) − AUC(b)
    (:func:`scipy.stats.bootstrap`, percentile, resampling light curves)."""
    from scipy.stats import bootstrap
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    a, b = np.nan_to_num(np.asarray(p_a, float)), np.nan_to_num(np.asarray(p_b, float))
    if not 0 < y.sum() < len(y):
        return {"auc_a": float("nan"), "auc_b": float("nan"), "delta": float("nan"), "lo95": float("nan"),
                "hi95": float("nan")}
    idx = np.arange(len(y))

    def delta(i):
        i = np.asarray(i, int)
        if not 0 < y[i].sum() < len(i):
            return np.nan
        return roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i])

    ci = bootstrap((idx,), delta, vectorized=False, n_resamples=n_resamples, method="percentile",
                   random_state=np.random.default_rng(seed)).confidence_interval
    return {"auc_a": float(roc_auc_score(y, a)), "auc_b": float(roc_auc_score(y, b)), "delta": float(delta(idx)),
            "lo95": float(ci.low), "hi95": float(ci.high)}


def accuracy_vs_snr(snr: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> pd.DataFrame:
    """Fraction correct per S/N bin with a binomial (Wilson 68 %) interval."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        s = (snr >= lo) & (snr < hi)
        n = int(s.sum())
        k = int(correct[s].sum())
        if n:
            z = 1.0
            c = (k + z * z / 2) / (n + z * z)
            h = z * np.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
            rows.append({"snr_lo": lo, "snr_hi": hi, "n": n, "accuracy": k / n, "lo68": c - h, "hi68": c + h})
        else:
            rows.append({"snr_lo": lo, "snr_hi": hi, "n": 0, "accuracy": np.nan, "lo68": np.nan, "hi68": np.nan})
    return pd.DataFrame(rows)


def evaluate_predictions(tab: pd.DataFrame, p: np.ndarray, threshold: float, out_dir: Path, tag: str,
                         class_pred: np.ndarray | None = None, classes: list[str] | None = None,
                         p_baseline: np.ndarray | None = None, train_prior: float = 0.5,
                         baseline_prior: float = float("nan")) -> dict:
    """Metrics and figures for one data set; ``tab`` has label, var_type, class_id, snr_lc(_total),
    mag, view_flag; ``p`` the pipeline-level p_periodic; ``p_baseline`` an optional peer's."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from skyvar.utils.atomic import savefig_atomic, write_json_atomic
    from skyvar.utils.plotting import subplots

    out_dir = Path(out_dir)
    y = tab["label"].to_numpy().astype(int)
    pz = np.nan_to_num(p, nan=0.0)
    res = {"data": tag, "binary": binary_metrics(y, pz, threshold)}
    # the network was trained at a balanced prior; adapt it to this population without labels
    ok = (tab["view_flag"].to_numpy() == 0) & np.isfinite(p)
    if np.isfinite(train_prior) and ok.any():
        p_adj = pz.copy()
        p_adj[ok], pi = prior_adjust(pz[ok], train_prior)
        res["binary_prior_adjusted"] = binary_metrics(y, p_adj, threshold) | {"estimated_prior_behind_gate": pi,
                                                                               "train_prior": train_prior}
    if p_baseline is not None:
        res["baseline_aux_gbdt"] = binary_metrics(y, np.nan_to_num(p_baseline, nan=0.0), 0.5)
        # the views must earn their place: CNN minus boosted trees, overall and per accumulated S/N of the
        # periodic curves (every non-periodic curve in each comparison)
        snr_t = tab["snr_lc_total"].to_numpy(float)
        res["auc_cnn_minus_gbdt"] = {}
        for name, pos in (("all", np.ones(len(y), bool)), ("snr_ge7", snr_t >= 7), ("snr_3_7", (snr_t >= 3) & (snr_t < 7)),
                          ("snr_lt3", snr_t < 3)):
            sel = (y == 0) | pos
            res["auc_cnn_minus_gbdt"][name] = {"n_pos": int(y[sel].sum()),
                                               **paired_auc_difference(y[sel], pz[sel], p_baseline[sel])}
        okb = (tab["view_flag"].to_numpy() == 0) & np.isfinite(p_baseline)
        if np.isfinite(baseline_prior) and okb.any():
            pb_adj = np.nan_to_num(p_baseline, nan=0.0).copy()
            pb_adj[okb], _ = prior_adjust(pb_adj[okb], baseline_prior)
            res["baseline_aux_gbdt_prior_adjusted"] = binary_metrics(y, pb_adj, 0.5)
    yhat = pz >= threshold
    res["n_gated"] = int(((tab["view_flag"].to_numpy() & FLAG_NO_PERIOD) != 0).sum())
    res["n_unusable"] = int(((tab["view_flag"].to_numpy() & FLAG_TOO_FEW_POINTS) != 0).sum())
    per = {}
    for vt, g in tab.groupby("var_type"):
        idx = g.index.to_numpy()
        per[vt] = {"n": len(idx), "frac_pred_periodic": float(yhat[idx].mean()),
                   "frac_truly_periodic": float(y[idx].mean()),
                   "frac_pass_gate": float((tab["view_flag"].to_numpy()[idx] == 0).mean())}
    res["by_var_type"] = per
    # accuracy versus light-curve S/N for transits (periodic ones: correct = predicted periodic)
    tr = (tab["var_type"] == "transit").to_numpy() & (y == 1)
    edges = np.array([0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 1e9])
    edges_tot = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 40, 1e9])
    acc = accuracy_vs_snr(tab["snr_lc"].to_numpy()[tr], yhat[tr], edges)
    acc_t = accuracy_vs_snr(tab["snr_lc_total"].to_numpy()[tr], yhat[tr], edges_tot)
    res["transit_accuracy_vs_snr_lc"] = acc.to_dict(orient="records")
    res["transit_accuracy_vs_snr_lc_total"] = acc_t.to_dict(orient="records")
    for name, g in (("eb", tab["class_name"] == "eb"), ("pulsator", tab["class_name"] == "pulsator")):
        s = g.to_numpy() & (y == 1)
        res[f"{name}_recall"] = float(yhat[s].mean()) if s.any() else float("nan")
        hi = s & (tab["snr_lc_total"].to_numpy() > 10)
        res[f"{name}_recall_snr_total_gt10"] = float(yhat[hi].mean()) if hi.any() else float("nan")
    # recall restricted to detectable signals
    yhat_adj = p_adj >= threshold if "binary_prior_adjusted" in res else None
    for cut in (5.0, 7.0, 10.0):
        s = (y == 1) & (tab["snr_lc_total"].to_numpy() >= cut)
        res[f"recall_snr_total_ge{cut:g}"] = float(yhat[s].mean()) if s.any() else float("nan")
        if yhat_adj is not None:
            res[f"recall_snr_total_ge{cut:g}_prior_adjusted"] = float(yhat_adj[s].mean()) if s.any() else float("nan")
    # recall per host magnitude and accumulated S/N (prior-adjusted decisions where available)
    from skyvar.evaluate.lightcurves import recall_bins

    found = yhat_adj if yhat_adj is not None else yhat
    pos = y == 1
    if "mag" in tab.columns:
        res["recall_by_mag"] = recall_bins(tab["mag"].to_numpy(float), pos, found, (-np.inf, 22.0, 23.0, 24.0, 25.0))
    res["recall_by_snr"] = recall_bins(tab["snr_lc_total"].to_numpy(float), pos, found,
                                        (0.0, 3.0, 5.0, 7.0, 10.0, 20.0, np.inf))
    if class_pred is not None and classes:
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(tab["class_id"].to_numpy(), class_pred, labels=list(range(len(classes))))
        res["multiclass_confusion"] = cm.tolist()
        res["multiclass_classes"] = list(classes)
        res["multiclass_accuracy"] = float(np.trace(cm) / max(cm.sum(), 1))

    # ---- figures
    panels = [(f"threshold {threshold:.2g}", res["binary"])]
    if "binary_prior_adjusted" in res:
        panels.append(("prior-adjusted (EM, no labels)", res["binary_prior_adjusted"]))
    fig, axes = subplots(1, len(panels), figsize=(3.9 * len(panels), 3.5), squeeze=False)
    for ax, (title, bm) in zip(axes[0], panels):
        cmx = np.array(bm["confusion"])
        frac = cmx / cmx.sum(1, keepdims=True).clip(1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cmx):
            ax.text(j, i, f"{v}\n{frac[i, j]:.1%}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
        ax.set_xticks([0, 1], ["non-periodic", "periodic"])
        ax.set_yticks([0, 1], ["non-periodic", "periodic"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}\nprecision {bm['precision']:.3f}, recall {bm['recall']:.3f}", fontsize=8)
    fig.suptitle(tag, fontsize=9)
    fig.tight_layout()
    savefig_atomic(fig, out_dir / f"confusion_{tag}.png")
    b = res["binary"]

    fig, axs = subplots(1, 2, figsize=(8, 3.5))
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, pz)
        axs[0].plot(fpr, tpr, label=f"Astronet, AUC = {b['auc']:.3f}")
        if p_baseline is not None:
            bb = res["baseline_aux_gbdt"]
            f2, t2, _ = roc_curve(y, np.nan_to_num(p_baseline, nan=0.0))
            axs[0].plot(f2, t2, ls="--", label=f"BLS features only (GBDT), AUC = {bb['auc']:.3f}")
            p2, r2, _ = precision_recall_curve(y, np.nan_to_num(p_baseline, nan=0.0))
            axs[1].plot(r2, p2, ls="--", label="BLS features only (GBDT)")
        axs[0].set_xscale("log")
        axs[0].set_xlim(1e-4, 1)
        pr, rc, _ = precision_recall_curve(y, pz)
        axs[1].plot(rc, pr, label="Astronet")
        axs[1].plot([b["recall"]], [b["precision"]], "ko", label=f"threshold {threshold}")
        if "binary_prior_adjusted" in res:
            ba = res["binary_prior_adjusted"]
            axs[1].plot([ba["recall"]], [ba["precision"]], "bs", label="prior-adjusted (EM, no labels)")
        axs[1].plot([0.93], [0.976], "r*", ms=10, label="paper (PNet pipeline)")
    axs[0].set_xlabel("false positive rate")
    axs[0].set_ylabel("true positive rate")
    axs[0].legend(fontsize=7)
    axs[1].set_xlabel("recall")
    axs[1].set_ylabel("precision")
    axs[1].legend(fontsize=7)
    fig.suptitle(tag, fontsize=9)
    fig.tight_layout()
    savefig_atomic(fig, out_dir / f"roc_{tag}.png")

    fig, axs = subplots(1, 2, figsize=(9, 3.5))
    for ax, a, xl in ((axs[0], acc, "light-curve S/N, eq. 5: rms(signal) / rms(noise) per epoch"),
                      (axs[1], acc_t, "accumulated S/N = sqrt(N) x eq. 5")):
        ok = a["n"] > 0
        x = np.sqrt(a["snr_lo"].clip(lower=1e-3) * a["snr_hi"].clip(upper=a["snr_lo"].max() * 2 + 1))
        ax.errorbar(x[ok], a["accuracy"][ok], yerr=[(a["accuracy"] - a["lo68"])[ok], (a["hi68"] - a["accuracy"])[ok]],
                    fmt="o-")
        ax.set_xscale("log")
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel("transits classified periodic")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axs[0].axvline(1.7, color="r", ls=":", lw=0.8)
    axs[0].axvline(2.0, color="r", ls="--", lw=0.8, label="paper: <0.2 below 1.7, ~0.95 above 2")
    axs[0].legend(fontsize=7)
    fig.suptitle(f"{tag}: transit accuracy versus S/N", fontsize=9)
    fig.tight_layout()
    savefig_atomic(fig, out_dir / f"transit_accuracy_vs_snr_{tag}.png")

    if "multiclass_confusion" in res:
        cm = np.array(res["multiclass_confusion"])
        fig, ax = subplots(figsize=(4.6, 4))
        frac = cm / cm.sum(1, keepdims=True).clip(1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if frac[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30, fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted (gated → constant)")
        ax.set_ylabel("true")
        ax.set_title(f"{tag}: multi-class head, accuracy {res['multiclass_accuracy']:.3f}", fontsize=8)
        savefig_atomic(fig, out_dir / f"multiclass_{tag}.png")
    write_json_atomic(out_dir / f"metrics_{tag}.json", res)
    return res


def fit_aux_baseline(dm, seed: int = 0):
    """The peer without views: gradient-boosted trees (scikit-learn) on the standardised BLS/auxiliary
    features of the training split behind the same BLS gate."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from skyvar.lightcurves.views import AuxScaler, aux_names

    tab, arr = dm.split_arrays("train", gated_only=True)
    scaler = AuxScaler(aux_names(dm.view_cfg)).fit(arr["aux"])
    clf = HistGradientBoostingClassifier(random_state=seed).fit(scaler.transform(arr["aux"]), tab["label"].to_numpy())
    clf.train_prior_ = float(tab["label"].mean())  # its probabilities are calibrated at the training prior
    return scaler, clf


def evaluate_datamodule(dm, predictor, out_dir: Path, tag: str, split: str | None = "test", baseline=None) -> dict:
    """Predict every light curve of ``split`` of a :class:`LightCurveViewsDataModule` and evaluate
    (``baseline``: the (scaler, classifier) of :func:`fit_aux_baseline`, evaluated alongside). A data
    set of several origins (``origin`` column: measured fields, truth-noise curves) is evaluated as a
    whole and per origin (``metrics_<tag>_<origin>.json``); the returned dict has the per-origin
    results under ``by_origin``."""
    tab, arr = dm.split_arrays(split)
    if "origin" in tab.columns and tab["origin"].nunique() > 1:
        res = _evaluate_rows(tab, arr, predictor, out_dir, tag, baseline)
        res["by_origin"] = {}
        for origin, g in tab.groupby("origin"):
            idx = g.index.to_numpy()
            res["by_origin"][origin] = _evaluate_rows(g.reset_index(drop=True), {k: v[idx] for k, v in arr.items()},
                                                      predictor, out_dir, f"{tag}_{origin}", baseline)
        return res
    return _evaluate_rows(tab, arr, predictor, out_dir, tag, baseline)


def _evaluate_rows(tab, arr, predictor, out_dir, tag, baseline) -> dict:
    out = predictor.predict(arr["global_view"], arr["local_view"], arr["aux"])
    p = decisions(out["p_periodic"], tab["view_flag"].to_numpy())
    cls = None
    if "class_proba" in out:
        cls = np.where(np.isfinite(out["class_proba"]).all(1), np.nan_to_num(out["class_proba"]).argmax(1), 0)
    pb = None
    if baseline is not None:
        scaler, clf = baseline
        pb = decisions(clf.predict_proba(scaler.transform(arr["aux"]))[:, 1], tab["view_flag"].to_numpy())
    return evaluate_predictions(tab, p, predictor.threshold, out_dir, tag, cls, predictor.classes, pb,
                                predictor.train_prior,
                                getattr(baseline[1], "train_prior_", float("nan")) if baseline else float("nan"))


def main(argv: list[str] | None = None) -> int:
    from skyvar.utils.cli import parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "evaluate":
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    kv = parse_args(argv, positionals=["evaluate"], what="skyvar astronet").kv
    ckpt = kv.pop("checkpoint", DEFAULT_CHECKPOINT)
    out_dir = Path(kv.pop("out_dir", "docs/figures/astronet"))
    datas = kv.pop("data", "csst_lightcurves,csst_lightcurves_paper").split(",")
    device = kv.pop("device", "auto")
    from hydra.utils import instantiate

    from skyvar.device import resolve_device
    from skyvar.models.astronet_module import load_astronet
    from skyvar.utils.config import compose_config

    baseline_data = kv.pop("baseline", "csst_lightcurves")  # training data of the BLS-features peer; "none" = off
    kv_views_from_ckpt = str(kv.pop("views_from_checkpoint", "true")).lower() in ("1", "true", "yes")
    extra = [f"{k}={v}" for k, v in kv.items()]
    predictor = load_astronet(ckpt, device=resolve_device(device))

    trained_views = {k: v for k, v in predictor.views.items() if k not in ("device", "chunk_size", "bls_chunk", "num_threads")}

    def datamodule(name):
        from omegaconf import open_dict

        cfg = compose_config("train", [f"data={name}", "logger=none", "paths.output_dir=.", *extra])
        if kv_views_from_ckpt:
            # the views the checkpoint was trained on (vetting channels, BLS gate, ...), whatever the data
            # config says: a model must be scored on the inputs it expects
            with open_dict(cfg):
                cfg.data.views = {**dict(cfg.data.get("views") or {}), **trained_views}
        return instantiate(cfg.data)

    baseline = fit_aux_baseline(datamodule(baseline_data)) if baseline_data != "none" else None
    results = {}
    for name in datas:
        dm = datamodule(name)
        vc = dict(dm.view_cfg.__dict__)
        trained = {k: v for k, v in predictor.views.items() if k not in ("device", "chunk_size", "bls_chunk", "num_threads")}
        diff = {k: (vc.get(k), v) for k, v in trained.items() if k in vc and _norm(vc.get(k)) != _norm(v)}
        if diff:
            log.warning("data %s builds views differently from the training (%s)", name, diff)
        results[name] = evaluate_datamodule(dm, predictor, out_dir, name, "test", baseline)
        blocks = [(name, results[name])] + [(f"{name}/{o}", r) for o, r in results[name].get("by_origin", {}).items()]
        for nm, r in blocks:
            for key, label in (("binary", "astronet, raw"), ("binary_prior_adjusted", "astronet, prior-adjusted"),
                               ("baseline_aux_gbdt", "BLS-features GBDT, raw"),
                               ("baseline_aux_gbdt_prior_adjusted", "BLS-features GBDT, prior-adjusted")):
                if key in r:
                    b = r[key]
                    print(f"{nm} [{label}]: n={b['n']} periodic={b['n_pos']} precision={b['precision']:.4f} "
                          f"recall={b['recall']:.4f} accuracy={b['accuracy']:.4f} AUC={b['auc']:.4f}")
            for reg, d in r.get("auc_cnn_minus_gbdt", {}).items():
                print(f"{nm} [AUC CNN - GBDT, {reg}, {d['n_pos']} periodic]: {d['auc_a']:.4f} - {d['auc_b']:.4f} = "
                      f"{d['delta']:+.4f} (95 % {d['lo95']:+.4f} .. {d['hi95']:+.4f})")
    return 0


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


if __name__ == "__main__":
    sys.exit(main())
