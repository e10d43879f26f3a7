"""From per-frame catalogues to light curves: cross-match every measurement to a source list.

Frames are taken in time order. A source is anchored at the position of its *first* detection (as
the WFST minute-cadence paper does, §2: with first-detection anchors a 1″ radius leaves ≈ 0.01 % of
measurements unmatched); later detections within ``radius`` of an anchor join that source, the rest
start new sources. Matching is one-to-one per frame: when two detections claim one source the closer
wins and the other tries its next candidate, then becomes a new source. Epochs where a source was
not detected stay missing: nothing is interpolated or invented.

Positions: on the sky (``ra, dec`` in degrees, chord distance on the unit sphere) with ``radius_arcsec``
(default 1″); catalogues without sky coordinates (NaN ``ra/dec``) are matched in pixels (frames
assumed registered) with ``radius_pix``, or ``radius_arcsec / pixel_scale``; without either the
radius falls back to 1 px with a warning.

Scale: KD-trees (scipy ``cKDTree``, multi-threaded queries) on the anchors with new anchors kept in a
small second tree until it is worth a rebuild, vectorised assignment, catalogues parsed in a
background thread, rows streamed into the partitioned store (:class:`~skyvar.lightcurves.store.StoreWriter`).

Catalogues are Parquet (as the field pipeline passes them), ECSV (as ``pipeline=detect`` writes them
for users) or FITS tables with the columns ``x y ra dec flux flux_err mag mag_err flags frame_id
detector`` and the table meta ``mjd``, ``frame_id``, ``filter`` (:mod:`skyvar.io.catalog`). A catalogue that cannot be read or lacks ``mjd`` is reported and skipped.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from skyvar.lightcurves.store import StoreWriter
from skyvar.utils.log import get_logger

log = get_logger(__name__)

CATALOG_SUFFIXES = (".ecsv", ".fits", ".fit", ".fits.gz", ".parquet")
_NEEDED = ("x", "y", "ra", "dec", "mag", "mag_err", "flags")


class CatalogError(ValueError):
    """A catalogue that cannot be used; the message names the file and the reason."""


@dataclasses.dataclass
class CatalogFrame:
    path: Path
    frame_id: str
    mjd: float
    band: str
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    flags: np.ndarray
    pixel_scale: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.mag)

    @property
    def has_sky(self) -> bool:
        return bool(len(self.ra)) and bool(np.isfinite(self.ra).any() and np.isfinite(self.dec).any())


# ------------------------------------------------------------------------------------- reading
def _parse_meta(header_lines: list[str], colnames_line: str) -> dict:
    from astropy.table import Table

    # The ECSV header (YAML) with zero data rows parses in milliseconds; the data go through pandas.
    t = Table.read("".join(header_lines) + colnames_line, format="ascii.ecsv")
    return dict(t.meta)


def _read_ecsv(path: Path) -> tuple[pd.DataFrame, dict, list[str]]:
    warnings: list[str] = []
    header: list[str] = []
    colnames_line = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                header.append(line)
            else:
                colnames_line = line
                break
    if not header or "%ECSV" not in header[0]:
        raise CatalogError(f"{path}: not an ECSV file (no '# %ECSV' header)")
    if not colnames_line.strip():
        raise CatalogError(f"{path}: ECSV header without a column-name line (truncated?)")
    meta = _parse_meta(header, colnames_line)
    names = colnames_line.split()
    use = [c for c in _NEEDED if c in names]
    df = pd.read_csv(path, sep=" ", skiprows=len(header), usecols=use, quotechar='"',
                     na_values=["", "nan", "NaN", "--"], keep_default_na=True)
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n" and len(df):
                # A file cut mid-row: its last row may hold a clipped number; drop it rather than trust it.
                df = df.iloc[:-1]
                warnings.append("file does not end with a newline (truncated?): last row dropped")
    return df, meta, warnings


def read_catalog(path: str | os.PathLike) -> CatalogFrame:
    """One per-frame catalogue (ECSV fast path, FITS/Parquet via astropy) as arrays plus meta."""
    path = Path(path)
    name = path.name.lower()
    warnings: list[str] = []
    try:
        if name.endswith(".ecsv"):
            try:
                df, meta, warnings = _read_ecsv(path)
            except CatalogError:
                raise
            except Exception as e:  # odd but valid ECSV (quoted multi-dim columns …): astropy reads it
                log.debug("fast ECSV read failed for %s (%s); using astropy", path, e)
                df, meta = _read_astropy(path)
        elif name.endswith(".parquet"):
            df, meta = _read_parquet(path)
        else:
            df, meta = _read_astropy(path)
    except CatalogError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CatalogError(f"{path}: cannot read catalogue ({type(e).__name__}: {e})") from e

    meta = {str(k).lower(): v for k, v in meta.items()}
    mjd = meta.get("mjd", meta.get("mjd-obs", meta.get("mjd_obs")))
    try:
        mjd = float(mjd)
    except (TypeError, ValueError):
        mjd = float("nan")
    if not np.isfinite(mjd):
        raise CatalogError(f"{path}: no usable 'mjd' in the table meta (got {meta.get('mjd')!r}); "
                           "cannot place the frame in time")
    missing = [c for c in ("mag",) if c not in df.columns]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {missing}")
    if not ({"ra", "dec"} <= set(df.columns) or {"x", "y"} <= set(df.columns)):
        raise CatalogError(f"{path}: needs ra/dec or x/y positions; has {list(df.columns)}")
    band = meta.get("filter", meta.get("band", ""))
    if band in (None, ""):
        warnings.append("no 'filter' in the table meta: band set to ''")
        band = ""
    frame_id = str(meta.get("frame_id") or path.name.split(".")[0])
    n = len(df)

    def col(c, dtype=np.float64, fill=np.nan):
        if c in df.columns:
            return pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=dtype, na_value=fill) if dtype is np.float64 \
                else pd.to_numeric(df[c], errors="coerce").fillna(0).to_numpy().astype(dtype)
        return np.full(n, fill, dtype=dtype)

    ps = meta.get("pixel_scale")
    return CatalogFrame(
        path=path, frame_id=frame_id, mjd=mjd, band=str(band).strip(),
        x=col("x"), y=col("y"), ra=col("ra"), dec=col("dec"), mag=col("mag"), mag_err=col("mag_err"),
        flags=col("flags", np.int32, 0), pixel_scale=float(ps) if ps not in (None, "") else None,
        warnings=warnings,
    )


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    """Only the needed columns, and the meta from the schema (what the field pipeline passes on)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    df = pq.read_table(path, columns=[c for c in _NEEDED if c in names]).to_pandas()
    return df, _parquet_meta(path)


