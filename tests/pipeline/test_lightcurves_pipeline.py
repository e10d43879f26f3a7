"""pipeline=lightcurves: features per (source, band), the stage interface, resume, bad input, Dask."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skyvar.lightcurves.indices import INDEX_NAMES, IndicesStage, variability_indices
from skyvar.lightcurves.store import FLAG_DUPLICATE_TIME, write_store
from skyvar.pipeline.lightcurves import LightCurvePipeline, partition_features, read_features

CONF = Path(__file__).resolve().parents[2] / "src" / "skyvar" / "conf"


def _long(n_src=400, seed=0, var_every=20):
    """Constant stars with a ZTF-like error model plus a sinusoidal variable every ``var_every``."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_src):
        m0 = rng.uniform(14, 20.5)
        L = int(rng.integers(25, 60))
        t = np.sort(rng.uniform(58000, 58470, L))
        err = 0.01 + 0.09 * 10 ** (0.4 * (m0 - 20.5))
        for b in "gr":
            mag = m0 + rng.normal(0, err, L)
            if s % var_every == 0:
                mag = mag + 0.4 * np.sin(2 * np.pi * t / 17.3)
            rows.append(pd.DataFrame({"source_id": s, "band": b, "time": t, "mag": mag, "mag_err": err,
                                      "flag": np.zeros(L, np.int32)}))
    return pd.concat(rows, ignore_index=True)


def run_infer(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("infer", overrides=overrides)
    return instantiate(cfg.pipeline, _convert_="partial").run()


def test_default_config_end_to_end(tmp_path):
    df = _long()
    write_store(df, tmp_path / "store", n_partitions=3)
    out = tmp_path / "out"
    s = run_infer(["pipeline=lightcurves", f"input={tmp_path / 'store'}", f"out_dir={out}",
                   "pipeline.progress=false"])
    assert s["n_lightcurves"] == 800 and s["n_partitions"] == 3 and s["n_failed"] == 0
    f = read_features(out)
    assert len(f) == 800 and not f.duplicated(["source_id", "band"]).any()
    # Features are exactly the indices of each curve.
    one = df[(df.source_id == 7) & (df.band == "r")].sort_values("time")
    ref = variability_indices(one.mag.to_numpy(), one.mag_err.to_numpy())
    row = f[(f.source_id == 7) & (f.band == "r")].iloc[0]
    for k in INDEX_NAMES:
        assert row[k] == pytest.approx(float(ref[k]), rel=1e-12), k
    assert row.n_obs == len(one) == row.n_good == row.n_used
    # The 10-sigma robust-std excess finds the injected variables and (almost) nothing else.
    cand = f[f.cand_robust_std]
    assert set(cand.source_id % 20) == {0}
    assert cand.source_id.nunique() >= 0.9 * 20
    for name in ("excess/excess_g.png", "excess/fits.json", "indices/distributions_r.png"):
        assert (out / "plots" / name).stat().st_size > 1000


class RecordingStage:
    """A foreign stage, as another module would add one: per-batch column plus a finalize hook."""

    name = "rec"

    def __init__(self, factor=1.0):
        self.factor = factor

    def __call__(self, batch, out_dir):
        (out_dir / "plots" / self.name).mkdir(parents=True, exist_ok=True)
        dt = np.diff(batch.time, axis=1)
        assert batch.mask.shape == batch.mag.shape and np.all(dt[np.isfinite(dt)] >= 0)
        return pd.DataFrame({"rec_npts": batch.mask.sum(1) * self.factor})

    def finalize(self, features, out_dir):
        return features.assign(rec_rank=features["rec_npts"].rank())


class BadStage:
    name = "bad"

    def __call__(self, batch, out_dir):
        return pd.DataFrame({"x": np.zeros(len(batch) + 1)})


def test_stage_interface_masking_and_resume(tmp_path):
    df = _long(n_src=60)
    # Flagged points are masked (repeated time) and counted in n_obs but not n_good.
    df.loc[df.index[:5], "flag"] = FLAG_DUPLICATE_TIME
    write_store(df, tmp_path / "store", n_partitions=2)
    out = tmp_path / "out"
    p = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(out),
                           stages=[IndicesStage(plots=False), RecordingStage()], progress=False, batch_curves=7)
    s1 = p.run()
    f = read_features(out)
    assert (f.rec_npts == f.n_good).all() and "rec_rank" in f and (out / "plots" / "rec").is_dir()
    first = f.iloc[0]
    assert first.n_obs - first.n_good == 5
    # Rerun: every partition resumes; a changed stage parameter recomputes.
    s2 = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(out),
                            stages=[IndicesStage(plots=False), RecordingStage()], progress=False).run()
    assert s1["n_partitions_computed"] == 2 and s2["n_partitions_resumed"] == 2
    s3 = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(out),
                            stages=[IndicesStage(plots=False), RecordingStage(factor=2.0)], progress=False).run()
    assert s3["n_partitions_computed"] == 2
    assert (read_features(out).rec_npts == 2 * f.n_good).all()
    # A stage breaking the contract loses its own columns, reported per curve; the others keep theirs.
    s4 = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(tmp_path / "o4"),
                            stages=[IndicesStage(plots=False), BadStage()], progress=False).run()
    fails = json.loads((tmp_path / "o4" / "failures.json").read_text())
    assert s4["n_stage_error_curves"] == 120 and s4["n_failed"] == 120
    assert len(fails) == 120 and all(f["stage"] == "bad" and "expected a DataFrame with" in f["error"] for f in fails)
    f4 = read_features(tmp_path / "o4")
    assert len(f4) == 120 and f4["std"].notna().all() and "x" not in f4
    with pytest.raises(ValueError, match="distinct `name`"):
        LightCurvePipeline(input="x", out_dir=str(tmp_path), stages=[RecordingStage(), RecordingStage()])


