"""DataModule of Astronet inputs (global/local views + auxiliary features) with periodicity labels.

Two sources (``source``):

- ``sim`` — option (a): CSST-like light curves from the field simulator's truth fluxes and noise model
  (:mod:`skyvar.sim.csst_lightcurves`, keys in ``sim``), generated on first use into
  ``data_dir/sim-<hash>/``;
- ``store`` — option (b): measured light curves from a light-curve store (``store``: a Parquet file,
  a partitioned store directory written by ``pipeline=associate``, or a directory of Parquet files)
  produced by the detect pipeline (any detector) + association. Labels come either from ``labels``
  (a table keyed by the store's ``source_id`` with ``var_type``/``periodic`` columns, e.g. a
  ``labels.parquet`` of the simulator) or by matching ``sources`` (the associate pipeline's
  ``sources.parquet``: per-source anchor ``x, y``) to the field ``truth`` (``truth.ecsv``) within
  ``match_radius_pix``; unmatched sources (spurious detections) are kept as non-periodic
  (``var_type = "unmatched"``) when ``keep_unmatched``, as the dense-field paper counts them.

Views (:func:`skyvar.lightcurves.views.compute_views`, keys in ``views``) are computed chunk by chunk
(resumable) and cached in ``<cache>/views-<hash>/``: ``views.npz`` (global, local, aux, flag) and
``table.parquet`` (one row per light curve: labels, BLS numbers, flags, eq.-5 S/N). Splits are by
star: a seeded permutation of the source ids into ``splits`` fractions (train, val, test). Training
and validation use the light curves that passed the BLS gate (``view_flag == 0``); the evaluation
(:mod:`skyvar.lightcurves.classify`) counts the flagged ones as predicted non-periodic.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from skyvar.lightcurves.batch import LightCurveBatch
from skyvar.lightcurves.views import ViewConfig, compute_views
from skyvar.sim.csst_lightcurves import (
    CLASS_OF_TYPE,
    CLASSES,
    CSSTLightCurveConfig,
    simulate_csst_lightcurves,
)
from skyvar.utils.atomic import atomic_path, write_json_atomic
from skyvar.utils.config import config_from_dotlist, stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)

STORE_COLUMNS = ["source_id", "band", "time", "mag", "mag_err", "flag"]


# ------------------------------------------------------------------------------------ store reading
def iter_store_batches(path: str | Path, max_rows: int = 5_000_000) -> Iterator[LightCurveBatch]:
    """Yield :class:`LightCurveBatch` es of complete light curves from a light-curve store.

    ``path``: a Parquet file (row groups are read in order; a light curve split across row groups is
    carried over whole), a partitioned store directory (``skyvar.lightcurves.store.open_store`` when
    available: one partition at a time) or a directory of Parquet files (read together).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"light-curve store not found: {path}")
    if path.is_dir():
        try:
            from skyvar.lightcurves.store import open_store  # the light-curve store module, when present
        except ImportError:
            open_store = None
        if open_store is not None:
            for part in open_store(path).partitions:
                df = part.load()
                if len(df):
                    yield LightCurveBatch.from_long(df)
            return
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"no Parquet files under {path}")
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        df = df[[c for c in STORE_COLUMNS if c in df.columns]]
        yield from _batches_from_frame(df, max_rows)
        return
    pf = pq.ParquetFile(path)
    cols = [c for c in STORE_COLUMNS if c in pf.schema_arrow.names]
    missing = {"source_id", "time", "mag"} - set(cols)
    if missing:
        raise ValueError(f"{path}: not a light-curve store, missing columns {sorted(missing)}")
    acc: list[pd.DataFrame] = []
    n_acc = 0
    carry = None
    seen: set = set()
    last_group = pf.num_row_groups - 1
    for i in range(pf.num_row_groups):
        df = pf.read_row_group(i, columns=cols).to_pandas()
        if carry is not None:
            df = pd.concat([carry, df], ignore_index=True)
            carry = None
        if i < last_group and len(df):  # the last source may continue in the next row group
            tail = df["source_id"].to_numpy() == df["source_id"].iloc[-1]
            carry, df = df[tail], df[~tail]
        acc.append(df)
        n_acc += len(df)
        if n_acc >= max_rows or i == last_group:
            yield from _checked(pd.concat(acc, ignore_index=True), max_rows, seen, path)
            acc, n_acc = [], 0
    if carry is not None and len(carry):
        yield from _checked(carry, max_rows, seen, path)


