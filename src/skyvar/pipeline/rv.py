"""The relative-RV pipeline: LAMOST MRS files -> relative velocities -> exposure zero points.

``python infer.py pipeline=rv input=<file|dir|glob of MRS FITS> out_dir=D`` writes

- ``D/rv.ecsv``: one row per star, exposure and arm (the paper's Table 2 in long form): source (the
  star), catalogue_id (the file's OBJNAME) and catalogue_ids (every id the star had), ra, dec, time
  (BJD_TDB of mid-exposure), hjd, spectrograph, fiberid, planid, arm, exposure, snr, rv, rv_err, rv_corr,
  zp, flag …; rv is relative to the star's highest-SNR spectrum in that arm, rv_corr = rv - zp;
- ``D/zeropoints.ecsv``: zero point per spectrograph, arm and exposure (NaN and ``calibrated`` False
  with fewer than ``calibration.min_candidates`` constant-star candidates);
- ``D/constant_stars.ecsv``: the constant-star candidates with their Var_rv (eq. 4) before and after;
- ``D/flagged.ecsv``: exposures not used (SNR <= 0, median flux <= 0, too few pixels, duplicates);
- ``D/failures.json`` (unreadable files, with the reasons of every failed extension) and ``D/summary.json``.

**One star, one identity.** Files are first scanned (headers only) and grouped into stars by sky
position (``match_radius`` arcsec, friends of friends): the same star under different catalogue ids in
different plans is one star with one reference spectrum per arm.

**No velocity without signal.** Exposures with S/N below ``min_snr`` (the paper's 5) are listed with flag
``FLAG_LOW_SNR`` and no velocity; so are peaks at the edge of the search range, failed fits and
likelihood peaks that are not significant (:class:`skyvar.spectra.rv.RelativeRV`). The uncertainties
are the Gaussian-fit widths times ``rv.err_scale`` with the ``rv.lowpass`` filter on, calibrated by
injecting known velocities into the real MRS exposures degraded to S/N 5–35 (pull sigma ≈ 1,
docs/results/radial_velocities.md).

**Bounded memory.** After the header scan, files are read, measured and written in chunks of whole stars
(``batch_size`` spectra; the next chunk is read by ``read_workers`` threads while the current one is
measured); finished chunks are written atomically to ``D/.parts/`` and a rerun resumes after the last
one. Only the velocity table (one short row per spectrum) is kept for the calibration.

With ``input`` an ECSV table of velocities (columns source, exposure, spectrograph, arm, rv) it only
calibrates; with no input it simulates the paper's mock (:mod:`skyvar.sim.rv_mock`) and calibrates that.
When the table has truth columns (true_rv, true_zp) the evaluation of §3.3 is written to ``D/report/``
(Figures 1–2, zero-point errors against their statistical floor, candidate purity).

One star cannot calibrate zero points (they are averages over many stars of a spectrograph): the output
then has relative velocities only, rv_corr NaN, and the log and summary say so.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table

from skyvar.spectra.mrs import MRSReadError, add_times, read_mrs, scan_mrs
from skyvar.spectra.rv import FLAG_LOW_SNR, WINDOWS, RelativeRV, prepare_arm, reference_indices
from skyvar.spectra.stars import group_stars
from skyvar.spectra.zeropoint import calibrate_catalog
from skyvar.utils.atomic import write_json_atomic, write_table_atomic
from skyvar.utils.inputs import expand_inputs
from skyvar.utils.log import get_logger

log = get_logger(__name__)

TABLE_SUFFIXES = (".ecsv", ".csv", ".parquet")
# the pipeline's estimator settings (conf/pipeline/rv.yaml): low-pass and the injection-calibrated error scale
DEFAULT_RV = {"lowpass": 0.2, "err_scale": 1.4}
RV_COLUMNS = ["source", "catalogue_id", "catalogue_ids", "ra", "dec", "time", "hjd", "spectrograph", "fiberid",
              "planid", "arm", "exposure", "snr", "rv", "rv_err", "rv_corr", "zp", "flag"]


class RVPipeline:
    """Multi-epoch spectra -> relative radial velocities and exposure zero points (see the module
    documentation)."""

    def __init__(self, out_dir: str, input: str | list | None = None, truth: str | None = None,
                 kind: str = "single", arms: list[str] | tuple[str, ...] = ("R", "B"), first_arm: str = "R",
                 windows: dict | None = None, min_snr: float = 5.0, match_radius: float = 3.0,
                 batch_size: int = 1024, read_workers: int = 2, resume: bool = True, device: str = "auto",
                 rv: dict | None = None, continuum: dict | None = None, calibration: dict | None = None,
                 simulate: dict | None = None, figures: bool = True, progress: bool = True):
        self.out_dir = Path(out_dir)
        self.input = input
        self.truth = truth
        self.kind = kind
        self.arms = [str(a).upper()[:1] for a in arms]
        self.first_arm = first_arm
        self.windows = {**WINDOWS, **{k: tuple(v) for k, v in (windows or {}).items()}}
        self.min_snr = float(min_snr)
        self.match_radius = float(match_radius)
        self.batch_size = int(batch_size)
        self.read_workers = max(1, int(read_workers))
        self.resume = bool(resume)
        self.device = device
        self.rv_kwargs = {**DEFAULT_RV, **dict(rv or {})}
        self.continuum = dict(continuum or {})
        self.calibration = dict(calibration or {})
        self.simulate = dict(simulate or {})
        self.figures = figures
        self.progress = progress

    # ------------------------------------------------------------------ 1. header scan, stars by position
    def scan(self, files: list[Path]) -> tuple[list[dict], list[dict]]:
        """Header-only metadata of every readable file, and the failures of the others."""
        scans, failures = [], []
        for f in files:
            try:
                m = scan_mrs(f)
            except MRSReadError as e:
                log.error("skipping %s", e)
                failures.append({"file": str(f), "stage": "read", "error": str(e)})
                continue
            m["path"] = str(f)
            scans.append(m)
        return scans, failures

    def identify_stars(self, scans: list[dict]) -> tuple[np.ndarray, list[str], list[str]]:
        """Star index per scanned file (sky position within ``match_radius``; files without coordinates
        by catalogue id), the star names (the catalogue id of the star's first file by LMJD) and every
        catalogue id each star had (comma-separated)."""
        ra = np.array([m.get("ra", np.nan) for m in scans], dtype=float)
        dec = np.array([m.get("dec", np.nan) for m in scans], dtype=float)
        star = group_stars(ra, dec, self.match_radius)
        nopos = ~(np.isfinite(ra) & np.isfinite(dec))
        if nopos.any():  # no coordinates: the catalogue id is all there is
            by_id: dict[str, int] = {}
            for i in np.flatnonzero(~nopos):
                by_id.setdefault(scans[i]["source"], int(star[i]))
            nxt = int(star.max()) + 1 if len(star) else 0
            for i in np.flatnonzero(nopos):
                key = scans[i]["source"]
                if key not in by_id:
                    by_id[key] = nxt
                    nxt += 1
                star[i] = by_id[key]
            _, star = np.unique(star, return_inverse=True)
        names, ids = [], []
        for k in range(int(star.max()) + 1 if len(star) else 0):
            members = sorted(np.flatnonzero(star == k), key=lambda i: (scans[i].get("lmjd", 0), scans[i]["path"]))
            names.append(str(scans[members[0]]["source"]))
            cat = []
            for i in members:
                for key in ("source", "designation", "obsid"):
                    v = scans[i].get(key)
                    if v is not None and str(v) not in cat:
                        cat.append(str(v))
            ids.append(",".join(cat))
        n_multi = sum(len({scans[i]["source"] for i in np.flatnonzero(star == k)}) > 1 for k in range(len(names)))
        if n_multi:
            log.info("%d star(s) carry more than one catalogue id across files; matched by position (%.1f arcsec)",
                     n_multi, self.match_radius)
        return star, names, ids

    def _chunks(self, scans: list[dict], star: np.ndarray) -> list[list[int]]:
        """File indices in chunks of whole stars holding about ``batch_size`` spectra each."""
        n_spec = np.array([sum(1 for e in m["extensions"] if e[1] in self.arms and (self.kind == "all" or e[2] == self.kind))
                           for m in scans])
        order = np.argsort(star, kind="stable")
        chunks, cur, cur_n = [], [], 0
        for k in np.unique(star):
            members = [int(i) for i in order[np.searchsorted(star[order], k):np.searchsorted(star[order], k, "right")]]
            n = int(n_spec[members].sum())
            if cur and cur_n + n > self.batch_size:
                chunks.append(cur)
                cur, cur_n = [], 0
            cur += members
            cur_n += n
        if cur:
            chunks.append(cur)
        return chunks

    # ------------------------------------------------------------------ 2. reading a chunk
    def _read_file(self, path: str):
        try:
            return read_mrs(path, kind=self.kind, arms=self.arms, times=False), None
        except MRSReadError as e:
            return None, {"file": path, "stage": "read", "error": str(e)}
        except Exception as e:  # one bad file must not stop a batch
            return None, {"file": path, "stage": "read", "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc(limit=5)}

    def read_inputs(self, files: list[Path]) -> tuple[list, list[dict], list[dict]]:
        """Read files completely (every spectrum in memory): small inputs and tests. Spectra keep their
        catalogue id as ``source``; :meth:`run` streams and groups by position instead."""
        spectra, flagged, failures = [], [], []
        for f in files:
            ss, err = self._read_file(str(f))
            if err:
                log.error("skipping %s: %s", f, err["error"])
                failures.append(err)
                continue
            ok, fl = self._screen(ss, {s.meta["source"]: s.meta["source"] for s in ss}, set())
            spectra += ok
            flagged += fl
        add_times(spectra)
        return spectra, flagged, failures

    def _screen(self, spectra: list, star_of_source: dict, seen: set) -> tuple[list, list[dict]]:
        """Reader-flagged spectra and duplicates out (to flagged.ecsv); ``meta['star']`` set."""
        ok, flagged = [], []
        for s in spectra:
            m = s.meta
            m["star"] = star_of_source.get(m["file"], star_of_source.get(m["source"], m["source"]))
            reason = m.get("flag", "")
            key = (m["star"], m["arm"], m["exposure"], m["kind"])
            if not reason and key in seen:
                reason = "duplicate"
            if reason:
                flagged.append({"file": m["file"], "extname": m["extname"], "source": m["source"], "arm": m["arm"],
                                "exposure": m["exposure"], "snr": m["snr"], "reason": reason})
                log.warning("%s[%s]: flagged and skipped (%s)", m["file"], m["extname"], reason)
                continue
            seen.add(key)
            ok.append(s)
        return ok, flagged

    # ------------------------------------------------------------------ 3. velocities
    def measure(self, spectra: list, star_names: dict | None = None, star_ids: dict | None = None) -> Table:
        """Relative velocities of every spectrum, per arm, each star against its highest-SNR spectrum
        (``meta['star']``, else ``meta['source']``). Spectra below ``min_snr`` get rows with flag
        FLAG_LOW_SNR and no velocity, and are never a reference."""
        rows: dict[str, list] = defaultdict(list)
        star_names = star_names or {}
        star_ids = star_ids or {}
        for arm in self.arms:
            sub = [s for s in spectra if s.meta["arm"] == arm]
            if not sub:
                continue
            est = RelativeRV(window=self.windows[arm], device=self.device, **self.rv_kwargs)
            low = [s for s in sub if not s.meta["snr"] >= self.min_snr]
            good = [s for s in sub if s.meta["snr"] >= self.min_snr]
            by_star: dict[Any, list] = defaultdict(list)
            for s in good:
                by_star[s.meta.get("star", s.meta["source"])].append(s)
            batches, cur = [], []
            for star in sorted(by_star, key=str):
                if cur and len(cur) + len(by_star[star]) > self.batch_size:
                    batches.append(cur)
                    cur = []
                cur.extend(by_star[star])
            if cur:
                batches.append(cur)
            t0 = time.perf_counter()
            results = []
            for batch in batches:
                wave, fl, iv = prepare_arm(batch, arm, continuum=self.continuum)
                src = [str(s.meta.get("star", s.meta["source"])) for s in batch]
                ref = reference_indices(src, [s.meta["snr"] for s in batch])
                res = est.measure(wave, fl, iv, ref)
                for i, s in enumerate(batch):
                    results.append((s, {"rv": res.rv[i], "rv_err": res.rv_err[i], "flag": int(res.flag[i]),
                                        "lnp_max": res.lnp_max[i], "chi2_red": res.chi2_red[i],
                                        "n_pix": int(res.n_pix[i]), "peak_dlnp": res.peak_dlnp[i],
                                        "ref_exposure": str(batch[ref[i]].meta["exposure"])}))
            for s in low:
                results.append((s, {"rv": np.nan, "rv_err": np.nan, "flag": FLAG_LOW_SNR, "lnp_max": np.nan,
                                    "chi2_red": np.nan, "n_pix": 0, "peak_dlnp": np.nan, "ref_exposure": ""}))
            for s, r in results:
                m = s.meta
                star = m.get("star", m["source"])
                rows["source"].append(str(star_names.get(star, star)))
                rows["catalogue_id"].append(str(m["source"]))
                rows["catalogue_ids"].append(str(star_ids.get(star, m["source"])))
                rows["ra"].append(m.get("ra", np.nan))
                rows["dec"].append(m.get("dec", np.nan))
                rows["time"].append(m.get("bjd_tdb", np.nan))
                rows["hjd"].append(m.get("hjd", np.nan))
                rows["mjd"].append(m.get("mjd", np.nan))
                rows["spectrograph"].append(int(m.get("spid", -1)))
                rows["fiberid"].append(int(m.get("fiberid", -1)))
                rows["planid"].append(str(m.get("planid", "")))
                rows["arm"].append(arm)
                rows["exposure"].append(str(m["exposure"]))
                rows["kind"].append(m["kind"])
                rows["snr"].append(m["snr"])
                for k in ("rv", "rv_err", "flag", "lnp_max", "chi2_red", "n_pix", "peak_dlnp", "ref_exposure"):
                    rows[k].append(r[k])
                rows["file"].append(m["file"])
                rows["extname"].append(m["extname"])
            dt = time.perf_counter() - t0
            log.info("arm %s: %d relative velocities of %d stars in %.1f s (%.0f /s, device %s); %d below S/N %g",
                     arm, len(good), len(by_star), dt, len(good) / max(dt, 1e-9), est.device, len(low), self.min_snr)
        t = Table(dict(rows)) if rows else Table(names=["source", "exposure", "spectrograph", "arm", "rv"],
                                                 dtype=[str, str, int, str, float])
        if "rv" in t.colnames:
            for c in ("rv", "rv_err"):
                t[c].unit = "km/s"
        return t

    # ------------------------------------------------------------------ 4. streaming over files
    def measure_files(self, files: list[Path]) -> tuple[Table, list[dict], list[dict], dict]:
        """Scan, group by star, then read + measure chunks of whole stars, writing each chunk to
        ``out_dir/.parts`` (resumable). Returns (velocity table, flagged, failures, info)."""
        import shutil
        from concurrent.futures import ThreadPoolExecutor

        from astropy.table import vstack

        from skyvar.utils.config import stable_hash

        t0 = time.perf_counter()
        scans, failures = self.scan(files)
        star, names, ids = self.identify_stars(scans)
        info = {"n_stars_matched": len(names),
                "n_stars_multi_id": int(sum(len(set(x.split(","))) > 1 for x in ids))}
        star_of_file = {m["path"]: int(k) for m, k in zip(scans, star)}
        star_names = dict(enumerate(names))
        star_ids = dict(enumerate(ids))
        parts = self.out_dir / ".parts"
        fp = stable_hash({"kind": self.kind, "arms": self.arms, "windows": self.windows, "min_snr": self.min_snr,
                          "match_radius": self.match_radius, "rv": self.rv_kwargs, "continuum": self.continuum,
                          "files": [m["path"] for m in scans]})
        manifest = parts / "manifest.json"
        if parts.exists() and (not self.resume or not manifest.exists()
                               or json.loads(manifest.read_text()).get("fingerprint") != fp):
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest, {"fingerprint": fp})
        chunks = self._chunks(scans, star) if scans else []
        done = {int(p.stem.split("-")[1]) for p in parts.glob("part-*.json")}
        if done:
            log.info("resuming: %d of %d chunks already measured in %s", len(done), len(chunks), parts)
        todo = [k for k in range(len(chunks)) if k not in done]

        def read_chunk(k):
            return [self._read_file(scans[i]["path"]) for i in chunks[k]]

        with ThreadPoolExecutor(self.read_workers) as pool:
            fut = pool.submit(read_chunk, todo[0]) if todo else None
            for j, k in enumerate(todo):
                results = fut.result()
                fut = pool.submit(read_chunk, todo[j + 1]) if j + 1 < len(todo) else None
                spectra, flagged, fails = [], [], []
                seen: set = set()
                for ss, err in results:
                    if err:
                        log.error("skipping %s", err["error"])
                        fails.append(err)
                        continue
                    ok, fl = self._screen(ss, star_of_file, seen)
                    spectra += ok
                    flagged += fl
                add_times(spectra)
                t = self.measure(spectra, star_names, star_ids)
                del spectra, results
                if len(t):
                    write_table_atomic(t, parts / f"part-{k:06d}.fits")
                write_json_atomic(parts / f"part-{k:06d}.json", {"flagged": flagged, "failures": fails, "n_rows": len(t)})
                if self.progress:
                    log.info("rv: chunk %d / %d (%.0f s)", k + 1, len(chunks), time.perf_counter() - t0)
        tabs, flagged = [], []
        for k in range(len(chunks)):
            d = json.loads((parts / f"part-{k:06d}.json").read_text())
            flagged += d["flagged"]
            failures += d["failures"]
            if d["n_rows"]:
                tabs.append(Table.read(parts / f"part-{k:06d}.fits"))
        t = vstack(tabs) if tabs else Table(names=["source", "exposure", "spectrograph", "arm", "rv"],
                                            dtype=[str, str, int, str, float])
        for c in ("source", "catalogue_id", "catalogue_ids", "planid", "arm", "exposure", "kind", "ref_exposure",
                  "file", "extname"):
            if c in t.colnames:
                t[c] = [str(v) for v in t[c]]
        for c in t.colnames:  # FITS parts come back masked where NaN: keep plain NaN (no velocity)
            if hasattr(t[c], "filled") and t[c].dtype.kind == "f":
                unit = t[c].unit
                t[c] = np.asarray(t[c].filled(np.nan))
                t[c].unit = unit
        return t, flagged, failures, info

    # ------------------------------------------------------------------ calibration
    def calibrate(self, t: Table) -> tuple[Table, Table, Table, dict]:
        for c in ("source", "exposure", "spectrograph", "arm", "rv"):
            if c not in t.colnames:
                raise ValueError(f"velocity table lacks column {c!r} (has {t.colnames})")
        rv_corr, zrows, srows = calibrate_catalog(
            [str(x) for x in t["source"]], [str(x) for x in t["exposure"]], t["spectrograph"],
            [str(x) for x in t["arm"]], np.asarray(t["rv"], dtype=float), first_arm=self.first_arm,
            **self.calibration)
        t["rv_corr"] = rv_corr
        t["rv_corr"].unit = "km/s"
        zp = Table(rows=zrows) if zrows else Table(names=["spectrograph", "arm", "exposure", "zp"],
                                                   dtype=[int, str, str, float])
        zp_map = {(str(r["spectrograph"]), r["arm"], str(r["exposure"])): r["zp"] for r in zrows}
        t["zp"] = [zp_map.get((str(s), a, str(e)), np.nan) for s, a, e in zip(t["spectrograph"], t["arm"], t["exposure"])]
        t["zp"].unit = "km/s"
        if "time" in t.colnames and len(zp):
            tm = defaultdict(list)
            for s, a, e, x in zip(t["spectrograph"], t["arm"], t["exposure"], t["time"]):
                tm[(str(s), a, str(e))].append(x)
            zp["time"] = [float(np.nanmean(tm[(str(s), a, str(e))])) if tm[(str(s), a, str(e))] else np.nan
                          for s, a, e in zip(zp["spectrograph"], zp["arm"], zp["exposure"])]
        stars = Table(rows=srows) if srows else Table(names=["source", "spectrograph", "arm", "candidate"],
                                                      dtype=[str, int, str, bool])
        if len(stars) and "ra" in t.colnames:
            pos = {}
            for s, ra, dec in zip(t["source"], t["ra"], t["dec"]):
                pos.setdefault(str(s), (ra, dec))
            stars["ra"] = [pos.get(str(s), (np.nan, np.nan))[0] for s in stars["source"]]
            stars["dec"] = [pos.get(str(s), (np.nan, np.nan))[1] for s in stars["source"]]
        cands = stars[stars["candidate"]] if len(stars) else stars
        calibrated = bool(len(zp)) and bool(np.any(zp["calibrated"])) if "calibrated" in zp.colnames else False
        info = {"calibrated": calibrated, "n_zeropoints": len(zp), "n_candidates": len(cands)}
        if not calibrated:
            info["note"] = ("zero points could not be self-calibrated (too few stars per spectrograph and arm); "
                            "rv are relative velocities only, rv_corr is NaN")
            log.warning(info["note"])
        return t, zp, cands, info

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t_start = time.perf_counter()
        inp = self.input
        failures: list[dict] = []
        flagged: list[dict] = []
        summary: dict[str, Any] = {}
        stars_truth = None
        if inp is None:
            from skyvar.sim.rv_mock import RVMockConfig, simulate_rv_mock
            from skyvar.utils.config import config_from_dotlist

            cfg = config_from_dotlist(RVMockConfig, base={**self.simulate, "out_dir": str(self.out_dir / "sim")})
            log.info("no input given: simulating the paper's mock (seed %d) into %s", cfg.seed, cfg.out_dir)
            rows, stars = simulate_rv_mock(cfg)
            write_table_atomic(rows, Path(cfg.out_dir) / "rv.ecsv")
            write_table_atomic(stars, Path(cfg.out_dir) / "stars.ecsv")
            table = rows
            stars_truth = stars
            summary["input"] = "simulated mock"
        elif isinstance(inp, (str, Path)) and str(inp).lower().endswith(TABLE_SUFFIXES) and Path(inp).is_file():
            table = Table.read(inp)
            sib = Path(inp).with_name("stars.ecsv")
            stars_truth = Table.read(sib) if sib.is_file() else None
            summary["input"] = str(inp)
        else:
            files = expand_inputs(inp)
            table, flagged, failures, minfo = self.measure_files(files)
            n_low = int(np.sum((np.asarray(table["flag"]) & FLAG_LOW_SNR) != 0)) if len(table) else 0
            summary.update({"input": str(inp), "n_files": len(files), "n_spectra": len(table),
                            "n_flagged": len(flagged), "n_failed_files": len(failures),
                            "n_below_min_snr": n_low, "min_snr": self.min_snr, **minfo})
        t, zp, cands, info = self.calibrate(table)
        summary.update(info)
        summary["n_velocities"] = len(t)
        summary["n_stars"] = int(len(np.unique(t["source"]))) if len(t) else 0
        cols = [c for c in RV_COLUMNS if c in t.colnames] + [c for c in t.colnames if c not in RV_COLUMNS]
        t = t[cols]
        t.meta.update({"rv_convention": "rv relative to the star's highest-SNR spectrum of the arm; positive = "
                                        "redshifted; rv_corr = rv - zp", "time": "BJD_TDB mid-exposure",
                       "note": info.get("note", "")})
        write_table_atomic(t, self.out_dir / "rv.ecsv")
        write_table_atomic(zp, self.out_dir / "zeropoints.ecsv")
        write_table_atomic(cands, self.out_dir / "constant_stars.ecsv")
        if flagged:
            write_table_atomic(Table(rows=flagged), self.out_dir / "flagged.ecsv")
        write_json_atomic(self.out_dir / "failures.json", failures)
        truth_cols = {"true_rv", "true_zp"} <= set(t.colnames)
        if self.truth is not None and not truth_cols:
            truth = Table.read(self.truth)
            t = _join_truth(t, truth)
            truth_cols = {"true_rv", "true_zp"} <= set(t.colnames)
        if truth_cols:
            summary["metrics"] = evaluate_mock(t, zp, cands, self.out_dir / "report", stars=stars_truth,
                                               figures=self.figures)
        summary["runtime_s"] = round(time.perf_counter() - t_start, 2)
        write_json_atomic(self.out_dir / "summary.json", summary)
        return summary


def _join_truth(t: Table, truth: Table) -> Table:
    key = [c for c in ("source", "exposure", "arm") if c in t.colnames and c in truth.colnames]
    extra = [c for c in truth.colnames if c not in t.colnames or c in key]
    from astropy.table import join

    return join(t, truth[extra], keys=key, join_type="left")



# ---------------------------------------------------------------------------------------- evaluation
def _per_exposure_truth(t: Table) -> dict:
    out = {}
    for s, a, e, z in zip(t["spectrograph"], t["arm"], t["exposure"], t["true_zp"]):
        out.setdefault((str(s), a, str(e)), float(z))
    return out


def evaluate_mock(t: Table, zp: Table, cands: Table, out_dir: Path, stars: Table | None = None,
                  figures: bool = True) -> dict:
    """Metrics of §3.3 for a velocity table with truth (true_rv, true_zp, star_type, rv_err).

    - residual distributions of constant stars before (rv - true_rv) and after (rv_corr - true_rv);
    - zero-point error per exposure (zp - true_zp) against its statistical floor: the standard error of
      the mean noise of the truly constant candidates averaged in that exposure, sqrt(sum rv_err^2) / n
      (and the paper's 0.5 / sqrt(200) ≈ 0.035 km/s);
    - how many candidates are really constant; Var_rv (eq. 4) of candidates before and after.
    """
    from skyvar.spectra.zeropoint import star_sigma

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stype = np.asarray(t["star_type"]).astype(str) if "star_type" in t.colnames else np.full(len(t), "unknown")
    src = np.asarray(t["source"]).astype(str)
    sp = np.asarray(t["spectrograph"]).astype(str)
    arm = np.asarray(t["arm"]).astype(str)
    exp = np.asarray(t["exposure"]).astype(str)
    rv = np.asarray(t["rv"], float)
    rvc = np.asarray(t["rv_corr"], float)
    tr = np.asarray(t["true_rv"], float)
    const = stype == "constant"
    cand_keys = {(str(a), str(b), str(c)) for a, b, c in zip(cands["spectrograph"], cands["arm"], cands["source"])} \
        if len(cands) else set()
    is_cand = np.array([(a, b, c) in cand_keys for a, b, c in zip(sp, arm, src)], dtype=bool)
    res0, res1 = rv - tr, rvc - tr
    metrics: dict[str, Any] = {}
    for name, r in (("before", res0), ("after", res1)):
        rc = r[const & np.isfinite(r)]
        metrics[f"constant_residual_{name}"] = {
            "mean": float(np.mean(rc)), "std": float(np.std(rc)),
            "frac_within_0.5": float(np.mean(np.abs(rc) < 0.5)), "frac_within_1": float(np.mean(np.abs(rc) < 1.0))}
    # the paper: "the mean value of the residual velocities is essentially between +-0.5 km/s"
    u, inv = np.unique(src, return_inverse=True)
    star_type = np.empty(len(u), dtype=object)
    star_type[inv] = stype
    for name, r in (("before", res0), ("after", res1)):
        ok = np.isfinite(r)
        mean = np.bincount(inv[ok], r[ok], minlength=len(u)) / np.maximum(np.bincount(inv[ok], minlength=len(u)), 1)
        metrics[f"frac_stars_mean_residual_within_0.5_{name}"] = {
            str(k): float(np.mean(np.abs(mean[star_type == k]) < 0.5)) for k in np.unique(stype)}
    # zero points against truth and their floor
    truth_zp = {}
    for a, b, c, z in zip(sp, arm, exp, np.asarray(t["true_zp"], float)):
        truth_zp.setdefault((a, b, c), z)
    zkey = [(str(a), str(b), str(c)) for a, b, c in zip(zp["spectrograph"], zp["arm"], zp["exposure"])]
    z_est = np.asarray(zp["zp"], float)
    z_true = np.array([truth_zp.get(k, np.nan) for k in zkey])
    dz = z_est - z_true
    floors = np.full(len(zp), np.nan)
    if "rv_err" in t.colnames:
        err = np.asarray(t["rv_err"], float)
        use = is_cand & const & np.isfinite(rv)
        ssum, cnt = defaultdict(float), defaultdict(int)
        for a, b, c, e in zip(sp[use], arm[use], exp[use], err[use]):
            ssum[(a, b, c)] += e * e
            cnt[(a, b, c)] += 1
        floors = np.array([np.sqrt(ssum[k]) / cnt[k] if cnt.get(k) else np.nan for k in zkey])
    ok = np.isfinite(dz)
    rms = float(np.sqrt(np.mean(dz[ok] ** 2))) if ok.any() else None
    rms_floor = float(np.sqrt(np.nanmean(floors**2))) if np.isfinite(floors).any() else None
    metrics["zeropoint"] = {
        "n_exposures": int(len(zp)), "rms_error": rms,
        "max_abs_error": float(np.max(np.abs(dz[ok]))) if ok.any() else None,
        "mean_error": float(np.mean(dz[ok])) if ok.any() else None,
        "rms_floor": rms_floor, "error_over_floor": rms / rms_floor if rms and rms_floor else None,
        "paper_floor_0.5_over_sqrt200": 0.5 / np.sqrt(200),
        "rms_true_shift": float(np.sqrt(np.mean(z_true[ok] ** 2))) if ok.any() else None,
        "mean_candidates_per_exposure": float(np.mean(zp["n_candidates"])) if "n_candidates" in zp.colnames else None,
    }
    # candidates: how many are really constant
    cs = np.unique(src[is_cand])
    ctype = [stype[src == c][0] for c in cs]
    n_const = len(np.unique(src[const]))
    metrics["candidates"] = {
        "n": int(len(cs)), "truly_constant": int(sum(x == "constant" for x in ctype)),
        "by_type": {str(k): int(sum(x == k for x in ctype)) for k in np.unique(stype)},
        "completeness_constant": float(sum(x == "constant" for x in ctype) / max(n_const, 1))}
    # Var_rv (eq. 4) of the candidates and of all constant stars, before and after
    metrics["var_rv"] = {}
    for label, mask in (("candidates", is_cand), ("constant", const)):
        idx = np.flatnonzero(mask)
        if not len(idx):
            continue
        uu, ii = np.unique(src[idx], return_inverse=True)
        for name, v in (("before", rv), ("after", rvc)):
            sig, _, _ = star_sigma(ii, v[idx], len(uu))
            metrics["var_rv"][f"{label}_{name}_mean"] = float(np.nanmean(sig))
            metrics["var_rv"][f"{label}_{name}_median"] = float(np.nanmedian(sig))
    bi = stype == "binary"
    if bi.any():
        metrics["binary_residual_rms"] = {"before": float(np.sqrt(np.nanmean(res0[bi] ** 2))),
                                          "after": float(np.sqrt(np.nanmean(res1[bi] ** 2)))}
    write_json_atomic(out_dir / "metrics.json", metrics)
    zt = zp.copy()
    zt["true_zp"] = z_true
    zt["error"] = dz
    zt["floor"] = floors
    write_table_atomic(zt, out_dir / "zeropoint_errors.ecsv")
    if figures:
        _figure_residuals(res0[const], res1[const], dz, floors, out_dir / "fig1_residuals.png")
        if bi.any() and "time" in t.colnames:
            _figure_binaries(t, out_dir / "fig2_binaries.png", stars)
    log.info("mock evaluation: zero-point rms error %.3f km/s (floor %.3f); %d/%d candidates constant",
             rms or np.nan, rms_floor or np.nan, metrics["candidates"]["truly_constant"], metrics["candidates"]["n"])
    return metrics


def _figure_residuals(r0, r1, dz, floors, path):
    from skyvar.utils.atomic import savefig_atomic
    from skyvar.utils.plotting import subplots

    fig, ax = subplots(1, 3, figsize=(13, 3.8))
    r0 = r0[np.isfinite(r0)]
    r1 = r1[np.isfinite(r1)]
    ax[0].hist(r0, bins=60, color="tab:red", histtype="stepfilled", alpha=0.7)
    ax[0].set(xlabel="rv - true rv [km/s]", ylabel="N", title="(a) constant stars, measured")
    ax[1].hist(r1, bins=60, color="tab:blue", histtype="stepfilled", alpha=0.7)
    for x in (-0.5, 0.5):
        ax[1].axvline(x, color="k", ls=":")
    ax[1].set(xlabel="rv_corr - true rv [km/s]", title="(b) constant stars, calibrated")
    k = np.arange(len(dz))
    ax[2].plot(k, dz, "o", color="tab:blue", label="zp - true zp")
    if np.isfinite(floors).any():
        ax[2].fill_between(k, -floors, floors, color="0.8", label="1-sigma floor")
    ax[2].axhline(0, color="k", lw=0.5)
    ax[2].set(xlabel="exposure", ylabel="km/s", title="(c) zero-point error")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path)


def _figure_binaries(t: Table, path, stars: Table | None = None,
                     targets=((0.6894, 13.23), (0.6373, 13.01), (2.9098, 5.91))):
    """Figure 2: the three mock binaries closest (in period and amplitude) to the paper's Table 1."""
    from skyvar.utils.atomic import savefig_atomic
    from skyvar.utils.plotting import subplots

    stype = np.asarray(t["star_type"]).astype(str)
    bi = t[stype == "binary"]
    src = np.asarray(bi["source"]).astype(str)
    names = np.unique(src)
    # period/amplitude from the stars table next to the mock, else a sine fit is not attempted: use truth
    per = {}
    for n in names:
        s = bi[src == n]
        tt = np.asarray(s["time"], float)
        vv = np.asarray(s["true_rv"], float)
        per[n] = (tt, vv, np.asarray(s["rv"], float), np.asarray(s["rv_corr"], float))
    meta_stars = stars
    chosen = []
    if meta_stars is not None:
        ms = meta_stars[np.asarray(meta_stars["star_type"]).astype(str) == "binary"]
        for p, k in targets:
            d = ((np.asarray(ms["period"]) - p) / p) ** 2 + ((np.asarray(ms["amplitude"]) - k) / k) ** 2
            for j in np.argsort(d):
                if str(ms["source"][j]) not in [c[0] for c in chosen]:
                    chosen.append((str(ms["source"][j]), float(ms["period"][j]), float(ms["amplitude"][j]),
                                   float(ms["t0"][j])))
                    break
    else:
        amp = {n: np.ptp(per[n][1]) / 2 for n in names}
        for n in sorted(names, key=lambda n: -amp[n])[:3]:
            chosen.append((n, np.nan, amp[n], np.nan))
    fig, axes = subplots(2, len(chosen), figsize=(4.3 * len(chosen), 5.5), sharex="col",
                             gridspec_kw={"height_ratios": [3, 1.3]}, squeeze=False)
    for j, (n, p, k, t0) in enumerate(chosen):
        tt, vv, ro, rc = per[n]
        a, b = axes[0, j], axes[1, j]
        if np.isfinite(p):
            ph = ((tt - t0) / p) % 1
            grid = np.linspace(0, 1, 300)
            a.plot(grid, k * np.sin(2 * np.pi * grid), "k-", lw=1, label="true")
            x = ph
            a.set_title(f"P = {p:.4f} d, K = {k:.2f} km/s")
            b.set_xlabel("phase")
        else:
            x = tt - tt.min()
            a.plot(x, vv, "k.", label="true")
            b.set_xlabel("time [d]")
        a.plot(x, ro, "o", mfc="none", color="tab:red", label="measured")
        a.plot(x, rc, "*", color="tab:blue", label="calibrated")
        b.plot(x, ro - vv, "o", mfc="none", color="tab:red")
        b.plot(x, rc - vv, "*", color="tab:blue")
        b.axhline(0, color="k", lw=0.5)
        a.set_ylabel("rv [km/s]")
        b.set_ylabel("residual")
        if j == 0:
            a.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path)


# ---------------------------------------------------------------------------------------- precision study
class RVPrecisionStudy:
    """Spectrum-level precision of the relative-RV method (Xiong et al. §5, Figures 8 and 9).

    ``python infer.py pipeline=rv_precision out_dir=D`` — for every template and SNR: one noisy
    reference at v = 0 and ``n_mc`` noisy epochs Doppler-shifted by known velocities U(-v_range, v_range),
    each multiplied by a blaze-like response, continuum-normalised and measured exactly like survey data;
    sigma_rv is the standard deviation of (measured - true). Templates:

    - Figure 8 (spectral types): the real LAMOST MRS co-add of the shared data (a G/K star, SNR 280 red /
      120 blue; its noise above 0.25 cycles/pixel, beyond the line spread function, filtered out) and redrock archetypes of classes B, A, F, G, K, M (for each class
      the archetype closest to the class median spectrum), broadened from their native R ≈ 8800 (measured
      from their line widths) to the MRS R = 7500;
    - Figure 9 (temperature change, a pulsator): reference BOSZ Teff = 5750 K and epochs at 5750 K (no
      change), 6250 K (+500 K: mean of the continuum-normalised 5750 and 6750 K models) and 6750 K
      (+1000 K), log g 4.0, [M/H] = -0.25, [alpha/M] = +0.3. The BOSZ models are R = 2000, ~3.7x broader
      lines than MRS, so their absolute precision is pessimistic; the change with Delta T is the point.

    Writes ``D/precision.ecsv``, ``D/fig8_precision_vs_snr.png``, ``D/fig9_teff_change.png``,
    ``D/summary.json``.
    """

    def __init__(self, out_dir: str, data_dir: str | None = None, snr: list | tuple = (5, 10, 20, 30, 50, 75, 100),
                 n_mc: int = 200, v_range: float = 100.0, types: list | tuple = ("B", "A", "F", "G", "K", "M"),
                 arms: list | tuple = ("R", "B"), native_resolution: float = 8800.0, resolution: float = 7500.0,
                 teff_test: bool = True, ref_snr: float | None = None, seed: int = 8, device: str = "auto",
                 rv: dict | None = None, continuum: dict | None = None, figures: bool = True):
        self.out_dir = Path(out_dir)
        # None: the templates shipped with skyvar (skyvar.spectra.resources); a directory: the full files
        self.data_dir = Path(data_dir) if data_dir else None
        self.snr = [float(s) for s in snr]
        self.n_mc = int(n_mc)
        self.v_range = float(v_range)
        self.types = list(types)
        self.arms = [str(a).upper()[:1] for a in arms]
        self.native_resolution = float(native_resolution)
        self.resolution = float(resolution)
        self.teff_test = bool(teff_test)
        self.ref_snr = ref_snr
        self.seed = int(seed)
        self.device = device
        self.rv_kwargs = dict(rv or {})
        self.continuum = dict(continuum or {})
        self.figures = figures

    # templates: name -> (arm -> model(wavelength) rest-frame flux)
    def _redrock_models(self) -> dict:
        from scipy.interpolate import CubicSpline

        if self.data_dir is None:
            return self._redrock_models_packaged()
        from skyvar.spectra.resample import resample_linear
        from skyvar.spectra.templates import (
            broaden_to_resolution,
            load_redrock_template,
            typical_redrock_spectrum,
        )

        out = {}
        d = self.data_dir / "spectra" / "redrock"
        loglam = np.arange(np.log10(4800.0), np.log10(6950.0), 2e-6)
        for st in self.types:
            files = sorted(d.glob(f"rrtemplate-STAR-{st}-*.fits"))
            if not files:
                log.warning("no redrock template for class %s in %s; skipped", st, d)
                continue
            w, flux = typical_redrock_spectrum(load_redrock_template(files[-1]), 4700, 7050)
            f = resample_linear(loglam, np.log10(w), flux)
            f = broaden_to_resolution(f, 2e-6, self.resolution, native_resolution=self.native_resolution)
            cs = CubicSpline(loglam, f)
            out[f"redrock-{st}"] = lambda wave, cs=cs: cs(np.log10(wave))
        return out

    def _redrock_models_packaged(self) -> dict:
        """The per-class archetypes shipped with skyvar (native resolution, 1e-5 dex over both arms)."""
        from scipy.interpolate import CubicSpline

        from skyvar.spectra import resources
        from skyvar.spectra.templates import broaden_to_resolution

        z = resources.rv_templates()
        out = {}
        for st in self.types:
            if f"redrock_{st}_R" not in z:
                log.warning("no packaged redrock template for class %s; skipped", st)
                continue
            splines = {}
            for arm in ("B", "R"):
                ll = z[f"loglam_{arm}"]
                f = broaden_to_resolution(z[f"redrock_{st}_{arm}"].astype(float), resources.RV_DLOGLAM,
                                          self.resolution, native_resolution=self.native_resolution)
                splines[arm] = CubicSpline(ll, f)
            out[f"redrock-{st}"] = lambda wave, sp=splines: _arm_dispatch(
                {a: (lambda w, c=c: c(np.log10(w))) for a, c in sp.items()}, wave)
        return out

    def _mrs_model(self) -> dict:
        from skyvar.sim.rv_mock import band_limited_model
        from skyvar.spectra.mrs import read_mrs

        if self.data_dir is None:
            from skyvar.spectra import resources

            z = resources.rv_templates()
            models = {}
            for arm in ("B", "R"):
                ll = z[f"mrs_loglam_{arm}"].astype(np.float64)
                step = np.round(np.median(np.diff(ll)), 8)
                ll0 = ll[0] + np.median(ll - ll[0] - step * np.arange(len(ll)))
                wave = 10 ** (ll0 + step * np.arange(len(ll)))
                models[arm] = band_limited_model(wave, z[f"mrs_flux_{arm}"].astype(float), good=z[f"mrs_good_{arm}"],
                                                 max_freq=0.25)
            return {"MRS-real": lambda wave, m=models: _arm_dispatch(m, wave)}
        f = self.data_dir / "spectra" / "lamost_mrs" / "med-58408-TD230151N343645T01_sp01-015.fits"
        if not f.exists():
            log.warning("real MRS file %s not found; skipped", f)
            return {}
        models = {}
        for s in read_mrs(f, kind="coadd", times=False):
            # the co-add grid is uniform in log10 to float32 precision of LOGLAM: rebuild it exactly
            ll = np.log10(s.wavelength)
            step = np.round(np.median(np.diff(ll)), 8)
            ll0 = ll[0] + np.median(ll - ll[0] - step * np.arange(len(ll)))
            wave = 10 ** (ll0 + step * np.arange(len(ll)))
            # its own noise (SNR 280 red, 120 blue) above the line spread function is removed
            models[s.meta["arm"]] = band_limited_model(wave, s.flux, good=~s.mask, max_freq=0.25)
        return {"MRS-real": lambda wave, m=models: _arm_dispatch(m, wave)}

    def _bosz_models(self) -> dict:
        from skyvar.sim.rv_mock import band_limited_model
        from skyvar.spectra.io import open_fits

        if self.data_dir is None:
            from skyvar.spectra import resources

            z = resources.rv_templates()
            w = z["bosz_5750_wave"]
            f5750 = z["bosz_5750_norm"].astype(float)
            f6750 = np.interp(w, z["bosz_6750_wave"], z["bosz_6750_norm"].astype(float))
            curves = {"5750 K": f5750, "6250 K": 0.5 * (f5750 + f6750), "6750 K": f6750}
            shape = (w / 5500.0) ** -2
            return {k: band_limited_model(w, v * shape) for k, v in curves.items()}
        d = self.data_dir / "spectra" / "bosz"
        names = {5750: "amm03cp00op03t5750g40v20modrt0b2000rs.fits", 6750: "amm03cp00op03t6750g40v20modrt0b2000rs.fits"}
        norm = {}
        for t, n in names.items():
            if not (d / n).exists():
                log.warning("BOSZ model %s not found; temperature test skipped", d / n)
                return {}
            with open_fits(d / n) as h:
                tab = h[1].data
                w = np.asarray(tab["Wavelength"], float)
                m = (w > 4700) & (w < 7050)
                norm[t] = (w[m], np.asarray(tab["SpecificIntensity"], float)[m] / np.asarray(tab["Continuum"], float)[m])
        w = norm[5750][0]
        f6750 = np.interp(w, *norm[6750])
        curves = {"5750 K": norm[5750][1], "6250 K": 0.5 * (norm[5750][1] + f6750), "6750 K": f6750}
        # a common smooth spectral shape (a G star's f_lambda over the arms) so the continuum fit has work
        shape = (w / 5500.0) ** -2
        return {k: band_limited_model(w, v * shape) for k, v in curves.items()}

    def _run_one(self, model_t, model_ref, arm: str, rng, est) -> list[dict]:
        from skyvar.sim.rv_mock import noisy_shifted_spectra
        from skyvar.spectra.continuum import normalize
        from skyvar.spectra.rv import GRID_RANGES, log_grid

        wave = log_grid(*GRID_RANGES[arm])
        resp = 1 - 0.35 * ((wave - wave.mean()) / (np.ptp(wave) / 2)) ** 2
        fl, iv, ref, vt, sn = [], [], [], [], []
        for snr in self.snr:
            v = rng.uniform(-self.v_range, self.v_range, self.n_mc)
            f0, i0 = noisy_shifted_spectra(model_ref, wave, [0.0], self.ref_snr or snr, rng, continuum=resp)
            f1, i1 = noisy_shifted_spectra(model_t, wave, v, snr, rng, continuum=resp)
            base = sum(len(x) for x in fl)
            fl.append(np.vstack([f0, f1]))
            iv.append(np.vstack([i0, i1]))
            ref.append(np.full(self.n_mc + 1, base))
            vt.append(np.concatenate([[0.0], v]))
            sn.append(np.full(self.n_mc + 1, snr))
        fl, iv = np.vstack(fl), np.vstack(iv)
        ref, vt, sn = np.concatenate(ref), np.concatenate(vt), np.concatenate(sn)
        fn, ivn, _, _ = normalize(wave, fl, iv, **self.continuum)
        res = est[arm].measure(wave, fn, ivn, ref)
        rows = []
        for snr in self.snr:
            sel = (sn == snr) & (np.arange(len(sn)) != ref)
            d = res.rv[sel] - vt[sel]
            d = d[np.isfinite(d)]
            mad = 1.4826 * np.median(np.abs(d - np.median(d)))
            rows.append({"arm": arm, "snr": snr, "n": int(sel.sum()), "sigma_rv": float(np.std(d)),
                         "sigma_rv_robust": float(mad), "bias": float(np.mean(d)),
                         "median_rv_err": float(np.nanmedian(res.rv_err[sel])),
                         "frac_outliers": float(np.mean(np.abs(d - np.median(d)) > 5 * max(mad, 1e-9))),
                         "frac_failed": float(np.mean(res.flag[sel] & 0b1011 > 0))})
        return rows

    def run(self) -> dict:
        from skyvar.spectra.rv import WINDOWS

        self.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        est = {a: RelativeRV(window=WINDOWS[a], device=self.device, **self.rv_kwargs) for a in ("R", "B")}
        rng = np.random.default_rng(self.seed)
        rows = []
        models = {**self._mrs_model(), **self._redrock_models()}
        for name, model in models.items():
            for arm in self.arms:
                for r in self._run_one(model, model, arm, rng, est):
                    rows.append({"test": "type", "template": name, "delta_teff": 0.0, **r})
                log.info("precision: %s arm %s done", name, arm)
        if self.teff_test:
            bosz = self._bosz_models()
            if bosz:
                for name in ("5750 K", "6250 K", "6750 K"):
                    for arm in self.arms:
                        for r in self._run_one(bosz[name], bosz["5750 K"], arm, rng, est):
                            rows.append({"test": "teff", "template": f"BOSZ {name} vs 5750 K",
                                         "delta_teff": float(name.split()[0]) - 5750.0, **r})
                    log.info("precision: BOSZ %s done", name)
        tab = Table(rows=rows)
        for c in ("sigma_rv", "sigma_rv_robust", "bias", "median_rv_err"):
            tab[c].unit = "km/s"
        tab.meta.update({"n_mc": self.n_mc, "v_range": self.v_range, "seed": self.seed, "resolution": self.resolution,
                         "native_resolution_redrock": self.native_resolution, "ref_snr": self.ref_snr})
        write_table_atomic(tab, self.out_dir / "precision.ecsv")
        if self.figures:
            _figure_precision(tab[tab["test"] == "type"], self.out_dir / "fig8_precision_vs_snr.png",
                              "relative-RV precision by spectral type")
            if np.any(tab["test"] == "teff"):
                _figure_precision(tab[tab["test"] == "teff"], self.out_dir / "fig9_teff_change.png",
                                  "temperature change between epochs (BOSZ, R=2000)")
        summary = {"n_rows": len(tab), "runtime_s": round(time.perf_counter() - t0, 1),
                   "device": str(est["R"].device)}
        write_json_atomic(self.out_dir / "summary.json", summary)
        return summary


def _arm_dispatch(models: dict, wave):
    """Evaluate per-arm models: ``wave`` belongs to the arm whose range holds its median."""
    wave = np.asarray(wave, dtype=float)
    arm = "B" if np.median(wave) < 6000 else "R"
    return models[arm](wave)


def _figure_precision(tab: Table, path, title: str):
    from skyvar.utils.atomic import savefig_atomic
    from skyvar.utils.plotting import subplots

    arms = [a for a in ("R", "B") if np.any(tab["arm"] == a)]
    fig, axes = subplots(1, len(arms), figsize=(5.5 * len(arms), 4.2), squeeze=False)
    for ax, arm, lab in zip(axes[0], arms, ("(a)", "(b)")):
        for name in dict.fromkeys(tab["template"]):
            s = tab[(tab["arm"] == arm) & (tab["template"] == name)]
            ax.plot(s["snr"], s["sigma_rv"], "o-", label=str(name), ms=4)
        ax.set(xscale="log", yscale="log", xlabel="SNR per pixel", ylabel="sigma_rv [km/s]",
               title=f"{lab} {'red 6400-6700' if arm == 'R' else 'blue 5000-5300'} Å")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    savefig_atomic(fig, path)


# ---------------------------------------------------------------------------------------- injections
class RVInjectionStudy:
    """Are the relative-RV uncertainties honest on real spectra? (issue 17 §1)

    ``python infer.py pipeline=rv_injection input=<one LAMOST MRS file> out_dir=D`` — the file's single
    exposures are Doppler-shifted by known velocities U(-v_range, v_range) and degraded with Gaussian noise
    to each S/N of ``snr`` (:func:`skyvar.sim.rv_mock.shift_and_degrade`), ``n_per`` times per exposure,
    and measured against the undegraded highest-S/N exposure with each estimator setting of ``settings``
    (name -> RelativeRV keyword arguments). Truth = injected velocity + the exposure's own relative velocity
    measured at full S/N (its error added in quadrature to the pulls). Writes ``D/injections.ecsv`` (one row
    per setting, arm and S/N: scatter, median quoted error, pull standard deviation and 1.4826 MAD, the
    fraction without a velocity) and ``D/summary.json``.
    """

    def __init__(self, out_dir: str, input: str | None = None, snr: list | tuple = (3, 5, 8, 12, 20, 35),
                 n_per: int = 10, v_range: float = 120.0, arms: list | tuple = ("R", "B"), seed: int = 11,
                 settings: dict | None = None, device: str = "cpu"):
        self.out_dir = Path(out_dir)
        self.input = input
        self.snr = [float(s) for s in snr]
        self.n_per = int(n_per)
        self.v_range = float(v_range)
        self.arms = [str(a).upper()[:1] for a in arms]
        self.seed = int(seed)
        self.settings = dict(settings or {"paper (no low-pass, fit sigma)": {},
                                          "pipeline (lowpass 0.2, err_scale 1.4)": DEFAULT_RV})
        self.device = device

    def run(self) -> dict:
        from skyvar.sim.rv_mock import shift_and_degrade

        if self.input is None:
            raise ValueError("rv_injection needs input=<a LAMOST MRS file with several single exposures>, e.g. "
                             "../shared/data/spectra/lamost_mrs/med-58408-TD230151N343645T01_sp01-015.fits")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        rows = []
        for arm in self.arms:
            singles = [s for s in read_mrs(self.input, kind="single", arms=(arm,), times=False) if not s.meta["flag"]]
            ref = max(singles, key=lambda s: s.meta["snr"])
            others = [s for s in singles if s is not ref]
            for name, kw in self.settings.items():
                rng = np.random.default_rng(self.seed)
                est = RelativeRV(window=self.windows(arm), device=self.device, **kw)
                w, fl, iv = prepare_arm([ref] + others, arm)
                base = est.measure(w, fl, iv, np.zeros(len(others) + 1, int))
                specs, truth, terr, snrs = [ref], [0.0], [0.0], [np.inf]
                for j, e in enumerate(others):
                    for snr in self.snr:
                        for _ in range(self.n_per):
                            v = rng.uniform(-self.v_range, self.v_range)
                            specs.append(shift_and_degrade(e, v, snr, rng))
                            truth.append(v + base.rv[j + 1])
                            terr.append(base.rv_err[j + 1])
                            snrs.append(snr)
                w, fl, iv = prepare_arm(specs, arm)
                res = est.measure(w, fl, iv, np.zeros(len(specs), int))
                truth, terr, snrs = np.array(truth), np.array(terr), np.array(snrs)
                for snr in self.snr:
                    sel = snrs == snr
                    ok = sel & np.isfinite(res.rv)
                    d = res.rv[ok] - truth[ok]
                    pull = d / np.hypot(res.rv_err[ok], terr[ok])
                    rows.append({"setting": name, "arm": arm, "snr": snr, "n": int(sel.sum()),
                                 "frac_no_velocity": float(1 - ok.sum() / max(sel.sum(), 1)),
                                 "scatter": float(np.std(d)) if ok.any() else np.nan,
                                 "median_err": float(np.median(res.rv_err[ok])) if ok.any() else np.nan,
                                 "pull_std": float(np.std(pull)) if ok.any() else np.nan,
                                 "pull_mad": float(1.4826 * np.median(np.abs(pull - np.median(pull)))) if ok.any() else np.nan})
        tab = Table(rows=rows)
        for c in ("scatter", "median_err"):
            tab[c].unit = "km/s"
        tab.meta.update({"input": str(self.input), "n_per": self.n_per, "v_range": self.v_range, "seed": self.seed})
        write_table_atomic(tab, self.out_dir / "injections.ecsv")
        summary = {"n_rows": len(tab), "runtime_s": round(time.perf_counter() - t0, 1)}
        write_json_atomic(self.out_dir / "summary.json", summary)
        return summary

    @staticmethod
    def windows(arm: str):
        return WINDOWS[arm]
