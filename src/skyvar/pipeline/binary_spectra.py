"""Binary stars from single-epoch low-resolution spectra: inference over FITS files and model evaluation.

Inference (``python infer.py pipeline=binary_spectra input=<file|dir|glob> out_dir=D``):
LAMOST LRS files -> :func:`skyvar.spectra.io.read_lamost_lrs` -> the checkpoint's own preprocessing
(:class:`skyvar.spectra.preprocess.Preprocessor`) -> SpecNet -> p_binary. Writes

- ``D/binary_probabilities.ecsv``: one row per spectrum (file, obsid, ra, dec, snr_g, subclass,
  p_binary (temperature-calibrated), p_binary_raw (the network's softmax), masked_fraction, flags);
- ``D/binary_stars.ecsv``: one row per star (spectra within ``star_match_radius`` arcsec grouped);
  ``p_binary`` is the maximum over the star's spectra, the paper's rule;
- ``D/failures.json`` (unreadable or rejected files, with the reason) and ``D/summary.json``.

Flags (bit mask): 1 = S/N_g below ``min_snr`` (the paper's sample has S/N_g > 20), 2 = not a star of
LAMOST class F/G/K (outside the training Teff range 3800–6500 K), 4 = more than 10 % of the grid's
pixels masked besides the fixed regions, 8 = no coordinates (star grouping by file only).

Evaluation (``python -m skyvar.pipeline.binary_spectra evaluate [key=value ...]``): every test-set
number of docs/results/binary_spectra.md — ROC AUC, fractions of singles with p_b < 0.2 and binaries with
p_b > 0.8, prior-corrected precision versus threshold, binary fraction versus mass ratio, p_b
distributions, temperature scaling and expected calibration error — from a checkpoint and the
simulated data set (regenerated on first use with the fixed seed).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from skyvar.utils.log import get_logger

log = get_logger(__name__)

FLAG_LOW_SNR = 1
FLAG_NOT_FGK = 2
FLAG_MASKED = 4
FLAG_NO_COORDS = 8


def _device(name: str | None) -> str:
    from skyvar.device import resolve_device

    return resolve_device(name)


def predict_logits(model, flux_norm: np.ndarray, batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """Network logits (n, 2) for normalised spectra (n, npix); input is flux - 1 as in training."""
    import torch

    model = model.to(device).eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(flux_norm), batch_size):
            x = torch.as_tensor(np.asarray(flux_norm[s:s + batch_size], dtype=np.float32) - 1.0, device=device)
            out.append(model(x.unsqueeze(1)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def softmax_p1(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 1.0 / (1.0 + np.exp(-(z[:, 1] - z[:, 0])))


def group_stars(ra, dec, radius_arcsec: float = 3.0) -> np.ndarray:
    """Star index per spectrum: friends-of-friends within ``radius_arcsec`` (NaN coordinates: own star)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    n = len(ra)
    ok = np.isfinite(ra) & np.isfinite(dec)
    rows, cols = [np.arange(n)], [np.arange(n)]
    if ok.sum() > 1:
        import astropy.units as u
        from astropy.coordinates import SkyCoord, search_around_sky

        idx = np.flatnonzero(ok)
        c = SkyCoord(ra[idx] * u.deg, dec[idx] * u.deg)
        i, j, _, _ = search_around_sky(c, c, radius_arcsec * u.arcsec)
        rows.append(idx[i])
        cols.append(idx[j])
    r = np.concatenate(rows)
    c2 = np.concatenate(cols)
    _, labels = connected_components(coo_matrix((np.ones(len(r)), (r, c2)), shape=(n, n)), directed=False)
    return labels