def _checked(df: pd.DataFrame, max_rows: int, seen: set, path: Path) -> Iterator[LightCurveBatch]:
    ids = set(np.unique(df["source_id"].to_numpy()).tolist())
    again = ids & seen
    if again:
        raise ValueError(f"{path}: rows of source(s) {sorted(again)[:5]} are not contiguous in the file; "
                         "sort the store by source_id (or write it with pipeline=associate)")
    seen |= ids
    yield from _batches_from_frame(df, max_rows)


def _batches_from_frame(df: pd.DataFrame, max_rows: int) -> Iterator[LightCurveBatch]:
    if not len(df):
        return
    ids = df["source_id"].to_numpy()
    uniq, first = np.unique(ids, return_index=True)
    per = max(1, int(len(uniq) * max_rows / max(len(df), 1)))
    for c0 in range(0, len(uniq), per):
        sel = np.isin(ids, uniq[c0 : c0 + per])
        yield LightCurveBatch.from_long(df[sel])


def labels_from_truth(sources: pd.DataFrame, truth: pd.DataFrame, radius_pix: float = 1.0,
                      keep_unmatched: bool = True) -> pd.DataFrame:
    """Label store sources by their nearest truth star within ``radius_pix`` (pixel ``x, y``).

    Returns one row per source: ``source_id`` (the store's), ``truth_id``, ``sep_pix``, ``var_type``,
    ``period``, ``periodic``, ``mag`` (truth), ``label``, ``class_name``, ``class_id``.
    """
    from scipy.spatial import cKDTree

    for col in ("x", "y"):
        if col not in sources.columns or col not in truth.columns:
            raise ValueError(f"matching sources to truth needs pixel column {col!r} in both tables")
    tree = cKDTree(np.c_[truth["x"].to_numpy(float), truth["y"].to_numpy(float)])
    d, j = tree.query(np.c_[sources["x"].to_numpy(float), sources["y"].to_numpy(float)],
                      distance_upper_bound=radius_pix)
    ok = np.isfinite(d)
    j = np.where(ok, j, 0)
    out = pd.DataFrame({"source_id": sources["source_id"].to_numpy(), "sep_pix": np.where(ok, d, np.nan)})
    out["truth_id"] = np.where(ok, truth["source_id"].to_numpy()[j], -1)
    vt = truth["var_type"].astype(str).to_numpy()[j]
    out["var_type"] = np.where(ok, vt, "unmatched")
    out["period"] = np.where(ok, truth["period"].to_numpy(float)[j], np.nan)
    out["periodic"] = np.where(ok, truth["periodic"].to_numpy(bool)[j], False)
    out["mag"] = np.where(ok, truth["mag"].to_numpy(float)[j], np.nan)
    if not keep_unmatched:
        out = out[ok].reset_index(drop=True)
    return _finish_labels(out)


def _finish_labels(lab: pd.DataFrame) -> pd.DataFrame:
    lab = lab.copy()
    lab["label"] = lab["periodic"].astype(np.int64)
    lab["class_name"] = lab["var_type"].map(CLASS_OF_TYPE).fillna("constant")
    lab["class_id"] = lab["class_name"].map({c: i for i, c in enumerate(CLASSES)}).astype(np.int64)
    for c in ("snr_lc", "snr_lc_total"):
        if c not in lab.columns:
            lab[c] = np.nan
    return lab


