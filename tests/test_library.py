"""skyvar as a library: CLI, paths, released models, flags, logging, catalogue I/O, frame times."""

import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import ROOT, run_cli, shared_data

from skyvar import flags
from skyvar.cli import COMMANDS
from skyvar.utils.cli import UsageError, parse_args


# ------------------------------------------------------------------------------------------ CLI
def test_help_lists_every_command():
    r = run_cli(["-m", "skyvar", "--help"])
    assert r.returncode == 0, r.stderr
    for cmd in COMMANDS:
        assert f"  {cmd} " in r.stdout
    # each command's function exists and its module explains itself (`skyvar <cmd> --help` prints it)
    import importlib

    for cmd, (mod, fn, _) in COMMANDS.items():
        m = importlib.import_module(mod)
        assert callable(getattr(m, fn)) and len(m.__doc__ or "") > 40, cmd
    r = run_cli(["-m", "skyvar", "sim", "--help"])
    assert r.returncode == 0 and "field" in r.stdout


def test_words_without_equals_are_errors_not_dropped():
    with pytest.raises(UsageError, match="not key=value"):
        parse_args(["sep=a", "out_dir", "C"])
    with pytest.raises(UsageError, match="unknown key"):
        parse_args(["outdir=C"], allowed=["out_dir"])
    with pytest.raises(UsageError, match="unknown option"):
        parse_args(["--quik"], flags=["--quick"])
    a = parse_args(["evaluate", "data=a,b", "x=1=2"], positionals=["evaluate"])
    assert a.positionals == ["evaluate"] and a.kv == {"data": "a,b", "x": "1=2"}
    r = run_cli(["-m", "skyvar", "compare", "sep=/nonexistent", "out_dir", "/tmp/x"])
    assert r.returncode == 2 and "not key=value" in r.stderr
    r = run_cli(["-m", "skyvar", "reproduce", "--list", "outdir=x"])
    assert r.returncode == 2 and "unknown key" in r.stderr


def test_flag_registry_decodes_and_builds_masks():
    assert flags.decode(131133, "point") == ["saturated", "edge", "fit_failed", "bad_pixels", "nonpositive",
                                             "duplicate_time"]
    assert flags.mask(["saturated", "edge", "fit_failed", "bad_pixels", "nonpositive", "duplicate_time"]) == 131133
    assert flags.mask("default") == flags.DEFAULT_LIGHTCURVE_MASK == 131133
    assert flags.mask(12) == 12 and flags.mask(None) == 0
    assert flags.decode(1 << 30, "search") == ["bit30"]
    with pytest.raises(ValueError, match="valid"):
        flags.mask(["saturatd"])
    # the same word in two families is two different bits, named by the family
    assert flags.PointFlag.DUPLICATE_TIME != flags.SearchFlag.DUPLICATE_TIME
    for cls in flags.KINDS.values():  # one bit per member within a family
        vals = [m.value for m in cls]
        assert len(set(vals)) == len(vals) and all(v & (v - 1) == 0 for v in vals)
    r = run_cli(["-m", "skyvar", "flags", "point", "131133"])
    assert r.returncode == 0 and "duplicate_time" in r.stdout


# ------------------------------------------------------------------------------------------ models, paths
def test_released_checkpoints_match_their_cards_and_load_by_name():
    from skyvar.models import registry

    for name, rel in registry.RELEASES.items():
        assert rel.path.exists(), f"{name}: {rel.path} missing"
        assert registry.card_sha256(name) == registry.sha256_file(rel.path), f"{name}: card sha256 is stale"
    net, meta = registry.load("pnet-csst")
    assert sum(p.numel() for p in net.parameters()) > 1e5
    # the old repository layout still resolves
    assert registry.checkpoint_path("models/pnet-csst/pnet.pt") == registry.RELEASES["pnet-csst"].path


def test_a_checkpoint_that_does_not_match_its_card_is_refused(monkeypatch):
    from skyvar.models import registry

    monkeypatch.setattr(registry, "card_sha256", lambda name: "0" * 64)
    with pytest.raises(registry.ChecksumError, match="does not match"):
        registry.load("pnet-csst")
    with pytest.raises(FileNotFoundError, match="released models"):
        registry.checkpoint_path("no-such-model")


def test_update_card_sha256_rewrites_the_line_and_nothing_else(monkeypatch, tmp_path):
    from skyvar.models import registry

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "m.pt").write_bytes(b"weights")
    card = tmp_path / "m" / "MODEL_CARD.md"
    card.write_text("# m\n\nsha256: `" + "a" * 64 + "` (m.pt)\n\ntext\n")
    monkeypatch.setattr(registry.paths, "released_dir", lambda: tmp_path)
    monkeypatch.setitem(registry.RELEASES, "m", registry.Release("m", "m.pt", "x:y", ""))
    digest = registry.update_card_sha256("m")
    expected = "# m\n\nsha256: `" + digest + "` (m.pt)\n\ntext\n"
    assert card.read_text() == expected
    registry.update_card_sha256("m")  # idempotent
    assert card.read_text() == expected


