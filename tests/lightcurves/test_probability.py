"""The eq. 7-9 probability model, its evaluation, and the one-command reproduction."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skyvar.lightcurves.probability import (
    ALL_MODEL,
    PAPER_TABLE1,
    ProbabilityStage,
    VariabilityProbability,
    evaluate,
    load_models,
    roc,
    save_models,
    scores_at,
    split_by_source,
    threshold_curves,
)

CONF = Path(__file__).resolve().parents[2] / "src" / "skyvar" / "conf"


def test_eq9_by_hand():
    # 10 training objects; window 0.1 -> j in [i-1, i+1] (truncated at the ends).
    v = np.array([5, 1, 3, 2, 4, 9, 7, 6, 8, 10], float)
    lab = np.array([0, 0, 1, 0, 0, 1, 1, 1, 0, 1])
    m = VariabilityProbability("Q", window=0.1).fit(v, lab)
    # sorted: 1..10 with labels 0,0,1,0,0,1,1,0,1,1
    want = [0 / 2, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 2]
    np.testing.assert_allclose(m.p, want)
    np.testing.assert_allclose(m.predict([1, 1.5, 10, 99, -5]), [0, 1 / 6, 1, 1, 0])
    assert np.isnan(m.predict([np.nan])[0])


def test_window_is_one_percent_each_side_and_ties_average():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 1, 1000)
    lab = (v + rng.normal(0, 1, 1000) > 0).astype(int)
    m = VariabilityProbability("x").fit(v, lab)  # h = 10 -> 21 neighbours
    order = np.argsort(v)
    i = 500
    assert m.predict([v[order[i]]])[0] == pytest.approx(lab[order[i - 10: i + 11]].mean())
    t = VariabilityProbability("x", window=0.25).fit([1, 1, 2, 3], [1, 0, 0, 0])
    assert len(t.x) == 3 and t.predict([1.0])[0] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert VariabilityProbability("x").fit([1, np.nan, 2], [1, 0, 0]).n_dropped == 1


def test_save_load_roundtrip(tmp_path):
    m = VariabilityProbability("Q2").fit(np.arange(200.0), np.arange(200) % 3 == 0)
    m.save(tmp_path / "q2.json")
    back = VariabilityProbability.load(tmp_path / "q2.json")
    x = np.linspace(-5, 205, 77)
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    save_models({"Q2": m}, tmp_path / "all.json")
    np.testing.assert_array_equal(load_models(tmp_path / "all.json")["Q2"].predict(x), m.predict(x))


def test_scores_and_roc_by_hand():
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.96, np.nan])
    y = np.array([1, 1, 0, 1, 0, 1])
    s = scores_at(p, y, 0.68)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 2, 2, 0)
    assert s["accuracy"] == pytest.approx(2 / 6) and s["precision"] == 0.5 and s["recall"] == 0.5
    s = scores_at(p, y, 0.99)
    assert np.isnan(s["precision"]) and s["recall"] == 0 and s["f1"] == 0
    assert len(threshold_curves(p, y)) == 100
    from sklearn.metrics import roc_auc_score

    _, _, a = roc(p, y)
    assert a == pytest.approx(roc_auc_score(y, np.nan_to_num(p, nan=-1)))


def test_split_keeps_sources_together():
    ids = np.repeat(np.arange(100), 2)
    test = split_by_source(ids, 0.2, seed=1)
    assert test.sum() == 40 and np.all(test[0::2] == test[1::2])


@pytest.fixture(scope="module")
def sim_features(tmp_path_factory):
    from skyvar.lightcurves.indices import IndicesStage
    from skyvar.pipeline.lightcurves import LightCurvePipeline, read_features
    from skyvar.sim.ztf import ZTFSimConfig, simulate_to_disk

    d = tmp_path_factory.mktemp("ztf")
    simulate_to_disk(ZTFSimConfig(out_dir=str(d / "sim"), n_variables=250, n_constant=250, seed=5))
    LightCurvePipeline(input=str(d / "sim" / "store"), out_dir=str(d / "feat"), stages=[IndicesStage(plots=False)],
                       progress=False).run()
    return read_features(d / "feat"), pd.read_parquet(d / "sim" / "labels.parquet")


def test_evaluate_on_simulated_sample(sim_features, tmp_path):
    feats, labels = sim_features
    res = evaluate(feats, labels, tmp_path, plots=True)
    t1 = res.table1.set_index("parameter")
    assert list(t1.index) == list(PAPER_TABLE1) + [ALL_MODEL]
    # The paper's finding: the Q2 model beats Q, the moments and the scale parameters.
    auc = res.auc.set_index("parameter").auc
    assert auc["Q2"] > auc["Q"] and auc["Q2"] > max(auc[k] for k in ("std", "kurtosis", "skewness", "mad", "amp"))
    assert t1.loc["Q2", "f1"] > t1.loc["Q", "f1"]
    assert auc[ALL_MODEL] >= auc["Q2"] - 0.03
    md = (tmp_path / "tables.md").read_text()
    assert "Table 1" in md and "0.83" in md  # the paper's Q2 accuracy is printed beside ours
    for f in ("figure6_probability.png", "figure7_Q.png", "figure7_Q2.png", "figure8_roc.png"):
        assert (tmp_path / "figures" / f).stat().st_size > 5000
    models = load_models(tmp_path / "models" / "probability_models.json")
    assert set(models) == set(PAPER_TABLE1) and (tmp_path / "models" / "all_parameters_gbdt.joblib").exists()
    # The stage applies saved models to a feature table.
    out = ProbabilityStage(str(tmp_path / "models" / "probability_models.json"), ["Q2"]).finalize(feats, tmp_path)
    np.testing.assert_allclose(out.P_Q2, models["Q2"].predict(feats.Q2))


def test_one_command_reproduction_via_infer(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("infer", overrides=["pipeline=variability_paper", f"out_dir={tmp_path}", "pipeline.plots=false",
                                          "+pipeline.sim={n_variables: 60, n_constant: 60}"])
    out = instantiate(cfg.pipeline, _convert_="partial").run()
    assert Path(out["tables"]).exists() and (tmp_path / "table2.csv").exists()
    assert json.loads((tmp_path / "sim" / "config.json").read_text())["n_variables"] == 60
