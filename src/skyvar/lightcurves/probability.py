"""The statistical variability-probability model of Xu et al. (§2.3, eqs. 7–9) and its evaluation.

Model (one per variability parameter): sort the training values ``V_i`` with their labels ``L_i``
(1 variable, 0 not); ``P(V_i)`` is the fraction of variables among the training objects whose rank
lies within ``± window·N`` of ``i`` (the paper: 1 % of the sample on each side, truncated at the ends).
New values get ``P`` by linear interpolation in ``V`` (clamped at the ends; equal training values
share their mean ``P``); NaN values get NaN. Models save to / load from JSON.

Evaluation as the paper: an 80/20 split (by source, so a star's g and r curves never straddle it),
100 probability thresholds from 0 to 1 with accuracy, precision, recall and F1 at each (Figure 7),
ROC curves and their areas (Figure 8); Tables 1 and 2 are the four scores at ``P ≥ 0.68`` and
``P ≥ 0.95``. Beyond the paper: one model on all ten parameters together (scikit-learn histogram
gradient boosting, NaN-aware), scored the same way in the same tables.

Commands::

    python -m skyvar.lightcurves.probability reproduce out_dir=D [seed=0 sim.n_variables=3752 ...]
    python -m skyvar.lightcurves.probability evaluate features=F.parquet labels=L.parquet out_dir=D
    python infer.py pipeline=variability_paper out_dir=D          # same as `reproduce`

``reproduce`` simulates the labelled ZTF-like sample (:mod:`skyvar.sim.ztf`), computes the indices
with the light-curve pipeline and evaluates; every step resumes. Outputs: ``D/tables.md`` (ours beside
the paper's), ``D/table1.csv``, ``D/table2.csv``, ``D/auc.csv``, ``D/curves.csv``, figures
``D/figures/figure6_probability.png``, ``figure7_<param>.png``, ``figure8_roc.png``, and the fitted
models in ``D/models/``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

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
ALL_MODEL = "all (GBDT)"


# ------------------------------------------------------------------------------------------ model
class VariabilityProbability:
    """P(variable | one parameter's value), Xu et al. eqs. 7–9."""

    def __init__(self, parameter: str = "Q2", window: float = 0.01):
        self.parameter = parameter
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
        return {"kind": "xu2022_eq9", "parameter": self.parameter, "window": self.window, "n_train": self.n_train,
                "n_dropped": self.n_dropped, "x": self.x.tolist(), "p": self.p.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> VariabilityProbability:
        m = cls(d["parameter"], d["window"])
        m.x, m.p = np.asarray(d["x"], float), np.asarray(d["p"], float)
        m.n_train, m.n_dropped = int(d.get("n_train", len(m.x))), int(d.get("n_dropped", 0))
        return m

    def save(self, path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path) -> VariabilityProbability:
        return cls.from_dict(json.loads(Path(path).read_text()))


def save_models(models: dict[str, VariabilityProbability], path) -> Path:
    return write_json_atomic(path, {k: m.to_dict() for k, m in models.items()})


def load_models(path) -> dict[str, VariabilityProbability]:
    return {k: VariabilityProbability.from_dict(d) for k, d in json.loads(Path(path).read_text()).items()}


class ProbabilityStage:
    """Light-curve pipeline stage ``probability``: ``P_<param>`` columns from saved models (finalize only;
    put it after the indices stage). ``models`` is a JSON file written by :func:`save_models`."""

    name = "probability"

    def __init__(self, models: str, parameters: list[str] | None = None):
        self.models = str(models)
        self.parameters = list(parameters) if parameters else None

    def __call__(self, batch, out_dir):
        return pd.DataFrame(index=range(len(batch)))

    def finalize(self, features: pd.DataFrame, out_dir) -> pd.DataFrame:
        models = load_models(self.models)
        features = features.copy()
        for name, m in models.items():
            if self.parameters is None or name in self.parameters:
                if name not in features:
                    raise ValueError(f"probability model for {name!r} but no such column; put the indices stage first")
                features[f"P_{name}"] = m.predict(features[name].to_numpy(dtype=float))
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
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr, float(roc_auc_score(y, s))


def split_by_source(source_ids, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Boolean test mask; all light curves of a source fall on the same side."""
    ids = np.asarray(source_ids)
    uniq = np.unique(ids)
    rng = np.random.default_rng(seed)
    test_ids = rng.choice(uniq, size=int(round(test_fraction * len(uniq))), replace=False)
    return np.isin(ids, test_ids)


@dataclasses.dataclass
class EvaluationResult:
    table1: pd.DataFrame
    table2: pd.DataFrame
    auc: pd.DataFrame
    curves: pd.DataFrame
    models: dict
    n_train: int
    n_test: int


def evaluate(features: pd.DataFrame, labels: pd.DataFrame, out_dir, parameters=PAPER_PARAMETERS,
             test_fraction: float = 0.2, seed: int = 0, window: float = 0.01, thresholds=(0.68, 0.95),
             bands: list[str] | None = None, all_model: bool = True, plots: bool = True,
             n_threads: int = 1) -> EvaluationResult:
    """Fit the eq. 9 model per parameter (and the all-parameter model) on 80 %, score the other 20 %."""
    out_dir = Path(out_dir)
    df = features.merge(labels[["source_id", "label"]], on="source_id", how="inner", validate="many_to_one")
    if bands:
        df = df[df["band"].isin(bands)]
    if not len(df):
        raise ValueError("no light curves with labels (check that source_id matches between features and labels)")
    missing = [p for p in parameters if p not in df]
    if missing:
        raise ValueError(f"features lack {missing}; compute them with the indices stage")
    test = split_by_source(df["source_id"].to_numpy(), test_fraction, seed)
    tr, te = df[~test], df[test]
    y_tr, y_te = tr["label"].to_numpy(), te["label"].to_numpy()
    log.info("probability model: %d training and %d test light curves (%d / %d sources)", len(tr), len(te),
             tr.source_id.nunique(), te.source_id.nunique())
    models, scores = {}, {}
    for name in parameters:
        m = VariabilityProbability(name, window).fit(tr[name].to_numpy(float), y_tr)
        models[name] = m
        scores[name] = m.predict(te[name].to_numpy(float))
    gbdt = None
    if all_model:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        X_tr = tr[list(parameters)].to_numpy(float)
        gbdt = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=seed,
                                              early_stopping=True, validation_fraction=0.15)
        # One OpenMP thread: ten features and thousands of rows gain nothing from more, and on a
        # shared machine spinning threads made the fit 20x slower.
        with threadpool_limits(limits=n_threads):
            gbdt.fit(X_tr, y_tr)
            scores[ALL_MODEL] = gbdt.predict_proba(te[list(parameters)].to_numpy(float))[:, 1]

    rows1, rows2, aucs, curves = [], [], [], []
    for name, p in scores.items():
        rows1.append({"parameter": name, **scores_at(p, y_te, thresholds[0])})
        rows2.append({"parameter": name, **scores_at(p, y_te, thresholds[1])})
        fpr, tpr, a = roc(p, y_te)
        aucs.append({"parameter": name, "auc": a})
        curves.append(threshold_curves(p, y_te).assign(parameter=name))
    res = EvaluationResult(pd.DataFrame(rows1), pd.DataFrame(rows2), pd.DataFrame(aucs),
                           pd.concat(curves, ignore_index=True), models, len(tr), len(te))

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, t in (("table1.csv", res.table1), ("table2.csv", res.table2), ("auc.csv", res.auc),
                    ("curves.csv", res.curves)):
        with atomic_path(out_dir / name) as tmp:
            t.to_csv(tmp, index=False, float_format="%.4f")
    save_models(models, out_dir / "models" / "probability_models.json")
    if gbdt is not None:
        import joblib

        with atomic_path(out_dir / "models" / "all_parameters_gbdt.joblib") as tmp:
            joblib.dump({"model": gbdt, "parameters": list(parameters)}, tmp)
    write_text_atomic(out_dir / "tables.md", tables_markdown(res, thresholds))
    if plots:
        plot_figures(res, tr, y_tr, scores, y_te, out_dir / "figures", parameters)
    return res


def tables_markdown(res: EvaluationResult, thresholds=(0.68, 0.95)) -> str:
    def fmt(v):
        return "NaN" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"

    out = []
    for title, table, paper, thr in (("Table 1", res.table1, PAPER_TABLE1, thresholds[0]),
                                     ("Table 2", res.table2, PAPER_TABLE2, thresholds[1])):
        out.append(f"**{title}** (P ≥ {thr}; ours / paper; {res.n_test} test light curves)\n")
        out.append("| parameter | accuracy | recall | precision | F1 | AUC (ours) |")
        out.append("|---|---|---|---|---|---|")
        auc = dict(zip(res.auc.parameter, res.auc.auc))
        for _, r in table.iterrows():
            ref = paper.get(r.parameter, (None,) * 4)
            cells = [f"{fmt(r[k])} / {fmt(ref[i]) if ref[i] is not None else '–'}"
                     for i, k in enumerate(("accuracy", "recall", "precision", "f1"))]
            out.append(f"| {r.parameter} | " + " | ".join(cells) + f" | {auc[r.parameter]:.2f} |")
        out.append("")
    return "\n".join(out)


def plot_figures(res: EvaluationResult, train: pd.DataFrame, y_train, scores: dict, y_test, fig_dir: Path,
                 parameters) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from skyvar.lightcurves.plots import LABELS, LOG_INDICES

    fig_dir = Path(fig_dir)
    # Figure 6: P against each parameter, with the training points' labels as a rug.
    ncol = 5
    nrow = int(np.ceil(len(parameters) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.7 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, parameters):
        m = res.models[name]
        x, p = m.x, m.p
        if name in LOG_INDICES and np.any(x > 0):
            keep = x > 0
            x, p = x[keep], p[keep]
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
        lo, hi = np.percentile(x, [0.5, 99.5]) if len(x) > 10 else (x.min(), x.max())
        sel = (x >= lo) & (x <= hi)
        ax.plot(x[sel], p[sel], lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(LABELS.get(name, name))
        ax.set_ylabel("P(variable)")
    for ax in list(axes.flat)[len(parameters):]:
        ax.axis("off")
    fig.suptitle("Figure 6: variability probability vs parameter (eq. 9, training 80 %)")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.12, top=0.9, wspace=0.35, hspace=0.45)
    savefig_atomic(fig, fig_dir / "figure6_probability.png", bbox_inches=None)
    plt.close(fig)

    # Figure 7: the four scores against the probability threshold (the paper shows Q).
    for name in [parameters[0], "Q2", ALL_MODEL]:
        if name not in scores:
            continue
        c = res.curves[res.curves.parameter == name]
        fig, ax = plt.subplots(figsize=(4.5, 3.3))
        for k in ("accuracy", "precision", "recall", "f1"):
            ax.plot(c.threshold, c[k], label=k)
        ax.set_xlabel("probability threshold")
        ax.set_ylabel("score")
        ax.set_title(f"Figure 7: {name}")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.9)
        safe = name.replace(" ", "_").replace("(", "").replace(")", "")
        savefig_atomic(fig, fig_dir / f"figure7_{safe}.png", bbox_inches=None)
        plt.close(fig)

    # Figure 8: ROC curves.
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, p in scores.items():
        fpr, tpr, a = roc(p, y_test)
        ax.plot(fpr, tpr, lw=2.0 if name in ("Q2", ALL_MODEL) else 1.0,
                ls="--" if name == ALL_MODEL else "-", label=f"{name} (AUC {a:.2f})")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Figure 8: ROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.11, top=0.93)
    savefig_atomic(fig, fig_dir / "figure8_roc.png", bbox_inches=None)
    plt.close(fig)


# --------------------------------------------------------------------------------------- reproduce
@dataclasses.dataclass
class ReproduceConfig:
    out_dir: str = "results/variability"
    seed: int = 0
    test_fraction: float = 0.2
    window: float = 0.01
    bands: list = dataclasses.field(default_factory=lambda: ["g", "r"])
    all_model: bool = True
    plots: bool = True
    sim: dict = dataclasses.field(default_factory=dict)  # keys of skyvar.sim.ztf.ZTFSimConfig


def reproduce(cfg: ReproduceConfig) -> EvaluationResult:
    """Simulate the labelled sample, compute the indices, evaluate (each step resumes)."""
    from skyvar.lightcurves.indices import IndicesStage
    from skyvar.pipeline.lightcurves import LightCurvePipeline, read_features
    from skyvar.sim.ztf import ZTFSimConfig, simulate_to_disk
    from skyvar.utils.config import config_from_dotlist

    out = Path(cfg.out_dir)
    sim_cfg = config_from_dotlist(ZTFSimConfig, base={"seed": cfg.seed, **dict(cfg.sim), "out_dir": str(out / "sim")})
    cfg_file = out / "sim" / "config.json"
    if not (cfg_file.exists() and json.loads(cfg_file.read_text()) == json.loads(json.dumps(dataclasses.asdict(sim_cfg)))):
        simulate_to_disk(sim_cfg)
    else:
        log.info("simulation in %s is up to date", out / "sim")
    LightCurvePipeline(input=str(out / "sim" / "store"), out_dir=str(out / "features"),
                       stages=[IndicesStage(plots=cfg.plots)], progress=False).run()
    feats = read_features(out / "features")
    labels = pd.read_parquet(out / "sim" / "labels.parquet")
    res = evaluate(feats, labels, out, test_fraction=cfg.test_fraction, seed=cfg.seed, window=cfg.window,
                   bands=list(cfg.bands), all_model=cfg.all_model, plots=cfg.plots)
    log.info("tables written to %s", out / "tables.md")
    return res


class PaperReproduction:
    """``python infer.py pipeline=variability_paper out_dir=D``: :func:`reproduce` from Hydra."""

    def __init__(self, out_dir: str, seed: int = 0, test_fraction: float = 0.2, window: float = 0.01,
                 bands=("g", "r"), all_model: bool = True, plots: bool = True, sim: dict | None = None, **_ignored):
        self.cfg = ReproduceConfig(out_dir=str(out_dir), seed=int(seed), test_fraction=test_fraction, window=window,
                                   bands=list(bands), all_model=all_model, plots=plots, sim=dict(sim or {}))

    def run(self) -> dict:
        res = reproduce(self.cfg)
        return {"table1": res.table1.to_dict("records"), "auc": res.auc.to_dict("records"),
                "tables": str(Path(self.cfg.out_dir) / "tables.md")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("reproduce", "evaluate"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    from skyvar.utils.config import config_from_dotlist

    if cmd == "reproduce":
        reproduce(config_from_dotlist(ReproduceConfig, rest))
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
