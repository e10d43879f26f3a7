"""python -m skyvar.reproduce: registry, extraction rules, a real cheap area end to end, failures."""

import json
import sys

import pytest
import yaml

from skyvar import reproduce as R
from tests.conftest import run_cli


def test_registry_lists_every_area_with_commands_and_paper_rows():
    reg = R.load_registry()
    areas = reg["areas"]
    assert {"detection", "classification", "variability", "minute_cadence", "binary_spectra", "radial_velocities",
            "end_to_end"} <= set(areas)
    for name, a in areas.items():
        assert a["quick"] and a["full"], name
        for row in a.get("rows", []):
            kind = row["ours"].split(":", 1)[0]
            assert kind in ("json", "csv", "ecsv"), row
            assert "paper" in row, row  # the paper's number (or null with a text) sits beside each of ours
        for c in a["quick"] + a["full"]:
            assert "{out}" in c or "{python}" in c  # outputs go to the report folder


def test_extractors(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"recall": {"0.1": 0.5}, "periods": [{"k": 2.0}], "a:b": 3}))
    (tmp_path / "t.csv").write_text("parameter,accuracy\nQ,0.6\nQ2,0.83\n")
    assert R.extract("json:m.json:recall/0.1", tmp_path) == 0.5
    assert R.extract("json:m.json:periods/0/k", tmp_path) == 2.0
    assert R.extract("json:m.json:a:b", tmp_path) == 3
    assert R.extract("csv:t.csv:parameter=Q2:accuracy", tmp_path) == pytest.approx(0.83)
    with pytest.raises(KeyError):
        R.extract("json:m.json:recall/1", tmp_path)
    with pytest.raises(KeyError):
        R.extract("csv:t.csv:parameter=Q9:accuracy", tmp_path)


def test_quick_cheap_area_writes_results_and_reports_failures(tmp_path):
    """The radial-velocity area's real entry point (the paper's mock), plus a failing and an unavailable
    area: RESULTS.md has our numbers beside the paper's, and the run goes on past the failure."""
    reg = R.load_registry()
    rv = dict(reg["areas"]["radial_velocities"])
    rv["quick"] = [rv["quick"][0] + " pipeline.figures=false"]  # the mock only: seconds
    rv["rows"] = [r for r in rv["rows"] if r["ours"].startswith("json:mock/")]
    rv["figures"] = []
    custom = {"areas": {
        "broken": {"title": "A failing area", "quick": ["{python} -c \"import sys; print('boom'); sys.exit(3)\""],
                   "full": ["true"], "rows": [{"quantity": "x", "paper": 1.0, "ours": "json:nothing.json:x"}]},
        "radial_velocities": rv,
        "absent": {"title": "An area not in this checkout", "needs": ["skyvar.no_such_area"], "quick": ["true"],
                   "full": ["true"]},
    }}
    regf = tmp_path / "registry.yaml"
    regf.write_text(yaml.safe_dump(custom, sort_keys=False, allow_unicode=True))
    out = tmp_path / "report"
    r = run_cli(["-m", "skyvar.reproduce", "--quick", "--registry", str(regf), f"out_dir={out}"], timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]  # one area failed; the others still ran
    md = (out / "RESULTS.md").read_text()
    res = json.loads((out / "results.json").read_text())
    st = {a["area"]: a for a in res["areas"]}
    assert st["broken"]["status"] == "failed" and "boom" in st["broken"]["log_tail"]
    assert st["absent"]["status"] == "unavailable" and "skyvar.no_such_area" in st["absent"]["reason"]
    assert st["radial_velocities"]["status"] == "ok"
    rows = {x["quantity"]: x for x in st["radial_velocities"]["rows"]}
    zp = rows["zero-point error per exposure, rms [km/s]"]
    assert zp["error"] is None and 0.0 < zp["ours"] < 0.5  # read from the area's own metrics.json
    assert "| zero-point error per exposure, rms [km/s] | floor 0.5/√200 = 0.035 |" in md
    assert "**Failed**" in md and "**Not run**" in md and "Hardware:" in md and "Mode: **quick**" in md
    # resume: the completed area is not rerun, its numbers are re-read
    r2 = run_cli(["-m", "skyvar.reproduce", "--quick", "--registry", str(regf), "--only", "radial_velocities",
                  f"out_dir={out}"], timeout=120)
    assert r2.returncode == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["areas"][0]["resumed"] and res2["areas"][0]["rows"][0]["ours"] == zp["ours"]


def test_list_and_unknown_area(capsys):
    assert R.main(["--list"]) == 0
    assert "end_to_end" in capsys.readouterr().out
    assert R.main(["--only", "nope", "out_dir=/tmp/x"]) == 2


def test_python_placeholder_is_this_interpreter(tmp_path):
    cmds = R.area_commands({"quick": ["{python} -m x out_dir={out}"]}, "quick",
                           {"python": sys.executable, "out": str(tmp_path)})
    assert cmds == [[sys.executable, "-m", "x", f"out_dir={tmp_path}"]]
