"""PNet network and LightningModule: shapes, bias prior, metrics, train.py fast_dev_run, checkpoint resume,
transfer-learning init and the slim export."""

import math

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from pnet_helpers import TINY_NET, single_thread, tiny_overrides, tiny_stamp_dir  # noqa: F401 (fixture)

from skyvar.detect.pnet import load_pnet
from skyvar.models.components.pnet import PNet, normalize_input
from skyvar.models.pnet_module import DetectionCounts, PNetModule, export_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("shape", [(64, 64), (50, 77)])
def test_pnet_outputs_full_resolution_times_upsample(shape):
    net = PNet(**TINY_NET).eval()
    x = torch.randn(2, 3, *shape)
    out = net(x)
    for name, k in PNet.HEADS:
        assert out[name].shape == (2, k, 2 * shape[0], 2 * shape[1])
    # the heat prior: every cell starts at the configured positive fraction
    with torch.no_grad():
        p = torch.sigmoid(PNet(**TINY_NET, prior_prob=0.01)(torch.zeros(1, 3, 32, 32))["heat"])
    assert float(p.mean()) == pytest.approx(0.01, rel=0.05)


def test_normalize_input_masks_bad_pixels():
    img = torch.full((1, 8, 8), 100.0)
    img[0, 2, 3] = float("nan")
    img[0, 4, 4] = 1e6
    mask = torch.zeros(1, 8, 8, dtype=torch.uint8)
    mask[0, 2, 3] = 2
    mask[0, 4, 4] = 1
    x = normalize_input(img, 70.0, mask, 7.0, 10.0)
    assert torch.isfinite(x).all()
    assert x[0, 0, 2, 3] == 0 and x[0, 0, 4, 4] == 0 and x[0, 1].sum() == 2
    assert float(x[0, 0, 0, 0]) == pytest.approx(math.asinh(3.0))
    assert float(x[0, 2, 0, 0]) == pytest.approx(math.log(math.sqrt(70 + 49) / 10))


def test_detection_counts_hand_example():
    """Three targets, one faint non-target; detections: exact, 0.5 px off, on the faint star, spurious."""
    m = DetectionCounts([0.5], [0.1, 1.0], border_px=0.0)
    truth = {"truth_xy": torch.tensor([[[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]]]),
             "truth_valid": torch.ones(1, 4, dtype=torch.bool),
             "truth_target": torch.tensor([[True, True, True, False]]),
             "truth_flux": torch.tensor([[1000.0, 1000.0, 1000.0, 100.0]])}
    det = {"x": np.array([10.0, 20.5, 40.0, 5.0]), "y": np.array([10.0, 20.0, 40.0, 5.0]),
           "magrel": np.array([0.1, -0.2, 2.5, 0.0]), "mag_sigma": np.array([0.1, 0.1, 0.1, 0.1])}
    m.update([[det]], truth, (64, 64))
    r = {k: v.reshape(1, -1) if k in ("recall", "precision", "f1") else v.reshape(1) for k, v in m.compute().items()}
    # r = 0.1: TP 1, FP 2 (the 0.5 px one and the spurious one; the faint match is neutral)
    assert r["recall"][0, 0] == pytest.approx(1 / 3) and r["precision"][0, 0] == pytest.approx(1 / 3)
    # r = 1: TP 2, FP 1
    assert r["recall"][0, 1] == pytest.approx(2 / 3) and r["precision"][0, 1] == pytest.approx(2 / 3)
    assert r["f1"][0, 1] == pytest.approx(2 / 3)
    assert r["mag_mae"][0] == pytest.approx(0.15)
    assert r["pull_rms"][0] == pytest.approx(math.sqrt((1 + 4) / 2))
    # pulls +1 and -2: median -0.5, MAD 1.5
    assert r["pull_robust_std"][0] == pytest.approx(1.4826 * 1.5)


def test_example_figure_for_the_logger(tiny_stamp_dir):  # noqa: F811 (pytest fixture)
    from pnet_helpers import tiny_datamodule

    from skyvar.models.pnet_module import example_figure

    dm = tiny_datamodule(tiny_stamp_dir)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    mod = PNetModule(net=TINY_NET).eval()
    with torch.no_grad():
        out = mod(batch)
    from skyvar.detect.pnet import decode

    fig = example_figure(batch, out, decode(out, 2, 0.01))
    assert len(fig.axes) >= 3 and fig.axes[2].get_legend() is not None
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_ema_update_and_swap():
    mod = PNetModule(net=TINY_NET, ema_decay=0.5)
    mod.on_train_batch_end(None, None, 0)  # first call: the average starts at the weights
    w0 = mod.net.heads["mag"].bias.detach().clone()
    with torch.no_grad():
        mod.net.heads["mag"].bias += 1.0
    mod.on_train_batch_end(None, None, 0)  # first update after the start: d = min(0.5, 1/10) = 0.1
    assert isinstance(mod._ema, torch.optim.swa_utils.AveragedModel)  # torch's weight averaging
    assert torch.allclose(mod._ema_params()["heads.mag.bias"], 0.1 * w0 + 0.9 * (w0 + 1.0))
    # the average is not part of the module: state_dict, parameters and the optimiser never see it
    assert not any(k.startswith("_ema") for k in mod.state_dict())
    assert sum(p.numel() for p in mod.parameters()) == sum(p.numel() for p in mod.net.parameters())
    mod._swap_in_ema()
    assert torch.allclose(mod.net.heads["mag"].bias, 0.1 * w0 + 0.9 * (w0 + 1.0))
    mod._swap_out_ema()
    assert torch.allclose(mod.net.heads["mag"].bias, w0 + 1.0)


