"""Shared helpers of the spectra tests (tiny checkpoints, synthetic LAMOST files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skyvar.spectra.io import write_lamost_lrs
from skyvar.spectra.spectrum import Spectrum


def tiny_checkpoint(path: Path, smooth_L: float = 50.0, temperature: float = 1.0) -> Path:
    """An untrained, small SpecNet checkpoint in Lightning's format (loadable with load_from_checkpoint)."""
    import lightning as L
    import torch

    from skyvar.models.specnet_module import SpecNetModule

    torch.manual_seed(0)
    m = SpecNetModule(net={"channels": [4, 8], "pool_bins": 4, "hidden": 8}, preprocess={"smooth_L": smooth_L})
    m.temperature.fill_(temperature)
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def lamost_like(n: int = 3909, seed: int = 0, **meta) -> Spectrum:
    """A smooth positive LAMOST-grid spectrum with a few absorption lines and unit-S/N-100 noise."""
    rng = np.random.default_rng(seed)
    wave = 10 ** (3.5682 + 1e-4 * np.arange(n))
    flux = 1000 * (1 + 0.2 * np.sin(wave / 900.0))
    for c in (4862.7, 5891.6, 6564.6, 8544.4):
        flux *= 1 - 0.4 * np.exp(-0.5 * ((wave - c) / 3.0) ** 2)
    sig = flux / 100.0
    flux = flux + rng.normal(0, 1, n) * sig
    return Spectrum(wavelength=wave, flux=flux, ivar=1 / sig**2, mask=np.zeros(n, bool), vacuum=True, meta=meta)


def write_lamost_file(path: Path, spec: Spectrum | None = None, **header) -> Path:
    spec = spec if spec is not None else lamost_like()
    hdr = {"OBSID": 1, "RA": 10.0, "DEC": 20.0, "SNRG": 100.0, "CLASS": "STAR", "SUBCLASS": "G5"}
    hdr.update(header)
    return write_lamost_lrs(path, spec, header=hdr)


TINY_SIM = {"n_single": 60, "n_binary": 20, "n_eval_binary": 20, "seed": 7, "chunk": 50}


def tiny_datamodule(base: Path, **kw):
    """A SpectraDataModule on a tiny simulated set, cached under ``base`` (shared by tests in a session)."""
    from skyvar.data.spectra_datamodule import SpectraDataModule

    args = {"data_dir": str(base / "lamost_tiny"), "sim": dict(TINY_SIM), "batch_size": 16, "samples_per_epoch": 32}
    args.update(kw)
    return SpectraDataModule(**args)
