"""The injection-recovery command (skyvar.lightcurves.recovery): outcome classes and a tiny smoke run."""

import json

import numpy as np

from skyvar.lightcurves.recovery import SIDEREAL, _classify_period, main


def test_period_outcomes_by_hand():
    f0 = np.full(7, 5.0)
    found = np.array([5.04, 10.0, 2.5, 5.0 + 3 / 59, 5.0 - SIDEREAL, 7.3, np.nan])
    got = _classify_period(found, f0, 59.0)
    assert list(got) == ["correct", "harmonic", "harmonic", "alias", "alias", "wrong", "none"]
    # with runs 3 days apart the fringe comb is 1/3 d^-1: 5 + 1/3 is an alias, not within 1 %
    assert _classify_period(np.array([5.0 + 1 / 3]), np.array([5.0]), 3.0)[0] == "alias"
    assert _classify_period(np.array([5.0 + 1 / 3]), np.array([5.0]), None)[0] == "wrong"


def test_recovery_command_smoke(tmp_path):
    out = tmp_path / "rec"
    assert main([f"out_dir={out}", "n_flare_field=250", "n_periodic_field=250", "splice_offsets=[3.0]",
                 "plots=false"]) == 0
    md = (out / "recovery.md").read_text()
    assert "Flare completeness" in md and "Period recovery, runs 3 days apart" in md
    summary = json.loads((out / "recovery.json").read_text())
    assert 0 <= summary["flares"]["paper"]["completeness_overall"] <= 1
    assert main(["bogus_key=1"]) == 2