class BinarySpectraPipeline:
    """Single-epoch LAMOST LRS files -> SpecNet binary probabilities (see the module documentation)."""

    def __init__(self, model: str, input: Any, out_dir: str, truth: str | None = None, device: str = "auto",
                 batch_size: int = 256, calibrated: bool = True, min_snr: float = 20.0,
                 star_match_radius: float = 3.0, fgk_only_flag: bool = True):
        self.model_path = model
        self.input = input
        self.out_dir = Path(out_dir)
        self.truth = truth
        self.device = _device(device)
        self.batch_size = batch_size
        self.calibrated = calibrated
        self.min_snr = min_snr
        self.star_match_radius = star_match_radius
        self.fgk_only_flag = fgk_only_flag

    def run(self) -> dict:
        from astropy.table import Table

        from skyvar.models.specnet_module import load_specnet
        from skyvar.spectra.io import read_spectra
        from skyvar.spectra.preprocess import Preprocessor, region_mask
        from skyvar.utils.atomic import write_json_atomic, write_table_atomic
        from skyvar.utils.inputs import expand_inputs

        if self.input is None:
            raise ValueError("binary_spectra needs input=<file|dir|glob of LAMOST LRS FITS>")
        t0 = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = expand_inputs(self.input)
        spectra, failures = read_spectra(files)
        model = load_specnet(self.model_path, map_location=self.device)
        pre = Preprocessor(model.hparams.preprocess or {}, device=self.device)
        names = [s.meta["file"] for s in spectra]
        batch = pre(spectra, names=names)
        for f in batch.failures:
            log.error("skipping %s", f["error"])
            failures.append({"file": names[f["index"]], "stage": f["stage"], "error": f["error"]})
        logits = predict_logits(model, batch.flux, self.batch_size, self.device)
        T = float(model.temperature) if self.calibrated else 1.0
        p_cal = softmax_p1(logits, T)
        p_raw = softmax_p1(logits, 1.0)
        kept = [spectra[i] for i in batch.index]
        fixed_bad = region_mask(batch.wavelength, pre.cfg)
        extra_masked = (batch.mask & ~fixed_bad).mean(axis=1) if len(batch) else np.zeros(0)
        tab = Table()
        tab["file"] = [Path(s.meta["file"]).name for s in kept]
        tab["obsid"] = np.array([s.meta.get("obsid", -1) for s in kept], dtype=np.int64)
        tab["ra"] = np.array([s.meta.get("ra", np.nan) for s in kept], dtype=float)
        tab["dec"] = np.array([s.meta.get("dec", np.nan) for s in kept], dtype=float)
        tab["snr_g"] = np.array([s.meta.get("snr_g", np.nan) for s in kept], dtype=float)
        tab["class"] = [str(s.meta.get("class", "")) for s in kept]
        tab["subclass"] = [str(s.meta.get("subclass", "")) for s in kept]
        tab["p_binary"] = p_cal
        tab["p_binary_raw"] = p_raw
        tab["masked_fraction"] = batch.mask.mean(axis=1) if len(batch) else np.zeros(0)
        flags = np.zeros(len(kept), dtype=np.int32)
        flags |= np.where(~(tab["snr_g"] >= self.min_snr), FLAG_LOW_SNR, 0).astype(np.int32)
        if self.fgk_only_flag:
            fgk = np.array([(c.strip().upper() in ("STAR", "")) and sc.strip()[:1].upper() in ("F", "G", "K")
                            for c, sc in zip(tab["class"], tab["subclass"])], dtype=bool)
            flags |= np.where(~fgk, FLAG_NOT_FGK, 0).astype(np.int32)
        flags |= np.where(extra_masked > 0.10, FLAG_MASKED, 0).astype(np.int32)
        flags |= np.where(~(np.isfinite(tab["ra"]) & np.isfinite(tab["dec"])), FLAG_NO_COORDS, 0).astype(np.int32)
        tab["flags"] = flags
        tab.meta.update({
            "model": str(self.model_path), "temperature": T, "calibrated": self.calibrated,
            "flags": {"1": "snr_g below min_snr", "2": "not an F/G/K star (outside training Teff range)",
                      "4": ">10% extra masked pixels", "8": "no coordinates"},
            "preprocess": dict(model.hparams.preprocess or {}),
        })
        stars = self.star_table(tab)
        write_table_atomic(tab, self.out_dir / "binary_probabilities.ecsv")
        write_table_atomic(stars, self.out_dir / "binary_stars.ecsv")
        write_json_atomic(self.out_dir / "failures.json", failures)
        summary = {
            "n_inputs": len(files), "n_spectra": len(tab), "n_stars": len(stars), "n_failed": len(failures),
            "n_binary_p05": int((tab["p_binary"] > 0.5).sum()), "n_binary_p08": int((tab["p_binary"] > 0.8).sum()),
            "temperature": T, "device": self.device, "runtime_s": round(time.perf_counter() - t0, 3),
        }
        write_json_atomic(self.out_dir / "summary.json", summary)
        if failures:
            log.warning("%d of %d files failed; see %s", len(failures), len(files), self.out_dir / "failures.json")
        log.info("%d spectra, %d stars, %d with p_binary > 0.5", len(tab), len(stars), summary["n_binary_p05"])
        return summary

    def star_table(self, tab):
        from astropy.table import Table

        star = group_stars(tab["ra"], tab["dec"], self.star_match_radius) if len(tab) else np.zeros(0, int)
        out = Table()
        uniq = np.unique(star)
        p = np.asarray(tab["p_binary"])
        rows = [np.flatnonzero(star == s) for s in uniq]
        best = [r[np.argmax(p[r])] for r in rows]
        out["star_id"] = np.arange(len(uniq), dtype=np.int64)
        out["ra"] = [float(np.nanmean(tab["ra"][r])) if np.isfinite(tab["ra"][r]).any() else np.nan for r in rows]
        out["dec"] = [float(np.nanmean(tab["dec"][r])) if np.isfinite(tab["dec"][r]).any() else np.nan for r in rows]
        out["n_spectra"] = np.array([len(r) for r in rows], dtype=np.int32)
        out["p_binary"] = np.array([p[b] for b in best])  # maximum over spectra (Jing et al.)
        out["p_binary_raw"] = np.array([tab["p_binary_raw"][b] for b in best])
        out["obsid_max"] = np.array([tab["obsid"][b] for b in best], dtype=np.int64)
        out["obsids"] = [",".join(str(o) for o in tab["obsid"][r]) for r in rows]
        out["snr_g_max"] = np.array([np.nanmax(tab["snr_g"][r]) if np.isfinite(tab["snr_g"][r]).any() else np.nan
                                     for r in rows])
        out["flags"] = np.array([int(np.bitwise_or.reduce(np.asarray(tab["flags"][r]))) for r in rows], dtype=np.int32)
        tab["star_id"] = np.searchsorted(uniq, star)
        out.meta["rule"] = "p_binary = max over the star's spectra (Jing et al.)"
        out.meta["match_radius_arcsec"] = self.star_match_radius
        return out