def _read_astropy(path: Path) -> tuple[pd.DataFrame, dict]:
    from astropy.table import Table

    t = Table.read(path)
    cols = [c for c in _NEEDED if c in t.colnames]
    df = pd.DataFrame({c: np.asarray(t[c].filled(np.nan) if hasattr(t[c], "filled") else t[c]) for c in cols})
    return df, dict(t.meta)


def catalog_mjd(path: Path) -> float:
    """The frame time without reading the rows (ECSV header or FITS/Parquet metadata); NaN if absent."""
    try:
        name = path.name.lower()
        if name.endswith(".ecsv"):
            header, colnames = [], ""
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("#"):
                        header.append(line)
                    else:
                        colnames = line
                        break
            meta = _parse_meta(header, colnames)
        elif name.endswith(".parquet"):
            meta = _parquet_meta(path)
        else:
            from astropy.io import fits

            meta = dict(fits.getheader(path, 1))
        meta = {str(k).lower(): v for k, v in meta.items()}
        return float(meta.get("mjd", meta.get("mjd-obs", np.nan)))
    except Exception:
        return float("nan")


def _parquet_meta(path: Path) -> dict:
    import pyarrow.parquet as pq
    import yaml

    # astropy stores the table meta as YAML under this key of the Parquet schema metadata.
    md = pq.read_schema(path).metadata or {}
    raw = md.get(b"table_meta_yaml")
    if raw is None:
        return {}
    from astropy.io.misc.yaml import load as yaml_load

    try:
        return dict((yaml_load(raw.decode()) or {}).get("meta", {}))
    except Exception:
        return dict((yaml.safe_load(raw.decode()) or {}).get("meta", {}))


