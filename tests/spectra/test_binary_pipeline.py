"""infer.py pipeline=binary_spectra on the real LAMOST files, with bad files mixed in."""

import json
import shutil
import subprocess
import sys

import numpy as np
from astropy.table import Table

from skyvar.pipeline.binary_spectra import BinarySpectraPipeline
from tests.conftest import shared_data
from tests.spectra.lrs_helpers import lamost_like, tiny_checkpoint, write_lamost_file


def test_real_files_via_infer_py(tmp_path, root):
    d = shared_data("spectra", "lamost_lrs")
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    cmd = [sys.executable, "infer.py", "pipeline=binary_spectra", f"input={d}", f"out_dir={out}",
           f"pipeline.model={ckpt}"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    t = Table.read(out / "binary_probabilities.ecsv")
    assert len(t) == 11 and set(t.colnames) >= {"file", "obsid", "ra", "dec", "snr_g", "p_binary", "flags"}
    assert "spec-58397-EG014118N254444M01_sp03-031.fits" in list(t["file"])  # the plain .fits file
    assert np.all((t["p_binary"] >= 0) & (t["p_binary"] <= 1))
    # A-type spectra are outside the training range (flag 2); the F/G/K ones are not
    a_type = np.array([s.startswith("A") for s in t["subclass"]])
    assert np.all(t["flags"][a_type] & 2) and not np.any(t["flags"][~a_type] & 2)
    stars = Table.read(out / "binary_stars.ecsv")
    assert len(stars) == 11 and np.all(stars["n_spectra"] == 1)
    assert json.loads((out / "failures.json").read_text()) == []


def test_bad_files_reported_and_skipped(tmp_path):
    d = shared_data("spectra", "lamost_lrs")
    inp = tmp_path / "in"
    inp.mkdir()
    for f in ("spec-55859-F5902_sp03-232.fits.gz", "spec-58397-EG014118N254444M01_sp03-031.fits"):
        shutil.copy(d / f, inp / f)
    # the same star observed again (same coordinates): one star, p_binary = max over its spectra
    write_lamost_file(inp / "again.fits", lamost_like(seed=5), OBSID=99, RA=330.909453, DEC=-0.174710)
    raw = (d / "spec-55859-F5902_sp05-172.fits.gz").read_bytes()
    (inp / "truncated.fits.gz").write_bytes(raw[: len(raw) // 3])
    masked = lamost_like()
    masked.ivar[:3000] = 0
    masked.mask[:3000] = True
    write_lamost_file(inp / "masked.fits", masked)
    neg = lamost_like()
    neg.flux = -np.abs(neg.flux)
    write_lamost_file(inp / "negative.fits", neg)
    red = lamost_like()
    red.wavelength = red.wavelength + 5000.0
    write_lamost_file(inp / "red.fits", red)
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", temperature=2.0)
    summary = BinarySpectraPipeline(model=str(ckpt), input=str(inp), out_dir=str(tmp_path / "out"), device="cpu").run()
    fails = {f["file"].split("/")[-1]: f["error"] for f in json.loads((tmp_path / "out" / "failures.json").read_text())}
    assert set(fails) == {"truncated.fits.gz", "masked.fits", "negative.fits", "red.fits"}
    assert "cannot read FITS" in fails["truncated.fits.gz"]
    assert "% of pixels masked" in fails["masked.fits"]
    assert "non-positive flux" in fails["negative.fits"]
    assert "outside the model's range" in fails["red.fits"]
    assert summary["n_spectra"] == 3 and summary["n_failed"] == 4
    t = Table.read(tmp_path / "out" / "binary_probabilities.ecsv")
    # temperature 2 pulls probabilities towards 0.5
    assert np.all(np.abs(t["p_binary"] - 0.5) <= np.abs(t["p_binary_raw"] - 0.5) + 1e-12)
    stars = Table.read(tmp_path / "out" / "binary_stars.ecsv")
    assert len(stars) == 2
    two = stars[stars["n_spectra"] == 2][0]
    sel = np.isin(t["obsid"], [103232, 99])
    assert two["p_binary"] == np.max(t["p_binary"][sel])


def test_streaming_chunks_and_resume(tmp_path, monkeypatch):
    """Chunks of 2 files: the same table as one pass; a rerun after losing one chunk reads only that
    chunk's files again; another model starts afresh."""
    import skyvar.spectra.io as sio

    d = shared_data("spectra", "lamost_lrs")
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    one = BinarySpectraPipeline(model=str(ckpt), input=str(d), out_dir=str(tmp_path / "one"), device="cpu",
                                chunk_size=100).run()
    out = tmp_path / "chunked"
    s = BinarySpectraPipeline(model=str(ckpt), input=str(d), out_dir=str(out), device="cpu", chunk_size=2,
                              read_workers=2).run()
    assert s["n_spectra"] == one["n_spectra"] == 11
    a = Table.read(tmp_path / "one" / "binary_probabilities.ecsv")
    b = Table.read(out / "binary_probabilities.ecsv")
    assert list(a["file"]) == list(b["file"])
    np.testing.assert_allclose(a["p_binary"], b["p_binary"], rtol=1e-5)
    parts = sorted((out / ".parts").glob("part-*.json"))
    assert len(parts) == 6
    lost = json.loads(parts[2].read_text())["files"]
    parts[2].unlink()
    calls = []
    real = sio.read_lamost_lrs
    monkeypatch.setattr(sio, "read_lamost_lrs", lambda f: calls.append(str(f)) or real(f))
    s2 = BinarySpectraPipeline(model=str(ckpt), input=str(d), out_dir=str(out), device="cpu", chunk_size=2).run()
    assert sorted(calls) == sorted(lost) and s2["resumed_files"] == 9 and s2["n_spectra"] == 11
    other = tiny_checkpoint(tmp_path / "other.ckpt", temperature=3.0)
    calls.clear()
    BinarySpectraPipeline(model=str(other), input=str(d), out_dir=str(out), device="cpu", chunk_size=2).run()
    assert len(calls) == 11