def test_csv_directory_with_bad_files_and_short_curves(tmp_path):
    df = _long(n_src=30)
    d = tmp_path / "csv"
    d.mkdir()
    for s, g in df.groupby("source_id"):
        g.drop(columns="source_id").rename(columns={"time": "mjd", "mag_err": "magerr"}).to_csv(
            d / f"star{s:03d}.csv", index=False)
    (d / "star999.csv").write_text("mjd,mag,magerr,band\n58000.1,15.0,0.01,g\n")  # one point
    (d / "broken.csv").write_text("mjd,mag\n\x00\x01garbage,\n")
    # one file, three curves: all-NaN magnitudes in r (removed by cleaning), no usable errors in i, fine in g
    (d / "mixed.csv").write_text("mjd,mag,magerr,band\n" + "".join(
        f"{58000 + k},{15 + 0.01 * (k % 3)},0.01,g\n{58000 + k},nan,0.01,r\n{58000 + k},{15.2 + 0.01 * (k % 2)},,i\n"
        for k in range(12)))
    out = tmp_path / "out"
    s = run_infer(["pipeline=lightcurves", f"input={d}", f"out_dir={out}", "pipeline.progress=false",
                   "pipeline.n_partitions=2", "pipeline.stages.0.plots=false", "pipeline.stages.1.plots=false"])
    f = read_features(out)
    assert len(f) == 63 and s["n_partitions"] == 2
    short = f[f.source_id == "star999"].iloc[0]
    assert short.n_obs == 1 and np.isnan(short["std"]) and short.indices_flag > 0
    assert short.reject_reason.startswith("too few points")
    assert s["cleaning"]["one_point_curves"] == 1
    fails = json.loads((out / "failures.json").read_text())
    assert [Path(x["file"]).name for x in fails if x["stage"] == "read"] == ["broken.csv"]
    # Every rejected light curve is named with its reason; the good curve of the same file is not.
    rej = {(x["source_id"], x["band"]): x for x in fails if x["stage"] == "clean"}
    assert set(rej) == {("star999", "g"), ("mixed", "r"), ("mixed", "i")}
    assert "non-finite" in rej["mixed", "r"]["reason"] and not rej["mixed", "r"]["feature_row"]
    assert rej["mixed", "i"]["reason"].startswith("no errors") and rej["mixed", "i"]["feature_row"]
    assert s["n_rejected_curves"] == 3 and s["n_failed"] == 1
    mixed = f[f.source_id == "mixed"].set_index("band")
    assert set(mixed.index) == {"g", "i"} and mixed.loc["g", "reject_reason"] == "" and np.isfinite(mixed.loc["g", "Q"])
    assert np.isnan(mixed.loc["i", "Q"]) and np.isfinite(mixed.loc["i", "std"])
    # the summary keeps the cleaning messages
    assert any("mixed.csv" in m and "no usable row" in m for m in s["cleaning"]["messages"])


def test_partition_features_without_errors_column():
    df = _long(n_src=5).drop(columns=["mag_err"]).assign(mag_err=np.nan)
    f = partition_features(df, [IndicesStage(plots=False)], Path("/nonexistent"))
    assert f.Q.isna().all() and f["std"].notna().all()