# ------------------------------------------------------------------------------------ matching
def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    cd = np.cos(dec)
    return np.column_stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)])


class Associator:
    """Incremental first-detection-anchored cross-matcher. Feed frames in time order to :meth:`add`."""

    def __init__(self, radius_arcsec: float = 1.0, radius_pix: float | None = None,
                 pixel_scale: float | None = None, n_candidates: int = 3, workers: int = -1,
                 rebuild_fraction: float = 0.05):
        self.radius_arcsec = float(radius_arcsec)
        self.radius_pix = radius_pix
        self.pixel_scale = pixel_scale
        self.k = max(1, int(n_candidates))
        self.workers = workers
        self.rebuild_fraction = rebuild_fraction
        self.mode: str | None = None  # "sky" | "pixel", fixed by the first frame with detections
        self._pts = np.zeros((0, 3))
        self._n_main = 0
        self._main: cKDTree | None = None
        self._pend: cKDTree | None = None
        self._pend_n = -1
        # Per-source bookkeeping (anchors = first detection).
        self.anchor_ra: list[np.ndarray] = []
        self.anchor_dec: list[np.ndarray] = []
        self.anchor_x: list[np.ndarray] = []
        self.anchor_y: list[np.ndarray] = []
        self.first_mjd: list[np.ndarray] = []
        self.first_frame: list[np.ndarray] = []
        self.n_sources = 0
        self._radius: float | None = None

    # -- geometry
    def _positions(self, cat: CatalogFrame) -> tuple[np.ndarray, np.ndarray]:
        """(points, usable mask) of a catalogue in the associator's metric space."""
        if self.mode is None:
            self.mode = "sky" if cat.has_sky else "pixel"
            if self.mode == "sky":
                self._radius = 2 * np.sin(np.radians(self.radius_arcsec / 3600.0) / 2)  # chord on the unit sphere
            else:
                if self.radius_pix is not None:
                    r = float(self.radius_pix)
                elif (self.pixel_scale or cat.pixel_scale):
                    r = self.radius_arcsec / float(self.pixel_scale or cat.pixel_scale)
                else:
                    r = 1.0
                    log.warning("catalogues have no ra/dec and no pixel scale is known: matching in pixels "
                                "with a 1 px radius (set radius_pix or pixel_scale)")
                self._radius = r
                log.info("matching in pixel coordinates (frames assumed registered), radius %.3g px", r)
            self._pts = np.zeros((0, 3 if self.mode == "sky" else 2))
        if self.mode == "sky":
            if not cat.has_sky:
                raise CatalogError(f"{cat.path}: no ra/dec while earlier catalogues were matched on the sky")
            ok = np.isfinite(cat.ra) & np.isfinite(cat.dec)
            pts = np.zeros((len(cat), 3))
            pts[ok] = _unit_vectors(cat.ra[ok], cat.dec[ok])
        else:
            ok = np.isfinite(cat.x) & np.isfinite(cat.y)
            pts = np.column_stack([np.where(ok, cat.x, 0.0), np.where(ok, cat.y, 0.0)])
        return pts, ok

    @property
    def radius(self) -> float | None:
        return self._radius

    def _candidates(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dist, idx) of up to k anchors within the radius of each point, nearest first (inf/-1 = none)."""
        n = len(pts)
        dists, idxs = [], []
        r = self._radius
        if self._main is not None and self._n_main:
            d, i = self._main.query(pts, k=self.k, distance_upper_bound=r, workers=self.workers)
            d, i = d.reshape(n, -1), i.reshape(n, -1)
            dists.append(d)
            idxs.append(np.where(np.isfinite(d), i, -1))
        n_pend = self.n_sources - self._n_main
        if n_pend:
            if self._pend is None or self._pend_n != n_pend:
                self._pend = cKDTree(self._pts[self._n_main:self.n_sources])
                self._pend_n = n_pend
            d, i = self._pend.query(pts, k=self.k, distance_upper_bound=r, workers=self.workers)
            d, i = d.reshape(n, -1), i.reshape(n, -1)
            dists.append(d)
            idxs.append(np.where(np.isfinite(d), i + self._n_main, -1))
        if not dists:
            return np.full((n, 0), np.inf), np.full((n, 0), -1)
        d = np.concatenate(dists, 1)
        i = np.concatenate(idxs, 1)
        o = np.argsort(d, axis=1, kind="stable")
        return np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)

    def _add_sources(self, pts: np.ndarray, cat: CatalogFrame, sel: np.ndarray) -> np.ndarray:
        k = int(sel.sum())
        ids = np.arange(self.n_sources, self.n_sources + k, dtype=np.int64)
        if k:
            need = self.n_sources + k
            if need > len(self._pts):
                grow = np.zeros((max(need, 2 * len(self._pts), 1024), self._pts.shape[1]))
                grow[: self.n_sources] = self._pts[: self.n_sources]
                self._pts = grow
            self._pts[self.n_sources:need] = pts[sel]
            self.anchor_ra.append(cat.ra[sel])
            self.anchor_dec.append(cat.dec[sel])
            self.anchor_x.append(cat.x[sel])
            self.anchor_y.append(cat.y[sel])
            self.first_mjd.append(np.full(k, cat.mjd))
            self.first_frame.append(np.full(k, cat.frame_id, dtype=object))
            self.n_sources = need
            if self.n_sources - self._n_main > max(1000, self.rebuild_fraction * self._n_main):
                self._main = cKDTree(self._pts[: self.n_sources])
                self._n_main = self.n_sources
                self._pend, self._pend_n = None, -1
        return ids

    def add(self, cat: CatalogFrame) -> np.ndarray:
        """Source id of every detection of ``cat`` (-1 for detections without a usable position or mag)."""
        out = np.full(len(cat), -1, dtype=np.int64)
        if not len(cat):
            return out
        pts, ok = self._positions(cat)
        ok &= np.isfinite(cat.mag)
        det = np.flatnonzero(ok)
        if not len(det):
            return out
        dist, cand = self._candidates(pts[det])
        assigned = np.full(len(det), -1, dtype=np.int64)
        taken = np.zeros(self.n_sources, dtype=bool)
        ptr = np.zeros(len(det), dtype=np.int64)
        for _ in range(cand.shape[1]):
            # Each unassigned detection proposes its nearest free candidate; per source the closest wins.
            todo = np.flatnonzero((assigned < 0) & (ptr < cand.shape[1]))
            if not len(todo):
                break
            c = cand[todo, ptr[todo]]
            d = dist[todo, ptr[todo]]
            has = c >= 0
            free = np.zeros(len(todo), dtype=bool)
            free[has] = ~taken[c[has]]
            prop = todo[free]
            if not len(prop):
                ptr[todo] += 1
                continue
            pc, pd_ = c[free], d[free]
            order = np.lexsort((pd_, pc))
            first = np.ones(len(order), dtype=bool)
            first[1:] = pc[order][1:] != pc[order][:-1]
            win = order[first]
            assigned[prop[win]] = pc[win]
            taken[pc[win]] = True
            losers = np.setdiff1d(todo, prop[win], assume_unique=True)
            ptr[losers] += 1
        new = assigned < 0
        if new.any():
            sel = np.zeros(len(cat), dtype=bool)
            sel[det[new]] = True
            assigned[new] = self._add_sources(pts, cat, sel)
        out[det] = assigned
        return out

    def sources_table(self) -> pd.DataFrame:
        cat = lambda parts, dtype=float: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        return pd.DataFrame({
            "source_id": np.arange(self.n_sources, dtype=np.int64),
            "ra": cat(self.anchor_ra), "dec": cat(self.anchor_dec),
            "x": cat(self.anchor_x), "y": cat(self.anchor_y),
            "first_mjd": cat(self.first_mjd), "first_frame": cat(self.first_frame, object).astype(str),
        })


# --------------------------------------------------------------------------------------- driver
@dataclasses.dataclass
class AssociationResult:
    store: Path
    sources: pd.DataFrame
    n_frames: int
    n_measurements: int
    failures: list[dict]
    unmatched_detections: int
    radius: float
    mode: str


def associate_catalogs(files: list[Path], store_path: str | os.PathLike, radius_arcsec: float = 1.0,
                       radius_pix: float | None = None, pixel_scale: float | None = None,
                       n_partitions: int = 16, n_candidates: int = 3, read_threads: int = 2,
                       flush_rows: int = 5_000_000, progress: bool = False) -> AssociationResult:
    """Associate catalogue files into a partitioned light-curve store at ``store_path``.

    Frames are ordered by their meta ``mjd`` (read from headers first); a file that cannot be read or
    placed in time is reported in ``failures`` and skipped.
    """
    files = [Path(f) for f in files]
    failures: list[dict] = []
    times = []
    for f in files:
        t = catalog_mjd(f)
        times.append(t if np.isfinite(t) else np.inf)  # unreadable ones fail properly when read below
    order = np.argsort(np.asarray(times), kind="stable")
    files = [files[i] for i in order]

    assoc = Associator(radius_arcsec=radius_arcsec, radius_pix=radius_pix, pixel_scale=pixel_scale,
                       n_candidates=n_candidates)
    n_meas = 0
    unmatched = 0
    n_ok = 0
    last_mjd = -np.inf

    def load(f):
        try:
            return read_catalog(f), None
        except (CatalogError, OSError) as e:
            return None, e

    it = files
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(files, desc="associate", unit="frame")
    with StoreWriter(store_path, n_partitions=n_partitions, flush_rows=flush_rows) as writer, \
            ThreadPoolExecutor(max_workers=max(1, read_threads)) as pool:
        # Parsing runs ahead in threads (pandas releases the GIL) while the main thread matches.
        futures = [pool.submit(load, f) for f in files[: 2 * max(1, read_threads)]]
        nxt = len(futures)
        for f in it:
            cat, err = futures.pop(0).result()
            if nxt < len(files):
                futures.append(pool.submit(load, files[nxt]))
                nxt += 1
            if err is not None:
                log.error("skipping %s: %s", f, err)
                failures.append({"file": str(f), "stage": "read", "error": str(err)})
                continue
            for w in cat.warnings:
                log.warning("%s: %s", f, w)
            if cat.mjd < last_mjd:  # only when header and data disagree; order is by header mjd
                log.warning("%s: mjd %.6f earlier than the previous frame", f, cat.mjd)
            last_mjd = max(last_mjd, cat.mjd)
            try:
                sid = assoc.add(cat)
            except CatalogError as e:
                log.error("skipping %s: %s", f, e)
                failures.append({"file": str(f), "stage": "match", "error": str(e)})
                continue
            keep = sid >= 0
            unmatched += int((~keep).sum())
            k = int(keep.sum())
            n_ok += 1
            if not k:
                continue
            writer.append(pd.DataFrame({
                "source_id": sid[keep], "band": np.full(k, cat.band, dtype=object),
                "time": np.full(k, cat.mjd), "mag": cat.mag[keep], "mag_err": cat.mag_err[keep],
                "flag": cat.flags[keep].astype(np.int32),
            }))
            n_meas += k
    srcs = assoc.sources_table()
    return AssociationResult(store=Path(store_path), sources=srcs, n_frames=n_ok, n_measurements=n_meas,
                             failures=failures, unmatched_detections=unmatched,
                             radius=float(assoc.radius or 0.0), mode=assoc.mode or "none")
