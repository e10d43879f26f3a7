"""Lightning DDP with 2 CPU processes (gloo) runs a couple of PNet steps through train.py.

SyncBatchNorm (on in trainer=ddp for GPUs) needs CUDA, so the CPU run switches it off.
"""

import pytest
import torch
from conftest import run_cli
from pnet_helpers import single_thread, tiny_overrides, tiny_stamp_dir  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_train_pnet_ddp_two_cpu_processes(tiny_stamp_dir, tmp_path):  # noqa: F811 (pytest fixture)
    run = tmp_path / "ddp"
    r = run_cli(["train.py", "model=pnet", "trainer=ddp", *tiny_overrides(tiny_stamp_dir), "trainer.accelerator=cpu",
                 "trainer.devices=2", "trainer.sync_batchnorm=false", "++trainer.max_steps=2", "trainer.max_epochs=2", "++trainer.limit_val_batches=1",
                 "trainer.num_sanity_val_steps=0", "test=false", "callbacks.model_checkpoint.monitor=null", "++trainer.enable_progress_bar=false",
                 f"hydra.run.dir={run}"], timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    # monitor=null: the checkpoint is refreshed every epoch (Lightning >= 2.6 refreshes last.ckpt only
    # when a top-k checkpoint is saved, which a non-improving val/loss would skip)
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 2  # 8 stamps, batch 4, 2 ranks: one step per epoch
    # both ranks ran: Lightning's DDP launcher starts rank 1 as a second train.py process
    log = r.stdout + r.stderr
    assert "distributed_backend=gloo" in log and "All distributed processes registered" in log
