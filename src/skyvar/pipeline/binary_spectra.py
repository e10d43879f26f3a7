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
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from skyvar.flags import SpectrumFlag
from skyvar.spectra.stars import group_stars  # noqa: F401  (public here too)
from skyvar.utils.log import get_logger

log = get_logger(__name__)

FLAG_LOW_SNR = int(SpectrumFlag.LOW_SNR)
FLAG_NOT_FGK = int(SpectrumFlag.NOT_FGK)
FLAG_MASKED = int(SpectrumFlag.MASKED)
FLAG_NO_COORDS = int(SpectrumFlag.NO_COORDS)


def _device(name: str | None) -> str:
    from skyvar.device import resolve_device

    return resolve_device(name)


def predict_logits(model, x: np.ndarray, batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """Network logits (n, 2) for model inputs ``x``: (n, C, npix) as built by
    :meth:`~skyvar.spectra.preprocess.PreprocessedBatch.model_input`, or normalised flux (n, npix) for
    one-channel models (the input is then flux - 1, as in training)."""
    import torch

    model = model.to(device).eval()
    x = np.asarray(x)
    one_channel = x.ndim == 2
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.asarray(x[s:s + batch_size], dtype=np.float32), device=device)
            if one_channel:
                xb = (xb - 1.0).unsqueeze(1)
            out.append(model(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.float32)


def softmax_p1(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    return 1.0 / (1.0 + np.exp(-(z[:, 1] - z[:, 0])))


class BinarySpectraPipeline:
    """Stream LAMOST LRS files through reading, preprocessing and SpecNet in chunks of ``chunk_size``.

    Memory is bounded by one chunk (plus the next one being read ahead by ``read_workers`` threads while
    the current one is preprocessed and scored). Every finished chunk is written atomically to
    ``out_dir/.parts/`` (rows and failures); a rerun with the same model and settings skips the files
    already there (``resume``), so an interrupted survey-scale run continues where it stopped. The final
    tables are assembled from the parts at the end.
    """

    def __init__(self, model: str, input: Any, out_dir: str, truth: str | None = None, device: str = "auto",
                 batch_size: int = 256, calibrated: bool = True, min_snr: float = 20.0,
                 star_match_radius: float = 3.0, fgk_only_flag: bool = True, chunk_size: int = 1024,
                 read_workers: int = 2, resume: bool = True):
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
        self.chunk_size = max(1, int(chunk_size))
        self.read_workers = max(1, int(read_workers))
        self.resume = resume

    # ------------------------------------------------------------------ parts (resume by file)
    def _fingerprint(self, model) -> str:
        from skyvar.utils.config import stable_hash

        p = Path(self.model_path)
        st = p.stat() if p.exists() else None
        return stable_hash({"model": str(p.resolve()) if p.exists() else str(p), "size": st.st_size if st else 0,
                            "mtime": int(st.st_mtime) if st else 0, "T": float(model.temperature),
                            "calibrated": self.calibrated, "min_snr": self.min_snr, "fgk": self.fgk_only_flag,
                            "preprocess": dict(model.hparams.preprocess or {})})

    def _open_parts(self, fingerprint: str) -> tuple[Path, set[str]]:
        import shutil

        from skyvar.utils.atomic import write_json_atomic

        parts = self.out_dir / ".parts"
        manifest = parts / "manifest.json"
        if parts.exists():
            old = json.loads(manifest.read_text()) if manifest.exists() else {}
            if not self.resume or old.get("fingerprint") != fingerprint:
                if self.resume:
                    log.warning("%s holds parts of a different model/settings: starting afresh", parts)
                shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, {"fingerprint": fingerprint})
        done: set[str] = set()
        for f in sorted(parts.glob("part-*.json")):
            d = json.loads(f.read_text())
            done.update(d["files"])
        return parts, done

    # ------------------------------------------------------------------ one chunk
    def _score_chunk(self, spectra, pre, model) -> tuple[list[dict], list[dict]]:
        from skyvar.spectra.preprocess import region_mask

        failures: list[dict] = []
        names = [s.meta["file"] for s in spectra]
        batch = pre(spectra, names=names)
        for f in batch.failures:
            log.error("skipping %s", f["error"])
            failures.append({"file": names[f["index"]], "stage": f["stage"], "error": f["error"]})
        x = batch.model_input() if pre.cfg.continuum_channel else batch.flux
        logits = predict_logits(model, x, self.batch_size, self.device)
        T = float(model.temperature) if self.calibrated else 1.0
        p_cal = softmax_p1(logits, T)
        p_raw = softmax_p1(logits, 1.0)
        fixed_bad = region_mask(batch.wavelength, pre.cfg)
        extra_masked = (batch.mask & ~fixed_bad).mean(axis=1) if len(batch) else np.zeros(0)
        masked = batch.mask.mean(axis=1) if len(batch) else np.zeros(0)
        rows = []
        for j, i in enumerate(batch.index):
            m = spectra[i].meta
            sub = str(m.get("subclass", ""))
            cls = str(m.get("class", ""))
            snr = float(m.get("snr_g", np.nan))
            ra, dec = float(m.get("ra", np.nan)), float(m.get("dec", np.nan))
            flag = 0
            if not snr >= self.min_snr:
                flag |= FLAG_LOW_SNR
            if self.fgk_only_flag and not (cls.strip().upper() in ("STAR", "") and sub.strip()[:1].upper() in ("F", "G", "K")):
                flag |= FLAG_NOT_FGK
            if extra_masked[j] > 0.10:
                flag |= FLAG_MASKED
            if not (np.isfinite(ra) and np.isfinite(dec)):
                flag |= FLAG_NO_COORDS
            rows.append({"path": m["file"], "file": Path(m["file"]).name, "obsid": int(m.get("obsid", -1)), "ra": ra,
                         "dec": dec, "snr_g": snr, "class": cls, "subclass": sub, "p_binary": float(p_cal[j]),
                         "p_binary_raw": float(p_raw[j]), "masked_fraction": float(masked[j]), "flags": int(flag)})
        return rows, failures

    def run(self) -> dict:
        from concurrent.futures import ThreadPoolExecutor

        from astropy.table import Table

        from skyvar.models.specnet_module import load_specnet
        from skyvar.spectra.io import SpectrumError, read_lamost_lrs
        from skyvar.spectra.preprocess import Preprocessor
        from skyvar.utils.atomic import write_json_atomic, write_table_atomic
        from skyvar.utils.inputs import expand_inputs

        if self.input is None:
            raise ValueError("binary_spectra needs input=<file|dir|glob of LAMOST LRS FITS>")
        t0 = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        files = expand_inputs(self.input)
        model = load_specnet(self.model_path, map_location=self.device)
        pre = Preprocessor(model.hparams.preprocess or {}, device=self.device)
        parts, done = self._open_parts(self._fingerprint(model))
        todo = [f for f in files if str(f) not in done]
        if done:
            log.info("resuming: %d of %d files already scored in %s", len(files) - len(todo), len(files), parts)

        def read_one(f):
            try:
                return read_lamost_lrs(f), None
            except SpectrumError as e:
                return None, {"file": str(f), "stage": "read", "error": str(e)}
            except Exception as e:  # one bad file must not stop a survey-scale run
                return None, {"file": str(f), "stage": "read", "error": f"{type(e).__name__}: {e}"}

        chunks = [todo[i:i + self.chunk_size] for i in range(0, len(todo), self.chunk_size)]
        k0 = 1 + max((int(p.stem.split("-")[1]) for p in parts.glob("part-*.json")), default=-1)
        n_done = 0
        with ThreadPoolExecutor(self.read_workers) as pool:
            pending = pool.map(read_one, chunks[0]) if chunks else None
            for k, chunk in enumerate(chunks):
                results = list(pending)
                # read the next chunk while this one is preprocessed and scored
                pending = pool.map(read_one, chunks[k + 1]) if k + 1 < len(chunks) else None
                spectra = [s for s, _ in results if s is not None]
                failures = [e for _, e in results if e is not None]
                for e in failures:
                    log.error("skipping %s", e["error"])
                for s in spectra:  # keep only what the output needs
                    s.meta = {key: s.meta[key] for key in ("file", "obsid", "ra", "dec", "snr_g", "class", "subclass")
                              if key in s.meta}
                rows, fails = self._score_chunk(spectra, pre, model) if spectra else ([], [])
                failures += fails
                del spectra, results
                name = f"part-{k0 + k:06d}"
                if rows:
                    write_table_atomic(Table(rows=rows), parts / f"{name}.fits")
                write_json_atomic(parts / f"{name}.json", {"files": [str(f) for f in chunk], "failures": failures,
                                                         "n_rows": len(rows)})
                n_done += len(chunk)
                log.info("binary_spectra: %d / %d files (%.0f files/s)", n_done, len(todo),
                         n_done / max(time.perf_counter() - t0, 1e-9))
        tab, failures = self._collect(parts, files)
        stars = self.star_table(tab)
        tab.meta.update({
            "model": str(self.model_path), "temperature": float(model.temperature) if self.calibrated else 1.0,
            "calibrated": self.calibrated,
            "flags": {"1": "snr_g below min_snr", "2": "not an F/G/K star (outside training Teff range)",
                      "4": ">10% extra masked pixels", "8": "no coordinates"},
            "preprocess": dict(model.hparams.preprocess or {}),
        })
        write_table_atomic(tab, self.out_dir / "binary_probabilities.ecsv")
        write_table_atomic(stars, self.out_dir / "binary_stars.ecsv")
        write_json_atomic(self.out_dir / "failures.json", failures)
        summary = {
            "n_inputs": len(files), "n_spectra": len(tab), "n_stars": len(stars), "n_failed": len(failures),
            "n_binary_p05": int((tab["p_binary"] > 0.5).sum()) if len(tab) else 0,
            "n_binary_p08": int((tab["p_binary"] > 0.8).sum()) if len(tab) else 0,
            "temperature": float(model.temperature) if self.calibrated else 1.0, "device": self.device,
            "chunk_size": self.chunk_size, "resumed_files": len(files) - len(todo),
            "runtime_s": round(time.perf_counter() - t0, 3),
        }
        write_json_atomic(self.out_dir / "summary.json", summary)
        if failures:
            log.warning("%d of %d files failed; see %s", len(failures), len(files), self.out_dir / "failures.json")
        log.info("%d spectra, %d stars, %d with p_binary > 0.5", len(tab), len(stars), summary["n_binary_p05"])
        return summary

    def _collect(self, parts: Path, files: list[Path]):
        """Rows and failures of the parts that belong to this run's inputs, in input order."""
        from astropy.table import Table, vstack

        wanted = {str(f): i for i, f in enumerate(files)}
        tabs, failures = [], []
        for js in sorted(parts.glob("part-*.json")):
            d = json.loads(js.read_text())
            failures += [f for f in d["failures"] if f["file"] in wanted]
            fits_part = js.with_suffix(".fits")
            if d.get("n_rows") and fits_part.exists():
                t = Table.read(fits_part)
                tabs.append(t[[str(p) in wanted for p in t["path"]]])
        cols = ["file", "obsid", "ra", "dec", "snr_g", "class", "subclass", "p_binary", "p_binary_raw",
                "masked_fraction", "flags"]
        if tabs:
            tab = vstack(tabs)
            order = np.argsort([wanted[str(p)] for p in tab["path"]], kind="stable")
            tab = tab[order][cols]
            for c in ("file", "class", "subclass"):
                tab[c] = [str(v) for v in tab[c]]
        else:
            tab = Table(names=cols, dtype=[str, np.int64, float, float, float, str, str, float, float, float, np.int32])
        failures.sort(key=lambda f: wanted.get(f["file"], 0))
        return tab, failures

    def star_table(self, tab):
        from astropy.table import Table

        star = group_stars(tab["ra"], tab["dec"], self.star_match_radius) if len(tab) else np.zeros(0, int)
        out = Table()
        uniq = np.unique(star)
        p = np.asarray(tab["p_binary"])
        order = np.argsort(star, kind="stable")
        bounds = np.searchsorted(star[order], uniq)
        rows = np.split(order, bounds[1:]) if len(order) else []
        best = [r[np.argmax(p[r])] for r in rows]
        out["star_id"] = np.arange(len(uniq), dtype=np.int64)
        ra, dec = np.asarray(tab["ra"], float), np.asarray(tab["dec"], float)
        snr = np.asarray(tab["snr_g"], float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN coordinates of a star
            out["ra"] = [float(np.nanmean(ra[r])) for r in rows]
            out["dec"] = [float(np.nanmean(dec[r])) for r in rows]
            out["snr_g_max"] = np.array([np.nanmax(snr[r]) for r in rows]) if rows else np.zeros(0)
        out["n_spectra"] = np.array([len(r) for r in rows], dtype=np.int32)
        out["p_binary"] = np.array([p[b] for b in best])  # maximum over spectra (Jing et al.)
        out["p_binary_raw"] = np.array([tab["p_binary_raw"][b] for b in best])
        out["obsid_max"] = np.array([tab["obsid"][b] for b in best], dtype=np.int64)
        obsid = np.asarray(tab["obsid"])
        out["obsids"] = [",".join(str(o) for o in obsid[r]) for r in rows]
        fl = np.asarray(tab["flags"])
        out["flags"] = np.array([int(np.bitwise_or.reduce(fl[r])) for r in rows], dtype=np.int32)
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
    """ECE of binary probabilities over equal-width bins (torchmetrics ``BinaryCalibrationError``, L1)."""
    from skyvar.spectra.binary_eval import ece

    return ece(p, y, n_bins)


@dataclasses.dataclass
class EvalConfig:
    checkpoint: str = "specnet-lamost"  # a release name or a checkpoint file
    data: str = "lamost_lrs"  # conf/data/<name>.yaml; its preprocessing is replaced by the checkpoint's
    data_dir: str | None = None  # default: the config's (datasets/lamost_lrs)
    data_overrides: list = dataclasses.field(default_factory=list)  # Hydra overrides, e.g. ["data.sim.n_single=60"]
    metrics_out: str | None = None  # default: metrics.json next to the checkpoint (the release folder for a name)
    fig_dir: str = "docs/figures/binary_spectra"
    write_temperature: bool = True  # store the fitted temperature in the checkpoint (released models)
    device: str = "auto"
    n_boot: int = 500
    linear_baseline: bool = True  # logistic regression on the same inputs (a floor for the CNN)
    compare_checkpoints: list = dataclasses.field(default_factory=list)  # e.g. the previous release, same test data
    oracle_n: int = 0  # spectra per class for the template-fit ceiling (0: skip; ~1 s per spectrum)
    oracle_json: str | None = None  # or a ceiling computed earlier (template_fit_ceiling output)
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


def _scores(model, dm, device: str) -> dict:
    """Logits of the val, test and eval splits and their meta tables."""
    out = {}
    pre = dict(model.hparams.preprocess or {})
    for split in ("val", "test", "eval"):
        x = dm.inputs(split) if pre.get("continuum_channel") else dm.arrays(split)[0]
        out[split] = (predict_logits(model, x, device=device), dm.arrays(split)[1])
    return out


def _scores_direct(model, dm, device: str, chunk: int = 2000) -> dict:
    """:func:`_scores` for a model whose preprocessing differs from the data module's cache: the raw
    simulated spectra of the val, test and eval splits are preprocessed with the model's own settings
    (rejected spectra get no score and are dropped from its rows)."""
    from skyvar.spectra.preprocess import Preprocessor

    pre = Preprocessor(dict(model.hparams.preprocess or {}), device=device)
    wave = np.load(dm.sim_dir / "wavelength.npy")
    flux = np.load(dm.sim_dir / "flux.npy", mmap_mode="r")
    ivar = np.load(dm.sim_dir / "ivar.npy", mmap_mode="r")
    am = np.load(dm.sim_dir / "andmask.npy", mmap_mode="r")
    out = {}
    for split in ("val", "test", "eval"):
        rows = dm.rows(split)
        logits, kept = [], []
        for s in range(0, len(rows), chunk):
            r = rows[s:s + chunk]
            b = pre.from_arrays(wave, flux[r], ivar[r], am[r] != 0)
            x = b.model_input() if pre.cfg.continuum_channel else b.flux
            logits.append(predict_logits(model, x, device=device))
            kept.append(r[b.index])
        kept = np.concatenate(kept)
        out[split] = (np.concatenate(logits), dm.meta.loc[kept].reset_index(drop=True))
    return out


def _regimes(sc: dict, T: float, n_boot: int) -> dict:
    """Per-regime and population metrics: test singles against the evaluation binaries."""
    from skyvar.spectra.binary_eval import population_auc, regime_table

    lt, mt = sc["test"]
    le, me = sc["eval"]
    yt = mt["label"].to_numpy().astype(bool)
    single = mt["subset"].to_numpy() == "single"
    s_single = lt[single, 1] - lt[single, 0]
    s_eval = le[:, 1] - le[:, 0]
    p_eval = softmax_p1(le, T)
    q = me["q"].to_numpy()
    res = {"regimes_population": regime_table(s_single, s_eval, me["dv_abs"], me["light_ratio"], p_bin=p_eval,
                                              n_boot=n_boot),
           "population": population_auc(s_single, s_eval, n_boot=n_boot)}
    mid = (q >= 0.71) & (q <= 0.93)
    res["population_q_0.71-0.93"] = population_auc(s_single, s_eval[mid], n_boot=n_boot)
    res["population_q_0.71-0.93"]["recall_at_0.5"] = float((p_eval[mid] > 0.5).mean()) if mid.any() else None
    res["population"]["recall_at_0.5"] = float((p_eval > 0.5).mean())
    res["population"]["frac_dv_lt_20"] = float((me["dv_abs"].to_numpy() < 20).mean())
    # the same regimes on the test binaries of the training label (q 0.71-0.93)
    if (yt & ~single).any() and "dv_abs" in mt:
        tb = yt & ~single
        res["regimes_test_label"] = regime_table(s_single, lt[tb, 1] - lt[tb, 0], mt["dv_abs"].to_numpy()[tb],
                                                 mt["light_ratio"].to_numpy()[tb], p_bin=softmax_p1(lt[tb], T),
                                                 n_boot=n_boot)
    return res


def evaluate(cfg: EvalConfig) -> dict:
    """All test-set metrics and figures for a checkpoint (see module docstring and
    docs/results/binary_spectra.md): the paper's numbers on the test split, per-|Δv| / per-light-ratio /
    population metrics on the realistic evaluation binaries, calibration, a linear floor, optional
    comparison checkpoints and the template-fit ceiling, and the real LAMOST spectra with the domain gap."""
    import torch
    from sklearn.metrics import roc_curve

    from skyvar.models.specnet_module import fit_temperature, load_specnet
    from skyvar.spectra.binary_eval import auroc, bootstrap_interval
    from skyvar.utils.atomic import write_json_atomic

    device = _device(cfg.device)
    model = load_specnet(cfg.checkpoint, map_location=device)
    dm = _datamodule(cfg, dict(model.hparams.preprocess or {}))
    dm.setup()
    res: dict[str, Any] = {"checkpoint": cfg.checkpoint, "preprocess": dict(model.hparams.preprocess or {}),
                           "sim": {k: v for k, v in dataclasses.asdict(dm.sim_cfg).items() if k != "out_dir"}}
    sc = _scores(model, dm, device)
    yv = sc["val"][1]["label"].to_numpy()
    T = fit_temperature(sc["val"][0], yv)
    res["temperature"] = T
    lt, mt = sc["test"]
    yt = mt["label"].to_numpy().astype(bool)
    p = softmax_p1(lt)
    pc = softmax_p1(lt, T)
    res["n_test_single"] = int((~yt).sum())
    res["n_test_binary"] = int(yt.sum())
    res["auc"] = auroc(p, yt)
    res["auc_ci95"] = bootstrap_interval(lambda a, b: auroc(a, b) if 0 < b.sum() < len(b) else 0.5, p, yt,
                                         n_resamples=cfg.n_boot)
    res["frac_single_p_lt_0.2"] = float((p[~yt] < 0.2).mean())
    res["frac_binary_p_gt_0.8"] = float((p[yt] > 0.8).mean()) if yt.any() else None
    res["frac_single_p_lt_0.2_calibrated"] = float((pc[~yt] < 0.2).mean())
    res["frac_binary_p_gt_0.8_calibrated"] = float((pc[yt] > 0.8).mean()) if yt.any() else None
    th = np.linspace(0.0, 0.99, 100)
    prec = prior_corrected_precision(p, yt, th, ratio=0.5)
    res["precision_r1:2_at_0.5"] = float(prior_corrected_precision(p, yt, [0.5], 0.5)[0])
    res["precision_r1:2_at_0.8"] = float(prior_corrected_precision(p, yt, [0.8], 0.5)[0])
    res["recall_at_0.5"] = float((p[yt] > 0.5).mean()) if yt.any() else None
    res["recall_at_0.8"] = float((p[yt] > 0.8).mean()) if yt.any() else None
    res["ece_raw"] = expected_calibration_error(p, yt)
    res["ece_calibrated"] = expected_calibration_error(pc, yt)
    yl = torch.as_tensor(yt.astype(int))
    res["nll_raw"] = float(torch.nn.functional.cross_entropy(torch.as_tensor(lt), yl))
    res["nll_calibrated"] = float(torch.nn.functional.cross_entropy(torch.as_tensor(lt) / T, yl))
    # Binary fraction vs mass ratio: the realistic evaluation binaries (all q).
    pe = softmax_p1(sc["eval"][0])
    qe = sc["eval"][1]["q"].to_numpy()
    q_edges = np.round(np.arange(0.1, 1.0001, 0.05), 3)
    qb = np.clip(np.digitize(qe, q_edges) - 1, 0, len(q_edges) - 2)
    frac_q = {str(t): [float((pe[qb == k] > t).mean()) if (qb == k).any() else None for k in range(len(q_edges) - 1)]
              for t in (0.5, 0.8)}
    res["binary_fraction_vs_q"] = {"q_edges": q_edges.tolist(), "fraction": frac_q,
                                   "n": np.bincount(qb, minlength=len(q_edges) - 1).tolist()}
    res["recall_p0.5_by_q"] = {"low_q<0.71": float((pe[qe < 0.71] > 0.5).mean()),
                               "mid_q": float((pe[(qe >= 0.71) & (qe <= 0.93)] > 0.5).mean()),
                               "high_q>0.93": float((pe[qe > 0.93] > 0.5).mean())}
    snr = mt["snr_g"].to_numpy()
    res["auc_by_snr"] = {}
    for a, b in zip([20, 40, 80, 160], [40, 80, 160, 300]):
        s = (snr >= a) & (snr < b)
        if yt[s].any() and (~yt[s]).any():
            res["auc_by_snr"][f"{a}-{b}"] = auroc(p[s], yt[s])
    res.update(_regimes(sc, T, min(cfg.n_boot, 300)))
    fpr, tpr, _ = roc_curve(yt, p)
    comparisons = {}
    for ck in cfg.compare_checkpoints:
        m2 = load_specnet(ck, map_location=device)
        sc2 = _scores_direct(m2, dm, device)
        T2 = fit_temperature(sc2["val"][0], sc2["val"][1]["label"].to_numpy())
        y2 = sc2["test"][1]["label"].to_numpy().astype(bool)
        comparisons[ck] = {"auc_test": auroc(softmax_p1(sc2["test"][0]), y2), **_regimes(sc2, T2, min(cfg.n_boot, 300))}
        if cfg.real_input:
            comparisons[ck]["real_lamost"] = _real_run(cfg, ck)
            comparisons[ck]["domain_gap"] = _domain_gap(cfg, m2, dm, comparisons[ck]["real_lamost"], device)
    if comparisons:
        res["comparisons"] = comparisons
    if cfg.oracle_n:
        res["oracle"] = template_fit_ceiling(dm, cfg.oracle_n)
    elif cfg.oracle_json:
        res["oracle"] = json.loads(Path(cfg.oracle_json).read_text())
    _figures(Path(cfg.fig_dir), p, pc, yt, th, prec, q_edges, frac_q, fpr, tpr, res)
    if cfg.linear_baseline:
        res["linear_baseline_auc"] = linear_baseline_auc(dm, *dm.arrays("test"))
    if cfg.write_temperature:
        _store_temperature(cfg.checkpoint, T)
    if cfg.real_input:
        res["real_lamost"] = _real_run(cfg, cfg.checkpoint)
        res["domain_gap"] = _domain_gap(cfg, load_specnet(cfg.checkpoint, map_location=device), dm,
                                        res["real_lamost"], device)
    write_json_atomic(_metrics_path(cfg), res)
    return res


def _metrics_path(cfg: EvalConfig) -> Path:
    from skyvar.models import registry

    if cfg.metrics_out:
        return Path(cfg.metrics_out)
    return Path(registry.checkpoint_path(cfg.checkpoint)).with_name("metrics.json")


def template_fit_ceiling(dm, n: int, seed: int = 0, degree: int = 15, teff_window: float = 700.0) -> dict:
    """AUC of the best single-template χ² (library with every template, the true ones included; spectra
    moved to the primary's velocity; a degree-``degree`` multiplicative polynomial) for ``n`` test
    singles against ``n`` evaluation binaries per regime: a ceiling for single-epoch detection on this
    mock (see :mod:`skyvar.spectra.templatefit`). The library is restricted to templates within
    ``teff_window`` K of the primary's true Teff (the oracle knows it; this only saves time)."""
    from skyvar.sim.spectra import FINE, MARGIN, _library, lamost_wavelength
    from skyvar.spectra.binary_eval import regime_table
    from skyvar.spectra.preprocess import region_mask
    from skyvar.spectra.templatefit import fit_templates, native_templates

    rng = np.random.default_rng(seed)
    meta = dm.meta
    wave = lamost_wavelength()
    lib = _library(dm.sim_cfg.redrock_dir, dm.sim_cfg.bosz_dir, dm.sim_cfg.resolution)
    T_all = native_templates(lib, wave, FINE, MARGIN)
    use = (wave > 4200) & (wave < 8800) & ~region_mask(wave, dm.pre_cfg)
    flux = np.load(dm.sim_dir / "flux.npy", mmap_mode="r")
    ivar = np.load(dm.sim_dir / "ivar.npy", mmap_mode="r")
    am = np.load(dm.sim_dir / "andmask.npy", mmap_mode="r")
    singles = np.flatnonzero((meta["split"] == "test").to_numpy() & (meta["subset"] == "single").to_numpy())
    ev = meta[(meta["split"] == "eval").to_numpy()]
    tgt = ev.index[(ev["dv_abs"] < 20).to_numpy() & (ev["light_ratio"] >= 0.3).to_numpy()].to_numpy()
    rest = ev.index.difference(tgt).to_numpy()
    rows_s = rng.choice(singles, min(n, len(singles)), replace=False)
    rows_b = np.concatenate([rng.choice(tgt, min(n // 2, len(tgt)), replace=False),
                             rng.choice(rest, min(n - n // 2, len(rest)), replace=False)])

    def chi2(rows):
        rows = np.sort(rows)
        out = np.zeros(len(rows))
        for k, r in enumerate(rows):
            near = np.abs(lib.teff - meta["teff1"].iloc[r]) < teff_window
            f = fit_templates(wave, np.asarray(flux[r], dtype=np.float64), np.asarray(ivar[r], dtype=np.float64),
                              T_all[near], rv_kms=meta["rv1"].to_numpy()[[r]],
                              good=(np.asarray(am[r]) == 0) & use, degree=degree)
            out[k] = f.chi2_red[0]
        return rows, out

    t0 = time.perf_counter()
    rs, cs = chi2(rows_s)
    rb, cb = chi2(rows_b)
    mb = meta.loc[rb]
    out = regime_table(cs, cb, mb["dv_abs"].to_numpy(), mb["light_ratio"].to_numpy(), n_boot=200, min_n=10)
    out["n_single"], out["n_binary"] = len(rs), len(rb)
    out["chi2_single"], out["chi2_binary"] = cs.tolist(), cb.tolist()
    out["runtime_s"] = round(time.perf_counter() - t0, 1)
    out["definition"] = ("AUC of chi2/pixel of the best single template (library within "
                         f"{teff_window:.0f} K of the primary incl. the true template, Legendre degree {degree}, "
                         "primary's velocity known); binaries sampled half from the target regime")
    return out


def composite_signal_study(n: int = 80, seed: int = 5, teff_window: float = 700.0, out_dir: str | None = None) -> dict:
    """How large is a composite spectrum's signature against the star-to-star differences of real stars?

    Two nearly noiseless (S/N 10^4, no cosmics, sky residuals or masked chunks) simulations of ``n`` singles
    and ``n`` binaries of the target regime (|Δv| < 20 km/s, V-band light ratio >= 0.3), identical but
    for the stars' individuality: (a) ``line_depth_scatter = ripple_amplitude = 0`` (every single star is
    exactly a library template), (b) the default levels calibrated on the real LAMOST residuals. Each
    spectrum is fitted with the library templates within ``teff_window`` K of its primary (velocity known,
    degree-15 multiplicative polynomial). Returns, per case, the AUC of the best-fit χ² (singles against
    binaries) and the median relative rms residual ``d / (P T) - 1`` of singles and binaries: the
    composite signature is the binaries' residual in (a); the real-star individuality is the singles'
    residual in (b).
    """
    import tempfile

    import pandas as pd

    from skyvar.sim.spectra import (
        FINE,
        MARGIN,
        SpectraSimConfig,
        _library,
        lamost_wavelength,
        simulate_to_disk,
    )
    from skyvar.spectra.binary_eval import auroc
    from skyvar.spectra.preprocess import PreprocessConfig, region_mask
    from skyvar.spectra.templatefit import fit_templates, native_templates

    wave = lamost_wavelength()
    use = (wave > 4200) & (wave < 8800) & ~region_mask(wave, PreprocessConfig(
        mask_ranges=[[5750.0, 6000.0], [6860.0, 6960.0], [7160.0, 7340.0], [7580.0, 7700.0], [8130.0, 8350.0]]))
    out: dict[str, Any] = {"n": n, "seed": seed, "teff_window": teff_window}
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for case, kw in (("no_individuality", {"line_depth_scatter": 0.0, "ripple_amplitude": 0.0}),
                         ("real_level_individuality", {})):
            d = Path(tmp) / case
            cfg = SpectraSimConfig(out_dir=str(d), seed=seed, n_single=n, n_binary=0, n_eval_binary=12 * n,
                                   snr_min=1e4, snr_max=1e4 + 1, cosmic_rate=0.0, bad_chunk_prob=0.0, sky_residual=0.0,
                                   chunk=500, **kw)
            simulate_to_disk(cfg)
            meta = pd.read_parquet(d / "meta.parquet")
            flux = np.load(d / "flux.npy")
            ivar = np.load(d / "ivar.npy")
            lib = _library(None, None, cfg.resolution)
            tgt = np.flatnonzero((meta["subset"] == "binary_eval").to_numpy() & (meta["dv_abs"] < 20).to_numpy()
                                 & (meta["light_ratio"] >= 0.3).to_numpy())[:n]
            sgl = np.flatnonzero((meta["subset"] == "single").to_numpy())[:n]
            res = {}
            for name, rows in (("single", sgl), ("binary", tgt)):
                chi2, rms = [], []
                for r in rows:
                    near = np.flatnonzero(np.abs(lib.teff - meta["teff1"].iloc[r]) < teff_window)
                    T = native_templates(lib, wave, FINE, MARGIN, near)
                    f = fit_templates(wave, flux[r], ivar[r], T, rv_kms=np.array([meta["rv1"].iloc[r]]), good=use)
                    chi2.append(f.chi2_red[0])
                    b = 299792.458
                    rest = np.interp(wave * np.sqrt((1 + meta["rv1"].iloc[r] / b) / (1 - meta["rv1"].iloc[r] / b)),
                                     wave, flux[r])
                    rel = rest[use] / f.model[0][use] - 1
                    rms.append(float(np.sqrt(np.nanmean(rel**2))))
                res[name] = (np.array(chi2), np.array(rms))
            out[case] = {
                "auc_chi2": auroc(np.concatenate([res["single"][0], res["binary"][0]]),
                                  np.r_[np.zeros(len(sgl)), np.ones(len(tgt))]),
                "median_rms_residual_single": float(np.median(res["single"][1])),
                "median_rms_residual_binary": float(np.median(res["binary"][1])),
                "n_single": len(sgl), "n_binary": len(tgt)}
    return out


def _domain_gap(cfg: EvalConfig, model, dm, real_rows: list | None, device: str) -> dict | None:
    """Real LAMOST F/G/K spectra against simulated test singles: their distance in the network's feature
    space and their best-template residual level (σ_sys = sqrt(χ²/pixel - 1) / (S/N_g))."""
    from skyvar.sim.spectra import FINE, MARGIN, _library, lamost_wavelength
    from skyvar.spectra.binary_eval import feature_gap, penultimate_features
    from skyvar.spectra.io import read_lamost_lrs
    from skyvar.spectra.preprocess import Preprocessor, region_mask
    from skyvar.spectra.resample import resample_linear
    from skyvar.spectra.templatefit import fit_templates, native_templates

    if not real_rows:
        return None
    path = Path(_real_path(cfg))
    fgk = [r for r in real_rows if r["subclass"][:1] in ("F", "G", "K")]
    spectra = [read_lamost_lrs(next(iter(sorted(path.glob(r["file"] + "*"))), path / r["file"])) for r in fgk]
    pre_cfg = dict(model.hparams.preprocess or {})
    pre = Preprocessor(pre_cfg)
    b = pre(spectra)
    x_real = b.model_input() if pre.cfg.continuum_channel else (b.flux - 1.0)[:, None, :]
    tr = dm.rows("train")
    te = dm.rows("test")
    meta = dm.meta
    s_tr = tr[(meta["subset"].to_numpy()[tr] == "single")][:3000]
    s_te = te[(meta["subset"].to_numpy()[te] == "single")]

    wave_sim = np.load(dm.sim_dir / "wavelength.npy")
    flux_sim = np.load(dm.sim_dir / "flux.npy", mmap_mode="r")
    ivar_sim = np.load(dm.sim_dir / "ivar.npy", mmap_mode="r")
    am_sim = np.load(dm.sim_dir / "andmask.npy", mmap_mode="r")

    def inputs(rows):  # the model's own preprocessing of the raw simulated spectra
        out = []
        for s0 in range(0, len(rows), 2000):
            r = rows[s0:s0 + 2000]
            bb = pre.from_arrays(wave_sim, flux_sim[r], ivar_sim[r], am_sim[r] != 0)
            out.append(bb.model_input() if pre.cfg.continuum_channel else (bb.flux - 1.0)[:, None, :])
        return np.concatenate(out)

    f_fit = penultimate_features(model, inputs(s_tr), device=device)
    f_ref = penultimate_features(model, inputs(s_te), device=device)
    f_real = penultimate_features(model, x_real, device=device)
    gap = feature_gap(f_fit, f_ref, f_real)
    gap["files"] = [r["file"] for r in fgk]
    # best-template residual level of the real spectra and of simulated singles
    wave = lamost_wavelength()
    sim_cfg = dm.sim_cfg
    lib = _library(sim_cfg.redrock_dir, sim_cfg.bosz_dir, sim_cfg.resolution)
    hot = np.flatnonzero(lib.teff > 3000)
    T = native_templates(lib, wave, FINE, MARGIN, hot)
    use = (wave > 4200) & (wave < 8800) & ~region_mask(wave, pre.cfg)
    sys_real = []
    for s in spectra:
        fl, iv, m = resample_linear(wave, s.wavelength, s.flux, s.ivar, s.mask)
        r = fit_templates(wave, fl, iv, T, rv_kms=np.array([s.meta.get("z", 0.0) * 299792.458]), good=~m & use)
        sys_real.append(float(np.sqrt(max(r.chi2_red[0] - 1, 0)) / s.meta.get("snr_g", np.nan)))
    rows = s_te[:40]
    flux = np.load(dm.sim_dir / "flux.npy", mmap_mode="r")
    ivar = np.load(dm.sim_dir / "ivar.npy", mmap_mode="r")
    am = np.load(dm.sim_dir / "andmask.npy", mmap_mode="r")
    r = fit_templates(wave, np.asarray(flux[rows], float), np.asarray(ivar[rows], float), T,
                      rv_kms=meta["rv1"].to_numpy()[rows], good=(np.asarray(am[rows]) == 0) & use[None, :])
    sys_sim = np.sqrt(np.clip(r.chi2_red - 1, 0, None)) / meta["snr_g"].to_numpy()[rows]
    gap["template_residual_sigma_sys"] = {"real": sys_real, "real_median": float(np.median(sys_real)),
                                          "sim_median": float(np.median(sys_sim)),
                                          "sim_iqr": np.percentile(sys_sim, [25, 75]).tolist()}
    return gap


def linear_baseline_auc(dm, x_test, meta_test, n_single: int = 6000, seed: int = 0) -> float:
    """Test AUC of an L2 logistic regression on the normalised spectra (every 2nd pixel; all training
    binaries and ``n_single`` training singles, class-balanced weights)."""
    from sklearn.linear_model import LogisticRegression

    from skyvar.spectra.binary_eval import auroc

    x, meta = dm.arrays("train")
    y = meta["label"].to_numpy()
    rng = np.random.default_rng(seed)
    singles = np.flatnonzero(y == 0)
    rows = np.sort(np.concatenate([np.flatnonzero(y == 1), rng.choice(singles, min(n_single, len(singles)),
                                                                        replace=False)]))
    xt = np.asarray(x[rows], dtype=np.float32)[:, ::2] - 1.0
    clf = LogisticRegression(C=0.1, max_iter=300, class_weight="balanced").fit(xt, y[rows])
    score = clf.decision_function(np.asarray(x_test, dtype=np.float32)[:, ::2] - 1.0)
    return auroc(score, meta_test["label"].to_numpy())


def _real_path(cfg: EvalConfig) -> str:
    from skyvar.paths import shared_dir

    sd = shared_dir()
    return cfg.real_input.replace("${oc.env:SKYVAR_SHARED,../shared}", str(sd) if sd else "/nonexistent-shared")


def _real_run(cfg: EvalConfig, checkpoint: str) -> list[dict] | None:
    import tempfile

    from astropy.table import Table

    path = _real_path(cfg)
    if not Path(path).exists():
        return None
    with tempfile.TemporaryDirectory() as d:
        BinarySpectraPipeline(model=checkpoint, input=path, out_dir=d, device=cfg.device).run()
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
    from skyvar.utils.atomic import savefig_atomic
    from skyvar.utils.plotting import subplots

    fig_dir.mkdir(parents=True, exist_ok=True)
    # Figure 3 analogue: p_b PDFs and prior-corrected precision.
    fig, ax = subplots(figsize=(6, 4))
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
    # Figure 4 analogue: binary fraction vs mass ratio.
    fig, ax = subplots(figsize=(6, 4))
    qc = 0.5 * (q_edges[1:] + q_edges[:-1])
    for t, c in (("0.5", "tab:blue"), ("0.8", "tab:orange")):
        ax.plot(qc, [np.nan if v is None else v for v in frac_q[t]], "o-", color=c, label=f"$p_{{th}}$ = {t}")
    ax.axvspan(0.71, 0.93, color="0.85", label="training q range")
    ax.set_xlabel("mass ratio q")
    ax.set_ylabel("fraction classified binary")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    savefig_atomic(fig, fig_dir / "binary_fraction_vs_q.png")
    # ROC and reliability diagram.
    fig, ax = subplots(1, 2, figsize=(10, 4))
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
    _figure_regimes(fig_dir, res)


def _figure_regimes(fig_dir: Path, res: dict) -> None:
    """AUC per |Δv| and light-ratio bin on the realistic population: this model, compared models and the
    single-template χ² reference (``python -m skyvar.pipeline.binary_spectra evaluate`` writes it)."""
    from skyvar.utils.atomic import savefig_atomic
    from skyvar.utils.plotting import subplots

    if "regimes_population" not in res:
        return
    fig, ax = subplots(1, 2, figsize=(10, 4))
    curves = [("this model", res["regimes_population"])]
    curves += [(Path(k).stem, v["regimes_population"]) for k, v in res.get("comparisons", {}).items()]
    if "oracle" in res:
        curves.append(("best single-template χ² (library incl. true templates)", res["oracle"]))
    for a_, key in ((ax[0], "by_dv"), (ax[1], "by_light_ratio")):
        names = [r["bin"] for r in res["regimes_population"][key]]
        for name, reg in curves:
            rows = [r for r in reg[key] if "auc" in r]
            xs = [names.index(r["bin"]) for r in rows]
            a_.errorbar(xs, [r["auc"] for r in rows],
                        yerr=np.abs(np.array([r["auc_ci95"] for r in rows]).T - [r["auc"] for r in rows]),
                        marker="o", capsize=3, label=name)
        a_.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
    for a_, t in ((ax[0], "|Δv| bin"), (ax[1], "light ratio F2/F1 (V)")):
        a_.axhline(0.8, color="0.6", ls=":")
        a_.axhline(0.5, color="0.8")
        a_.set(xlabel=t, ylabel="AUC vs test singles", ylim=(0.4, 1.02))
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    savefig_atomic(fig, fig_dir / "auc_by_regime.png")


def main(argv: list[str] | None = None) -> int:
    from skyvar.utils.config import config_from_dotlist

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ceiling":
        import json as _json

        @dataclasses.dataclass
        class _C:
            n: int = 80
            seed: int = 5
            teff_window: float = 700.0
            out: str | None = None

        c = config_from_dotlist(_C, argv[1:])
        res = composite_signal_study(c.n, c.seed, c.teff_window)
        print(_json.dumps(res, indent=1))
        if c.out:
            from skyvar.utils.atomic import write_json_atomic

            write_json_atomic(c.out, res)
        return 0
    if not argv or argv[0] != "evaluate":
        print("usage: python -m skyvar.pipeline.binary_spectra evaluate [checkpoint=...] [fig_dir=...] ...\n"
              "       python -m skyvar.pipeline.binary_spectra ceiling [n=80] [out=ceiling.json]", file=sys.stderr)
        return 2
    cfg = config_from_dotlist(EvalConfig, argv[1:])
    res = evaluate(cfg)
    keys = ["auc", "auc_ci95", "frac_single_p_lt_0.2", "frac_binary_p_gt_0.8", "precision_r1:2_at_0.5",
            "precision_r1:2_at_0.8", "temperature", "ece_raw", "ece_calibrated", "recall_p0.5_by_q", "population"]
    for k in keys:
        print(f"{k}: {res[k]}")
    print("target regime:", res["regimes_population"]["target"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