def test_paths_one_rule(monkeypatch, tmp_path):
    from skyvar import paths

    monkeypatch.setenv("SKYVAR_ROOT", str(tmp_path))
    assert paths.root() == tmp_path and paths.log_dir() == tmp_path / "logs"
    monkeypatch.delenv("SKYVAR_ROOT")
    assert paths.root() == ROOT  # the source checkout
    (tmp_path / "x.txt").write_text("1")
    monkeypatch.chdir(tmp_path)
    assert paths.resolve("x.txt") == paths.resolve(tmp_path / "x.txt")
    assert paths.conf_dir().joinpath("train.yaml").exists()
    with pytest.raises(FileNotFoundError):
        paths.resource("no", "such", "file")


# ------------------------------------------------------------------------------------------ library etiquette
def test_import_installs_no_handlers_and_keeps_the_backend(caplog):
    code = ("import logging, matplotlib; b = matplotlib.get_backend(); "
            "import skyvar, skyvar.evaluate.report, skyvar.pipeline.field, skyvar.detect.pnet; "
            "lg = logging.getLogger('skyvar'); "
            "assert all(type(h).__name__ == 'NullHandler' for h in lg.handlers), lg.handlers; "
            "assert lg.propagate; assert not logging.getLogger().handlers; "
            "assert matplotlib.get_backend() == b, (b, matplotlib.get_backend()); print('ok')")
    r = run_cli(["-c", code], env_extra={"MPLBACKEND": "svg"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    # pytest's caplog (any user handler on the root) sees skyvar's records
    from skyvar.utils.log import get_logger

    with caplog.at_level(logging.INFO, logger="skyvar"):
        get_logger("skyvar.test").info("hello from skyvar")
    assert "hello from skyvar" in caplog.text


# ------------------------------------------------------------------------------------------ catalogues, times
def _catalog(n=5):
    t = Table({"x": np.arange(n, dtype=float), "y": np.ones(n), "mag": np.linspace(18, 22, n),
               "flags": np.zeros(n, np.int32), "detector": ["sep"] * n})
    t.meta.update(mjd=60500.5, filter="i", frame_id="f0", config_hash="abc")
    return t


@pytest.mark.parametrize("suffix", [".parquet", ".ecsv", ".fits"])
def test_catalogue_formats_round_trip_with_meta(tmp_path, suffix):
    from skyvar.io.catalog import catalog_meta, read_catalog_table, write_catalog
    from skyvar.lightcurves.associate import read_catalog

    p = write_catalog(_catalog(), tmp_path / f"f0{suffix}")
    back = read_catalog_table(p)
    assert np.allclose(back["mag"], _catalog()["mag"])
    meta = {k.lower(): v for k, v in catalog_meta(p).items()}
    assert meta["config_hash"] == "abc" and float(meta["mjd"]) == 60500.5
    cf = read_catalog(p)  # what association reads
    assert cf.mjd == 60500.5 and cf.band == "i" and len(cf) == 5


def test_detect_files_resumes_by_config_hash_and_reports_bad_frames(tmp_path):
    from skyvar.detect.batch import detect_files
    from skyvar.detect.sep_baseline import SepDetector
    from skyvar.sim.field import FieldSimConfig, simulate_field_to_disk

    cfg = FieldSimConfig(size=64, n_epochs=2, seed=3, out_dir=str(tmp_path / "sim"))
    simulate_field_to_disk(cfg, progress=False)
    files = sorted((tmp_path / "sim" / "frames").glob("*.fits"))
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = T" + b" " * 100)
    files.append(tmp_path / "bad.fits")
    det = SepDetector()
    r1 = detect_files(det, files, tmp_path / "cats", "h1", fmt="parquet")
    assert len(r1.catalogs) == 2 and r1.n_resumed == 0
    assert len(r1.failures) == 1 and r1.failures[0]["stage"] == "read" and "bad.fits" in r1.failures[0]["error"]
    r2 = detect_files(det, files, tmp_path / "cats", "h1", fmt="parquet")
    assert r2.n_resumed == 2 and r2.n_measured == 0
    r3 = detect_files(det, files, tmp_path / "cats", "h2", fmt="parquet")
    assert r3.n_resumed == 0 and r3.n_measured == 2


def test_frame_time_is_mid_exposure_on_a_real_and_a_simulated_header(tmp_path):
    from skyvar.io.fits import mid_exposure_mjd, read_frame
    from skyvar.sim.field import FieldSimConfig, FieldSimulation

    # simulator: MJD-OBS is the start, MJD-AVG the middle, and the reader returns the middle
    cfg = FieldSimConfig(size=32, n_epochs=3, seed=1)
    sim = FieldSimulation(cfg)
    h = sim.header(1)
    assert h["MJD-AVG"] == pytest.approx(sim.mjd[1], abs=1e-9)
    assert h["MJD-AVG"] - h["MJD-OBS"] == pytest.approx(cfg.exptime / 2 / 86400, abs=1e-9)
    assert mid_exposure_mjd(h, cfg.exptime) == pytest.approx(sim.mjd[1], abs=1e-9)
    del h["MJD-AVG"], h["DATE-AVG"]
    assert mid_exposure_mjd(h, cfg.exptime) == pytest.approx(sim.mjd[1], abs=1e-8)
    # DATE-OBS + TIME-OBS only (common on older instruments)
    h2 = fits.Header({"DATE-OBS": "2024-07-01", "TIME-OBS": "12:00:00"})
    assert mid_exposure_mjd(h2, 600.0) == pytest.approx(60492.5 + 300 / 86400, abs=1e-8)
    # a real header (ESO EMMI, 1992): MJD-OBS is the start of a 1200 s exposure
    real = shared_data("sep", "image.fits")
    with pytest.warns(UserWarning):
        fr = read_frame(real)
    hr = fits.getheader(real)
    assert fr.mjd == pytest.approx(hr["MJD-OBS"] + hr["EXPTIME"] / 2 / 86400, abs=1e-9)


# ------------------------------------------------------------------------------------------ public API
@pytest.mark.parametrize("pkg", ["sim", "io", "detect", "evaluate", "lightcurves", "pipeline", "models"])
def test_public_api_resolves_and_is_documented(pkg):
    import importlib

    m = importlib.import_module(f"skyvar.{pkg}")
    assert m.__doc__ and m.__all__
    for name in m.__all__:
        obj = getattr(m, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), f"skyvar.{pkg}.{name} has no docstring"


def test_frame_round_trips_through_ccddata():
    from astropy import units as u

    from skyvar.io.fits import Frame
    from skyvar.sim.field import FieldSimConfig, FieldSimulation

    sim = FieldSimulation(FieldSimConfig(size=40, n_epochs=1, seed=5))
    from astropy.nddata import CCDData

    img, mask, hdr = sim.render_epoch(0)
    hdr["GAIN"] = 1.0
    fr = Frame.from_ccddata(CCDData(img, unit=u.electron, meta=hdr, mask=mask > 0))
    assert fr.exptime == hdr["EXPTIME"] and fr.mjd == pytest.approx(hdr["MJD-AVG"], abs=1e-8) and fr.wcs is not None
    ccd = fr.to_ccddata()
    assert ccd.unit == u.electron and np.allclose(ccd.data, fr.data) and ccd.uncertainty.array.shape == img.shape
    back = Frame.from_ccddata(ccd)
    assert np.allclose(back.data, fr.data) and back.zp == fr.zp
    from skyvar.io.fits import FrameError

    ccd.meta.pop("EXPTIME")
    with pytest.raises(FrameError, match="EXPTIME"):
        Frame.from_ccddata(ccd)


def test_lightcurve_object_folds_plots_and_round_trips_timeseries(tmp_path):
    from skyvar.lightcurves import LightCurve
    from skyvar.lightcurves.store import write_store

    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(60000, 60010, 200))
    mag = 18 + 0.3 * np.sin(2 * np.pi * t / 1.7) + rng.normal(0, 0.01, t.size)
    flag = np.where(np.arange(t.size) % 50 == 0, 8, 0)
    import pandas as pd

    df = pd.DataFrame({"source_id": 7, "band": "i", "time": t, "mag": mag, "mag_err": 0.01, "flag": flag})
    other = df.assign(source_id=8, mag=df["mag"] + 1)
    write_store(pd.concat([df, other]), tmp_path / "store", n_partitions=4)
    lc = LightCurve.from_store(tmp_path / "store", 7)
    assert len(lc) == 200 and lc.band == "i" and np.allclose(lc.mag, mag)
    clean = lc.remove_flagged()
    assert len(clean) == 196 and lc.flag_names()[0] == ["fit_failed"]
    f = clean.fold(1.7)
    assert np.all(np.diff(f.phase) >= 0) and f.period == 1.7
    # folded at the true period the curve is a clean sinusoid in phase
    model = 18 + 0.3 * np.sin(2 * np.pi * (f.phase * 1.7 + clean.time.min()) / 1.7)
    assert np.std(f.mag - model) < 0.02
    fig = f.plot()
    assert fig.axes[0].yaxis_inverted()
    ts = clean.to_timeseries()
    back = LightCurve.from_timeseries(ts, source_id=7, band="i")
    assert np.allclose(back.time, clean.time, atol=1e-9) and np.allclose(back.mag, clean.mag)
    with pytest.raises(KeyError):
        LightCurve.from_store(tmp_path / "store", 99)