def _dask_vs_serial(tmp_path, processes):
    pytest.importorskip("dask.distributed")
    df = _long(n_src=80)
    write_store(df, tmp_path / "store", n_partitions=3)
    serial = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(tmp_path / "a"),
                                stages=[IndicesStage(plots=False)], progress=False).run()
    dist = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(tmp_path / "b"),
                              stages=[IndicesStage(plots=False)], progress=False,
                              dask={"enabled": True, "n_workers": 2, "processes": processes}).run()
    assert serial["n_lightcurves"] == dist["n_lightcurves"] == 160 and dist["n_partitions_computed"] == 3
    pd.testing.assert_frame_equal(read_features(tmp_path / "a"), read_features(tmp_path / "b"))


def test_dask_local_cluster_threads_matches_serial(tmp_path):
    _dask_vs_serial(tmp_path, processes=False)


@pytest.mark.slow
def test_dask_local_cluster_processes_matches_serial(tmp_path):
    _dask_vs_serial(tmp_path, processes=True)


def test_dask_dataframe_map_partitions(tmp_path):
    pytest.importorskip("dask.dataframe")
    import dask

    from skyvar.pipeline.lightcurves import dask_features, store_to_dask

    df = _long(n_src=50)
    write_store(df, tmp_path / "store", n_partitions=4)
    ddf = store_to_dask(tmp_path / "store")
    assert ddf.npartitions == 4
    lazy = dask_features(ddf, [IndicesStage(plots=False)], tmp_path)
    with dask.config.set(scheduler="synchronous"):
        got = lazy.compute().sort_values(["source_id", "band"]).reset_index(drop=True)
    want = partition_features(df, [IndicesStage(plots=False)], tmp_path)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


@pytest.mark.slow
def test_infer_cli_subprocess(tmp_path, root):
    """The documented command line, in a fresh interpreter (as a user runs it)."""
    import subprocess
    import sys

    _long(n_src=60).to_parquet(tmp_path / "lc.parquet")
    r = subprocess.run([sys.executable, str(root / "infer.py"), "pipeline=lightcurves", f"input={tmp_path / 'lc.parquet'}",
                        f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}"],
                       capture_output=True, text=True, cwd=root, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(read_features(tmp_path / "out")) == 120


class PoisonedStage:
    """Raises whenever a given source is in its batch, like a stage meeting one pathological curve."""

    name = "poisoned"

    def __init__(self, bad_id):
        self.bad_id = bad_id
        self.calls = 0

    def __call__(self, batch, out_dir):
        self.calls += 1
        if self.bad_id in set(np.asarray(batch.source_id).tolist()):
            raise FloatingPointError(f"cannot handle source {self.bad_id}")
        return pd.DataFrame({"poison_n": batch.mask.sum(1)})


def test_a_failing_curve_loses_only_its_own_stage_columns(tmp_path):
    df = _long(n_src=40)
    write_store(df, tmp_path / "store", n_partitions=2)
    stage = PoisonedStage(13)
    out = tmp_path / "out"
    s = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(out), progress=False, batch_curves=50,
                           stages=[stage, IndicesStage(plots=False)]).run()
    f = read_features(out)
    assert len(f) == 80 and s["n_stage_error_curves"] == 2 and s["n_failed"] == 2
    bad = f.source_id == 13
    assert f.loc[bad, "poison_n"].isna().all() and (f.loc[~bad, "poison_n"] == f.loc[~bad, "n_good"]).all()
    assert f["std"].notna().all()  # the next stage still ran on every curve, the failing one included
    assert f.loc[bad, "stage_errors"].str.contains("poisoned: FloatingPointError: cannot handle source 13").all()
    assert (f.loc[~bad, "stage_errors"] == "").all()
    fails = json.loads((out / "failures.json").read_text())
    assert sorted((x["source_id"], x["band"], x["stage"]) for x in fails) == [(13, "g", "poisoned"),
                                                                             (13, "r", "poisoned")]
    # bisection, not one call per curve: log2(batch) levels plus the successful halves
    assert stage.calls < 40
    # the partition with the error is not stamped, so a rerun retries it (and only it)
    s2 = LightCurvePipeline(input=str(tmp_path / "store"), out_dir=str(out), progress=False, batch_curves=50,
                            stages=[PoisonedStage(13), IndicesStage(plots=False)]).run()
    assert s2["n_partitions_computed"] == 1 and s2["n_partitions_resumed"] == 1
