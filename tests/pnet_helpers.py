"""Shared helpers for the PNet tests: a tiny cached stamp data set and matching CLI overrides.

Imported by tests/data, tests/models, tests/detect and tests/test_train_ddp*.py (``tests/`` is on
``sys.path`` through conftest). Frames use the default PSF (one GalSim bank, built once per process).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

TINY_DATA = dict(frame_size=160, n_train_frames=1, n_val_frames=1, n_test_frames=1, stamp_size=64,
                 train_stamps_per_epoch=8, batch_size=4, eval_batch_size=4, vary_train_frames=False, max_truth=256)
TINY_NET = dict(channels=[8, 16, 16, 16], blocks=[1, 1, 1, 1], head_channels=8, upsample=2)


def tiny_datamodule(data_dir, **kw):
    from skyvar.data.stamps import CSSTStampDataModule

    return CSSTStampDataModule(data_dir=str(data_dir), **{**TINY_DATA, **kw})


def tiny_overrides(data_dir) -> list[str]:
    """``train.py`` overrides for the tiny data and network (seconds per run on a CPU)."""
    o = [f"data.data_dir={data_dir}"] + [f"data.{k}={v}" for k, v in TINY_DATA.items()]
    o += [f"model.net.{k}={v}".replace(" ", "") for k, v in TINY_NET.items()]
    return o + ["logger=none", "data.num_workers=0", "model.log_images=false"]


@pytest.fixture
def single_thread(monkeypatch):
    """One torch/OpenMP thread here and in CLI subprocesses: on a shared, oversubscribed CPU two
    threads spin at OpenMP barriers and run an order of magnitude slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_stamp_dir(tmp_path_factory):
    """Simulates the tiny train/val/test frames once per session and returns their data_dir."""
    d = tmp_path_factory.mktemp("pnet-stamps")
    dm = tiny_datamodule(d)
    dm.prepare_data()
    return d


def gaussian_frame(n: int = 96, stars=((30.25, 40.6, 5000.0), (60.0, 20.0, 20000.0), (70.4, 70.9, 3000.0)),
                   sigma: float = 1.0, sky: float = 70.0) -> dict:
    """A frame dict in the layout of :func:`skyvar.data.stamps.simulate_stamp_frame` with Gaussian
    stars (x, y, flux in e-), for fast data tests."""
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.zeros((n, n))
    for x, y, f in stars:
        img += f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    s = np.asarray(stars, float)
    return {"stars": img.astype(np.float32), "x": s[:, 0], "y": s[:, 1], "flux": s[:, 2],
            "mag": 25.85 - 2.5 * np.log10(s[:, 2] / 300.0), "sky_e": np.float64(sky), "read_var": np.float64(50.0),
            "saturation_e": np.float64(180000.0), "zp": np.float64(25.85), "exptime": np.float64(300.0),
            "pixel_scale": np.float64(0.074), "psf_fwhm_px": np.float64(2.355 * sigma)}