# ====================================================================== evaluation
def prior_corrected_precision(p, y, thresholds, ratio: float = 0.5) -> np.ndarray:
    """Precision for a population with binary:single = ``ratio`` (Jing et al.):
    ``N_TP / (N_TP + N_FP * N_b / N_s / ratio)`` with N_b, N_s the binaries and singles of the sample."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(y).astype(bool)
    nb, ns = y.sum(), (~y).sum()
    th = np.asarray(thresholds, dtype=float)
    tp = (p[y][None, :] > th[:, None]).sum(axis=1)
    fp = (p[~y][None, :] > th[:, None]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fp * nb / ns / ratio)


def expected_calibration_error(p, y, n_bins: int = 15) -> float:
    """ECE of binary probabilities: Σ_bins (n_b/N) |mean(y) - mean(p)| over equal-width bins of p."""
    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=float)
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    n = np.bincount(b, minlength=n_bins)
    sp = np.bincount(b, weights=p, minlength=n_bins)
    sy = np.bincount(b, weights=y, minlength=n_bins)
    nz = n > 0
    return float(np.sum(np.abs(sy[nz] - sp[nz])) / len(p))


def bootstrap_ci(fn, *arrays, n_boot: int = 500, seed: int = 0, stratify=None):
    """Central 95 % interval of ``fn(*arrays)`` over bootstrap resamples (stratified by ``stratify``)."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    vals = []
    for _ in range(n_boot):
        if stratify is None:
            idx = rng.integers(0, n, n)
        else:
            idx = np.concatenate([rng.choice(g, len(g)) for g in (np.flatnonzero(stratify), np.flatnonzero(~stratify))])
        vals.append(fn(*[a[idx] for a in arrays]))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