def test_frozen_batchnorm_keeps_running_statistics():
    mod = PNetModule(net=TINY_NET, freeze_bn_epoch=0)
    mod.train()
    mod.on_train_batch_end(None, None, 0)
    assert mod._ema is not None
    mod.on_train_batch_start(None, 0)
    bns = [m for m in mod.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns) and mod._ema is None
    before = [m.running_mean.clone() for m in bns]
    mod.net(torch.randn(2, 3, 32, 32) * 5 + 3)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))


def test_module_losses_decrease_on_a_fixed_batch(tiny_stamp_dir):  # noqa: F811 (pytest fixture)
    from pnet_helpers import tiny_datamodule

    torch.manual_seed(0)
    dm = tiny_datamodule(tiny_stamp_dir)
    dm.setup("fit")
    batch = {k: v[:2] for k, v in next(iter(dm.train_dataloader())).items()}
    mod = PNetModule(net=TINY_NET)
    opt = torch.optim.Adam(mod.parameters(), 3e-3)
    first = None
    for _ in range(30):
        ls = mod.losses(mod(batch), mod.targets(batch))
        first = first if first is not None else {k: float(v) for k, v in ls.items()}
        opt.zero_grad()
        ls["loss"].backward()
        opt.step()
    last = {k: float(v) for k, v in mod.losses(mod(batch), mod.targets(batch)).items()}
    assert last["loss"] < 0.6 * first["loss"]
    assert last["focal"] < first["focal"] and last["mag_mse"] < first["mag_mse"]


def test_train_fast_dev_run(tiny_stamp_dir, tmp_path):  # noqa: F811 (pytest fixture)
    r = run_cli(["train.py", "model=pnet", "data=csst_stamps", *tiny_overrides(tiny_stamp_dir),
                 "++trainer.fast_dev_run=true", f"paths.output_dir={tmp_path}", f"hydra.run.dir={tmp_path}"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _compose_train(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "src" / "skyvar" / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_train_checkpoint_resume_init_from_and_export(tiny_stamp_dir, tmp_path):  # noqa: F811 (pytest fixture)
    """In-process ``run_training`` (the train.py driver): 1 epoch, then resume with ``ckpt_path`` to 2."""
    from skyvar.training import run_training

    common = ["model=pnet", *tiny_overrides(tiny_stamp_dir), "test=false", "trainer.num_sanity_val_steps=0",
              "++trainer.limit_train_batches=2", "++trainer.limit_val_batches=1", "++trainer.enable_progress_bar=false",
              "++trainer.enable_model_summary=false"]
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    run_training(_compose_train([*common, "trainer.max_epochs=1", f"paths.output_dir={run1}"]))
    last = run1 / "checkpoints" / "last.ckpt"
    ck = torch.load(last, map_location="cpu", weights_only=False)
    assert ck["global_step"] == 2 and "pnet_meta" in ck and ck["pnet_meta"]["pixel_scale_arcsec"] == 0.074
    run_training(_compose_train([*common, "trainer.max_epochs=2", f"ckpt_path={last}", f"paths.output_dir={run2}"]))
    ck2 = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck2["global_step"] == 4 and ck2["epoch"] == 1  # resumed, not restarted
    # the slim export loads without Hydra and carries the training metadata
    pt = export_checkpoint(run2 / "checkpoints" / "last.ckpt", tmp_path / "pnet.pt")
    net, meta = load_pnet(pt)
    assert pt.stat().st_size < (run2 / "checkpoints" / "last.ckpt").stat().st_size
    assert meta["upsample"] == 2 and "threshold" in meta and meta["epoch"] == 1
    # the export carries the weight average (EMA) where it exists, the raw weights elsewhere (buffers)
    assert meta["ema"] and set(ck2["pnet_ema"]) == {k for k, _ in net.named_parameters()}
    sd = {k[4:]: v for k, v in ck2["state_dict"].items() if k.startswith("net.")}
    sd.update(ck2["pnet_ema"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in sd.items())
    raw = {k[4:]: v for k, v in ck2["state_dict"].items() if k.startswith("net.")}
    assert any(not torch.equal(raw[k], v) for k, v in ck2["pnet_ema"].items())
    # transfer learning: a module initialised from it starts with the same weights
    mod = PNetModule(net=TINY_NET, init_from=str(pt))
    assert torch.equal(mod.net.heads["mag"].weight, net.heads["mag"].weight)


def test_lr_schedule_is_torch_schedulers_with_the_documented_shape():
    import math

    from skyvar.models.pnet_module import warmup_cosine

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sch = warmup_cosine(opt, warmup=5, total=50, min_ratio=0.02)
    assert isinstance(sch, torch.optim.lr_scheduler.SequentialLR)
    for step in range(80):
        want = (step + 1) / 5 if step < 5 else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 5) / 45)))
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * want, rel=1e-9), step
        opt.step()
        sch.step()
