"""The statistical variability-probability model of Xu et al. (§2.3, eqs. 7–9) and its evaluation.

Model (one per variability parameter and band): sort the training values ``V_i`` with their labels
``L_i`` (1 variable, 0 not); ``P(V_i)`` is the fraction of variables among the training objects whose
rank lies within ``± window·N`` of ``i`` (the paper: 1 % of the sample on each side, truncated at the
ends). New values get ``P`` by linear interpolation in ``V`` (clamped at the ends; equal training
values share their mean ``P``); NaN values get NaN. Models save to / load from JSON.

Evaluation as the paper: an 80/20 split (by source, so a star's g and r curves never straddle it),
separate g and r models, 100 probability thresholds from 0 to 1 with accuracy, precision, recall and
F1 at each (Figure 7), ROC curves and their areas (Figure 8); Tables 1 and 2 are the four scores at
``P ≥ 0.68`` and ``P ≥ 0.95``. Iter-std is the std after the paper's three 2σ-clipping iterations
(feature ``iter_std_3``). Beyond the paper:

* **matched subsets** — the paper's variables and standard stars differ in magnitude and in the
  number of epochs (its Fig. 2), so a parameter can separate the classes by measuring brightness or
  epoch count instead of variability. Every parameter is also fitted and scored on subsets with equal
  numbers of variables and standard stars in every magnitude bin (``mag``: median magnitude, 0.25 mag
  bins), every epoch-count bin (``epochs``: log10 of the points used, 0.1 dex) or both (``both``),
  drawn separately in the training and the test part (:func:`matched_subset`). With
  ``pool_factor > 1`` the simulation makes that many times more standard stars than variables; the
  paper-design sample (``all``) takes as many of them at random as there are variables (the paper
  drew its 3,752 from 263,670), the matched subsets pick from the whole pool;
* AUC for every parameter and subset; one model on all ten parameters together (scikit-learn
  histogram gradient boosting, NaN-aware), scored the same way;
* the sample itself described as the paper's Figures 2–5 (:func:`sample_diagnostics`).

Commands::

    python -m skyvar.lightcurves.probability reproduce out_dir=D [seed=0 pool_factor=10 sim.standards_like=none ...]
    python -m skyvar.lightcurves.probability confound out_dir=D     # Table 1 under four sample designs
    python -m skyvar.lightcurves.probability evaluate features=F.parquet labels=L.parquet out_dir=D
    python infer.py pipeline=variability_paper out_dir=D          # same as `reproduce`

``reproduce`` simulates the labelled ZTF-like sample (:mod:`skyvar.sim.ztf`), computes the indices
with the light-curve pipeline and evaluates; every step resumes. Outputs: ``D/tables.md`` (ours beside
the paper's, per band, with the matched columns), ``D/table1.csv``, ``D/table2.csv``, ``D/auc.csv``
(long tables: band, subset, parameter, scores), ``D/curves.csv``, ``D/sample.md`` and
``D/sample_curves.parquet`` (Figures 2–5 in numbers), figures under ``D/figures/``
(``figure2_sample.png``, ``figure3_sigma_levels.png``, ``figure4_Q_Q2.png``, ``figure5_iter_std.png``,
``figure6_probability_<band>.png``, ``figure7_<param>_<band>.png``, ``figure8_roc_<band>.png``) and
the fitted models in ``D/models/probability_models.json`` (per band). ``confound`` runs ``reproduce``
with ``sim.standards_like`` = none, mag, epochs and both and writes ``D/confound.md``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd

from skyvar.lightcurves.indices import PAPER_PARAMETERS
from skyvar.utils.atomic import atomic_path, savefig_atomic, write_json_atomic, write_text_atomic
from skyvar.utils.log import get_logger

log = get_logger(__name__)

#: Xu et al. Table 1 (P >= 0.68) and Table 2 (P >= 0.95): accuracy, recall, precision, F1.
PAPER_TABLE1 = {
    "Q": (0.69, 0.46, 0.84, 0.55), "Q1": (0.77, 0.62, 0.89, 0.69), "Q2": (0.83, 0.72, 0.92, 0.77),
    "std": (0.77, 0.71, 0.80, 0.74), "iter_std": (0.78, 0.71, 0.82, 0.74), "cv": (0.76, 0.73, 0.78, 0.75),
    "kurtosis": (0.54, 0.10, 0.80, 0.17), "skewness": (0.53, 0.09, 0.73, 0.16), "mad": (0.79, 0.73, 0.83, 0.76),
    "amp": (0.76, 0.73, 0.78, 0.75),
}
PAPER_TABLE2 = {
    "Q": (0.53, 0.07, 0.98, 0.12), "Q1": (0.64, 0.28, 0.99, 0.39), "Q2": (0.69, 0.38, 0.99, 0.49),
    "std": (0.52, 0.04, 1.00, 0.07), "iter_std": (0.52, 0.04, 0.94, 0.07), "cv": (0.50, 0.0, np.nan, 0.0),
    "kurtosis": (0.50, 0.0, np.nan, 0.0), "skewness": (0.50, 0.0, np.nan, 0.0), "mad": (0.51, 0.03, 0.88, 0.06),
    "amp": (0.54, 0.07, 1.00, 0.12),
}
PAPER_AUC_Q = 0.75  # the only AUC quoted in the text (Figure 8 shows the others without numbers)
PAPER_FIG5_PEAK = 0.014  # mag: where the variables' Iter-std distribution peaks after three iterations
ALL_MODEL = "all (GBDT)"
#: Parameter -> feature column. The paper's Iter-std is the std "after three iterations" (§2.2, Fig. 5).
PAPER_COLUMNS = {"iter_std": "iter_std_3"}
#: Sample subsets: the paper's design, and class-balanced subsets matched in magnitude / epochs / both.
SUBSETS = ("all", "mag", "epochs", "both")
#: Matching keys (column -> bin width) of each matched subset.
MATCH_KEYS = {"mag": {"median_mag": 0.25}, "epochs": {"log_n": 0.1}, "both": {"median_mag": 0.25, "log_n": 0.1}}


# ------------------------------------------------------------------------------------------ model
class VariabilityProbability:
    """P(variable | one parameter's value), Xu et al. eqs. 7–9."""

    def __init__(self, parameter: str = "Q2", window: float = 0.01, column: str | None = None):
        self.parameter = parameter
        self.column = column or parameter  # the feature column it reads (iter_std -> iter_std_3)
        self.window = float(window)
        self.x: np.ndarray | None = None  # sorted unique training values
        self.p: np.ndarray | None = None  # P at those values
        self.n_train = 0
        self.n_dropped = 0

    def fit(self, values, labels) -> VariabilityProbability:
        v = np.asarray(values, dtype=float)
        lab = np.asarray(labels, dtype=float)
        ok = np.isfinite(v) & np.isfinite(lab)
        self.n_dropped = int((~ok).sum())
        v, lab = v[ok], lab[ok]
        n = len(v)
        if n == 0:
            raise ValueError(f"{self.parameter}: no finite training values")
        order = np.argsort(v, kind="stable")
        v, lab = v[order], lab[order]
        h = int(np.floor(self.window * n))  # j in [i - 0.01 N, i + 0.01 N]
        c = np.concatenate([[0.0], np.cumsum(lab)])
        i = np.arange(n)
        lo = np.clip(i - h, 0, n)
        hi = np.clip(i + h + 1, 0, n)
        p = (c[hi] - c[lo]) / (hi - lo)
        # Equal values must map to one P for interpolation: average over ties.
        ux, inv = np.unique(v, return_inverse=True)
        self.x = ux
        self.p = np.bincount(inv, weights=p) / np.bincount(inv)
        self.n_train = n
        return self

    def predict(self, values) -> np.ndarray:
        if self.x is None:
            raise RuntimeError("model not fitted")
        v = np.asarray(values, dtype=float)
        out = np.interp(v, self.x, self.p)
        return np.where(np.isfinite(v), out, np.nan)

    __call__ = predict

    def to_dict(self) -> dict:
        return {"kind": "xu2022_eq9", "parameter": self.parameter, "column": self.column, "window": self.window,
                "n_train": self.n_train,
                "n_dropped": self.n_dropped, "x": self.x.tolist(), "p": self.p.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> VariabilityProbability:
        m = cls(d["parameter"], d["window"], d.get("column"))
        m.x, m.p = np.asarray(d["x"], float), np.asarray(d["p"], float)
        m.n_train, m.n_dropped = int(d.get("n_train", len(m.x))), int(d.get("n_dropped", 0))
        return m

    def save(self, path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path) -> VariabilityProbability:
        return cls.from_dict(json.loads(Path(path).read_text()))


def save_models(models: dict, path) -> Path:
    """Write ``{param: model}`` (one model for every band) or ``{band: {param: model}}`` (per band)."""
    if models and all(isinstance(v, dict) for v in models.values()):
        blob = {"per_band": {b: {k: m.to_dict() for k, m in ms.items()} for b, ms in models.items()}}
    else:
        blob = {k: m.to_dict() for k, m in models.items()}
    return write_json_atomic(path, blob)


def load_band_models(path) -> dict[str | None, dict[str, VariabilityProbability]]:
    """``{band: {param: model}}``; the band is None for a file holding one model set for every band."""
    blob = json.loads(Path(path).read_text())
    if "per_band" in blob:
        return {b: {k: VariabilityProbability.from_dict(d) for k, d in ms.items()} for b, ms in blob["per_band"].items()}
    return {None: {k: VariabilityProbability.from_dict(d) for k, d in blob.items()}}


def load_models(path, band: str | None = None) -> dict[str, VariabilityProbability]:
    """``{param: model}`` of one band (``band`` needed when the file holds per-band models)."""
    per = load_band_models(path)
    if None in per:
        return per[None]
    if band is None:
        if len(per) == 1:
            return next(iter(per.values()))
        raise ValueError(f"{path} holds per-band models for {sorted(per)}; say which band")
    if band not in per:
        raise ValueError(f"{path} has no models for band {band!r} (has {sorted(per)})")
    return per[band]


class ProbabilityStage:
    """Light-curve pipeline stage ``probability``: ``P_<param>`` columns from saved models (finalize only;
    put it after the indices stage). ``models`` is a JSON file written by :func:`save_models`; with
    per-band models each band's rows get their band's model (rows of other bands get NaN)."""

    name = "probability"

    def __init__(self, models: str, parameters: list[str] | None = None):
        self.models = str(models)
        self.parameters = list(parameters) if parameters else None

    def __call__(self, batch, out_dir):
        return pd.DataFrame(index=range(len(batch)))

    def finalize(self, features: pd.DataFrame, out_dir) -> pd.DataFrame:
        per = load_band_models(self.models)
        features = features.copy()
        for band, models in per.items():
            rows = np.ones(len(features), bool) if band is None else (features["band"].astype(str) == band).to_numpy()
            for name, m in models.items():
                if self.parameters is not None and name not in self.parameters:
                    continue
                if m.column not in features:
                    raise ValueError(f"probability model for {name!r} reads column {m.column!r}, which the features "
                                     "lack; put the indices stage first")
                col = f"P_{name}"
                if col not in features:
                    features[col] = np.nan
                vals = features.loc[rows, m.column].to_numpy(dtype=float)
                features.loc[rows, col] = m.predict(vals)
        return features


# ------------------------------------------------------------------------------------- evaluation
def scores_at(p, labels, threshold: float) -> dict:
    """Accuracy, recall, precision, F1 of ``p >= threshold`` (NaN p counts as not variable)."""
    p = np.nan_to_num(np.asarray(p, float), nan=-np.inf)
    y = np.asarray(labels).astype(bool)
    pred = p >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    acc = (tp + tn) / max(len(y), 1)
    rec = tp / (tp + fn) if tp + fn else np.nan
    prec = tp / (tp + fp) if tp + fp else np.nan  # no positive prediction: undefined, as the paper's NaN
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else np.nan
    return {"threshold": threshold, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "accuracy": acc, "recall": rec,
            "precision": prec, "f1": f1}


def threshold_curves(p, labels, thresholds=None) -> pd.DataFrame:
    thresholds = np.linspace(0, 1, 100) if thresholds is None else thresholds
    return pd.DataFrame([scores_at(p, labels, float(t)) for t in thresholds])


def roc(p, labels) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    s = np.nan_to_num(np.asarray(p, float), nan=-1.0)
    y = np.asarray(labels).astype(int)
    if len(np.unique(y)) < 2:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr, float(roc_auc_score(y, s))


def split_by_source(source_ids, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean test mask; all light curves of a source fall on the same side."""
    ids = np.asarray(source_ids)
    uniq = np.unique(ids)
    rng = np.random.default_rng(seed)
    test_ids = rng.choice(uniq, size=int(round(test_fraction * len(uniq))), replace=False)
    return np.isin(ids, test_ids)


def paper_draw(labels: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """Source ids of the paper-design sample: every variable and as many standard stars drawn at random
    (all of them when there are fewer), as the paper drew 3,752 of its 263,670."""
    var = labels.loc[labels["label"] == 1, "source_id"].to_numpy()
    std = labels.loc[labels["label"] == 0, "source_id"].to_numpy()
    rng = np.random.default_rng(seed + 7919)
    if len(std) > len(var):
        std = rng.choice(std, size=len(var), replace=False)
    return np.concatenate([var, std])


def matched_subset(df: pd.DataFrame, keys: dict[str, float], seed: int = 0, label: str = "label") -> np.ndarray:
    """Rows of a class-balanced subset matched in ``keys`` (column -> bin width).

    Rows are binned on every key (``floor(value / width)``); in each bin the larger class is cut at
    random down to the smaller one's count, so both classes have the same histogram in every key at
    the bins' resolution (and the same count overall). Rows with a non-finite key are left out.
    Returns a boolean mask over ``df``'s rows.
    """
    n = len(df)
    ok = np.ones(n, bool)
    codes = []
    for col, width in keys.items():
        v = df[col].to_numpy(dtype=float)
        ok &= np.isfinite(v)
        codes.append(np.floor(np.where(np.isfinite(v), v, 0.0) / float(width)).astype(np.int64))
    y = df[label].to_numpy().astype(int)
    if not n or not ok.any():
        return np.zeros(n, bool)
    g = pd.MultiIndex.from_arrays(codes).factorize()[0] if len(codes) > 1 else pd.factorize(codes[0])[0]
    idx = np.flatnonzero(ok)
    rng = np.random.default_rng(seed)
    order = idx[rng.permutation(idx.size)]
    frame = pd.DataFrame({"g": g[order], "y": y[order]})
    rank = frame.groupby(["g", "y"]).cumcount().to_numpy()
    counts = frame.groupby(["g", "y"]).size().unstack(fill_value=0)
    k = counts.min(axis=1) if counts.shape[1] == 2 else pd.Series(0, index=counts.index)
    keep = rank < k.reindex(frame["g"]).to_numpy()
    mask = np.zeros(n, bool)
    mask[order[keep]] = True
    return mask


@dataclasses.dataclass
class EvaluationResult:
    table1: pd.DataFrame  # long: band, subset, parameter, scores at thresholds[0], auc, counts
    table2: pd.DataFrame  # the same at thresholds[1]
    auc: pd.DataFrame
    curves: pd.DataFrame  # threshold curves of the paper-design subset
    models: dict  # {band: {param: model}} of the paper-design subset
    n_train: int
    n_test: int
    #: paper-design test light curves flagged at thresholds[0], by var_type (standard stars: false positives)
    by_type: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def _fit_score(tr: pd.DataFrame, te: pd.DataFrame, parameters, columns, window, all_model, seed, n_threads):
    y_tr = tr["label"].to_numpy()
    models, scores = {}, {}
    for name in parameters:
        col = columns.get(name, name)
        m = VariabilityProbability(name, window, col).fit(tr[col].to_numpy(float), y_tr)
        models[name] = m
        scores[name] = m.predict(te[col].to_numpy(float))
    if all_model and len(np.unique(y_tr)) == 2:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        cols = [columns.get(p, p) for p in parameters]
        gbdt = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=seed,
                                              early_stopping=True, validation_fraction=0.15)
        # One OpenMP thread: ten features and thousands of rows gain nothing from more, and on a
        # shared machine spinning threads made the fit 20x slower.
        with threadpool_limits(limits=n_threads):
            gbdt.fit(tr[cols].to_numpy(float), y_tr)
            scores[ALL_MODEL] = gbdt.predict_proba(te[cols].to_numpy(float))[:, 1]
        models[ALL_MODEL] = gbdt
    return models, scores


def evaluate(features: pd.DataFrame, labels: pd.DataFrame, out_dir, parameters=PAPER_PARAMETERS,
             test_fraction: float = 0.2, seed: int = 0, window: float = 0.01, thresholds=(0.68, 0.95),
             bands: list[str] | None = None, all_model: bool = True, plots: bool = True,
             n_threads: int = 1, per_band: bool = True, subsets=SUBSETS, columns: dict | None = None,
             match_keys: dict | None = None) -> EvaluationResult:
    """Fit the eq. 9 model per parameter and band on 80 %, score the other 20 %, per sample subset.

    ``subsets``: ``all`` is the paper-design sample (:func:`paper_draw`); ``mag``, ``epochs`` and
    ``both`` are :func:`matched_subset` of all sources, drawn in the training and the test part
    separately and used for both fitting and scoring. ``columns`` maps parameters to feature columns
    (default :data:`PAPER_COLUMNS`: Iter-std after three iterations). ``per_band=False`` pools the
    bands into one model (the previous behaviour).
    """
    out_dir = Path(out_dir)
    columns = {**PAPER_COLUMNS, **(columns or {})}
    match_keys = {**MATCH_KEYS, **(match_keys or {})}
    lab_cols = ["source_id", "label"] + (["var_type"] if "var_type" in labels else [])
    df = features.merge(labels[lab_cols], on="source_id", how="inner", validate="many_to_one")
    if bands:
        df = df[df["band"].isin(bands)]
    if not len(df):
        raise ValueError("no light curves with labels (check that source_id matches between features and labels)")
    missing = sorted({columns.get(p, p) for p in parameters} - set(df.columns))
    if missing:
        raise ValueError(f"features lack {missing}; compute them with the indices stage")
    n_pts = df["n_used"] if "n_used" in df else df["n_good"]
    df = df.assign(log_n=np.log10(np.maximum(n_pts.to_numpy(dtype=float), 1.0)))
    if "median_mag" not in df:
        raise ValueError("features lack median_mag (the indices stage writes it); needed for matching")
    test = split_by_source(df["source_id"].to_numpy(), test_fraction, seed)
    in_paper = np.isin(df["source_id"].to_numpy(), paper_draw(labels, seed))
    band_list = list(bands) if bands else sorted(df["band"].astype(str).unique())
    groups = [(b, (df["band"] == b).to_numpy()) for b in band_list] if per_band else \
        [("+".join(band_list), np.ones(len(df), bool))]

    rows1, rows2, aucs, curves, all_models, by_type = [], [], [], [], {}, []
    n_tr_all = n_te_all = 0
    fig_data = {}
    for band, in_band in groups:
        for k, subset in enumerate(subsets):
            if subset == "all":
                sel_tr = in_band & in_paper & ~test
                sel_te = in_band & in_paper & test
            else:
                if subset not in match_keys:
                    raise ValueError(f"unknown subset {subset!r}; use 'all' or one of {sorted(match_keys)}")
                sel_tr, sel_te = np.zeros(len(df), bool), np.zeros(len(df), bool)
                for part, sel in ((~test, sel_tr), (test, sel_te)):
                    rows = np.flatnonzero(in_band & part)
                    sel[rows[matched_subset(df.iloc[rows], match_keys[subset], seed + 31 * k)]] = True
            tr, te = df[sel_tr], df[sel_te]
            y_te = te["label"].to_numpy()
            if len(np.unique(tr["label"])) < 2 or len(np.unique(y_te)) < 2:
                log.warning("band %s, subset %s: a class is missing (%d training, %d test curves); skipped",
                            band, subset, len(tr), len(te))
                continue
            models, scores = _fit_score(tr, te, parameters, columns, window, all_model, seed, n_threads)
            counts = {"n_train": len(tr), "n_test": len(te), "n_test_var": int(y_te.sum()),
                      "n_test_std": int(len(y_te) - y_te.sum())}
            for name, p in scores.items():
                _, _, a = roc(p, y_te)
                base = {"band": band, "subset": subset, "parameter": name}
                rows1.append({**base, **scores_at(p, y_te, thresholds[0]), "auc": a, **counts})
                rows2.append({**base, **scores_at(p, y_te, thresholds[1]), "auc": a, **counts})
                aucs.append({**base, "auc": a})
                if subset == "all":
                    curves.append(threshold_curves(p, y_te).assign(band=band, parameter=name))
            if subset == "all" and "var_type" in te:
                vt = te["var_type"].to_numpy()
                for name, p in scores.items():
                    hit = np.nan_to_num(np.asarray(p, float), nan=-1.0) >= thresholds[0]
                    for t in sorted(set(vt)):
                        sel = vt == t
                        by_type.append({"band": band, "parameter": name, "var_type": t, "n": int(sel.sum()),
                                        "fraction_flagged": float(hit[sel].mean())})
            if subset == "all":
                all_models[band] = {k_: m for k_, m in models.items() if k_ != ALL_MODEL}
                fig_data[band] = (tr, scores, y_te, models.get(ALL_MODEL))
                n_tr_all += len(tr)
                n_te_all += len(te)
    if not rows1:
        raise ValueError("no band/subset had both classes in training and test")
    res = EvaluationResult(pd.DataFrame(rows1), pd.DataFrame(rows2), pd.DataFrame(aucs),
                           pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(), all_models,
                           n_tr_all, n_te_all, pd.DataFrame(by_type))

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, t in (("table1.csv", res.table1), ("table2.csv", res.table2), ("auc.csv", res.auc),
                    ("curves.csv", res.curves), ("recall_by_type.csv", res.by_type)):
        with atomic_path(out_dir / name) as tmp:
            t.to_csv(tmp, index=False, float_format="%.4f")
    if all_models:
        save_models(all_models, out_dir / "models" / "probability_models.json")
    gbdts = {b: d[3] for b, d in fig_data.items() if d[3] is not None}
    if gbdts:
        import joblib

        with atomic_path(out_dir / "models" / "all_parameters_gbdt.joblib") as tmp:
            joblib.dump({"models": gbdts, "parameters": list(parameters),
                         "columns": [columns.get(p, p) for p in parameters]}, tmp)
    write_text_atomic(out_dir / "tables.md", tables_markdown(res, thresholds))
    if plots:
        for band, (tr, scores, y_te, _) in fig_data.items():
            plot_figures(res, band, tr, scores, y_te, out_dir / "figures", parameters)
    return res


def _fmt(v, nd=2):
    return "NaN" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def tables_markdown(res: EvaluationResult, thresholds=(0.68, 0.95)) -> str:
    """Per band: Table 1 (ours, the paper's, AUC, and accuracy/AUC in each matched subset); Table 2."""
    out = []
    t1, t2 = res.table1, res.table2
    subsets = [s for s in SUBSETS if s in set(t1.subset)]
    matched = [s for s in subsets if s != "all"]
    names = {"mag": "magnitude-matched", "epochs": "epoch-matched", "both": "magnitude- and epoch-matched"}
    for band in dict.fromkeys(t1.band):
        b1 = t1[t1.band == band]
        a = b1[b1.subset == "all"]
        if not len(a):
            continue
        n = a.iloc[0]
        se = 0.5 / np.sqrt(max(n.n_test, 1))
        out.append(f"**Table 1, {band} band** (P ≥ {thresholds[0]}; paper-design sample: {int(n.n_test)} test light "
                   f"curves, {int(n.n_test_var)} variables / {int(n.n_test_std)} standard stars, accuracy ±{se:.2f} "
                   "binomial 1σ)\n")
        head = "| parameter | paper: acc / rec / prec / F1 | ours: acc / rec / prec / F1 | AUC |"
        sep = "|---|---|---|---|"
        for s in matched:
            head += f" {names[s]}: acc / AUC |"
            sep += "---|"
        out += [head, sep]
        for _, r in a.iterrows():
            ref = PAPER_TABLE1.get(r.parameter)
            paper = " / ".join(_fmt(x) for x in ref) if ref else "–"
            ours = " / ".join(_fmt(r[k]) for k in ("accuracy", "recall", "precision", "f1"))
            line = f"| {r.parameter} | {paper} | {ours} | {_fmt(r.auc)} |"
            for s in matched:
                m = b1[(b1.subset == s) & (b1.parameter == r.parameter)]
                line += f" {_fmt(m.accuracy.iloc[0])} / {_fmt(m.auc.iloc[0])} |" if len(m) else " – |"
            out.append(line)
        if matched:
            sizes = []
            for s in matched:
                m = b1[b1.subset == s]
                if len(m):
                    sizes.append(f"{names[s]} {int(m.n_test.iloc[0])} (±{0.5 / np.sqrt(max(m.n_test.iloc[0], 1)):.2f})")
            out.append("\nMatched test subsets (light curves, half variables; accuracy ± binomial 1σ): "
                       + "; ".join(sizes) + ".")
        out.append("")
        bt = res.by_type[(res.by_type.band == band)] if len(res.by_type) else res.by_type
        if len(bt):
            out.append("")
            for name in ("Q2", "iter_std", ALL_MODEL):
                x = bt[bt.parameter == name]
                if len(x):
                    out.append(f"Flagged at P ≥ {thresholds[0]} by {name}, per type (test light curves): " + ", ".join(
                        f"{r.var_type} {r.fraction_flagged:.2f} ({r.n})" for r in x.itertuples()) + ".")
        out.append("")
        b2 = t2[(t2.band == band) & (t2.subset == "all")]
        out.append(f"**Table 2, {band} band** (P ≥ {thresholds[1]}; paper-design sample; ours / paper)\n")
        out += ["| parameter | accuracy | recall | precision | F1 |", "|---|---|---|---|---|"]
        for _, r in b2.iterrows():
            ref = PAPER_TABLE2.get(r.parameter, (None,) * 4)
            cells = [f"{_fmt(r[k])} / {_fmt(ref[i]) if ref[i] is not None else '–'}"
                     for i, k in enumerate(("accuracy", "recall", "precision", "f1"))]
            out.append(f"| {r.parameter} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot_figures(res: EvaluationResult, band: str, train: pd.DataFrame, scores: dict, y_test, fig_dir: Path,
                 parameters) -> None:
    from skyvar.lightcurves.plots import LABELS, LOG_INDICES
    from skyvar.utils.plotting import subplots

    fig_dir = Path(fig_dir)
    models = res.models[band]
    # Figure 6: P against each parameter.
    ncol = 5
    nrow = int(np.ceil(len(parameters) / ncol))
    fig, axes = subplots(nrow, ncol, figsize=(3.2 * ncol, 2.7 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, parameters):
        m = models[name]
        x, p = m.x, m.p
        if name in LOG_INDICES and np.any(x > 0):
            keep = x > 0
            x, p = x[keep], p[keep]
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        lo, hi = np.percentile(x, [0.5, 99.5]) if len(x) > 10 else (x.min(), x.max())
        sel = (x >= lo) & (x <= hi)
        ax.plot(x[sel], p[sel], lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(LABELS.get(name, name))
        ax.set_ylabel("P(variable)")
    for ax in list(axes.flat)[len(parameters):]:
        ax.axis("off")
    fig.suptitle(f"Figure 6 ({band}): variability probability vs parameter (eq. 9, training 80 %)")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.12, top=0.9, wspace=0.35, hspace=0.45)
    savefig_atomic(fig, fig_dir / f"figure6_probability_{band}.png", bbox_inches=None)

    # Figure 7: the four scores against the probability threshold (the paper shows Q).
    c_all = res.curves[res.curves.band == band]
    for name in [parameters[0], "Q2", ALL_MODEL]:
        if name not in scores:
            continue
        c = c_all[c_all.parameter == name]
        fig, ax = subplots(figsize=(4.5, 3.3))
        for k in ("accuracy", "precision", "recall", "f1"):
            ax.plot(c.threshold, c[k], label=k)
        ax.set_xlabel("probability threshold")
        ax.set_ylabel("score")
        ax.set_title(f"Figure 7: {name} ({band})")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.9)
        safe = name.replace(" ", "_").replace("(", "").replace(")", "")
        savefig_atomic(fig, fig_dir / f"figure7_{safe}_{band}.png", bbox_inches=None)

    # Figure 8: ROC curves.
    fig, ax = subplots(figsize=(5.2, 4.6))
    for name, p in scores.items():
        fpr, tpr, a = roc(p, y_test)
        ax.plot(fpr, tpr, lw=2.0 if name in ("Q2", ALL_MODEL) else 1.0,
                ls="--" if name == ALL_MODEL else "-", label=f"{name} (AUC {a:.2f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Figure 8: ROC ({band}, paper-design sample)")
    ax.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.93)
    savefig_atomic(fig, fig_dir / f"figure8_roc_{band}.png", bbox_inches=None)


# ------------------------------------------------------------------------------ the sample (Figs. 2-5)
def histogram_peak(values, dex: float = 0.05) -> float:
    """Centre of the most populated bin of ``log10(values)`` in ``dex``-wide bins (positive values)."""
    v = np.asarray(values, float)
    v = np.log10(v[np.isfinite(v) & (v > 0)])
    if not v.size:
        return float("nan")
    edges = np.arange(np.floor(v.min() / dex) * dex, v.max() + dex, dex)
    if edges.size < 2:
        return float(10 ** v.mean())
    h, e = np.histogram(v, edges)
    i = int(np.argmax(h))
    return float(10 ** (0.5 * (e[i] + e[i + 1])))


def sample_diagnostics(lc: pd.DataFrame, labels: pd.DataFrame, mask_flags: int | None = None) -> pd.DataFrame:
    """One row per light curve with what the paper's Figures 2, 3 and 5 show.

    ``n_det`` (points used: not flagged, finite), ``mean_mag``; ``N1``, ``N2``, ``N3`` — the fraction of
    the points within 1, 2, 3 reported σ of the curve's median (our reading of Fig. 3's "sigma level":
    the paper says the standard stars' magnitude errors lie "within the 3 sigma level (N_3)"); and
    ``iter_std_1..3`` — the std after 1, 2, 3 rounds of 2σ clipping (Fig. 5).
    """
    from skyvar.lightcurves.batch import LightCurveBatch
    from skyvar.lightcurves.indices import variability_indices
    from skyvar.pipeline.lightcurves import DEFAULT_MASK_FLAGS

    mask_flags = DEFAULT_MASK_FLAGS if mask_flags is None else mask_flags
    good = lc[((lc["flag"].to_numpy() & int(mask_flags)) == 0) & np.isfinite(lc["mag"].to_numpy())
              & np.isfinite(lc["mag_err"].to_numpy()) & (lc["mag_err"].to_numpy() > 0)]
    b = LightCurveBatch.from_long(good)
    med = np.nanmedian(np.where(b.mask, b.mag, np.nan), axis=1)
    z = np.abs(b.mag - med[:, None]) / b.mag_err
    n = b.mask.sum(1)
    out = pd.DataFrame({"source_id": b.source_id, "band": b.band, "n_det": n,
                        "mean_mag": np.nanmean(np.where(b.mask, b.mag, np.nan), axis=1)})
    for k in (1, 2, 3):
        out[f"N{k}"] = ((z <= k) & b.mask).sum(1) / np.maximum(n, 1)
    for k in (1, 2, 3):
        r = variability_indices(b.mag, b.mag_err, b.mask, which=("iter_std",), max_clip_iters=k)
        out[f"iter_std_{k}"] = r["iter_std"]
    return out.merge(labels[["source_id", "label", "var_type"]], on="source_id", how="left")


def sample_markdown(diag: pd.DataFrame) -> str:
    """The sample in numbers, beside what the paper's text says of its Figures 2, 3 and 5."""
    lines = ["| band | class | light curves | detections: median (16–84 %) | mean mag: median (16–84 %) | "
             "N3 ≥ 0.95 | N3 ≥ 0.99 | Iter-std peak after 1 / 2 / 3 iterations (mag) |",
             "|---|---|---|---|---|---|---|---|"]
    for band in sorted(diag.band.unique()):
        for lab, name in ((1, "variables"), (0, "standard stars")):
            d = diag[(diag.band == band) & (diag.label == lab)]
            if not len(d):
                continue
            nd, mm = (np.percentile(d[c], [50, 16, 84]) for c in ("n_det", "mean_mag"))
            peaks = " / ".join(f"{histogram_peak(d[f'iter_std_{k}']):.4f}" for k in (1, 2, 3))
            lines.append(f"| {band} | {name} | {len(d)} | {nd[0]:.0f} ({nd[1]:.0f}–{nd[2]:.0f}) | "
                         f"{mm[0]:.2f} ({mm[1]:.2f}–{mm[2]:.2f}) | {np.mean(d.N3 >= 0.95):.2f} | "
                         f"{np.mean(d.N3 >= 0.99):.2f} | {peaks} |")
    lines.append("")
    lines.append("Paper (§2.2): standard stars have significantly fewer detections than the variables and most "
                 "are faint (Fig. 2); basically all standard stars have their errors within the 3σ level (Fig. 3); "
                 f"the variables' Iter-std peaks at about {PAPER_FIG5_PEAK} mag after three iterations (Fig. 5).")
    by_type = diag[diag.label == 1].groupby(["band", "var_type"])["iter_std_3"].median().unstack(0)
    if len(by_type):
        lines.append("")
        lines.append("Median Iter-std (3 iterations) of the variables by type: " + "; ".join(
            f"{t} " + ", ".join(f"{b} {v:.3f}" for b, v in r.items()) for t, r in by_type.iterrows()) + ".")
    return "\n".join(lines) + "\n"


def plot_sample(diag: pd.DataFrame, features: pd.DataFrame, labels: pd.DataFrame, fig_dir: Path) -> None:
    """Figures 2–5 of the paper for our sample: detections and magnitudes, sigma levels, Q and Q2, Iter-std."""
    from skyvar.utils.plotting import subplots

    fig_dir = Path(fig_dir)
    bands = sorted(diag.band.unique())
    cls = ((1, "variables", "tab:red"), (0, "standard stars", "tab:blue"))
    fig, axes = subplots(len(bands), 2, figsize=(9, 3.0 * len(bands)), squeeze=False)
    for i, band in enumerate(bands):
        d = diag[diag.band == band]
        for lab, name, c in cls:
            x = d[d.label == lab]
            axes[i, 0].hist(x.n_det, bins=np.arange(0, d.n_det.max() + 10, 5), histtype="step", color=c, label=name)
            axes[i, 1].hist(x.mean_mag, bins=np.arange(12.5, 22.5, 0.25), histtype="step", color=c, label=name)
        axes[i, 0].set_xlabel(f"detections ({band})")
        axes[i, 1].set_xlabel(f"mean magnitude ({band})")
        axes[i, 0].legend(fontsize=8)
    fig.suptitle("Figure 2: detections and mean magnitude by class")
    fig.tight_layout()
    savefig_atomic(fig, fig_dir / "figure2_sample.png")

    fig, axes = subplots(1, 3, figsize=(11, 3.2))
    d = diag[diag.band == bands[-1]]
    for ax, k in zip(axes, (1, 2, 3)):
        for lab, name, c in cls:
            ax.hist(d[d.label == lab][f"N{k}"], bins=np.linspace(0, 1, 41), histtype="step", color=c, label=name)
        ax.set_xlabel(f"N{k}: fraction of points within {k}σ ({bands[-1]})")
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Figure 3: sigma levels")
    fig.tight_layout()
    savefig_atomic(fig, fig_dir / "figure3_sigma_levels.png")

    f = features.merge(labels[["source_id", "label"]], on="source_id")
    fig, axes = subplots(1, 2, figsize=(9, 3.2))
    for ax, col in zip(axes, ("Q", "Q2")):
        v = f[col].to_numpy(float)
        bins = np.logspace(np.log10(max(np.nanpercentile(v, 0.5), 1e-2)), np.log10(np.nanpercentile(v, 99.5)), 50)
        for lab, name, c in cls:
            ax.hist(f[f.label == lab][col], bins=bins, histtype="step", color=c, label=name)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"{col} (g and r)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Figure 4: Q and Q2 by class")
    fig.tight_layout()
    savefig_atomic(fig, fig_dir / "figure4_Q_Q2.png")

    fig, axes = subplots(1, len(bands), figsize=(4.5 * len(bands), 3.2), squeeze=False)
    for ax, band in zip(axes[0], bands):
        d = diag[(diag.band == band) & (diag.label == 1)]
        bins = np.logspace(-2.5, 0, 51)
        for k, ls in zip((1, 2, 3), (":", "--", "-")):
            pk = histogram_peak(d[f"iter_std_{k}"])
            ax.hist(d[f"iter_std_{k}"], bins=bins, histtype="step", ls=ls, label=f"iteration {k} (peak {pk:.4f})")
        ax.axvline(PAPER_FIG5_PEAK, color="k", lw=0.8, label=f"paper's peak {PAPER_FIG5_PEAK}")
        ax.set_xscale("log")
        ax.set_xlabel(f"Iter-std of the variables ({band}, mag)")
        ax.legend(fontsize=7)
    fig.suptitle("Figure 5: Iter-std over three iterations")
    fig.tight_layout()
    savefig_atomic(fig, fig_dir / "figure5_iter_std.png")


# --------------------------------------------------------------------------------------- reproduce
@dataclasses.dataclass
class ReproduceConfig:
    out_dir: str = "results/variability"
    seed: int = 0
    test_fraction: float = 0.2
    window: float = 0.01
    bands: list = dataclasses.field(default_factory=lambda: ["g", "r"])
    per_band: bool = True
    # Standard stars simulated per variable: the paper-design sample draws as many as there are
    # variables; the matched subsets choose from all of them.
    pool_factor: int = 10
    subsets: list = dataclasses.field(default_factory=lambda: list(SUBSETS))
    all_model: bool = True
    plots: bool = True
    sim: dict = dataclasses.field(default_factory=dict)  # keys of skyvar.sim.ztf.ZTFSimConfig


def reproduce(cfg: ReproduceConfig) -> EvaluationResult:
    """Simulate the labelled sample, compute the indices, describe the sample, evaluate (steps resume)."""
    from skyvar.lightcurves.indices import IndicesStage
    from skyvar.lightcurves.store import read_store
    from skyvar.pipeline.lightcurves import LightCurvePipeline, read_features
    from skyvar.sim.ztf import ZTFSimConfig, simulate_to_disk
    from skyvar.utils.config import config_from_dotlist

    out = Path(cfg.out_dir)
    base = config_from_dotlist(ZTFSimConfig, base={"seed": cfg.seed, **dict(cfg.sim)})
    sim_cfg = dataclasses.replace(base, out_dir=str(out / "sim"), n_constant=int(base.n_constant * cfg.pool_factor))
    cfg_file = out / "sim" / "config.json"
    if not (cfg_file.exists() and json.loads(cfg_file.read_text()) == json.loads(json.dumps(dataclasses.asdict(sim_cfg)))):
        simulate_to_disk(sim_cfg)
    else:
        log.info("simulation in %s is up to date", out / "sim")
    LightCurvePipeline(input=str(out / "sim" / "store"), out_dir=str(out / "features"),
                       stages=[IndicesStage(plots=cfg.plots)], progress=False).run()
    feats = read_features(out / "features")
    labels = pd.read_parquet(out / "sim" / "labels.parquet")
    # The sample as the paper's Figures 2-5 show it (paper-design draw only).
    keep = paper_draw(labels, cfg.seed)
    lab_p = labels[labels.source_id.isin(keep)]
    diag = sample_diagnostics(read_store(out / "sim" / "store").query("source_id in @keep"), lab_p)
    with atomic_path(out / "sample_curves.parquet") as tmp:
        diag.to_parquet(tmp, index=False)
    write_text_atomic(out / "sample.md", sample_markdown(diag))
    if cfg.plots:
        plot_sample(diag, feats[feats.source_id.isin(keep)], lab_p, out / "figures")
    res = evaluate(feats, labels, out, test_fraction=cfg.test_fraction, seed=cfg.seed, window=cfg.window,
                   bands=list(cfg.bands), all_model=cfg.all_model, plots=cfg.plots, per_band=cfg.per_band,
                   subsets=list(cfg.subsets))
    log.info("tables written to %s", out / "tables.md")
    return res


DESIGNS = ("none", "mag", "epochs", "both")


def confound(out_dir: str, seed: int = 0, sim: dict | None = None, pool_factor: int = 10, plots: bool = False) -> pd.DataFrame:
    """Table 1 (accuracy, AUC) when the standard stars get the variables' magnitudes / cadence / both.

    Runs :func:`reproduce` for ``sim.standards_like`` in :data:`DESIGNS` (the paper design with a
    ``pool_factor`` pool, the controls without) and writes ``out_dir/confound.md`` and
    ``confound.csv``: per band and parameter, the paper-design accuracy, the accuracy of each
    control design, and the matched-subset accuracies of the paper-design run beside them.
    """
    out = Path(out_dir)
    rows = []
    for design in DESIGNS:
        rc = ReproduceConfig(out_dir=str(out / f"design_{design}"), seed=seed, plots=plots,
                             pool_factor=pool_factor if design == "none" else 1,
                             subsets=list(SUBSETS) if design == "none" else ["all"],
                             sim={**(sim or {}), "standards_like": design})
        res = reproduce(rc)
        t = res.table1.assign(design=design)
        rows.append(t)
    t = pd.concat(rows, ignore_index=True)
    with atomic_path(out / "confound.csv") as tmp:
        t.to_csv(tmp, index=False, float_format="%.4f")
    write_text_atomic(out / "confound.md", confound_markdown(t))
    return t


def confound_markdown(t: pd.DataFrame) -> str:
    lines = []
    for band in dict.fromkeys(t.band):
        d = t[t.band == band]
        lines.append(f"**{band} band**: accuracy at P ≥ 0.68 (AUC) of the paper-design sample and of samples whose "
                     "standard stars are given the variables' magnitudes, cadence, or both; right: the matched "
                     "subsets of the paper-design run.\n")
        lines.append("| parameter | paper design | std. stars at variables' mags | … variables' cadence | … both | "
                     "shift (max) | matched subsets: mag / epochs / both |")
        lines.append("|---|---|---|---|---|---|---|")
        base = d[(d.design == "none") & (d.subset == "all")].set_index("parameter")
        for p in base.index:
            cells, accs = [], []
            for design in DESIGNS:
                r = d[(d.design == design) & (d.subset == "all") & (d.parameter == p)]
                if len(r):
                    accs.append(r.accuracy.iloc[0])
                    cells.append(f"{r.accuracy.iloc[0]:.2f} ({r.auc.iloc[0]:.2f})")
                else:
                    cells.append("–")
            shift = max(abs(a - accs[0]) for a in accs) if accs else np.nan
            m = []
            for s in ("mag", "epochs", "both"):
                r = d[(d.design == "none") & (d.subset == s) & (d.parameter == p)]
                m.append(f"{r.accuracy.iloc[0]:.2f}" if len(r) else "–")
            lines.append(f"| {p} | " + " | ".join(cells) + f" | {shift:.2f} | " + " / ".join(m) + " |")
        lines.append("")
    return "\n".join(lines)


class PaperReproduction:
    """``python infer.py pipeline=variability_paper out_dir=D``: :func:`reproduce` from Hydra."""

    def __init__(self, out_dir: str, seed: int = 0, test_fraction: float = 0.2, window: float = 0.01,
                 bands=("g", "r"), all_model: bool = True, plots: bool = True, sim: dict | None = None,
                 per_band: bool = True, pool_factor: int = 10, subsets=SUBSETS):
        self.cfg = ReproduceConfig(out_dir=str(out_dir), seed=int(seed), test_fraction=test_fraction, window=window,
                                   bands=list(bands), all_model=all_model, plots=plots, sim=dict(sim or {}),
                                   per_band=bool(per_band), pool_factor=int(pool_factor), subsets=list(subsets))

    def run(self) -> dict:
        res = reproduce(self.cfg)
        return {"table1": res.table1.to_dict("records"), "auc": res.auc.to_dict("records"),
                "tables": str(Path(self.cfg.out_dir) / "tables.md")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("reproduce", "evaluate", "confound"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    from skyvar.utils.config import config_from_dotlist

    if cmd == "reproduce":
        reproduce(config_from_dotlist(ReproduceConfig, rest))
        return 0
    if cmd == "confound":
        rc = config_from_dotlist(ReproduceConfig, rest)
        confound(rc.out_dir, rc.seed, rc.sim, rc.pool_factor, rc.plots)
        return 0
    kv = dict(a.split("=", 1) for a in rest)
    missing = [k for k in ("features", "labels", "out_dir") if k not in kv]
    if missing:
        print(f"evaluate needs {missing}", file=sys.stderr)
        return 2
    from skyvar.pipeline.lightcurves import read_features

    evaluate(read_features(kv["features"]), pd.read_parquet(kv["labels"]), kv["out_dir"],
             seed=int(kv.get("seed", 0)), test_fraction=float(kv.get("test_fraction", 0.2)),
             window=float(kv.get("window", 0.01)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