@dataclasses.dataclass
class EvalConfig:
    checkpoint: str = "specnet-lamost"  # a release name or a checkpoint file
    data: str = "lamost_lrs"  # conf/data/<name>.yaml; its preprocessing is replaced by the checkpoint's
    data_dir: str | None = None  # default: the config's (datasets/lamost_lrs)
    data_overrides: list = dataclasses.field(default_factory=list)  # Hydra overrides, e.g. ["data.sim.n_single=60"]
    metrics_out: str = "models/specnet-lamost/metrics.json"
    fig_dir: str = "docs/figures/binary_spectra"
    write_temperature: bool = True  # store the fitted temperature in the checkpoint (released models)
    device: str = "auto"
    n_boot: int = 500
    linear_baseline: bool = True  # logistic regression on the same inputs (a floor for the CNN)
    real_input: str | None = "${oc.env:SKYVAR_SHARED,../shared}/data/spectra/lamost_lrs"


def _datamodule(cfg: EvalConfig, preprocess: dict):

    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from skyvar.utils.config import compose_config

    over = [f"data={cfg.data}", "paths.output_dir=.", "logger=none"]
    if cfg.data_dir:
        over.append(f"data.data_dir={cfg.data_dir}")
    over += list(cfg.data_overrides)
    c = compose_config("train", over)
    GlobalHydra.instance().clear()
    c.data.preprocess = preprocess
    return instantiate(c.data)


def evaluate(cfg: EvalConfig) -> dict:
    """All test-set metrics and figures for a checkpoint (see module docstring)."""
    import torch
    from sklearn.metrics import roc_auc_score, roc_curve

    from skyvar.models.specnet_module import fit_temperature, load_specnet
    from skyvar.utils.atomic import write_json_atomic

    device = _device(cfg.device)
    model = load_specnet(cfg.checkpoint, map_location=device)
    dm = _datamodule(cfg, dict(model.hparams.preprocess or {}))
    dm.setup()
    res: dict[str, Any] = {"checkpoint": cfg.checkpoint, "preprocess": dict(model.hparams.preprocess or {})}
    logits, metas = {}, {}
    for split in ("val", "test", "eval"):
        x, meta = dm.arrays(split)
        logits[split] = predict_logits(model, x, device=device)
        metas[split] = meta
    yv = metas["val"]["label"].to_numpy()
    T = fit_temperature(logits["val"], yv)
    res["temperature"] = T
    yt = metas["test"]["label"].to_numpy().astype(bool)
    p = softmax_p1(logits["test"])
    pc = softmax_p1(logits["test"], T)
    res["n_test_single"] = int((~yt).sum())
    res["n_test_binary"] = int(yt.sum())
    res["auc"] = float(roc_auc_score(yt, p))
    res["auc_ci95"] = bootstrap_ci(lambda a, b: roc_auc_score(b, a), p, yt, n_boot=cfg.n_boot, stratify=yt)
    res["frac_single_p_lt_0.2"] = float((p[~yt] < 0.2).mean())
    res["frac_binary_p_gt_0.8"] = float((p[yt] > 0.8).mean())
    res["frac_single_p_lt_0.2_calibrated"] = float((pc[~yt] < 0.2).mean())
    res["frac_binary_p_gt_0.8_calibrated"] = float((pc[yt] > 0.8).mean())
    th = np.linspace(0.0, 0.99, 100)
    prec = prior_corrected_precision(p, yt, th, ratio=0.5)
    res["precision_r1:2_at_0.5"] = float(prior_corrected_precision(p, yt, [0.5], 0.5)[0])
    res["precision_r1:2_at_0.8"] = float(prior_corrected_precision(p, yt, [0.8], 0.5)[0])
    res["recall_at_0.5"] = float((p[yt] > 0.5).mean())
    res["recall_at_0.8"] = float((p[yt] > 0.8).mean())
    res["ece_raw"] = expected_calibration_error(p, yt)
    res["ece_calibrated"] = expected_calibration_error(pc, yt)
    res["nll_raw"] = float(torch.nn.functional.cross_entropy(torch.as_tensor(logits["test"]), torch.as_tensor(yt.astype(int))))
    res["nll_calibrated"] = float(torch.nn.functional.cross_entropy(torch.as_tensor(logits["test"]) / T,
                                                                    torch.as_tensor(yt.astype(int))))
    # Binary fraction vs mass ratio: evaluation-only binaries (all q) plus the test intermediate-q ones.
    pe = np.concatenate([softmax_p1(logits["eval"]), p[yt]])
    qe = np.concatenate([metas["eval"]["q"].to_numpy(), metas["test"]["q"].to_numpy()[yt]])
    q_edges = np.round(np.arange(0.3, 1.0001, 0.05), 3)
    qb = np.clip(np.digitize(qe, q_edges) - 1, 0, len(q_edges) - 2)
    frac_q = {str(t): [float((pe[qb == k] > t).mean()) if (qb == k).any() else None for k in range(len(q_edges) - 1)]
              for t in (0.5, 0.8)}
    res["binary_fraction_vs_q"] = {"q_edges": q_edges.tolist(), "fraction": frac_q,
                                   "n": np.bincount(qb, minlength=len(q_edges) - 1).tolist()}
    mid = (qe >= 0.71) & (qe <= 0.93)
    hi = qe > 0.93
    lo = qe < 0.71
    res["recall_p0.5_by_q"] = {"low_q<0.71": float((pe[lo] > 0.5).mean()), "mid_q": float((pe[mid] > 0.5).mean()),
                               "high_q>0.93": float((pe[hi] > 0.5).mean())}
    # Performance by S/N (beyond the paper)
    snr = metas["test"]["snr_g"].to_numpy()
    snr_edges = [20, 40, 80, 160, 300]
    res["auc_by_snr"] = {}
    for a, b in zip(snr_edges[:-1], snr_edges[1:]):
        s = (snr >= a) & (snr < b)
        if yt[s].any() and (~yt[s]).any():
            res["auc_by_snr"][f"{a}-{b}"] = float(roc_auc_score(yt[s], p[s]))
    fpr, tpr, _ = roc_curve(yt, p)
    _figures(Path(cfg.fig_dir), p, pc, yt, th, prec, q_edges, frac_q, fpr, tpr, res)
    if cfg.linear_baseline:
        res["linear_baseline_auc"] = linear_baseline_auc(dm, *dm.arrays("test"))
    if cfg.write_temperature:
        _store_temperature(cfg.checkpoint, T)
    if cfg.real_input:
        res["real_lamost"] = _real_run(cfg, load_specnet(cfg.checkpoint, map_location=device))
    write_json_atomic(cfg.metrics_out, res)
    return res


