"""The eq. 7-9 probability model, its evaluation, and the one-command reproduction."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skyvar.lightcurves.probability import (
    ALL_MODEL,
    PAPER_TABLE1,
    SUBSETS,
    ProbabilityStage,
    VariabilityProbability,
    evaluate,
    histogram_peak,
    load_band_models,
    load_models,
    matched_subset,
    paper_draw,
    roc,
    sample_diagnostics,
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


def test_per_band_models_roundtrip_and_stage(tmp_path):
    g = VariabilityProbability("iter_std", column="iter_std_3").fit(np.arange(100.0), np.arange(100) > 50)
    r = VariabilityProbability("iter_std", column="iter_std_3").fit(np.arange(100.0), np.arange(100) < 50)
    save_models({"g": {"iter_std": g}, "r": {"iter_std": r}}, tmp_path / "m.json")
    per = load_band_models(tmp_path / "m.json")
    assert set(per) == {"g", "r"} and per["g"]["iter_std"].column == "iter_std_3"
    assert load_models(tmp_path / "m.json", "r")["iter_std"].predict([10.0])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="say which band"):
        load_models(tmp_path / "m.json")
    feats = pd.DataFrame({"source_id": [1, 1, 2], "band": ["g", "r", "i"], "iter_std_3": [90.0, 90.0, 90.0]})
    out = ProbabilityStage(str(tmp_path / "m.json")).finalize(feats, tmp_path)
    assert out.P_iter_std[0] == pytest.approx(1.0) and out.P_iter_std[1] == pytest.approx(0.0)
    assert np.isnan(out.P_iter_std[2])  # no model for band i


def _confounded(n=3000, seed=0):
    """Variables bright with many epochs, standards faint with few; ``std`` is pure noise level (a function of
    magnitude only) and ``Q2`` a real variability signal independent of magnitude and epochs."""
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], n)
    mag = np.where(y == 1, rng.uniform(13, 18, 2 * n), rng.uniform(15, 21, 2 * n))
    n_used = np.where(y == 1, rng.integers(60, 300, 2 * n), rng.integers(20, 120, 2 * n))
    err = 0.01 + 0.1 * 10 ** (0.4 * (mag - 20.5))
    df = pd.DataFrame({"source_id": np.arange(2 * n), "band": "r", "label": y, "median_mag": mag,
                       "n_used": n_used, "log_n": np.log10(n_used),
                       "std": err * rng.lognormal(0, 0.05, 2 * n),
                       "Q2": rng.normal(0, 1, 2 * n) + 1.5 * y})
    return df


def test_matched_subset_equalises_the_distributions():
    from scipy import stats

    df = _confounded()
    for keys in ({"median_mag": 0.25}, {"log_n": 0.1}, {"median_mag": 0.25, "log_n": 0.1}):
        m = matched_subset(df, keys, seed=3)
        sub = df[m]
        v, s = sub[sub.label == 1], sub[sub.label == 0]
        assert len(v) == len(s) > 200
        for col, w in keys.items():
            # identical histograms at the bins' resolution, hence indistinguishable distributions
            bins = np.floor(sub[col] / w)
            pd.testing.assert_series_equal(bins[sub.label == 1].value_counts().sort_index(),
                                           bins[sub.label == 0].value_counts().sort_index())
            before = stats.ks_2samp(df[df.label == 1][col], df[df.label == 0][col]).statistic
            after = stats.ks_2samp(v[col], s[col]).statistic
            # within a bin the classes may still differ (integer epochs, bin edges): the KS distance left
            # is that of one bin's width, against a large one before
            assert before > 0.3 and after < min(0.12, before / 3), (col, before, after)
            if col == "median_mag":  # continuous and uniform inside bins: indistinguishable after matching
                assert stats.ks_2samp(v[col], s[col]).pvalue > 0.01
    # reproducible by seed, different across seeds, NaN keys left out
    k = {"median_mag": 0.25}
    assert (matched_subset(df, k, 1) == matched_subset(df, k, 1)).all()
    assert (matched_subset(df, k, 1) != matched_subset(df, k, 2)).any()
    df.loc[:10, "median_mag"] = np.nan
    assert not matched_subset(df, k, 1)[:11].any()


def test_matching_removes_a_magnitude_confound(tmp_path):
    df = _confounded(2000)
    feats, labels = df.drop(columns=["label", "log_n"]), df[["source_id", "label"]]
    res = evaluate(feats, labels, tmp_path, parameters=("std", "Q2"), all_model=False, plots=False,
                   columns={"iter_std": "iter_std"})
    auc = res.auc.set_index(["subset", "parameter"]).auc
    # std knows only the magnitude: it separates the confounded sample, and nothing once matched in magnitude
    assert auc["all", "std"] > 0.75 and abs(auc["mag", "std"] - 0.5) < 0.08 and abs(auc["both", "std"] - 0.5) < 0.1
    # Q2 carries the variability itself: unchanged by matching (within the noise of the smaller subset)
    assert auc["all", "Q2"] == pytest.approx(0.86, abs=0.04) and auc["mag", "Q2"] == pytest.approx(auc["all", "Q2"],
                                                                                                   abs=0.06)
    t1 = res.table1.set_index(["subset", "parameter"])
    assert (t1.n_test_var == t1.n_test_std).loc[["mag", "epochs", "both"]].all()


def test_paper_draw_is_one_to_one():
    lab = pd.DataFrame({"source_id": np.arange(100), "label": np.r_[np.ones(20, int), np.zeros(80, int)]})
    ids = paper_draw(lab, seed=0)
    assert len(ids) == 40 and set(range(20)) <= set(ids) and len(set(ids)) == 40
    assert (paper_draw(lab, 0) == ids).all()


def test_sample_diagnostics_sigma_levels_and_iterations():
    rng = np.random.default_rng(2)
    n = 4000
    lc = pd.DataFrame({"source_id": 0, "band": "r", "time": np.arange(n, dtype=float),
                       "mag": 15 + 0.02 * rng.normal(size=n), "mag_err": 0.02, "flag": 0})
    d = sample_diagnostics(lc, pd.DataFrame({"source_id": [0], "label": [0], "var_type": ["constant"]}))
    r = d.iloc[0]
    assert r.N1 == pytest.approx(0.683, abs=0.02) and r.N2 == pytest.approx(0.954, abs=0.01)
    assert r.N3 == pytest.approx(0.997, abs=0.003) and r.n_det == n
    # 2-sigma clipping shrinks the std of Gaussian noise round by round (0.88 sigma after one round)
    assert 0.02 > r.iter_std_1 > r.iter_std_2 > r.iter_std_3 and r.iter_std_1 == pytest.approx(0.88 * 0.02, rel=0.03)
    assert histogram_peak([0.014] * 10 + [0.1], 0.05) == pytest.approx(0.014, rel=0.07)


@pytest.fixture(scope="module")
def sim_features(tmp_path_factory):
    from skyvar.lightcurves.indices import IndicesStage
    from skyvar.pipeline.lightcurves import LightCurvePipeline, read_features
    from skyvar.sim.ztf import ZTFSimConfig, simulate_to_disk

    d = tmp_path_factory.mktemp("ztf")
    simulate_to_disk(ZTFSimConfig(out_dir=str(d / "sim"), n_variables=250, n_constant=750, seed=5))
    LightCurvePipeline(input=str(d / "sim" / "store"), out_dir=str(d / "feat"), stages=[IndicesStage(plots=False)],
                       progress=False).run()
    return read_features(d / "feat"), pd.read_parquet(d / "sim" / "labels.parquet")


def test_evaluate_on_simulated_sample(sim_features, tmp_path):
    feats, labels = sim_features
    res = evaluate(feats, labels, tmp_path, plots=True)
    t1 = res.table1
    assert set(t1.band) == {"g", "r"} and set(t1.subset) == set(SUBSETS)
    for band in ("g", "r"):
        a = t1[(t1.band == band) & (t1.subset == "all")].set_index("parameter")
        assert list(a.index) == list(PAPER_TABLE1) + [ALL_MODEL]
        # the paper-design sample holds every variable and as many standard stars of the pool, 80/20 by source
        assert a.n_test.iloc[0] + a.n_train.iloc[0] <= 2 * 250 and a.auc["Q2"] > 0.7
    # Iter-std is the paper's: after three iterations
    models = load_band_models(tmp_path / "models" / "probability_models.json")
    assert set(models) == {"g", "r"} and models["r"]["iter_std"].column == "iter_std_3"
    md = (tmp_path / "tables.md").read_text()
    assert "Table 1, g band" in md and "Table 1, r band" in md and "0.83 / 0.72 / 0.92 / 0.77" in md
    assert "magnitude-matched" in md
    for f in ("figure6_probability_r.png", "figure7_Q_g.png", "figure7_Q2_r.png", "figure8_roc_g.png"):
        assert (tmp_path / "figures" / f).stat().st_size > 5000
    assert (tmp_path / "models" / "all_parameters_gbdt.joblib").exists()
    out = ProbabilityStage(str(tmp_path / "models" / "probability_models.json"), ["Q2"]).finalize(feats, tmp_path)
    r = (out.band == "r").to_numpy()
    np.testing.assert_allclose(out.P_Q2[r], models["r"]["Q2"].predict(feats.Q2[r]))


def test_one_command_reproduction_via_infer(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("infer", overrides=["pipeline=variability_paper", f"out_dir={tmp_path}", "pipeline.plots=false",
                                          "pipeline.pool_factor=2", "+pipeline.sim={n_variables: 60, n_constant: 60}"])
    out = instantiate(cfg.pipeline, _convert_="partial").run()
    assert Path(out["tables"]).exists() and (tmp_path / "table2.csv").exists()
    cfg_sim = json.loads((tmp_path / "sim" / "config.json").read_text())
    assert cfg_sim["n_variables"] == 60 and cfg_sim["n_constant"] == 120  # the pool
    assert "Paper (§2.2)" in (tmp_path / "sample.md").read_text()
