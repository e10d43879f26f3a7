"""One light curve as a domain object: read it from a store, clean it, fold it, plot it, and move it to
and from ``astropy.timeseries.TimeSeries``.

The pipelines work on batches (:class:`~skyvar.lightcurves.batch.LightCurveBatch`) for speed; this
object is for looking at one star in a notebook::

    lc = LightCurve.from_store("run/associate/store", source_id=123)
    lc.remove_flagged().fold(period=1.73).plot()

Units: ``time`` in days (MJD, mid-exposure, unless ``time_scale`` says otherwise), ``mag`` AB magnitudes,
``mag_err`` 1σ in mag, ``flag`` the store's :class:`skyvar.flags.PointFlag` bits.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

from skyvar.flags import DEFAULT_LIGHTCURVE_MASK, decode

__all__ = ["LightCurve"]


@dataclasses.dataclass
class LightCurve:
    time: np.ndarray  # days (MJD)
    mag: np.ndarray  # AB mag
    mag_err: np.ndarray  # mag, 1 sigma (NaN when unknown)
    flag: np.ndarray  # int32 PointFlag bits
    source_id: int | str | None = None
    band: str = ""
    phase: np.ndarray | None = None  # set by fold(): in [0, 1)
    period: float | None = None  # days, set by fold()
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.time = np.asarray(self.time, float)
        self.mag = np.asarray(self.mag, float)
        n = len(self.time)
        self.mag_err = np.full(n, np.nan) if self.mag_err is None else np.asarray(self.mag_err, float)
        self.flag = np.zeros(n, np.int32) if self.flag is None else np.asarray(self.flag, np.int32)
        if not (len(self.mag) == len(self.mag_err) == len(self.flag) == n):
            raise ValueError(f"light curve {self.source_id}: time, mag, mag_err and flag differ in length")

    def __len__(self) -> int:
        return len(self.time)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_table(cls, df: pd.DataFrame, source_id=None, band: str | None = None) -> LightCurve:
        """From a long table (``source_id, band, time, mag, mag_err, flag``), one source and band
        (the only ones present when not given). Sorted by time."""
        sel = np.ones(len(df), bool)
        if source_id is not None and "source_id" in df:
            sel &= (df["source_id"] == source_id).to_numpy()
        if band is not None and "band" in df:
            sel &= (df["band"].astype(str) == str(band)).to_numpy()
        d = df[sel]
        if "band" in d and d["band"].nunique() > 1:
            raise ValueError(f"source {source_id}: bands {sorted(d['band'].unique())}; choose one with band=")
        if "source_id" in d and d["source_id"].nunique() > 1:
            raise ValueError("several sources in the table; choose one with source_id=")
        d = d.sort_values("time", kind="mergesort")
        return cls(time=d["time"].to_numpy(float), mag=d["mag"].to_numpy(float),
                   mag_err=d["mag_err"].to_numpy(float) if "mag_err" in d else None,
                   flag=d["flag"].to_numpy(np.int32) if "flag" in d else None,
                   source_id=source_id if source_id is not None else (d["source_id"].iloc[0] if len(d) and "source_id" in d else None),
                   band=str(band if band is not None else (d["band"].iloc[0] if len(d) and "band" in d else "")))

    @classmethod
    def from_store(cls, store: str | os.PathLike, source_id, band: str | None = None) -> LightCurve:
        """One source (and band) from a partitioned light-curve store (reads only its partition)."""
        import pyarrow.parquet as pq

        from skyvar.lightcurves.store import open_store

        frames = []
        for part in open_store(store).partitions:
            if part.files and all(str(f).endswith(".parquet") for f in part.files):
                # predicate push-down: only the row groups holding this source are decoded
                frames += [pq.read_table(f, filters=[("source_id", "=", source_id)]).to_pandas() for f in part.files]
            else:
                d = part.load()
                frames.append(d[d["source_id"] == source_id])
        df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) \
            else pd.DataFrame(columns=["source_id", "band", "time", "mag", "mag_err", "flag"])
        if not len(df):
            raise KeyError(f"source {source_id} is not in {store}")
        if band is None and df["band"].nunique() > 1:
            band = str(sorted(df["band"].astype(str).unique())[0])
        return cls.from_table(df, source_id, band)

    @classmethod
    def from_timeseries(cls, ts, mag: str = "mag", mag_err: str = "mag_err", flag: str = "flag",
                        source_id=None, band: str = "") -> LightCurve:
        """From an ``astropy.timeseries.TimeSeries`` with magnitude columns (times converted to MJD in
        the series' own scale)."""
        def col(name):
            if name not in ts.colnames:
                return None
            c = ts[name]
            return np.asarray(c.value if hasattr(c, "unit") and c.unit is not None else c, dtype=float)

        m = col(mag)
        if m is None:
            raise KeyError(f"TimeSeries has no {mag!r} column (columns: {ts.colnames})")
        f = col(flag)
        return cls(time=np.asarray(ts.time.mjd, float), mag=m, mag_err=col(mag_err),
                   flag=None if f is None else f.astype(np.int32), source_id=source_id,
                   band=band or str(ts.meta.get("band", "")))

    # ---------------------------------------------------------------- conversions
    def to_timeseries(self, time_scale: str = "utc"):
        """An ``astropy.timeseries.TimeSeries`` (time as MJD in ``time_scale``; ``mag``/``mag_err`` in
        ``u.mag``; ``flag``; ``phase`` when folded)."""
        from astropy import units as u
        from astropy.time import Time
        from astropy.timeseries import TimeSeries

        ts = TimeSeries(time=Time(self.time, format="mjd", scale=time_scale),
                        data={"mag": self.mag * u.mag, "mag_err": self.mag_err * u.mag, "flag": self.flag})
        if self.phase is not None:
            ts["phase"] = self.phase
        ts.meta.update(source_id=self.source_id, band=self.band, **({"period": self.period} if self.period else {}))
        return ts

    def to_table(self) -> pd.DataFrame:
        """The store's long format."""
        return pd.DataFrame({"source_id": [self.source_id] * len(self), "band": [self.band] * len(self),
                             "time": self.time, "mag": self.mag, "mag_err": self.mag_err, "flag": self.flag})

    # ---------------------------------------------------------------- operations (return new objects)
    def _take(self, sel: np.ndarray) -> LightCurve:
        return dataclasses.replace(self, time=self.time[sel], mag=self.mag[sel], mag_err=self.mag_err[sel],
                                   flag=self.flag[sel], phase=None if self.phase is None else self.phase[sel])

    def remove_flagged(self, mask: int = DEFAULT_LIGHTCURVE_MASK) -> LightCurve:
        """Without points whose flag has any bit of ``mask`` (default: what the pipelines leave out),
        nor non-finite times or magnitudes."""
        return self._take(((self.flag & int(mask)) == 0) & np.isfinite(self.time) & np.isfinite(self.mag))

    def flag_names(self) -> list[list[str]]:
        return [decode(int(f), "point") for f in self.flag]

    def fold(self, period: float, t0: float | None = None) -> LightCurve:
        """Phase-folded (phase in [0, 1) from epoch ``t0``, default the first time), sorted by phase."""
        if not (np.isfinite(period) and period > 0):
            raise ValueError(f"period must be a positive number of days, got {period}")
        t0 = float(np.nanmin(self.time)) if t0 is None else float(t0)
        ph = np.mod(self.time - t0, period) / period
        order = np.argsort(ph, kind="mergesort")
        out = self._take(order)
        out.phase, out.period = ph[order], float(period)
        return out

    def plot(self, ax=None, **kwargs):
        """Magnitude versus time (or phase, when folded), magnitudes increasing downwards. Returns the
        matplotlib Figure (a new one unless ``ax`` is given)."""
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(6, 3.2))
            ax = fig.subplots()
        else:
            fig = ax.figure
        x = self.phase if self.phase is not None else self.time - (np.nanmin(self.time) if len(self) else 0.0)
        kwargs.setdefault("fmt", ".")
        kwargs.setdefault("ms", 3)
        err = np.where(np.isfinite(self.mag_err), self.mag_err, 0.0)
        ax.errorbar(x, self.mag, yerr=err, elinewidth=0.5, **kwargs)
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
        if self.phase is not None:
            ax.set_xlabel(f"phase (P = {self.period:.6g} d)")
        else:
            ax.set_xlabel(f"days since MJD {np.nanmin(self.time):.4f}" if len(self) else "days")
        ax.set_ylabel(f"{self.band} mag" if self.band else "mag")
        ax.set_title(f"source {self.source_id}" if self.source_id is not None else "", fontsize=9)
        fig.tight_layout()
        return fig