def linear_baseline_auc(dm, x_test, meta_test, n_single: int = 6000, seed: int = 0) -> float:
    """Test AUC of an L2 logistic regression on the normalised spectra (every 2nd pixel; all training
    binaries and ``n_single`` training singles, class-balanced weights)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x, meta = dm.arrays("train")
    y = meta["label"].to_numpy()
    rng = np.random.default_rng(seed)
    singles = np.flatnonzero(y == 0)
    rows = np.sort(np.concatenate([np.flatnonzero(y == 1), rng.choice(singles, min(n_single, len(singles)),
                                                                        replace=False)]))
    xt = np.asarray(x[rows], dtype=np.float32)[:, ::2] - 1.0
    clf = LogisticRegression(C=0.1, max_iter=300, class_weight="balanced").fit(xt, y[rows])
    score = clf.decision_function(np.asarray(x_test, dtype=np.float32)[:, ::2] - 1.0)
    return float(roc_auc_score(meta_test["label"].to_numpy(), score))


def _real_run(cfg: EvalConfig, model) -> list[dict] | None:
    import os
    import tempfile

    from astropy.table import Table

    path = cfg.real_input.replace("${oc.env:SKYVAR_SHARED,../shared}",
                                  os.environ.get("SKYVAR_SHARED", str(Path(os.environ.get("SKYVAR_ROOT", ".")) / ".." / "shared")))
    if not Path(path).exists():
        return None
    with tempfile.TemporaryDirectory() as d:
        BinarySpectraPipeline(model=cfg.checkpoint, input=path, out_dir=d, device=cfg.device).run()
        t = Table.read(Path(d) / "binary_probabilities.ecsv")
    return [{"file": r["file"], "subclass": r["subclass"], "snr_g": float(r["snr_g"]),
             "p_binary": round(float(r["p_binary"]), 4), "p_binary_raw": round(float(r["p_binary_raw"]), 4),
             "flags": int(r["flags"])} for r in t]


def _store_temperature(path: str, T: float) -> None:
    """Write the fitted temperature into the checkpoint's state dict; optimizer state is dropped."""
    import torch

    from skyvar.models import registry
    from skyvar.utils.atomic import atomic_path

    release = path if path in registry.RELEASES else None
    path = registry.checkpoint_path(path)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    ck["state_dict"]["temperature"] = torch.tensor(float(T))
    for k in ("optimizer_states", "lr_schedulers"):
        ck.pop(k, None)
    with atomic_path(path) as tmp:
        torch.save(ck, tmp)
    if release is not None:  # the card states the checkpoint's checksum
        registry.update_card_sha256(release)