def _read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    from astropy.table import Table

    t = Table.read(path)
    return t.to_pandas() if hasattr(t, "to_pandas") else pd.DataFrame(np.asarray(t))


# ---------------------------------------------------------------------------------- view cache
def build_view_cache(store: str | Path, labels: pd.DataFrame, cfg: ViewConfig, out_dir: str | Path,
                     progress: bool = True, mask_flags: int | None = None, augment: dict | None = None) -> Path:
    """Compute views for every light curve of ``store`` that has a label; cache under ``out_dir``
    (resumable per chunk). With ``mask_flags`` only points whose store flag hits those bits are
    dropped (the light-curve pipeline's policy); otherwise ``cfg.drop_flagged`` applies. With
    ``augment`` (keys of :class:`skyvar.data.measured_lightcurves.AugmentConfig`) every chunk is
    augmented first (seeded by the config's ``seed`` and the chunk number). Returns ``out_dir``."""
    aug_cfg = None
    if augment:
        from skyvar.data.measured_lightcurves import AugmentConfig, augment_batch

        aug_cfg = config_from_dotlist(AugmentConfig, base=dict(augment))
    out = Path(out_dir)
    done = out / "done.json"
    if done.exists():
        return out
    chunks = out / "chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    labelled = set(labels["source_id"].tolist())
    parts = []
    for i, batch in enumerate(iter_store_batches(store)):
        f = chunks / f"views_{i:05d}.npz"
        parts.append(f)
        if f.exists():
            continue
        keep = np.isin(batch.source_id, list(labelled)) if labelled else np.ones(len(batch), bool)
        if not keep.all():
            batch = _subset(batch, keep)
        if mask_flags is not None and batch.flag is not None:
            batch.mask &= (batch.flag & int(mask_flags)) == 0
            batch.flag = None
        if aug_cfg is not None:
            batch = augment_batch(batch, aug_cfg, np.random.default_rng([aug_cfg.seed, i]))
        tc = time.perf_counter()
        v = compute_views(batch, cfg)
        tab = v.table()
        with atomic_path(f) as tmp:
            np.savez(tmp, global_view=v.global_view, local_view=v.local_view, aux=v.aux,
                     table=tab.to_records(index=False))
        if progress:
            log.info("views chunk %d: %d light curves in %.1f s (%.1f ms each), %d passed the BLS gate", i,
                     len(batch), time.perf_counter() - tc, 1e3 * (time.perf_counter() - tc) / max(len(batch), 1),
                     int((v.flag == 0).sum()))
    data = [np.load(p, allow_pickle=False) for p in parts]
    g = np.concatenate([d["global_view"] for d in data])
    loc = np.concatenate([d["local_view"] for d in data])
    aux = np.concatenate([d["aux"] for d in data])
    tab = pd.DataFrame(np.concatenate([d["table"] for d in data]))
    tab = tab.merge(labels, on="source_id", how="left", suffixes=("", "_label"))
    with atomic_path(out / "views.npz") as tmp:
        np.savez(tmp, global_view=g, local_view=loc, aux=aux)
    with atomic_path(out / "table.parquet") as tmp:
        tab.to_parquet(tmp, index=False)
    write_json_atomic(done, {"n": len(tab), "n_ok": int((tab["view_flag"] == 0).sum()),
                             "wall_s": round(time.perf_counter() - t0, 1)})
    for p in parts:
        p.unlink(missing_ok=True)
    return out


def _subset(b: LightCurveBatch, keep: np.ndarray) -> LightCurveBatch:
    return LightCurveBatch(source_id=b.source_id[keep], band=b.band[keep], time=b.time[keep], mag=b.mag[keep],
                           mag_err=b.mag_err[keep], mask=b.mask[keep],
                           flag=b.flag[keep] if b.flag is not None else None)


