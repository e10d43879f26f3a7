"""Astronet training data from light curves *measured* by the field pipeline (option (b)), mixed with
truth-noise curves (option (a)) and augmented with the systematics measured curves have.

:class:`MeasuredViewsDataModule` builds, on first use and cached under ``data_dir``:

1. **Measured fields.** For each entry of ``fields`` (keys of :class:`skyvar.sim.field.FieldSimConfig`:
   ``seed``, ``size``, ``n_epochs``, ``variability.*`` …) a CSST-like series is simulated into
   ``data_dir/field-<hash>/sim`` and run through ``pipeline=field`` with the pipeline's default
   photometry (``detector`` on a median stack for the reference catalogue + forced PSF photometry on
   every frame) and association, *without* truth, into ``field-<hash>/run`` — exactly the light
   curves an end-to-end run classifies (blends, crowding, frame zero points, missing epochs). Sources
   are labelled by their nearest truth star within ``match_radius_pix`` (unmatched = spurious
   detections, non-periodic); the accumulated light-curve S/N of the truth star (the dense-field
   paper's eq. 5, :meth:`skyvar.evaluate.lightcurves.TimeSeriesTruth.lightcurve_snr_total`) is kept
   for per-regime scoring. An entry ``{sim_dir: D}`` measures a series simulated before (frames and
   truth in ``D``, e.g. an end-to-end run's) instead of simulating one. Use seeds that differ from every evaluation field: a seed is a separate
   patch of sky (positions, magnitudes, variables are all drawn from it).
2. **Truth-noise curves** (``mix``: the keys of ``conf/data/csst_lightcurves.yaml``'s ``sim``, or null)
   with ``augment`` applied before the views are built (:func:`augment_batch`): per-epoch zero-point
   jitter, missing blocks of epochs, isolated outliers.
3. **Splits by sky region**, not by star: measured sources are split by cells of ``region_px`` pixels
   (a seeded draw per cell), so a variable and the neighbours that carry its leaked signal always land
   in the same split. Truth-noise curves have no neighbours and are split by star.

Everything downstream (``setup``, loaders, ``split_arrays``, the evaluation in
:mod:`skyvar.lightcurves.classify`) is that of :class:`~skyvar.data.lightcurve_views.LightCurveViewsDataModule`;
the table gains ``origin`` (``field-<seed>`` or ``sim``) so every metric can be given per origin.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from skyvar.data.lightcurve_views import LightCurveViewsDataModule, labels_from_truth
from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.utils.atomic import atomic_path, write_json_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)

__all__ = ["AugmentConfig", "augment_batch", "MeasuredViewsDataModule", "build_measured_field"]


@dataclasses.dataclass
class AugmentConfig:
    """Systematics of measured light curves, applied to truth-noise curves (magnitudes).

    Each light curve independently draws: a zero-point jitter rms from U(0, ``zp_jitter_max``) mag,
    added per epoch; with probability ``p_gaps`` between 1 and ``max_gaps`` missing blocks of
    ``gap_min``–``gap_max`` consecutive epochs; with probability ``p_outliers`` a fraction
    U(0, ``outlier_frac_max``) of its epochs displaced by ±U(0.1, 1) mag. ``copies``: augmented copies
    per light curve added beside the original (0 = augment in place)."""

    zp_jitter_max: float = 0.01
    p_gaps: float = 0.5
    max_gaps: int = 3
    gap_min: int = 5
    gap_max: int = 60
    p_outliers: float = 0.3
    outlier_frac_max: float = 0.01
    seed: int = 0


def augment_batch(batch: LightCurveBatch, cfg: AugmentConfig, rng: np.random.Generator) -> LightCurveBatch:
    """A copy of ``batch`` with the systematics of :class:`AugmentConfig` (vectorised over curves)."""
    n, t = batch.mag.shape
    mag = batch.mag.astype(float, copy=True)
    mask = batch.mask.copy()
    sig = rng.uniform(0, cfg.zp_jitter_max, n)[:, None]
    mag += rng.normal(size=(n, t)) * sig
    if cfg.p_gaps > 0 and t > cfg.gap_max:
        k = np.where(rng.random(n) < cfg.p_gaps, rng.integers(1, cfg.max_gaps + 1, n), 0)
        for g in range(int(k.max(initial=0))):
            rows = np.flatnonzero(k > g)
            start = rng.integers(0, t - cfg.gap_min, len(rows))
            length = rng.integers(cfg.gap_min, cfg.gap_max + 1, len(rows))
            cols = np.arange(t)[None, :]
            hole = (cols >= start[:, None]) & (cols < (start + length)[:, None])
            mask[rows] &= ~hole
    if cfg.p_outliers > 0:
        has = rng.random(n) < cfg.p_outliers
        frac = np.where(has, rng.uniform(0, cfg.outlier_frac_max, n), 0.0)
        hit = rng.random((n, t)) < frac[:, None]
        mag += np.where(hit, rng.choice([-1.0, 1.0], size=(n, t)) * rng.uniform(0.1, 1.0, (n, t)), 0.0)
    return dataclasses.replace(batch, mag=mag.astype(batch.mag.dtype), mask=mask)


# ----------------------------------------------------------------------------------- measured fields
def _field_key(field: dict, detector: str, overrides: list[str]) -> str:
    return stable_hash({"field": field, "detector": detector, "overrides": list(overrides)})


def build_measured_field(field: dict, out_dir: str | Path, detector: str = "pnet", overrides: list[str] | None = None,
                         match_radius_pix: float = 1.0, progress: bool = False) -> dict:
    """Simulate one field series and measure it with ``pipeline=field`` (photometry + association,
    no truth); label its sources. Returns paths ``{"store", "labels", "sim", "run"}``; every step
    resumes (the simulator and the pipeline's stages reuse what is complete)."""
    from skyvar.evaluate.lightcurves import TimeSeriesTruth, noise_params
    from skyvar.pipeline.api import run as run_pipeline
    from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk
    from skyvar.utils.config import config_from_dotlist

    out = Path(out_dir)
    field = dict(field)
    existing = field.pop("sim_dir", None)
    sim_dir = Path(existing or field.get("out_dir") or out / "sim")
    run_dir = out / "run"
    labels_path = out / "labels.parquet"
    paths = {"store": run_dir / "associate" / "store", "labels": labels_path, "sim": sim_dir, "run": run_dir}
    if labels_path.exists():
        return paths
    if existing:  # a series simulated before (e.g. by an end-to-end run): used as it is, not re-simulated
        if not (sim_dir / "truth.ecsv").exists() or not (sim_dir / "frames").is_dir():
            raise FileNotFoundError(f"sim_dir={sim_dir}: no truth.ecsv and frames/ (a simulated series) there")
        n_ep = len(list((sim_dir / "frames").glob("*.fits")))
    else:  # field.out_dir: frames simulated elsewhere (e.g. shared by several data sets)
        cfg = config_from_dotlist(FieldSimConfig, base={**field, "out_dir": str(sim_dir)})
        simulate_field_to_disk(cfg, progress=progress)
        n_ep = int(cfg.n_epochs)
    # photometry + association only: the light-curve stages are the classifier's business here
    stages = ["indices", "excess", "flares", "periodogram", "astronet"]
    run_pipeline("field", f"detector={detector}", *[f"pipeline.lightcurves.stages.{s}=null" for s in stages],
                 "pipeline.plots=false", f"pipeline.progress={str(progress).lower()}", *(overrides or []),
                 input=str(sim_dir / "frames"), out_dir=str(run_dir))
    sources = pd.read_parquet(run_dir / "associate" / "sources.parquet")
    tr = TimeSeriesTruth(sim_dir)
    lab = labels_from_truth(sources, tr.table, match_radius_pix, keep_unmatched=True)
    snr_tot = tr.lightcurve_snr_total(noise_params(tr))
    row = tr._row.reindex(lab["truth_id"].to_numpy()).to_numpy()
    ok = np.isfinite(row)
    lab["snr_lc_total"] = np.where(ok, snr_tot[np.where(ok, row, 0).astype(int)], np.nan)
    lab["snr_lc"] = lab["snr_lc_total"] / np.sqrt(n_ep)
    xy = sources.set_index("source_id")[["x", "y"]].reindex(lab["source_id"].to_numpy())
    lab["x"], lab["y"] = xy["x"].to_numpy(), xy["y"].to_numpy()
    with atomic_path(labels_path) as tmp:
        lab.to_parquet(tmp, index=False)
    write_json_atomic(out / "field.json", {"field": dict(field), "detector": detector, "n_sources": len(lab),
                                           "n_periodic": int(lab["periodic"].sum())})
    return paths


class MeasuredViewsDataModule(LightCurveViewsDataModule):
    """Astronet views of measured light curves of simulated fields (+ augmented truth-noise curves);
    see the module documentation. The keys shared with :class:`LightCurveViewsDataModule` mean the
    same; ``mask_flags`` is the light-curve pipeline's point policy (store flags that drop a point)."""

    def __init__(self, data_dir: str = "datasets/astronet_measured", fields: list[dict] | None = None,
                 detector: str = "pnet", pipeline_overrides: list[str] | None = None, mix: dict | None = None,
                 augment: dict | None = None, region_px: float = 128.0, match_radius_pix: float = 1.0,
                 views: dict | None = None, splits=(0.7, 0.15, 0.15), batch_size: int = 256, num_workers: int = 0,
                 seed: int = 12345, mask_flags: int | list | None = None, progress: bool = True,
                 easy_negative_fraction: float = 1.0, hard_depth_snr: float = 5.0):
        from skyvar.flags import mask as flag_mask
        from skyvar.pipeline.components import plain

        mf = flag_mask(plain(mask_flags)) if mask_flags is not None else None
        super().__init__(data_dir=data_dir, source="store", store="<fields>", views=views, splits=splits,
                         batch_size=batch_size, num_workers=num_workers, seed=seed, mask_flags=mf,
                         match_radius_pix=match_radius_pix, progress=progress)
        self.fields = [dict(plain(f)) for f in (fields or [])]
        if not self.fields and not mix:
            raise ValueError("MeasuredViewsDataModule needs fields (simulated series to measure) and/or mix")
        self.detector = str(detector)
        self.pipeline_overrides = list(pipeline_overrides or [])
        self.mix = dict(plain(mix)) if mix else None
        self.augment = dict(plain(augment)) if augment else None
        self.region_px = float(region_px)
        if not 0 < easy_negative_fraction <= 1:
            raise ValueError(f"easy_negative_fraction must be in (0, 1], got {easy_negative_fraction}")
        self.easy_negative_fraction = float(easy_negative_fraction)
        self.hard_depth_snr = float(hard_depth_snr)

    # ------------------------------------------------------------------ parts
    def _field_dir(self, f: dict) -> Path:
        return self.data_dir / f"field-{_field_key(f, self.detector, self.pipeline_overrides)}"

    def _parts(self) -> list[tuple[str, LightCurveViewsDataModule]]:
        parts = []
        vc = dataclasses.asdict(self.view_cfg)
        for f in self.fields:
            d = self._field_dir(f)
            p = build_measured_field(f, d, self.detector, self.pipeline_overrides, self.match_radius_pix,
                                     progress=self.progress)
            dm = LightCurveViewsDataModule(data_dir=str(d), source="store", store=str(p["store"]),
                                           labels=str(p["labels"]), views=vc, splits=self.splits, seed=self.seed,
                                           mask_flags=self.mask_flags, progress=self.progress)
            parts.append((f"field-{f.get('seed', 0)}", dm))
        if self.mix:
            dm = LightCurveViewsDataModule(data_dir=str(self.data_dir / "sim"), source="sim", sim=self.mix, views=vc,
                                           splits=self.splits, seed=self.seed, progress=self.progress,
                                           augment=self.augment)
            parts.append(("sim", dm))
        return parts

    @property
    def cache_dir(self) -> Path:
        vc = dataclasses.asdict(self.view_cfg)
        for k in ("device", "chunk_size", "bls_chunk", "num_threads"):
            vc.pop(k, None)
        key = {"fields": self.fields, "detector": self.detector, "overrides": self.pipeline_overrides,
               "mix": self.mix, "augment": self.augment, "views": vc, "mask_flags": self.mask_flags}
        return self.data_dir / f"combined-{stable_hash(key)}"

    def prepare_data(self) -> None:
        for _, dm in self._parts():
            dm.prepare_data()

    def load(self) -> pd.DataFrame:
        if self.table is not None:
            return self.table
        tabs, arrs = [], []
        rng = np.random.default_rng(self.seed)
        fr = np.asarray(self.splits) / sum(self.splits)
        for origin, dm in self._parts():
            tab = dm.load().copy()
            tab["origin"] = origin
            if origin.startswith("field"):
                # split by sky cell: a variable and its blended neighbours stay together
                cx = np.floor(tab["x"].to_numpy(float) / self.region_px)
                cy = np.floor(tab["y"].to_numpy(float) / self.region_px)
                cell = np.nan_to_num(cx, nan=-1).astype(np.int64) * 100_003 + np.nan_to_num(cy, nan=-1).astype(np.int64)
                uniq = np.unique(cell)
                draw = rng.random(len(uniq))
                which = np.searchsorted(np.cumsum(fr)[:-1], draw, side="right")
                tab["split"] = np.array(["train", "val", "test"])[which[np.searchsorted(uniq, cell)]]
            tabs.append(tab)
            arrs.append(dm._arrays)
        cols = sorted(set.intersection(*(set(t.columns) for t in tabs)))
        self.table = pd.concat([t[cols] for t in tabs], ignore_index=True)
        self._arrays = {k: np.concatenate([a[k] for a in arrs]) for k in ("global_view", "local_view", "aux")}
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.cache_dir / "summary.json", json.loads(
            self.table.groupby(["origin", "split"]).agg(n=("label", "size"), n_periodic=("label", "sum"))
            .reset_index().to_json(orient="records")))
        return self.table

    def setup(self, stage: str | None = None) -> None:
        """Datasets of the light curves with views; the training split keeps every periodic curve and
        every *hard* negative (BLS depth S/N >= ``hard_depth_snr``: spurious dips, blends, systematics)
        but only ``easy_negative_fraction`` of the easy ones (a seeded draw), which bounds the CPU cost
        of an epoch without changing what the network must learn. The class weight (``pos_weight``) and
        the recorded training prior follow from the kept sample."""
        import torch

        from skyvar.data.lightcurve_views import ViewDataset

        tab = self.load()
        a = self._arrays
        ok = tab["view_flag"].to_numpy() == 0
        drop = np.zeros(len(tab), bool)
        if self.easy_negative_fraction < 1:
            easy = (tab["label"].to_numpy() == 0) & ~(np.nan_to_num(tab["bls_depth_snr"].to_numpy(float), nan=0.0)
                                                       >= self.hard_depth_snr)
            drop = easy & (np.random.default_rng([self.seed, 7]).random(len(tab)) >= self.easy_negative_fraction)
        self.datasets = {}
        for s in ("train", "val", "test"):
            sel = (tab["split"] == s).to_numpy() & ok
            if s == "train":
                sel &= ~drop
            idx = np.flatnonzero(sel)
            self.datasets[s] = ViewDataset(a["global_view"][idx], a["local_view"][idx], a["aux"][idx],
                                           tab["label"].to_numpy()[idx], tab["class_id"].to_numpy()[idx])
        log.info("measured light-curve views (n, periodic): %s",
                 {s: (len(d), int(torch.as_tensor(d.label).sum())) for s, d in self.datasets.items()})
