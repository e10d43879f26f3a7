"""DataModule of simulated LAMOST-like spectra for the binary-star CNN.

On first use it simulates the data set (``skyvar.sim.spectra``, fixed seed) into
``<data_dir>/sim-<hash of the sim config>/`` and caches the preprocessed (normalised) spectra as
``norm-<hash of the preprocessing config>.npy`` (float16, flux/continuum) next to it; later runs reuse
both. Splits are the simulator's (80/10/10 of singles and intermediate-q binaries); the evaluation-only
binaries (all q) are available through :meth:`arrays` (``split='eval'``). Splits are by *template*
(no test spectrum shares a stellar template with a training spectrum; see :mod:`skyvar.sim.spectra`).
With ``preprocess.continuum_channel`` the log-continuum is cached too (``logcont-<hash>.npy``) and the
model input has two channels.

Imbalance (≈ 18 singles per binary) is handled as the paper: the training loader oversamples the
binaries with a weighted sampler so that each class is drawn equally often (``oversample``).
Model input: normalised flux - 1 (0 at masked pixels) [and log10 continuum/median], shape (C, npix).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from skyvar.utils.config import stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)


class NormalisedSpectra(Dataset):
    def __init__(self, flux: np.ndarray, labels: np.ndarray, logcont: np.ndarray | None = None):
        self.flux = flux
        self.logcont = logcont
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = np.asarray(self.flux[i], dtype=np.float32)[None, :] - 1.0
        if self.logcont is not None:
            x = np.concatenate([x, np.asarray(self.logcont[i], dtype=np.float32)[None, :]], axis=0)
        return torch.from_numpy(x), int(self.labels[i])


class SpectraDataModule(L.LightningDataModule):
    def __init__(self, data_dir: str = "datasets/lamost_lrs", sim: dict | None = None,
                 preprocess: dict | None = None, batch_size: int = 128, num_workers: int = 0,
                 oversample: bool = True, samples_per_epoch: int | None = None, seed: int = 12345,
                 preprocess_chunk: int = 2000):
        super().__init__()
        from omegaconf import OmegaConf

        # plain containers, as SpecNetModule stores them (Lightning compares the shared `preprocess` key)
        sim = OmegaConf.to_container(sim, resolve=True) if OmegaConf.is_config(sim) else sim
        preprocess = OmegaConf.to_container(preprocess, resolve=True) if OmegaConf.is_config(preprocess) else preprocess
        self.save_hyperparameters()
        from skyvar.sim.spectra import SpectraSimConfig, resolve_paths
        from skyvar.spectra.preprocess import PreprocessConfig

        self.sim_cfg = resolve_paths(SpectraSimConfig(**dict(sim or {})))
        self.pre_cfg = PreprocessConfig(**dict(preprocess or {}))
        sim_key = {k: v for k, v in dataclasses.asdict(self.sim_cfg).items()
                   if k not in ("out_dir", "chunk", "write_fits", "redrock_dir", "bosz_dir", "noise_reference_dir")}
        self.sim_dir = Path(data_dir) / f"sim-{stable_hash(sim_key)}"
        self.sim_cfg = dataclasses.replace(self.sim_cfg, out_dir=str(self.sim_dir))
        self.norm_path = self.sim_dir / f"norm-{stable_hash(dataclasses.asdict(self.pre_cfg))}.npy"
        self.keep_path = self.norm_path.with_suffix(".keep.npy")
        self.logcont_path = self.sim_dir / f"logcont-{stable_hash(dataclasses.asdict(self.pre_cfg))}.npy"
        self._meta = None
        self._flux = None
        self._logcont = None

    # ------------------------------------------------------------------ data on disk
    def prepare_data(self):
        from skyvar.sim.spectra import simulate_to_disk

        if not (self.sim_dir / "config.json").exists():
            log.info("simulating the LAMOST-like data set into %s (first use)", self.sim_dir)
            simulate_to_disk(self.sim_cfg)
        if not self.norm_path.exists() or (self.pre_cfg.continuum_channel and not self.logcont_path.exists()):
            self._preprocess_to_disk()

    def _preprocess_to_disk(self):
        from skyvar.spectra.preprocess import Preprocessor
        from skyvar.utils.atomic import atomic_path, write_json_atomic

        pre = Preprocessor(self.pre_cfg)
        wave = np.load(self.sim_dir / "wavelength.npy")
        flux = np.load(self.sim_dir / "flux.npy", mmap_mode="r")
        ivar = np.load(self.sim_dir / "ivar.npy", mmap_mode="r")
        am = np.load(self.sim_dir / "andmask.npy", mmap_mode="r")
        n = len(flux)
        keep = np.zeros(n, dtype=bool)
        failures = []
        log.info("preprocessing %d spectra (smooth_L = %.0f Å) -> %s", n, self.pre_cfg.smooth_L, self.norm_path)
        lc_ctx = atomic_path(self.logcont_path) if self.pre_cfg.continuum_channel else contextlib.nullcontext()
        with atomic_path(self.norm_path) as tmp, lc_ctx as tmp_lc:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, pre.npix))
            lc = (np.lib.format.open_memmap(tmp_lc, mode="w+", dtype=np.float16, shape=(n, pre.npix))
                  if tmp_lc is not None else None)
            step = self.hparams.preprocess_chunk
            for s in range(0, n, step):
                sl = slice(s, min(n, s + step))
                b = pre.from_arrays(wave, flux[sl], ivar[sl], am[sl] != 0)
                rows = s + b.index
                out[s:sl.stop] = 1.0
                out[rows] = b.flux.astype(np.float16)
                if lc is not None:
                    lc[s:sl.stop] = 0.0
                    lc[rows] = b.logcont.astype(np.float16)
                keep[rows] = True
                failures += [dict(f, index=int(s + f["index"])) for f in b.failures]
            out.flush()
            del out
            if lc is not None:
                lc.flush()
                del lc
        np.save(self.keep_path, keep)
        write_json_atomic(self.norm_path.with_suffix(".failures.json"), failures)
        if failures:
            log.warning("%d simulated spectra rejected by preprocessing (see %s)", len(failures),
                        self.norm_path.with_suffix(".failures.json"))

    # ------------------------------------------------------------------ splits
    def setup(self, stage: str | None = None):
        import pandas as pd

        if self._meta is not None:
            return
        self.prepare_data()  # idempotent; makes setup() usable outside a Trainer
        meta = pd.read_parquet(self.sim_dir / "meta.parquet")
        meta["keep"] = np.load(self.keep_path)
        self._meta = meta
        self._flux = np.load(self.norm_path)  # float16 in memory (~300 MB for 41k spectra)
        if self.pre_cfg.continuum_channel:
            self._logcont = np.load(self.logcont_path)
        self.wavelength = _grid(self.pre_cfg)

    @property
    def meta(self):
        self.setup()
        return self._meta

    def rows(self, split: str) -> np.ndarray:
        m = self.meta
        return np.flatnonzero((m["split"].to_numpy() == split) & m["keep"].to_numpy())

    def dataset(self, split: str) -> NormalisedSpectra:
        r = self.rows(split)
        lc = _RowView(self._logcont, r) if self._logcont is not None else None
        return NormalisedSpectra(_RowView(self._flux, r), self.meta["label"].to_numpy()[r], lc)

    def arrays(self, split: str):
        """(normalised flux float16 (n, npix), meta rows) of a split: train | val | test | eval."""
        r = self.rows(split)
        return self._flux[r], self.meta.iloc[r].reset_index(drop=True)

    def inputs(self, split: str) -> np.ndarray:
        """Model inputs (n, C, npix) float32 of a split (flux - 1, and the log-continuum when cached)."""
        r = self.rows(split)
        x = self._flux[r].astype(np.float32)[:, None, :] - 1.0
        if self._logcont is not None:
            x = np.concatenate([x, self._logcont[r].astype(np.float32)[:, None, :]], axis=1)
        return x

    def train_dataloader(self):
        ds = self.dataset("train")
        sampler = None
        shuffle = True
        n_samples = self.hparams.samples_per_epoch or len(ds)
        g = torch.Generator().manual_seed(int(self.hparams.seed))
        if self.hparams.oversample:
            counts = np.bincount(ds.labels, minlength=2).astype(float)
            w = 1.0 / counts[ds.labels]
            sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), num_samples=int(n_samples),
                                            replacement=True, generator=g)
            shuffle = False
        return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=sampler, shuffle=shuffle,
                          generator=None if sampler is not None else g, num_workers=self.hparams.num_workers,
                          drop_last=len(ds) > self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.dataset("val"), batch_size=self.hparams.batch_size * 2,
                          num_workers=self.hparams.num_workers)

    def test_dataloader(self):
        return DataLoader(self.dataset("test"), batch_size=self.hparams.batch_size * 2,
                          num_workers=self.hparams.num_workers)

    def describe(self) -> dict:
        m = self.meta
        return json.loads(m.groupby(["subset", "split"]).size().rename("n").reset_index().to_json(orient="records"))


class _RowView:
    """Indexable view of selected rows of an array (no copy of the whole split)."""

    def __init__(self, arr, rows):
        self.arr, self.rows = arr, np.asarray(rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.arr[self.rows[i]]


def _grid(cfg):
    from skyvar.spectra.preprocess import common_grid

    return common_grid(cfg)
