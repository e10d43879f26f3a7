import json

import numpy as np
import pytest
from astropy.table import Table

from skyvar.evaluate.compare import compare
from skyvar.evaluate.report import evaluate_detections


def _truth(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return Table({"source_id": np.arange(n), "x": rng.uniform(0, 200, n), "y": rng.uniform(0, 200, n),
                  "mag": rng.uniform(18, 26, n)})


def test_metrics_by_hand(tmp_path):
    truth = _truth()
    targets = np.flatnonzero(truth["mag"] < 25)
    faint = np.flatnonzero(truth["mag"] >= 25)
    found = targets[: len(targets) // 2]  # half the targets found exactly, with a +0.1 mag bias
    rng = np.random.default_rng(1)
    cat = Table({
        "x": np.r_[truth["x"][found] + 0.03, truth["x"][faint[:5]], rng.uniform(0, 200, 20) + 500],
        "y": np.r_[truth["y"][found], truth["y"][faint[:5]], rng.uniform(0, 200, 20)],
        "mag": np.r_[truth["mag"][found] + 0.1, truth["mag"][faint[:5]], np.full(20, 22.0)],
        "mag_err": np.r_[np.full(len(found), 0.1), np.full(5, 0.1), np.full(20, 0.1)],
    })
    cat.meta["frame_id"] = "f0"
    m = evaluate_detections([cat], truth, tmp_path / "rep", match_radii=(0.1, 1.0), detector="test")
    n_t = len(targets)
    assert m["n_targets"] == n_t
    for k in ("0.1", "1"):
        assert m["recall"][k] == pytest.approx(len(found) / n_t)
        assert m["precision"][k] == pytest.approx(len(found) / (len(found) + 20))
        s = m["by_radius"][k]
        assert s["neutral"] == 5 and s["fp"] == 20
        assert s["photometry"]["median_dm"] == pytest.approx(0.1)
        assert s["astrometry"]["median_px"] == pytest.approx(0.03)
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(saved["recall"]) == {"0.1", "1"} and "per_bin" in saved
    assert len(saved["per_bin"]["recall"]["0.1"]) == len(saved["per_bin"]["mag_lo"])
    for f in ("fig6_detections.png", "fig7_f1.png", "fig8_photometric_error.png", "fig9_photometric_scatter.png",
              "report.md", "matches_r0.1.parquet"):
        assert (tmp_path / "rep" / f).exists()
    out = compare({"a": tmp_path / "rep", "b": tmp_path / "rep"}, tmp_path / "cmp")
    assert "paper" in out.read_text()


def test_time_series_truth_uses_pointing_offsets_and_epoch_magnitudes(tmp_path):
    from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

    cfg = FieldSimConfig(out_dir=str(tmp_path / "sim"), size=64, seed=2, n_epochs=2, pointing_jitter_px=0.7)
    simulate_field_to_disk(cfg, progress=False)
    truth = Table.read(tmp_path / "sim" / "truth.ecsv")
    frames = Table.read(tmp_path / "sim" / "frames.ecsv")
    dx, dy = frames["dx"][1], frames["dy"][1]
    assert abs(dx) + abs(dy) > 0
    t = truth[truth["mag"] < 25]
    # a perfect catalogue of epoch 1 (shifted positions) is perfect only if the offsets are applied
    cat = Table({"x": t["x"] + dx, "y": t["y"] + dy, "mag": t["mag"], "mag_err": np.full(len(t), 0.01)})
    cat.meta["frame_id"] = "frame_0001"
    m = evaluate_detections([cat], tmp_path / "sim" / "truth.ecsv", None, match_radii=(0.1,))
    assert m["recall"]["0.1"] == pytest.approx(1.0)
    cat.meta["frame_id"] = "frame_0000"
    m0 = evaluate_detections([cat], tmp_path / "sim" / "truth.ecsv", None, match_radii=(0.1,))
    assert m0["recall"]["0.1"] < 0.5


def test_signal_rematch_and_recall_bins(tmp_path):
    """An unresolved blend (a detection nearest to a constant star but carrying the period of a
    variable 0.6 px away) is matched to the variable; recall per magnitude bin counts it."""
    import numpy as np
    import pandas as pd
    from astropy.table import Table

    from skyvar.evaluate.lightcurves import TimeSeriesTruth, classification_report

    t = Table({"source_id": [10, 11, 12, 13], "x": [50.0, 50.6, 80.0, 120.0], "y": [50.0, 50.0, 80.0, 120.0],
               "mag": [22.5, 23.5, 21.0, 24.5], "var_type": ["constant", "eb_detached", "constant", "transit"],
               "period": [np.nan, 1.2, np.nan, 2.0], "periodic": [False, True, False, True],
               "amplitude": [0.0, 0.3, 0.0, 0.01]})
    t.write(tmp_path / "truth.ecsv")
    tr = TimeSeriesTruth(tmp_path)
    src = pd.DataFrame({"source_id": [1, 2, 3], "x": [50.1, 80.0, 120.2], "y": [50.0, 80.1, 120.0]})
    m = tr.match_sources(src, 1.0)
    assert m["truth_row"].tolist() == [0, 2, 3]
    cand = pd.DataFrame({"source_id": [1, 2, 3], "p": [0.9, 0.1, 0.2]})
    rep = classification_report(cand, m, tr, score="p", threshold=0.5)
    assert rep["pipeline"]["fp"] == 1 and rep["pipeline"]["tp"] == 0  # the blend counts against the classifier
    # the source's BLS period is the variable's x 1/2: an unresolved blend carrying its signal
    sm = tr.signal_rematch(m, src, np.array([0.6, np.nan, 5.0]), radius=1.0)
    assert sm["truth_row"].tolist() == [1, 2, 3] and sm["rematched"].tolist() == [True, False, False]
    rep2 = classification_report(cand, sm, tr, score="p", threshold=0.5)
    assert rep2["pipeline"]["tp"] == 1 and rep2["pipeline"]["fp"] == 0 and rep2["pipeline"]["fn"] == 1
    bins = {b["hi"]: (b["n"], b["n_found"]) for b in rep2["recall_by_mag"]}
    assert bins[24.0] == (1, 1) and bins[25.0] == (1, 0) and bins[22.0] == (0, 0)
    # a period that matches nothing, or a variable beyond the radius, leaves the match alone
    far = tr.signal_rematch(m, src.assign(x=[49.0, 80.0, 120.2]), np.array([1.2, np.nan, np.nan]), radius=1.0)
    assert far["truth_row"].tolist() == [0, 2, 3]