# ------------------------------------------------------------------------------------ dataset
class ViewDataset(Dataset):
    def __init__(self, g: np.ndarray, loc: np.ndarray, aux: np.ndarray, label: np.ndarray, class_id: np.ndarray):
        self.g = torch.as_tensor(g, dtype=torch.float32)
        self.loc = torch.as_tensor(loc, dtype=torch.float32)
        self.aux = torch.as_tensor(aux, dtype=torch.float32)
        self.label = torch.as_tensor(label, dtype=torch.long)
        self.class_id = torch.as_tensor(class_id, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i):
        return {"global_view": self.g[i], "local_view": self.loc[i], "aux": self.aux[i], "label": self.label[i],
                "class_id": self.class_id[i]}


class LightCurveViewsDataModule(L.LightningDataModule):
    def __init__(self, data_dir: str = "datasets/csst_lightcurves", source: str = "sim", sim: dict | None = None,
                 store: str | None = None, labels: str | None = None, sources: str | None = None,
                 truth: str | None = None, match_radius_pix: float = 1.0, keep_unmatched: bool = True,
                 views: dict | None = None, splits: tuple[float, float, float] | list[float] = (0.7, 0.15, 0.15),
                 batch_size: int = 256, num_workers: int = 0, seed: int = 12345, mask_flags: int | None = None,
                 progress: bool = True, augment: dict | None = None):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.source = source
        self.sim_cfg = config_from_dotlist(CSSTLightCurveConfig, base=dict(sim or {})) if source == "sim" else None
        self.store, self.labels_path, self.sources_path, self.truth_path = store, labels, sources, truth
        self.match_radius_pix, self.keep_unmatched = match_radius_pix, keep_unmatched
        self.mask_flags = mask_flags
        self.view_cfg = config_from_dotlist(ViewConfig, base=dict(views or {}))
        self.splits = tuple(float(s) for s in splits)
        if len(self.splits) != 3 or min(self.splits) < 0 or sum(self.splits) <= 0:
            raise ValueError(f"splits must be three non-negative fractions (train, val, test), got {splits}")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.progress = progress
        self.augment = dict(augment) if augment else None
        self.table: pd.DataFrame | None = None
        self._arrays: dict | None = None

    # ---------------------------------------------------------------- paths / preparation
    @property
    def source_dir(self) -> Path:
        if self.source == "sim":
            cfg = dataclasses.replace(self.sim_cfg, out_dir="")
            return self.data_dir / f"sim-{stable_hash(cfg)}"
        if self.source == "store":
            if not self.store:
                raise ValueError("source=store needs store=<light-curve store path>")
            key = {"store": str(Path(self.store).resolve()), "labels": self.labels_path, "sources": self.sources_path,
                   "truth": self.truth_path, "r": self.match_radius_pix, "keep": self.keep_unmatched,
                   "mask_flags": self.mask_flags}
            return self.data_dir / f"store-{stable_hash(key)}"
        raise ValueError(f"unknown source {self.source!r} (sim | store)")

    @property
    def cache_dir(self) -> Path:
        vc = dataclasses.asdict(self.view_cfg)
        for k in ("device", "chunk_size", "bls_chunk", "num_threads"):  # execution settings do not change the views
            vc.pop(k, None)
        if self.augment:
            return self.source_dir / f"views-{stable_hash({'views': vc, 'augment': self.augment})}"
        return self.source_dir / f"views-{stable_hash(vc)}"

    def _labels_and_store(self) -> tuple[pd.DataFrame, Path]:
        if self.source == "sim":
            cfg = dataclasses.replace(self.sim_cfg, out_dir=str(self.source_dir))
            simulate_csst_lightcurves(cfg)
            lab = pd.read_parquet(self.source_dir / "labels.parquet")
            return lab, self.source_dir / "lightcurves.parquet"
        store = Path(self.store)
        if self.labels_path:
            lab = _read_table(self.labels_path)
            if "periodic" not in lab.columns or "var_type" not in lab.columns:
                raise ValueError(f"{self.labels_path}: labels need 'source_id', 'var_type' and 'periodic' columns")
            lab = _finish_labels(lab)
        elif self.sources_path and self.truth_path:
            lab = labels_from_truth(_read_table(self.sources_path), _read_table(self.truth_path),
                                    self.match_radius_pix, self.keep_unmatched)
        else:
            raise ValueError("source=store needs labels=<table> or sources=<sources.parquet> + truth=<truth.ecsv>")
        return lab, store

    def prepare_data(self) -> None:
        if (self.cache_dir / "done.json").exists():
            return
        lab, store = self._labels_and_store()
        self.source_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.cache_dir / "view_config.json", dataclasses.asdict(self.view_cfg))
        build_view_cache(store, lab, self.view_cfg, self.cache_dir, progress=self.progress,
                         mask_flags=self.mask_flags if self.source == "store" else None, augment=self.augment)

    # ---------------------------------------------------------------- setup / splits
    def load(self) -> pd.DataFrame:
        """The cached table (all light curves, with ``split``) and arrays; builds them if needed."""
        if self.table is not None:
            return self.table
        self.prepare_data()
        d = np.load(self.cache_dir / "views.npz")
        self._arrays = {k: d[k] for k in ("global_view", "local_view", "aux")}
        tab = pd.read_parquet(self.cache_dir / "table.parquet")
        rng = np.random.default_rng(self.seed)
        ids = np.unique(tab["source_id"].to_numpy())
        perm = ids[rng.permutation(len(ids))]
        fr = np.asarray(self.splits) / sum(self.splits)
        n_tr, n_va = int(round(fr[0] * len(ids))), int(round(fr[1] * len(ids)))
        split_of = pd.Series(np.r_[np.zeros(n_tr, int), np.ones(n_va, int), np.full(len(ids) - n_tr - n_va, 2)],
                             index=perm)
        tab["split"] = np.array(["train", "val", "test"])[split_of.loc[tab["source_id"]].to_numpy()]
        tab["label"] = tab["label"].fillna(0).astype(np.int64)
        tab["class_id"] = tab["class_id"].fillna(0).astype(np.int64)
        self.table = tab
        return tab

    def setup(self, stage: str | None = None) -> None:
        tab = self.load()
        a = self._arrays
        self.datasets = {}
        for s in ("train", "val", "test"):
            sel = np.flatnonzero((tab["split"] == s).to_numpy() & (tab["view_flag"] == 0).to_numpy())
            self.datasets[s] = ViewDataset(a["global_view"][sel], a["local_view"][sel], a["aux"][sel],
                                           tab["label"].to_numpy()[sel], tab["class_id"].to_numpy()[sel])
        log.info("light-curve views: %s", {s: (len(d), int(d.label.sum())) for s, d in self.datasets.items()})

    def split_arrays(self, split: str | None, gated_only: bool = False) -> tuple[pd.DataFrame, dict]:
        """(table rows, arrays) of a split (None: all rows), including flagged rows unless ``gated_only``."""
        tab = self.load()
        sel = np.ones(len(tab), bool) if split is None else (tab["split"] == split).to_numpy().copy()
        if gated_only:
            sel = sel & (tab["view_flag"] == 0).to_numpy()
        idx = np.flatnonzero(sel)
        return tab.iloc[idx].reset_index(drop=True), {k: v[idx] for k, v in self._arrays.items()}

    def train_aux(self) -> np.ndarray:
        return self.datasets["train"].aux.numpy() if hasattr(self, "datasets") else self.split_arrays("train", True)[1]["aux"]

    def train_labels(self) -> np.ndarray:
        return self.datasets["train"].label.numpy()

    def train_classes(self) -> np.ndarray:
        return self.datasets["train"].class_id.numpy()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        g = torch.Generator()
        g.manual_seed(self.seed)
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=g if shuffle else None,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def summary(self) -> dict:
        tab = self.load()
        return json.loads(tab.groupby(["split", "var_type"]).size().rename("n").reset_index().to_json(orient="records"))
