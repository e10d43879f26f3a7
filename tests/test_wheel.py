"""skyvar installed from a wheel (not editable), used from a directory outside the checkout, with no
../shared and no SKYVAR_ROOT: what a user who runs `pip install skyvar` gets."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy-free checkout (no build isolation: offline, setuptools from the dev extra)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True)
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((tmp / "dist").glob("skyvar-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies come from this environment's site-packages (a .pth line is only a path: the
    # editable install's own .pth/finder there is not processed, so the checkout stays invisible)
    (site / "_skyvar_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "--ignore-installed",
                        "-q", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SKYVAR_ROOT", "SKYVAR_SHARED")}
    env.update(WANDB_MODE="disabled", MPLBACKEND="Agg", SKYVAR_SHARED=str(tmp / "no-shared"))

    def run(*args, timeout=600):
        return subprocess.run([str(venv / "bin" / "skyvar"), *args], capture_output=True, text=True, cwd=work,
                              env=env, timeout=timeout)

    return run, py, work, env, wheel


def test_wheel_holds_configs_checkpoints_and_cards(installed):
    import zipfile

    _, _, _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "skyvar/conf/infer.yaml" in names and "skyvar/conf/pipeline/field.yaml" in names
    for rel in ("pnet-csst/pnet.pt", "pnet-csst/MODEL_CARD.md", "astronet-csst/astronet.pt",
                "specnet-lamost/specnet.ckpt"):
        assert f"skyvar/models/released/{rel}" in names, rel


def test_installed_package_runs_a_pipeline_from_anywhere(installed):
    run, py, work, env, _ = installed
    r = subprocess.run([str(py), "-c", "import skyvar, sys; print(skyvar.__file__)"], capture_output=True, text=True,
                       cwd=work, env=env)
    assert r.returncode == 0 and "site-packages" in r.stdout and str(ROOT) not in r.stdout, r.stdout + r.stderr
    r = run("--help")
    assert r.returncode == 0 and "reproduce" in r.stdout
    r = run("models", "verify")
    assert r.returncode == 0 and r.stdout.count("sha256 ok") == 3, r.stdout + r.stderr
    # the demo's pipeline with the released PNet from the package, on a small simulated field
    r = run("infer", "pipeline.simulate.size=128", "out_dir=demo")
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    m = json.loads((work / "demo" / "report" / "metrics.json").read_text())
    assert m["f1"]["1"] > 0.5  # PNet works from the installed package
    r = run("sim", "field", "size=48", "out_dir=sim48")
    assert r.returncode == 0 and (work / "sim48" / "truth.ecsv").exists(), r.stderr[-2000:]
