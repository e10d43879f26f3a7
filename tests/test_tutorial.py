"""docs/tutorial.md runs as written (its Python blocks in order, in a scratch directory)."""

import re

import pytest
from conftest import ROOT, run_cli

TUTORIAL = ROOT / "docs" / "tutorial.md"


def tutorial_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 5, "the tutorial lost its code"
    return "\n".join(blocks)


def test_tutorial_runs_from_a_scratch_directory(tmp_path):
    script = tmp_path / "tutorial.py"
    script.write_text(tutorial_code())
    # outside the checkout, with no ../shared: what a user of the installed package has
    r = run_cli([str(script)], cwd=tmp_path, timeout=900,
                env_extra={"SKYVAR_SHARED": str(tmp_path / "no-shared"), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = r.stdout
    assert "stars," in out and "detections in" in out and "p_binary =" in out
    recall = float(re.search(r"recall of the i < 24 stars within 1 px: ([0-9.]+)", out).group(1))
    assert recall > 0.8
    assert (tmp_path / "tutorial_run" / "best_candidate.png").stat().st_size > 5000
    p = float(re.search(r"p_binary = ([0-9.]+)", out).group(1))
    assert 0.0 <= p <= 1.0


@pytest.mark.parametrize("name", ["tutorial"])
def test_tutorial_is_linked_from_the_readme(name):
    assert "docs/tutorial.md" in (ROOT / "README.md").read_text(encoding="utf-8")
