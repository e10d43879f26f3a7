"""SpecNet network, module, metrics helpers and a Lightning fast_dev_run on a tiny simulated set."""

import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from skyvar.models.components.specnet import BasicBlock1d, SpecNet
from skyvar.models.specnet_module import SpecNetModule, fit_temperature, load_specnet
from skyvar.pipeline.binary_spectra import (
    expected_calibration_error,
    group_stars,
    prior_corrected_precision,
    softmax_p1,
)
from tests.conftest import shared_data
from tests.spectra.lrs_helpers import tiny_checkpoint, tiny_datamodule


def test_basic_block_shapes_and_shortcut():
    b = BasicBlock1d(4, 8, stride=2)
    assert b(torch.randn(3, 4, 100)).shape == (3, 8, 50)
    ident = BasicBlock1d(8, 8)
    assert isinstance(ident.shortcut, torch.nn.Identity)


def test_specnet_forward_backward():
    net = SpecNet(channels=(4, 8, 16), pool_bins=4, hidden=16)
    x = torch.randn(5, 1000, requires_grad=True)
    out = net(x)
    assert out.shape == (5, 2)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    net.eval()
    assert torch.allclose(net(x[:2]), net(x[:2].unsqueeze(1)))


def test_temperature_recovers_known_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-z))
    logits = np.stack([np.zeros_like(z), 3.0 * z], axis=1)  # over-confident by a factor 3
    assert fit_temperature(logits, y.astype(int)) == pytest.approx(3.0, rel=0.05)


def test_prior_corrected_precision_by_hand():
    # 4 binaries (3 above 0.5), 8 singles (2 above 0.5). r = 1:2 -> N_FP scaled by (4/8)/(1/2) = 1.
    p = np.array([0.9, 0.8, 0.6, 0.1, 0.7, 0.55, 0.1, 0.2, 0.3, 0.1, 0.0, 0.4])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    assert prior_corrected_precision(p, y, [0.5], ratio=0.5)[0] == pytest.approx(3 / (3 + 2))
    # r = 1:4: the same false positives weigh twice as much
    assert prior_corrected_precision(p, y, [0.5], ratio=0.25)[0] == pytest.approx(3 / (3 + 4))


def test_ece_by_hand():
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 1, 1, 1])
    # bins: {0.05: mean y 0.5} -> |0.5-0.05| * 2/4 ; {0.95: mean y 1} -> |1-0.95| * 2/4
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


def test_softmax_and_star_grouping():
    assert softmax_p1(np.array([[0.0, 0.0], [0.0, 2.0]])).tolist() == pytest.approx([0.5, 1 / (1 + np.exp(-2))])
    ra = np.array([10.0, 10.0 + 1 / 3600, 50.0, np.nan])
    dec = np.array([0.0, 0.0, 0.0, np.nan])
    g = group_stars(ra, dec, 3.0)
    assert g[0] == g[1] and len({g[0], g[2], g[3]}) == 3


def test_checkpoint_roundtrip(tmp_path):
    p = tiny_checkpoint(tmp_path / "m.ckpt", smooth_L=350.0, temperature=2.5)
    m = load_specnet(p)
    assert float(m.temperature) == 2.5 and m.hparams.preprocess["smooth_L"] == 350.0
    x = torch.randn(3, 1, 500)
    assert torch.all((m.predict_proba(x) >= 0) & (m.predict_proba(x) <= 1))


def test_fast_dev_run(tmp_path_factory):
    shared_data("spectra", "redrock")
    dm = tiny_datamodule(tmp_path_factory.getbasetemp())
    model = SpecNetModule(net={"channels": [4, 8], "pool_bins": 4, "hidden": 8}, preprocess={})
    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    # oversampling: the weighted sampler draws binaries about half of the time
    ys = np.concatenate([y.numpy() for _, y in dm.train_dataloader()])
    assert 0.2 < ys.mean() < 0.8 and dm.dataset("train").labels.mean() < 0.3
    x, meta = dm.arrays("eval")
    assert len(x) == len(meta) == 20 and x.shape[1] == len(dm.wavelength)


def test_train_py_smoke(tmp_path_factory, root):
    shared_data("spectra", "redrock")
    base = tmp_path_factory.getbasetemp()
    tiny_datamodule(base).prepare_data()  # cached: the subprocess reuses it
    cmd = [sys.executable, "train.py", "model=specnet", "data=lamost_lrs", "logger=none", "callbacks=none",
           "+trainer.fast_dev_run=1", f"data.data_dir={base / 'lamost_tiny'}", "data.batch_size=16",
           "data.sim.n_single=60", "data.sim.n_binary=20", "data.sim.n_eval_binary=20", "data.sim.seed=7",
           "+data.sim.chunk=50", "model.net.channels=[4,8]", "model.net.pool_bins=4", "model.net.hidden=8",
           f"hydra.run.dir={tmp_path_factory.mktemp('run')}"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_evaluate_writes_metrics_and_figures(tmp_path, tmp_path_factory):
    shared_data("spectra", "redrock")
    import json

    from skyvar.pipeline.binary_spectra import EvalConfig, evaluate

    base = tmp_path_factory.getbasetemp()
    tiny_datamodule(base).prepare_data()
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    over = ["data.sim.n_single=60", "data.sim.n_binary=20", "data.sim.n_eval_binary=20", "data.sim.seed=7",
            "+data.sim.chunk=50"]
    cfg = EvalConfig(checkpoint=str(ckpt), data_dir=str(base / "lamost_tiny"), data_overrides=over,
                     metrics_out=str(tmp_path / "metrics.json"), fig_dir=str(tmp_path / "fig"), device="cpu",
                     n_boot=20, real_input=None)
    res = evaluate(cfg)
    assert 0 <= res["auc"] <= 1 and res["temperature"] > 0 and res["n_test_binary"] == 2
    assert 0 <= res["linear_baseline_auc"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["auc"] == res["auc"]
    for f in ("pb_distribution.png", "binary_fraction_vs_q.png", "roc_calibration.png"):
        assert (tmp_path / "fig" / f).stat().st_size > 1000
    assert float(load_specnet(ckpt).temperature) == pytest.approx(res["temperature"])


def test_released_checkpoint_loads(root):
    path = root / "src" / "skyvar" / "models" / "released" / "specnet-lamost" / "specnet.ckpt"
    if not path.exists():
        pytest.skip("no released checkpoint")
    m = load_specnet(path)
    assert m.hparams.preprocess["smooth_L"] == 50.0
    assert 0.05 < float(m.temperature) < 20 and float(m.temperature) != 1.0  # fitted by `evaluate`
    assert path.stat().st_size < 20e6
