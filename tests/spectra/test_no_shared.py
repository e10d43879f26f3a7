"""skyvar's spectra commands run without ../shared: an audit hook makes any access to it an error."""

import sys

from tests.conftest import ROOT, SHARED, run_cli
from tests.spectra.lrs_helpers import tiny_checkpoint

GUARD = f"""
import os, runpy, sys
BAD = {str(SHARED.resolve())!r}
def hook(event, args):
    if event in ("open", "os.listdir", "os.scandir", "os.stat") and args and str(args[0]).startswith(BAD):
        raise RuntimeError(f"accessed ../shared: {{args[0]}}")
sys.addaudithook(hook)
os.environ["SKYVAR_SHARED"] = "/nonexistent"
script, sys.argv = sys.argv[1], sys.argv[1:]
if script.endswith(".py"):
    runpy.run_path(script, run_name="__main__")
else:
    runpy.run_module(script, run_name="__main__", alter_sys=True)
"""


def _guarded(args, tmp_path):
    r = run_cli([sys.executable, "-c", GUARD, *args], cwd=ROOT, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


def test_train_binary_spectra_without_shared(tmp_path):
    _guarded(["train.py", "experiment=binary_spectra", "logger=none", "callbacks=none", "+trainer.fast_dev_run=1",
              f"data.data_dir={tmp_path / 'data'}", "data.batch_size=8", "data.sim.n_single=30", "data.sim.n_binary=10",
              "data.sim.n_eval_binary=10", "+data.sim.chunk=50", "model.net.channels=[4,8]", "model.net.pool_bins=4",
              "model.net.hidden=8", f"export_to={tmp_path / 'm.ckpt'}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)


def test_infer_and_rv_precision_without_shared(tmp_path):
    from skyvar.spectra.resources import example_lrs_file

    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    _guarded(["infer.py", "pipeline=binary_spectra", f"input={example_lrs_file()}", f"out_dir={tmp_path / 'b'}",
              f"pipeline.model={ckpt}", "device=cpu"], tmp_path)
    assert (tmp_path / "b" / "binary_probabilities.ecsv").exists()
    _guarded(["infer.py", "pipeline=rv_precision", f"out_dir={tmp_path / 'p'}", "device=cpu", "pipeline.snr=[30]",
              "pipeline.n_mc=4", "pipeline.types=[G]", "pipeline.arms=[R]", "pipeline.figures=false"], tmp_path)
    assert (tmp_path / "p" / "precision.ecsv").exists()