def _figures(fig_dir: Path, p, pc, yt, th, prec, q_edges, frac_q, fpr, tpr, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skyvar.utils.atomic import savefig_atomic

    fig_dir.mkdir(parents=True, exist_ok=True)
    # Figure 3 analogue: p_b PDFs and prior-corrected precision.
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 26)
    ax.hist(p[yt], bins=bins, density=True, color="tab:blue", alpha=0.5, label=f"binaries (n={yt.sum()})")
    ax.hist(p[~yt], bins=bins, density=True, histtype="step", color="tab:red", lw=1.5, label=f"singles (n={(~yt).sum()})")
    ax.set_yscale("log")
    ax.set_xlabel("$p_b$")
    ax.set_ylabel("PDF")
    ax2 = ax.twinx()
    ax2.plot(th, prec, color="k", lw=1.5, label="precision (binary:single = 1:2)")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("precision")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", fontsize=8)
    ax.set_title(f"test set: AUC {res['auc']:.3f}")
    savefig_atomic(fig, fig_dir / "pb_distribution.png")
    plt.close(fig)
    # Figure 4 analogue: binary fraction vs mass ratio.
    fig, ax = plt.subplots(figsize=(6, 4))
    qc = 0.5 * (q_edges[1:] + q_edges[:-1])
    for t, c in (("0.5", "tab:blue"), ("0.8", "tab:orange")):
        ax.plot(qc, [np.nan if v is None else v for v in frac_q[t]], "o-", color=c, label=f"$p_{{th}}$ = {t}")
    ax.axvspan(0.71, 0.93, color="0.85", label="training q range")
    ax.set_xlabel("mass ratio q")
    ax.set_ylabel("fraction classified binary")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    savefig_atomic(fig, fig_dir / "binary_fraction_vs_q.png")
    plt.close(fig)
    # ROC and reliability diagram.
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(fpr, tpr, color="k")
    ax[0].plot([0, 1], [0, 1], ":", color="0.5")
    ax[0].set_xlabel("false positive rate")
    ax[0].set_ylabel("true positive rate")
    ax[0].set_title(f"ROC, AUC = {res['auc']:.3f}")
    edges = np.linspace(0, 1, 11)
    for q, lab, c in ((p, f"raw (ECE {res['ece_raw']:.3f})", "tab:red"),
                      (pc, f"T = {res['temperature']:.2f} (ECE {res['ece_calibrated']:.3f})", "tab:blue")):
        b = np.clip(np.digitize(q, edges) - 1, 0, 9)
        x = [q[b == k].mean() if (b == k).any() else np.nan for k in range(10)]
        y = [yt[b == k].mean() if (b == k).any() else np.nan for k in range(10)]
        ax[1].plot(x, y, "o-", color=c, label=lab)
    ax[1].plot([0, 1], [0, 1], ":", color="0.5")
    ax[1].set_xlabel("predicted $p_b$")
    ax[1].set_ylabel("observed binary fraction")
    ax[1].legend(fontsize=8)
    ax[1].set_title("reliability (test set, 18:1 prior)")
    savefig_atomic(fig, fig_dir / "roc_calibration.png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from skyvar.utils.config import config_from_dotlist

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "evaluate":
        print("usage: python -m skyvar.pipeline.binary_spectra evaluate [checkpoint=...] [fig_dir=...] ...",
              file=sys.stderr)
        return 2
    cfg = config_from_dotlist(EvalConfig, argv[1:])
    res = evaluate(cfg)
    keys = ["auc", "auc_ci95", "frac_single_p_lt_0.2", "frac_binary_p_gt_0.8", "precision_r1:2_at_0.5",
            "precision_r1:2_at_0.8", "temperature", "ece_raw", "ece_calibrated", "recall_p0.5_by_q"]
    for k in keys:
        print(f"{k}: {res[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
