import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("SKYVAR_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")
# Child processes (train.py, infer.py, python -m skyvar...) import this checkout's code, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def shared_data(*parts) -> Path:
    """Path into ../shared/data; skips the test when the shared folder is absent."""
    p = SHARED.joinpath("data", *parts)
    if not p.exists():
        pytest.skip(f"shared data not available: {p}")
    return p


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small CPU workloads run far faster on one torch thread on a shared machine (no OpenMP spinning)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)


def run_cli(args, **kw):
    """Run a command with this checkout's ``src`` first on PYTHONPATH (works without an install)."""
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("WANDB_MODE", "disabled")
    env.update(kw.pop("env_extra", None) or {})
    cmd = [sys.executable, *args] if args and not str(args[0]).endswith("python") else list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=kw.pop("cwd", ROOT), **kw)
