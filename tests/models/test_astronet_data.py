"""Data for Astronet: store reading (option (b)), truth matching, the DataModule, and train.py fast_dev_run."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skyvar.data.lightcurve_views import LightCurveViewsDataModule, iter_store_batches, labels_from_truth

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lightcurves"))
from test_views import make_box_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _store(tmp_path, n=12, row_group=250):
    periods = np.linspace(0.3, 0.8, n)
    depths = np.where(np.arange(n) % 2 == 0, 0.01, 0.0)  # even rows transit, odd rows constant
    b, _ = make_box_batch(periods, depths, n_epochs=300, seed=4)
    b.source_id = np.arange(100, 100 + n)
    df = b.to_long()
    path = tmp_path / "store.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=row_group)
    lab = pd.DataFrame({"source_id": b.source_id, "var_type": np.where(depths > 0, "transit", "constant"),
                        "periodic": depths > 0, "mag": 20.0})
    lab.to_parquet(tmp_path / "labels.parquet")
    return path, df, lab


def test_store_reader_keeps_light_curves_whole(tmp_path):
    path, df, _ = _store(tmp_path)  # 300-point curves in 250-row groups: every curve spans two groups
    batches = list(iter_store_batches(path, max_rows=700))
    ids = np.concatenate([b.source_id for b in batches])
    assert sorted(ids) == sorted(df["source_id"].unique()) and len(ids) == len(set(ids))
    assert all((b.n_points == 300).all() for b in batches)
    # a directory of Parquet files reads the same curves
    d = tmp_path / "dir"
    d.mkdir()
    df[df.source_id < 106].to_parquet(d / "a.parquet")
    df[df.source_id >= 106].to_parquet(d / "b.parquet")
    ids2 = np.concatenate([b.source_id for b in iter_store_batches(d)])
    assert sorted(ids2) == sorted(ids)


def test_store_reader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_store_batches(tmp_path / "nope.parquet"))
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"source_id": [1], "flux": [1.0]}).to_parquet(bad)
    with pytest.raises(ValueError, match="missing columns"):
        list(iter_store_batches(bad))
    _, df, _ = _store(tmp_path)
    shuffled = tmp_path / "shuffled.parquet"
    pq.write_table(pa.Table.from_pandas(df.sample(frac=1, random_state=0), preserve_index=False), shuffled,
                   row_group_size=500)
    with pytest.raises(ValueError, match="not contiguous"):
        list(iter_store_batches(shuffled, max_rows=400))


def test_labels_from_truth_matches_positions():
    truth = pd.DataFrame({"source_id": [1, 2, 3], "x": [10.0, 50.0, 90.0], "y": [10.0, 50.0, 90.0],
                          "var_type": ["transit", "constant", "eb_detached"], "period": [2.0, np.nan, 5.0],
                          "periodic": [True, False, False], "mag": [20.0, 21.0, 19.0]})
    sources = pd.DataFrame({"source_id": [7, 8, 9], "x": [10.3, 90.0, 30.0], "y": [9.8, 90.4, 30.0]})
    lab = labels_from_truth(sources, truth, radius_pix=1.0)
    assert lab["truth_id"].tolist() == [1, 3, -1]
    assert lab["label"].tolist() == [1, 0, 0]  # the 5-d binary is longer than the baseline: non-periodic
    assert lab["var_type"].tolist() == ["transit", "eb_detached", "unmatched"]
    assert lab["class_name"].tolist() == ["transit", "eb", "constant"]
    assert len(labels_from_truth(sources, truth, 1.0, keep_unmatched=False)) == 2


def test_datamodule_from_store_splits_by_star(tmp_path):
    path, _, lab = _store(tmp_path, n=20)
    views = {"period_min": 0.2, "period_max": 1.0, "min_points": 30}
    kw = dict(data_dir=str(tmp_path / "cache"), source="store", store=str(path),
              labels=str(tmp_path / "labels.parquet"), views=views, splits=[0.5, 0.25, 0.25], batch_size=4, seed=1,
              progress=False)
    dm = LightCurveViewsDataModule(**kw)
    dm.prepare_data()
    dm.setup("fit")
    tab = dm.table
    assert len(tab) == 20 and set(tab["split"]) == {"train", "val", "test"}
    assert tab.groupby("source_id")["split"].nunique().max() == 1
    assert (tab.loc[tab["var_type"] == "transit", "view_flag"] == 0).all()
    batch = next(iter(dm.train_dataloader()))
    assert batch["global_view"].shape[1:] == (201,) and batch["aux"].shape[1:] == (6,)
    # the same seed gives the same split; cached views are reused
    dm2 = LightCurveViewsDataModule(**kw)
    dm2.setup("fit")
    pd.testing.assert_series_equal(dm2.table["split"], tab["split"])
    assert dm2.cache_dir == dm.cache_dir
    with pytest.raises(ValueError, match="labels"):
        LightCurveViewsDataModule(**{**kw, "labels": None, "data_dir": str(tmp_path / "c2")}).prepare_data()


def test_train_fast_dev_run(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    r = run_cli(["train.py", "model=astronet", "data=csst_lightcurves", "logger=none", "+trainer.fast_dev_run=true",
                 f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/run",
                 "data.sim.n_stars=60", "data.sim.field.n_epochs=200", "data.views.min_depth_snr=0",
                 "+data.views.period_max=0.6", "data.batch_size=16", "data.splits=[0.5,0.25,0.25]"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test/loss" in r.stdout + r.stderr
