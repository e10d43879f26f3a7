"""The light-curve store: cleaning with reports, partitioned round trips, loose files, bad files."""

import numpy as np
import pandas as pd
import pytest

from skyvar.lightcurves.store import (
    FLAG_BAD_ERR,
    FLAG_DUPLICATE_TIME,
    STORE_COLUMNS,
    StoreError,
    clean_long,
    open_store,
    partition_of,
    read_store,
    write_store,
)


def _df(n_src=20, n_ep=15, seed=0, bands=("g", "r")):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_src):
        for b in bands:
            t = np.sort(rng.uniform(58000, 58470, n_ep))
            rows.append(pd.DataFrame({"source_id": s, "band": b, "time": t, "mag": rng.normal(17, 0.1, n_ep),
                                      "mag_err": np.full(n_ep, 0.02), "flag": np.zeros(n_ep, np.int32)}))
    return pd.concat(rows, ignore_index=True)


def test_clean_reports_every_problem():
    df = pd.DataFrame({
        "oid": [1, 1, 1, 1, 1, 1, 2, 3, 3, None],
        "MJD": [3.0, 1.0, 2.0, 2.0, 4.0, np.inf, 1.0, 1.0, 1.0, 5.0],
        "mag": [15.0, 15.1, 15.2, 15.2, np.nan, 15.0, 16.0, 17.0, 17.5, 15.0],
        "magerr": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, -0.1, 0.1, 0.1, 0.1],
        "filtercode": ["g", "g", "g", "g", "g", "g", "r", "g", "g", "g"],
    })
    out, rep = clean_long(df, source="demo.csv")
    assert list(out.columns) == list(STORE_COLUMNS)
    assert rep.dropped_nonfinite == 2 and rep.dropped_missing_id == 1
    assert rep.dropped_identical_duplicates == 1  # the repeated (1, g, 2.0, 15.2) row
    assert rep.flagged_duplicate_time == 1  # source 3 at t=1 twice with different mags
    assert rep.flagged_bad_err == 1 and rep.unsorted_curves == 1 and rep.one_point_curves == 1
    s1 = out[out.source_id == 1]
    assert s1.time.tolist() == [1.0, 2.0, 3.0]
    assert out.loc[out.source_id == 2, "flag"].item() & FLAG_BAD_ERR
    s3 = out[out.source_id == 3]
    assert s3.flag.tolist()[0] == 0 and s3.flag.tolist()[1] & FLAG_DUPLICATE_TIME
    assert any("renamed columns" in m for m in rep.infos) and any("not sorted" in m for m in rep.messages)


def test_missing_columns_and_missing_band_and_errors():
    with pytest.raises(StoreError, match="bad.csv.*missing required column.*mag"):
        clean_long(pd.DataFrame({"source_id": [1], "time": [1.0]}), source="bad.csv")
    out, rep = clean_long(pd.DataFrame({"source_id": [1, 1], "time": [1.0, 2.0], "mag": [15.0, 15.1]}))
    assert out.band.tolist() == ["", ""] and out.mag_err.isna().all() and (out.flag & FLAG_BAD_ERR).all()
    assert any("no mag_err" in m for m in rep.messages)


def test_partitioned_roundtrip_keeps_sources_whole(tmp_path):
    df = _df()
    write_store(df, tmp_path / "store", n_partitions=4)
    h = open_store(tmp_path / "store")
    assert h.kind == "partitioned" and 1 < len(h.partitions) <= 4
    seen = set()
    for p in h.partitions:
        ids = set(p.load().source_id)
        assert not ids & seen  # a source lives in exactly one partition
        seen |= ids
    back = read_store(tmp_path / "store").sort_values(["source_id", "band", "time"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, df.sort_values(["source_id", "band", "time"]).reset_index(drop=True),
                                  check_dtype=False)
    # Rewriting replaces the store atomically; no temporary directories are left behind.
    write_store(df.iloc[:10], tmp_path / "store", n_partitions=2)
    assert len(read_store(tmp_path / "store")) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_partition_of_is_stable():
    a = partition_of(np.arange(1000), 8)
    assert a.min() >= 0 and a.max() < 8 and len(np.unique(a)) == 8
    np.testing.assert_array_equal(a, partition_of(np.arange(1000), 8))
    assert partition_of(np.array(["x", "y"]), 3).tolist() == partition_of(np.array(["x", "y"]), 3).tolist()


def test_single_files_and_loose_directory_with_a_bad_file(tmp_path):
    df = _df(n_src=6)
    df.to_parquet(tmp_path / "one.parquet")
    assert len(read_store(tmp_path / "one.parquet")) == len(df)
    d = tmp_path / "loose"
    d.mkdir()
    # One file per night: a source's points are spread over files and must come back together.
    for i, (_, night) in enumerate(df.groupby(df.time // 100)):
        night.sample(frac=1, random_state=i).to_csv(d / f"night{i}.csv", index=False)
    (d / "broken.parquet").write_bytes(b"PAR1 not really")
    (d / "nomag.csv").write_text("source_id,time\n1,2.0\n")
    h = open_store(d, n_partitions=3)
    assert {f["file"].split("/")[-1] for f in h.failures} == {"broken.parquet", "nomag.csv"}
    back = h.read_all()
    assert len(back) == len(df) and back.groupby(["source_id", "band"]).size().eq(15).all()
    assert all(g.time.is_monotonic_increasing for _, g in back.groupby(["source_id", "band"]))
    with pytest.raises(StoreError, match="broken.parquet"):
        open_store(d / "broken.parquet")


def test_per_object_files_take_the_id_from_the_name(tmp_path):
    for name in ("ZTF18abc", "ZTF18xyz"):
        pd.DataFrame({"mjd": [1.0, 2.0, 3.0], "mag": [15.0, 15.2, 15.1], "magerr": [0.01] * 3,
                      "filter": ["r"] * 3}).to_csv(tmp_path / f"{name}.csv", index=False)
    back = read_store(tmp_path)
    assert sorted(back.source_id.unique()) == ["ZTF18abc", "ZTF18xyz"] and set(back.band) == {"r"}
    write_store(back, tmp_path / "store")  # string ids round-trip through the store too
    assert sorted(read_store(tmp_path / "store").source_id.unique()) == ["ZTF18abc", "ZTF18xyz"]
