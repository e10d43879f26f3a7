"""Astronet network, LightningModule, release/loading, pipeline stage and evaluation."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from skyvar.lightcurves.views import (
    AUX_FEATURES,
    FLAG_NO_PERIOD,
    FLAG_OUT_OF_RANGE,
    FLAG_TOO_FEW_POINTS,
    AuxScaler,
    ViewConfig,
)
from skyvar.models.astronet_module import AstronetModule, AuxStandardiser, export_release, load_astronet
from skyvar.models.components.astronet import AstronetCNN, ViewColumn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightcurves"))
from test_views import make_box_batch  # noqa: E402

SMALL_NET = {"fc_layers": 2, "fc_width": 32, "n_classes": 5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_columns_follow_astronet_triage():
    g = ViewColumn(201, 5, pool_size=5, pool_stride=2)
    loc = ViewColumn(61, 2, pool_size=7, pool_stride=2)
    assert (g.out_length, g.out_features) == (3, 256 * 3)
    assert (loc.out_length, loc.out_features) == (11, 32 * 11)
    convs = [m for m in g if isinstance(m, torch.nn.Conv1d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 128, 128, 256, 256]
    assert all(c.kernel_size == (5,) for c in convs)
    net = AstronetCNN(n_aux=6, n_classes=5)
    out = net(torch.randn(4, 201), torch.randn(4, 61), torch.randn(4, 6))
    assert out["logit"].shape == (4,) and out["class_logits"].shape == (4, 5)
    assert net.pre_logits[0].in_features == 768 + 352 + 6
    with pytest.raises(ValueError, match="auxiliary"):
        net(torch.randn(4, 201), torch.randn(4, 61))


def test_aux_standardiser_matches_numpy_scaler():
    rng = np.random.default_rng(0)
    aux = np.c_[rng.uniform(0.1, 3, 50), rng.uniform(0.01, 0.3, 50), rng.uniform(1e-3, 0.3, 50),
                rng.uniform(16, 25, 50), rng.uniform(5, 100, 50), rng.uniform(3, 20, 50)]
    aux[3, 4] = np.nan
    ref = AuxScaler().fit(aux).transform(aux)
    st = AuxStandardiser(AUX_FEATURES)
    st.fit(aux)
    np.testing.assert_allclose(st(torch.as_tensor(aux, dtype=torch.float32)).numpy(), ref, atol=1e-4)


def _tiny_module():
    torch.manual_seed(0)
    m = AstronetModule(net=SMALL_NET, views={"period_min": 0.2, "period_max": 1.0, "min_points": 30},
                       classes=["constant", "eb", "transit", "pulsator", "flare"])
    m.aux.fit(np.abs(np.random.default_rng(1).normal(1, 0.3, (20, 6))))
    return m.eval()


def test_release_roundtrip_and_lightning_checkpoint(tmp_path):
    m = _tiny_module()
    g, loc, aux = torch.randn(3, 201), torch.randn(3, 61), torch.rand(3, 6) + 0.1
    ref = m.predict_proba(g, loc, aux)["p_periodic"]
    path = export_release(m, tmp_path / "astronet.pt", meta={"note": "test"})
    pred = load_astronet(path)
    out = pred.predict(g.numpy(), loc.numpy(), aux.numpy())
    np.testing.assert_allclose(out["p_periodic"], ref.numpy(), rtol=1e-5)
    assert out["class_proba"].shape == (3, 5) and pred.meta["note"] == "test"
    assert pred.views["period_min"] == 0.2
    # a Lightning checkpoint loads the same way
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    out2 = load_astronet(tmp_path / "x.ckpt").predict(g.numpy(), loc.numpy(), aux.numpy())
    np.testing.assert_allclose(out2["p_periodic"], ref.numpy(), rtol=1e-5)
    # NaN views -> NaN probability
    gn = g.numpy().copy()
    gn[1] = np.nan
    assert np.isnan(pred.predict(gn, loc.numpy(), aux.numpy())["p_periodic"][1])
    with pytest.raises(FileNotFoundError):
        load_astronet(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017 - torch raises its own unpickling errors
        load_astronet(tmp_path / "junk.pt")


def test_pipeline_stage_contract(tmp_path):
    from skyvar.lightcurves.classify import AstronetStage

    path = export_release(_tiny_module(), tmp_path / "astronet.pt")
    b, _ = make_box_batch([0.31, 0.47, 0.4, 0.6], [0.01, 0.01, 0.01, 0.01])
    b.mask[2, 20:] = False  # too few points
    b.mag[3] = 20.0  # flat: behind the BLS gate
    b.mag_err[3] = 0.01
    stage = AstronetStage(checkpoint=str(path), device="cpu", n_examples=2)
    assert stage.name == "astronet"
    df = stage(b, tmp_path)
    assert len(df) == 4 and list(df.index) == [0, 1, 2, 3]
    assert {"p_periodic", "astronet_periodic", "astronet_class", "astronet_flag", "astronet_period"} <= set(df.columns)
    assert np.isnan(df["p_periodic"][2]) and df["astronet_class"][2] == "unusable"
    assert df["astronet_flag"][2] & FLAG_TOO_FEW_POINTS
    assert df["p_periodic"][3] == 0.0 and df["astronet_class"][3] == "no_period" and df["astronet_flag"][3] & FLAG_NO_PERIOD
    assert ((df["p_periodic"][:2] > 0) & (df["p_periodic"][:2] < 1)).all()
    np.testing.assert_allclose(df["astronet_period"][:2], [0.31, 0.47], rtol=0.01)
    # points are taken from the batch mask only (the pipeline applies its flag policy before)
    b.flag = np.full(b.mag.shape, 2, np.int32)
    df2 = stage(b, tmp_path)
    np.testing.assert_array_equal(df2["p_periodic"].to_numpy(), df["p_periodic"].to_numpy())
    fin = stage.finalize(df, tmp_path)
    assert len(fin) == 4 and "p_periodic_adjusted" in fin.columns
    assert fin["p_periodic_adjusted"][3] == 0.0 and np.isnan(fin["p_periodic_adjusted"][2])
    assert (tmp_path / "plots" / "astronet" / "candidates.png").exists()
    assert (tmp_path / "plots" / "astronet" / "p_periodic_hist.png").exists()


def test_binary_metrics_and_evaluation_hand_values(tmp_path):
    from skyvar.lightcurves.classify import binary_metrics, decisions, evaluate_predictions

    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.2, 0.1, 0.6, 0.0, 0.3, np.nan])
    m = binary_metrics(y, p)
    assert m["confusion"] == [[3, 1], [2, 2]]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(5 / 8)
    from sklearn.metrics import roc_auc_score

    assert m["auc"] == pytest.approx(roc_auc_score(y, np.nan_to_num(p)))
    flags = np.array([0, 0, FLAG_NO_PERIOD, 0, 0, FLAG_TOO_FEW_POINTS, 0, 0])
    d = decisions(np.array([0.9, 0.8, np.nan, 0.1, 0.6, np.nan, 0.3, 0.7]), flags)
    assert d[2] == 0.0 and np.isnan(d[5]) and d[0] == 0.9
    tab = pd.DataFrame({"label": y, "var_type": ["transit", "transit", "eb_detached", "constant", "constant",
                                                  "flare", "constant", "transit"],
                        "class_name": ["transit", "transit", "eb", "constant", "constant", "flare", "constant",
                                       "transit"],
                        "class_id": [2, 2, 1, 0, 0, 4, 0, 2], "snr_lc": [3.0, 0.05, 1.0, 0, 0, 0, 0, 0.01],
                        "snr_lc_total": [90.0, 1.5, 30, 0, 0, 0, 0, 0.3], "view_flag": flags})
    res = evaluate_predictions(tab, d, 0.5, tmp_path, "unit", np.array([2, 2, 0, 0, 0, 0, 0, 2]),
                               ["constant", "eb", "transit", "pulsator", "flare"])
    acc = {r["snr_lo"]: r["accuracy"] for r in res["transit_accuracy_vs_snr_lc"] if r["n"]}
    assert acc == {2.0: 1.0, 0.05: 1.0, 0.0: 1.0}  # transits at S/N 3, 0.05, 0.01 all called periodic
    assert res["multiclass_accuracy"] == pytest.approx(6 / 8)
    for f in ("confusion_unit.png", "roc_unit.png", "transit_accuracy_vs_snr_unit.png", "multiclass_unit.png",
              "metrics_unit.json"):
        assert (tmp_path / f).exists()


def test_training_step_reduces_loss_on_separable_data():
    torch.manual_seed(0)
    tiny = {"global_blocks": 2, "local_blocks": 1, "initial_filters": 4, "fc_layers": 1, "fc_width": 16}
    m = AstronetModule(net=tiny, lr=3e-3)
    m.aux.fit(np.ones((2, 6)))
    n = 64
    y = torch.arange(n) % 2
    g = torch.randn(n, 201) * 0.1
    g[y == 1, 95:106] -= 1.0
    loc = torch.randn(n, 61) * 0.1
    loc[y == 1, 25:36] -= 1.0
    batch = {"global_view": g, "local_view": loc, "aux": torch.ones(n, 6), "label": y,
             "class_id": y * 2}
    opt = m.configure_optimizers()
    losses = []
    for _ in range(60):
        out = m(batch["global_view"], batch["local_view"], batch["aux"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logit"], y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # ln 2 = 0.69 at chance


def test_view_config_in_hparams_is_complete_after_setup(tmp_path):
    """Training stores the full ViewConfig, so inference can rebuild identical views."""
    import dataclasses

    class DM:
        view_cfg = ViewConfig(min_depth_snr=5.0)

        def train_aux(self):
            return np.ones((4, 6))

        def train_labels(self):
            return np.array([0, 0, 0, 1])

    class T:
        datamodule = DM()

    m = AstronetModule(net=SMALL_NET)
    m._trainer = T()
    m.setup("fit")
    assert m.hparams.views == dataclasses.asdict(DM.view_cfg)
    assert float(m.pos_weight) == 3.0 and bool(m.aux.fitted)


def test_prior_adjust_recovers_population_prior():
    from skyvar.lightcurves.classify import prior_adjust

    rng = np.random.default_rng(2)
    y = rng.random(20000) < 0.1
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    p_bal = 1 / (1 + np.exp(-2 * x))  # exact posterior under a 50/50 prior
    adj, pi = prior_adjust(p_bal, 0.5)
    assert pi == pytest.approx(0.1, abs=0.01)
    exact = 1 / (1 + np.exp(-2 * x) * 0.9 / 0.1)  # exact posterior under the true 10 % prior
    np.testing.assert_allclose(adj, exact, atol=0.02)
    out, _ = prior_adjust(np.array([0.2, np.nan]), 0.5)
    assert np.isnan(out[1])


def test_stage_chunks_and_curves_without_a_shared_grid(tmp_path):
    from skyvar.lightcurves.classify import AstronetStage

    path = export_release(_tiny_module(), tmp_path / "astronet.pt")
    b, _ = make_box_batch([0.31, 0.47, 0.4], [0.01, 0.01, 0.01])
    ref = AstronetStage(checkpoint=str(path), device="cpu", plots=False)(b, tmp_path)
    chunked = AstronetStage(checkpoint=str(path), device="cpu", plots=False, chunk_curves=2)(b, tmp_path)
    np.testing.assert_array_equal(chunked["p_periodic"].to_numpy(), ref["p_periodic"].to_numpy())
    # curve 1 observed a season later: no common grid, each curve is processed on its own
    b.time[1] += 1000.0
    # curve 2 sparse over 1000 days: far outside the 3.5-day training series -> not classified
    b.time[2] = np.sort(np.random.default_rng(0).uniform(60000, 61000, b.time.shape[1]))
    out = AstronetStage(checkpoint=str(path), device="cpu", plots=False)(b, tmp_path)
    np.testing.assert_allclose(out["p_periodic"][:2], ref["p_periodic"][:2], rtol=1e-5)
    assert np.isnan(out["p_periodic"][2]) and out["astronet_class"][2] == "unusable"
    assert out["astronet_flag"][2] == FLAG_OUT_OF_RANGE
