"""Survey light-curve readers (skyvar.lightcurves.readers): MACHO archives, the Stripe 82 layout, bad files."""

import tarfile
from pathlib import Path

import numpy as np
import pytest

from skyvar.lightcurves.readers import open_lightcurves, read_archive, read_reference_periods
from skyvar.lightcurves.store import StoreError

DATA = Path(__file__).resolve().parents[1] / "data" / "lightcurves"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "lightcurves"


def test_macho_archive_is_read_directly():
    df = read_archive(DATA / "macho" / "lc_1.3444.614.tar.bz2")
    assert set(df.band) == {"B", "R"} and set(df.source_id) == {"1.3444.614"}
    # the member files hold 1235 (B) and 722 (R) measurements after their 3 header lines
    assert df.groupby("band").size().to_dict() == {"B": 1235, "R": 722}
    first = df[df.band == "B"].iloc[0]
    assert (first.time, first.mag, first.mag_err) == (48823.477419, -6.081, 0.156)


def test_bad_archives_are_reported_and_skipped(tmp_path):
    d = tmp_path / "macho"
    d.mkdir()
    (d / "lc_good.tar.bz2").write_bytes((DATA / "macho" / "lc_1.3444.614.tar.bz2").read_bytes())
    (d / "lc_truncated.tar.bz2").write_bytes((DATA / "macho" / "lc_1.3444.614.tar.bz2").read_bytes()[:500])
    bad = tmp_path / "x.B.mjd"
    bad.write_text("#MJD Mag Err\n1 2\n3 4\n")  # two columns
    with tarfile.open(d / "lc_twocols.tar.gz", "w:gz") as tar:
        tar.add(bad, arcname="lc_twocols.B.mjd")
    h = open_lightcurves(d)
    assert h.kind == "archives" and set(h.read_all().source_id) == {"1.3444.614"}
    names = sorted(Path(f["file"]).name for f in h.failures)
    assert names == ["lc_truncated.tar.bz2", "lc_twocols.tar.gz"]
    assert all(str(d) in f["error"] for f in h.failures)  # the message names the file
    with pytest.raises(StoreError, match="lc_truncated"):
        open_lightcurves(d / "lc_truncated.tar.bz2")


def test_s82_layout_skips_the_catalogue():
    h = open_lightcurves(DATA / "s82")
    df = h.read_all()
    assert not h.failures and sorted(df.source_id.unique()) == ["2105372", "2175525"]
    assert set(df.band) == set("ugriz") and np.isfinite(df.mag_err).all()
    ref = read_reference_periods(DATA / "s82")
    assert list(ref.type) == ["ab", "c"] and ref.period.iloc[0] == pytest.approx(0.649103986993)


def test_macho_through_the_pipeline(tmp_path):
    from skyvar.lightcurves.multiband_search import MultibandPeriodSearch
    from skyvar.pipeline.lightcurves import LightCurvePipeline, read_features

    stage = MultibandPeriodSearch(plots=False, fmax=10.0)
    s = LightCurvePipeline(input=str(DATA / "macho"), out_dir=str(tmp_path), stages=[stage], progress=False).run()
    f = read_features(tmp_path)
    assert s["n_failed"] == 0 and s["store_kind"] == "archives" and sorted(f.band) == ["B", "R", "all"]
    row = f[f.band == "all"].iloc[0]
    assert row.n_bands == 2 and row.n_obs == 1235 + 722 and np.isfinite(row.period)
    assert row.amp_B > 0 and row.amp_R > 0


@pytest.mark.skipif(not (SHARED / "macho").exists(), reason="needs ../shared/data/lightcurves/macho")
def test_all_shared_macho_archives_open():
    h = open_lightcurves(SHARED / "macho")
    df = h.read_all()
    assert not h.failures and df.source_id.nunique() == 10 and set(df.band) == {"B", "R"}
    assert np.isfinite(df[["time", "mag", "mag_err"]].to_numpy()).all()


@pytest.mark.skipif(not (SHARED / "sdss_s82_rrlyrae").exists(), reason="needs ../shared/data/lightcurves/sdss_s82_rrlyrae")
def test_all_shared_s82_curves_open():
    h = open_lightcurves(SHARED / "sdss_s82_rrlyrae")
    df = h.read_all()
    ref = read_reference_periods(SHARED / "sdss_s82_rrlyrae")
    assert not h.failures and df.source_id.nunique() == len(ref) == 333
    assert set(df.source_id) == set(ref.source_id) and set(df.band) == set("ugriz")
